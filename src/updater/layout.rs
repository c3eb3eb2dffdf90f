//! The updater's folder, `--dest`:
//!
//! ```text
//! dest/
//!   .lock                             flock: one updater at a time (lock.rs)
//!   current -> versions/<version>     symlink, swapped by rename
//!   versions/<version>/model.onnx     graph; initializers external, one file each
//!   versions/<version>/tensors/…      read-only; a tensor unchanged between
//!                                     versions is one file, hard-linked
//!   versions/<version>/manifest.pb    the (signed) manifest it was built from
//!   versions/<version>/status.json    committed or on trial (record.rs)
//!   versions/<version>/engine-cache/  for TensorRT's engine cache, per version
//!   rejected/<version>/failure.json   a failed version: why, when (record.rs)
//!   state.json                        last ETag, signed times, last round
//!   .partial/<version>/               large tensors being fetched (resumed)
//!   .tmp-*/                           a version being written (removed at start)
//! ```
//!
//! A version is written in a temporary folder beside `versions/`, every file
//! and the folder fsynced, then renamed into place; `current` is replaced by
//! renaming a new symlink over it, and the folder fsynced. A crash at any
//! moment leaves `current` pointing at a complete version (or absent, before
//! the first one).
//!
//! No link under the folder is followed but `current`: a link planted at
//! `.partial`, `versions` or `rejected` made the clean-up delete another
//! folder's contents. Those are refused; links inside them are removed as
//! links (`remove_dir_all` does not follow them) or not opened (`O_NOFOLLOW`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::durable::{context, sync_dir};
use super::lock::Lock;
use super::record::{self, Failure, SavedState, VersionRecord, VersionState};

pub(super) struct Dest {
    root: PathBuf,
    _lock: Option<Lock>,
}

/// A version under `versions/`, with its state.
#[derive(Debug, Clone)]
pub(super) struct Kept {
    pub(super) version: String,
    pub(super) dir: PathBuf,
    pub(super) record: VersionRecord,
}

/// Whether `path` is a symbolic link (not followed).
fn is_link(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Whether `path` is a real folder (a link to one is not).
pub(super) fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Refuses a link where the updater keeps its own files.
fn refuse_link(path: &Path) -> io::Result<()> {
    if !is_link(path) {
        return Ok(());
    }
    let target = fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_default();
    Err(io::Error::other(format!(
        "{} is a symbolic link (to {target}); weightcast follows no link under --dest but `current`: remove it",
        path.display()
    )))
}

/// Creates `dir` and the missing folders above it, fsyncing each parent a
/// folder was created in (a power cut must not lose the folder).
fn create_dirs(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    match fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        other => other.map_err(|e| context("cannot create", dir, e))?,
    }
    sync_dir(dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

/// A folder of the updater's own under `root`: refused if a link, created if missing.
fn own_dir(path: &Path) -> io::Result<()> {
    refuse_link(path)?;
    if !path.is_dir() {
        fs::create_dir(path).map_err(|e| context("cannot create", path, e))?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

impl Dest {
    /// Opens (creating) `root` for an update, waits for its lock, and
    /// removes temporary folders a crash left. `what` names this command
    /// for a process that waits on the lock.
    pub(super) fn open(root: &Path, what: &str) -> io::Result<Dest> {
        if root.exists() && !root.is_dir() {
            let problem = "is a file, not a folder; --dest names the folder pull keeps versions in";
            return Err(io::Error::other(format!("{} {problem}", root.display())));
        }
        create_dirs(root)?;
        let lock = Lock::take(root, what)?;
        for name in ["versions", "rejected", PARTIAL_DIR] {
            own_dir(&root.join(name))?;
        }
        refuse_link(&root.join("state.json"))?;
        for entry in fs::read_dir(root).map_err(|e| context("cannot read", root, e))?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") {
                tracing::info!(path = %entry.path().display(), "removing an unfinished version left by an interrupted update");
                // A link is removed as a link: remove_dir_all does not follow it.
                let _ = fs::remove_dir_all(entry.path()).or_else(|_| fs::remove_file(entry.path()));
            }
            if name == ".current.tmp" {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Dest { root: root.to_path_buf(), _lock: Some(lock) })
    }

    /// Opens a destination `weightcast pull` made, creating nothing, and
    /// waits for its lock (`rollback`, `retry`).
    pub(super) fn existing(root: &Path, what: &str) -> io::Result<Dest> {
        let mut dest = Dest::reading(root)?;
        dest._lock = Some(Lock::take(root, what)?);
        for name in ["versions", "rejected", PARTIAL_DIR] {
            refuse_link(&root.join(name))?;
        }
        Ok(dest)
    }

    /// Opens a destination to read it only (`verify`, `status`): no lock,
    /// so it answers while a round holds it; every record is written whole.
    pub(super) fn reading(root: &Path) -> io::Result<Dest> {
        if !root.join("versions").is_dir() {
            let problem = "holds no versions: `weightcast pull URL --dest` with this folder makes it";
            return Err(io::Error::other(format!("{} {problem}", root.display())));
        }
        Ok(Dest { root: root.to_path_buf(), _lock: None })
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    pub(super) fn version_dir(&self, version: &str) -> PathBuf {
        self.root.join("versions").join(version)
    }

    fn failure_dir(&self, version: &str) -> PathBuf {
        self.root.join("rejected").join(version)
    }

    /// The version `current` points at, and its folder.
    pub(super) fn current(&self) -> Option<(String, PathBuf)> {
        let target = fs::read_link(self.root.join("current")).ok()?;
        let version = target.file_name()?.to_str()?.to_string();
        let dir = self.version_dir(&version);
        is_real_dir(&dir).then_some((version, dir))
    }

    /// A fresh temporary folder for a version being written.
    pub(super) fn temp_dir(&self) -> io::Result<PathBuf> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = self.root.join(format!(".tmp-{}-{nanos}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| context("cannot create", &dir, e))?;
        Ok(dir)
    }

    /// Syncs `tmp` and moves it to `versions/<version>`, recording it.
    pub(super) fn commit(&self, tmp: &Path, version: &str, state: VersionState) -> io::Result<PathBuf> {
        let seq = self.versions().iter().map(|k| k.record.seq).max().unwrap_or(0) + 1;
        let installed = VersionRecord { state, seq, installed_at_ms: record::unix_ms(), trials: 0 };
        record::write(&tmp.join(STATUS_FILE), &installed)?;
        sync_dir(tmp)?;
        let target = self.version_dir(version);
        if fs::symlink_metadata(&target).is_ok() {
            // The same version, written before (e.g. after a retry): the new
            // copy is as good; keep one. A link is removed as a link.
            fs::remove_dir_all(&target)
                .or_else(|_| fs::remove_file(&target))
                .map_err(|e| context("cannot replace", &target, e))?;
        }
        fs::rename(tmp, &target).map_err(|e| context("cannot move a version into", &target, e))?;
        sync_dir(&self.root.join("versions"))?;
        Ok(target)
    }

    /// Points `current` at `versions/<version>` atomically.
    pub(super) fn switch(&self, version: &str) -> io::Result<()> {
        let link = self.root.join(".current.tmp");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(Path::new("versions").join(version), &link)
            .map_err(|e| context("cannot create", &link, e))?;
        fs::rename(&link, self.root.join("current"))
            .map_err(|e| context("cannot switch", &self.root.join("current"), e))?;
        sync_dir(&self.root)
    }

    /// Removes `current`: nothing is installed.
    pub(super) fn unset_current(&self) -> io::Result<()> {
        match fs::remove_file(self.root.join("current")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => sync_dir(&self.root),
        }
    }

    /// Records that `version` failed, moving its folder (`from`: the
    /// temporary one, or its `versions/` folder once `current` has left it)
    /// to `rejected/<version>/`. Older failures keep only their record and
    /// manifest (the newest stays whole, to look at).
    pub(super) fn record_failure(&self, from: Option<&Path>, failure: &Failure) -> io::Result<PathBuf> {
        let target = self.failure_dir(&failure.version);
        if fs::symlink_metadata(&target).is_ok() {
            fs::remove_dir_all(&target).or_else(|_| fs::remove_file(&target))?;
        }
        match from {
            Some(dir) if is_real_dir(dir) => {
                fs::rename(dir, &target).map_err(|e| context("cannot move aside", &target, e))?;
                let _ = fs::remove_file(target.join(STATUS_FILE));
            }
            _ => fs::create_dir(&target).map_err(|e| context("cannot create", &target, e))?,
        }
        record::write(&target.join(FAILURE_FILE), failure)?;
        sync_dir(&self.root.join("rejected"))?;
        sync_dir(&self.root.join("versions"))?;
        for old in self.failures().iter().skip(1) {
            self.strip_failed(&old.version);
        }
        for old in self.failures().iter().skip(MAX_FAILURES) {
            let _ = fs::remove_dir_all(self.failure_dir(&old.version));
        }
        Ok(target)
    }

    /// Keeps only a failed version's record and manifest.
    fn strip_failed(&self, version: &str) {
        let dir = self.failure_dir(version);
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name != FAILURE_FILE && name != super::MANIFEST_FILE {
                let _ = fs::remove_dir_all(entry.path()).or_else(|_| fs::remove_file(entry.path()));
            }
        }
    }

    /// Forgets that `version` failed. Whether it was recorded.
    pub(super) fn forget_failure(&self, version: &str) -> io::Result<bool> {
        let dir = self.failure_dir(version);
        let recorded = fs::symlink_metadata(dir.join(FAILURE_FILE)).is_ok();
        if recorded {
            fs::remove_dir_all(&dir).map_err(|e| context("cannot remove", &dir, e))?;
            sync_dir(&self.root.join("rejected"))?;
        }
        let mut state = self.state();
        let legacy = state.rejected.len();
        state.rejected.retain(|v| v != version);
        // The hub's manifest is fetched whole next round, not answered 304.
        state.etag = None;
        self.save_state(&state)?;
        Ok(recorded || state.rejected.len() != legacy)
    }

    /// Failed versions, newest first.
    pub(super) fn failures(&self) -> Vec<Failure> {
        let mut out: Vec<Failure> = fs::read_dir(self.root.join("rejected"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| record::read::<Failure>(&e.path().join(FAILURE_FILE)))
            .collect();
        out.sort_by_key(|f| std::cmp::Reverse(f.at_ms));
        out
    }

    /// The failure recorded for `version` (also by a release before
    /// version states, in `state.json`).
    pub(super) fn failure(&self, version: &str) -> Option<Failure> {
        if let Some(f) = record::read::<Failure>(&self.failure_dir(version).join(FAILURE_FILE)) {
            return Some(f);
        }
        self.state().rejected.contains(&version.to_string()).then(|| Failure {
            version: version.to_string(),
            reason: "refused by an earlier release of weightcast".into(),
            cause: record::Cause::Check,
            at_ms: 0,
        })
    }

    /// Kept versions, newest installed first. A folder without a record (an
    /// older release's) counts as committed, ordered by its time.
    pub(super) fn versions(&self) -> Vec<Kept> {
        let mut v: Vec<Kept> = fs::read_dir(self.root.join("versions"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let version = e.file_name().to_str()?.to_string();
                let dir = e.path();
                let record = record::read::<VersionRecord>(&dir.join(STATUS_FILE)).unwrap_or_else(|| {
                    let modified = e.metadata().and_then(|m| m.modified()).ok();
                    let ms = modified
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_millis() as u64);
                    VersionRecord { state: VersionState::Committed, seq: 0, installed_at_ms: ms, trials: 0 }
                });
                Some(Kept { version, dir, record })
            })
            .collect();
        v.sort_by_key(|k| std::cmp::Reverse((k.record.seq, k.record.installed_at_ms)));
        v
    }

    /// Rewrites a kept version's record.
    pub(super) fn set_record(&self, version: &str, record: &VersionRecord) -> io::Result<()> {
        record::write(&self.version_dir(version).join(STATUS_FILE), record)
    }

    /// The version a rollback from `current` goes to: the newest committed
    /// one installed before it.
    pub(super) fn last_good(&self, current: &str) -> Option<Kept> {
        let versions = self.versions();
        let seq = versions.iter().find(|k| k.version == current).map_or(u64::MAX, |k| k.record.seq);
        versions
            .into_iter()
            .find(|k| k.version != current && k.record.state == VersionState::Committed && k.record.seq <= seq)
    }

    /// Removes all but the newest `keep` versions, never `current` nor the
    /// version a rollback would go to (the newest committed one other than
    /// current), which are kept on top of `keep` where needed.
    pub(super) fn prune(&self, keep: usize) {
        let current = self.current().map(|c| c.0).unwrap_or_default();
        let fallback = self.last_good(&current).map(|k| k.version);
        let mut left = keep.max(1);
        for kept in self.versions() {
            let needed = kept.version == current || Some(&kept.version) == fallback.as_ref();
            if needed || left > 0 {
                left = left.saturating_sub(1);
                continue;
            }
            let _ = fs::remove_dir_all(&kept.dir);
        }
    }

    pub(super) fn state(&self) -> SavedState {
        record::read(&self.root.join("state.json")).unwrap_or_default()
    }

    pub(super) fn save_state(&self, state: &SavedState) -> io::Result<()> {
        record::write(&self.root.join("state.json"), state)
    }

    /// The signed manifests of every kept and failed version (for the
    /// rollback floor: a lost `state.json` lowers nothing).
    pub(super) fn held_manifests(&self) -> Vec<crate::wire::proto::Manifest> {
        use prost::Message;
        let folders = ["versions", "rejected"].map(|f| self.root.join(f));
        folders
            .iter()
            .flat_map(|f| fs::read_dir(f).into_iter().flatten().flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let path = e.path().join(super::MANIFEST_FILE);
                let meta =
                    fs::symlink_metadata(&path).ok().filter(|m| m.is_file() && m.len() <= super::MANIFEST_LIMIT)?;
                let _ = meta;
                crate::wire::proto::Manifest::decode(fs::read(path).ok()?.as_slice()).ok()
            })
            .collect()
    }
}

/// A version's own record.
pub(super) const STATUS_FILE: &str = "status.json";
/// A failed version's record.
const FAILURE_FILE: &str = "failure.json";
/// Failure records kept (the oldest are forgotten: a version that old is
/// refused by the rollback floor anyway, with `--trust`).
const MAX_FAILURES: usize = 64;
/// The folder holding tensors being fetched, kept across rounds so a cut
/// download resumes.
pub(super) const PARTIAL_DIR: &str = ".partial";
