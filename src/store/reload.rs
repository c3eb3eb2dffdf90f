//! Noticing a replaced model file: file stamps, a change that has settled,
//! and what a load left (a model, or why it failed).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use super::*;

pub(super) struct Slot {
    pub(super) spec: ModelSpec,
    /// What serves, and the stamps of the files it was loaded from.
    pub(super) state: RwLock<(Entry, Stamps)>,
    /// Stamps seen changed, not yet loaded, and since when they hold still:
    /// a change is loaded once every file of the model has held still for
    /// the settle time (a graph and its data rewritten one after the other
    /// are not loaded half-way).
    pub(super) pending: Mutex<Option<(Stamps, std::time::Instant)>>,
    /// The version replaced last, while responses still hold it: no newer
    /// file is loaded until it is gone, so a model never holds three
    /// versions (the one serving, the one before, one loading).
    pub(super) replaced: Mutex<std::sync::Weak<Model>>,
}

/// A model's files and what identified each when looked at.
pub(super) type Stamps = Vec<(PathBuf, Option<FileStamp>)>;

/// Stamps of a model's files: the model file and, once loaded, its
/// external data files.
pub(super) fn stamps(spec: &ModelSpec, entry: Option<&Entry>) -> Stamps {
    let mut files = vec![spec.path.clone()];
    if let Some(Entry::Loaded(m)) = entry {
        files.extend(m.external_files.iter().cloned());
    }
    files.into_iter().map(|f| (stamp(&f), f)).map(|(s, f)| (f, s)).collect()
}

/// A model in the listing.
#[derive(Clone)]
pub enum Entry {
    /// Serving.
    Loaded(Arc<Model>),
    /// Never loaded.
    Failed {
        /// The model's name.
        name: String,
        /// Why.
        error: String,
    },
}

impl Entry {
    /// The model's name.
    pub fn name(&self) -> &str {
        match self {
            Entry::Loaded(m) => &m.name,
            Entry::Failed { name, .. } => name,
        }
    }
}

/// What identifies a file's content cheaply: replaced files (renamed over)
/// change inode; rewritten ones change size or mtime.
/// (Also the tokens file's and the TLS files', in `http`.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

/// A file's stamp; `None` when it cannot be read.
pub fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp { inode: m.ino(), len: m.len(), modified: m.modified().ok() })
}

pub(super) fn load_entry(spec: &ModelSpec, sessions: Option<&Sessions>, cache: &Arc<Cache>) -> Entry {
    let started = std::time::Instant::now();
    // A bug that panics on some file must cost that file's load, not the
    // server (or the reload thread, and with it every later reload).
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(spec, sessions, cache.clone())))
        .unwrap_or_else(|panic| {
            Err(LoadError::Panic { model: spec.name.clone(), what: panic_message(panic.as_ref()) })
        });
    match loaded {
        Ok(m) => {
            tracing::info!(model = %m.name, path = %spec.path.display(), tensors = m.tensors.len(), bytes = m.total_bytes(),
                version = %crate::wire::short(m.version()), providers = ?m.runtime.active, ms = started.elapsed().as_millis() as u64, "model loaded");
            Entry::Loaded(Arc::new(m))
        }
        Err(e) => {
            tracing::error!(model = %spec.name, "model failed to load: {e}; it is loaded when the file is replaced (until then its routes answer 404 and /readyz 503)");
            Entry::Failed { name: spec.name.clone(), error: e.to_string() }
        }
    }
}

/// The slot's files' stamps if they changed and held still since the last
/// look (then they are loaded); `None` otherwise.
pub(super) fn settled_change(slot: &Slot, settle: std::time::Duration) -> Option<Stamps> {
    let recorded = slot.state.read().ok()?;
    let now = stamps(&slot.spec, Some(&recorded.0));
    let changed = now != recorded.1;
    // A one-file model renamed into place (a new inode) was written whole
    // before the rename: one look unchanged is enough. The settle time is
    // for files written in place and for a graph and data renamed one after
    // the other; waiting it out after a rename made a one-tensor change
    // reach 20 devices 1.74x the link's limit instead of 0.87x
    // (benches/fleet.py --link).
    let renamed_whole = match (now.as_slice(), recorded.1.as_slice()) {
        ([(_, Some(new))], [(_, Some(old))]) => new.inode != old.inode,
        _ => false,
    };
    drop(recorded);
    let mut pending = slot.pending.lock().ok()?;
    if !changed {
        *pending = None;
        return None;
    }
    match pending.as_ref() {
        Some((seen, since)) if *seen == now && (renamed_whole || since.elapsed() >= settle) => {
            *pending = None;
            Some(now)
        }
        Some((seen, _)) if *seen == now => None,
        _ => {
            *pending = Some((now, std::time::Instant::now()));
            None
        }
    }
}

/// Stamps taken before a load, completed with the external data files the
/// load found (those were read after the stamps were taken, so a change to
/// one during the load is seen at the next look).
pub(super) fn refine(spec: &ModelSpec, entry: &Entry, before: Stamps) -> Stamps {
    let mut all = stamps(spec, Some(entry));
    for (file, stamp) in &mut all {
        if let Some((_, s)) = before.iter().find(|(f, _)| f == file) {
            *stamp = s.clone();
        }
    }
    all
}

/// What a caught panic said (its `&str` or `String` payload).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
