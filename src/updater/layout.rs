//! The updater's files under `--dest`:
//!
//! ```text
//! dest/
//!   current -> versions/<version>     symlink, swapped by rename
//!   versions/<version>/model.onnx     graph; initializers external, one file each
//!   versions/<version>/<tensor files>
//!   versions/<version>/manifest.pb    the manifest this version was built from
//!   rejected/<version>/               a version that failed its check
//!   state.json                        ETag of the last manifest, rejected versions
//!   .tmp-*/                           a version being written (removed at start)
//! ```
//!
//! A version is written in a temporary folder beside `versions/`, every file
//! and the folder fsynced, then renamed into place; `current` is replaced by
//! renaming a new symlink over it, and the folder fsynced. A crash at any
//! moment leaves `current` pointing at a complete version (or absent, before
//! the first one).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the updater remembers between rounds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct SavedState {
    /// ETag of the manifest the current version was built from.
    pub(super) etag: Option<String>,
    /// Versions that failed their check; not retried until the hub moves on.
    pub(super) rejected: Vec<String>,
    /// The signed publication time of the manifest the current version came
    /// with (`--trust`): an older one is a rollback.
    #[serde(default)]
    pub(super) published_at_ms: Option<u64>,
    /// When that manifest's signature expires: a hub still answering `304`
    /// after it has frozen.
    #[serde(default)]
    pub(super) expires_at_ms: Option<u64>,
}

impl SavedState {
    /// Remembers the signed times of the manifest the current version came with.
    pub(super) fn signed_times(&mut self, m: &crate::wire::proto::Manifest) {
        let signed = !m.signature.is_empty();
        self.published_at_ms = signed.then_some(m.published_at_ms);
        self.expires_at_ms = signed.then_some(m.expires_at_ms);
    }
}

/// Now, in ms since the Unix epoch.
pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub(super) struct Dest {
    root: PathBuf,
}

fn context(what: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Writes a file and fsyncs it.
pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path).map_err(|e| context("cannot create", path, e))?;
    f.write_all(bytes).map_err(|e| context("cannot write", path, e))?;
    f.sync_all().map_err(|e| context("cannot sync", path, e))
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path).and_then(|d| d.sync_all()).map_err(|e| context("cannot sync", path, e))
}

impl Dest {
    /// Opens (creating) `root`, and removes temporary folders a crash left.
    pub(super) fn open(root: &Path) -> io::Result<Dest> {
        if root.exists() && !root.is_dir() {
            let problem = "is a file, not a folder; --dest names the folder pull keeps versions in";
            return Err(io::Error::other(format!("{} {problem}", root.display())));
        }
        for dir in [root.to_path_buf(), root.join("versions"), root.join("rejected")] {
            fs::create_dir_all(&dir).map_err(|e| context("cannot create", &dir, e))?;
        }
        for entry in fs::read_dir(root).map_err(|e| context("cannot read", root, e))?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") {
                tracing::info!(path = %entry.path().display(), "removing an unfinished version left by an interrupted update");
                let _ = fs::remove_dir_all(entry.path());
            }
            if name == ".current.tmp" {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Dest { root: root.to_path_buf() })
    }

    /// Opens a destination `weightcast pull` made, creating nothing (for
    /// commands that only read it or move `current`).
    pub(super) fn existing(root: &Path) -> io::Result<Dest> {
        if !root.join("versions").is_dir() {
            let problem = "holds no versions: `weightcast pull URL --dest` with this folder makes it";
            return Err(io::Error::other(format!("{} {problem}", root.display())));
        }
        Ok(Dest { root: root.to_path_buf() })
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    pub(super) fn version_dir(&self, version: &str) -> PathBuf {
        self.root.join("versions").join(version)
    }

    /// The version `current` points at, and its folder.
    pub(super) fn current(&self) -> Option<(String, PathBuf)> {
        let target = fs::read_link(self.root.join("current")).ok()?;
        let version = target.file_name()?.to_str()?.to_string();
        let dir = self.version_dir(&version);
        dir.is_dir().then_some((version, dir))
    }

    /// A fresh temporary folder for a version being written.
    pub(super) fn temp_dir(&self) -> io::Result<PathBuf> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = self.root.join(format!(".tmp-{}-{nanos}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| context("cannot create", &dir, e))?;
        Ok(dir)
    }

    /// Syncs `tmp` and moves it to `versions/<version>`.
    pub(super) fn commit(&self, tmp: &Path, version: &str) -> io::Result<PathBuf> {
        sync_dir(tmp)?;
        let target = self.version_dir(version);
        if target.exists() {
            // The same version, written before (e.g. a rollback then forward):
            // the new copy is as good; keep one.
            fs::remove_dir_all(&target).map_err(|e| context("cannot replace", &target, e))?;
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

    /// Moves a version that failed its check aside.
    pub(super) fn reject(&self, tmp: &Path, version: &str) -> io::Result<PathBuf> {
        let target = self.root.join("rejected").join(version);
        let _ = fs::remove_dir_all(&target);
        fs::rename(tmp, &target).map_err(|e| context("cannot move aside", &target, e))?;
        Ok(target)
    }

    /// Committed versions, newest first.
    pub(super) fn versions(&self) -> Vec<String> {
        let mut v: Vec<(std::time::SystemTime, String)> = fs::read_dir(self.root.join("versions"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let modified = e.metadata().and_then(|m| m.modified()).ok()?;
                Some((modified, e.file_name().to_str()?.to_string()))
            })
            .collect();
        v.sort_by(|a, b| b.cmp(a));
        v.into_iter().map(|(_, name)| name).collect()
    }

    /// Removes all but the newest `keep` versions (never `current`).
    pub(super) fn prune(&self, keep: usize) {
        let current = self.current().map(|c| c.0);
        for old in self.versions().into_iter().skip(keep.max(1)) {
            if Some(&old) != current.as_ref() {
                let _ = fs::remove_dir_all(self.version_dir(&old));
            }
        }
    }

    pub(super) fn state(&self) -> SavedState {
        fs::read(self.root.join("state.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub(super) fn save_state(&self, state: &SavedState) -> io::Result<()> {
        let tmp = self.root.join("state.json.tmp");
        write_synced(&tmp, &serde_json::to_vec_pretty(state).unwrap_or_default())?;
        fs::rename(&tmp, self.root.join("state.json")).map_err(|e| context("cannot save", &tmp, e))
    }
}
