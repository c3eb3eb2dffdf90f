//! Something made from files that an operator replaces while the server
//! runs (the tokens file, the TLS certificate and key): looked at again
//! (inode, size, modification time) at most once a second, made anew when
//! they changed, and — when the new files do not load — the last good value
//! kept, with an error in the log.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

type Stamp = Option<crate::store::FileStamp>;

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths.iter().map(|p| crate::store::stamp(p)).collect()
}

/// How often the files are looked at, at most.
pub(super) const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A value made by `make` from `paths`, remade when they change.
///
/// Read on every request (the tokens): readers share a read lock and look
/// at the files only when a second has passed (an atomic clock check). A
/// mutex here made two executor threads wait on each other: a token check
/// cost 11-18% of the 304 rate at c=64 (benches/polls.py).
pub(super) struct Reloading<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    make: fn(&[PathBuf]) -> Result<T, String>,
    current: RwLock<(Vec<Stamp>, Arc<T>)>,
    /// When the files were last looked at, in ms since `born`.
    looked_ms: AtomicU64,
    born: Instant,
}

impl<T> Reloading<T> {
    /// Makes the value; files that do not load are an error at start.
    pub(super) fn load(
        what: &'static str,
        paths: Vec<PathBuf>,
        make: fn(&[PathBuf]) -> Result<T, String>,
    ) -> Result<Reloading<T>, String> {
        let value = make(&paths)?;
        let current = RwLock::new((stamps(&paths), Arc::new(value)));
        Ok(Reloading { what, paths, make, current, looked_ms: AtomicU64::new(0), born: Instant::now() })
    }

    /// The value now.
    pub(super) fn get(&self) -> Arc<T> {
        let now = self.born.elapsed().as_millis() as u64;
        let looked = self.looked_ms.load(Relaxed);
        // One reader a second looks at the files (the one that wins the swap).
        if now.saturating_sub(looked) >= LOOK_EVERY.as_millis() as u64
            && self.looked_ms.compare_exchange(looked, now, Relaxed, Relaxed).is_ok()
        {
            self.look();
        }
        let current = self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        current.1.clone()
    }

    /// Makes the value anew if the files changed.
    fn look(&self) {
        let now = stamps(&self.paths);
        let mut current = self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if now == current.0 {
            return;
        }
        current.0 = now;
        match (self.make)(&self.paths) {
            Ok(value) => {
                tracing::info!(what = self.what, "re-read after a change");
                current.1 = Arc::new(value);
            }
            Err(e) => tracing::error!(what = self.what, "not re-read; the last good one stays: {e}"),
        }
    }

    /// The files it is made from.
    pub(super) fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}
