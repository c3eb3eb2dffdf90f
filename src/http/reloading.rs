//! Something made from files that an operator replaces while the server
//! runs (the tokens file, the TLS certificate and key): looked at again
//! (inode, size, modification time) at most once a second, made anew when
//! they changed, and — when the new files do not load — the last good value
//! kept, with an error in the log.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Stamp = Option<crate::store::FileStamp>;

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths.iter().map(|p| crate::store::stamp(p)).collect()
}

/// How often the files are looked at, at most.
pub(super) const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A value made by `make` from `paths`, remade when they change.
pub(super) struct Reloading<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    make: fn(&[PathBuf]) -> Result<T, String>,
    current: Mutex<(Vec<Stamp>, Instant, Arc<T>)>,
}

impl<T> Reloading<T> {
    /// Makes the value; files that do not load are an error at start.
    pub(super) fn load(
        what: &'static str,
        paths: Vec<PathBuf>,
        make: fn(&[PathBuf]) -> Result<T, String>,
    ) -> Result<Reloading<T>, String> {
        let value = make(&paths)?;
        let current = Mutex::new((stamps(&paths), Instant::now(), Arc::new(value)));
        Ok(Reloading { what, paths, make, current })
    }

    /// The value now.
    pub(super) fn get(&self) -> Arc<T> {
        let mut current = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.1.elapsed() >= LOOK_EVERY {
            current.1 = Instant::now();
            let now = stamps(&self.paths);
            if now != current.0 {
                current.0 = now;
                match (self.make)(&self.paths) {
                    Ok(value) => {
                        tracing::info!(what = self.what, "re-read after a change");
                        current.2 = Arc::new(value);
                    }
                    Err(e) => tracing::error!(what = self.what, "not re-read; the last good one stays: {e}"),
                }
            }
        }
        current.2.clone()
    }

    /// The files it is made from.
    pub(super) fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}
