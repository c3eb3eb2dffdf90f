//! What the updater remembers, as small JSON files written whole (temporary
//! file, fsync, rename, fsync of the folder): each kept version's state
//! (`versions/<v>/status.json`), each failed version's reason
//! (`rejected/<v>/failure.json`), and the folder's `state.json` (the last
//! manifest's ETag and signed times, the last round). The states live with
//! the versions they describe, so losing `state.json` (a power cut before
//! its folder was synced) costs one full manifest request and nothing else.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A kept version's state (RAUC's slot status, Mender's commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    /// Healthy: passed `--health` (or was switched to, without one).
    Committed,
    /// Switched to, its `--health` command not passed yet.
    Trial,
}

impl VersionState {
    /// Its name in `status` and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            VersionState::Committed => "committed",
            VersionState::Trial => "trial",
        }
    }
}

/// `versions/<v>/status.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct VersionRecord {
    pub(super) state: VersionState,
    /// Order of installation: "older than current" means a smaller number
    /// (not a clock, which can jump).
    pub(super) seq: u64,
    pub(super) installed_at_ms: u64,
    /// Probations begun on this version: a device that restarts during each
    /// of them (the version crashes it) fails the version after a few.
    #[serde(default)]
    pub(super) trials: u32,
}

/// Why a version failed, in `status` and `--json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// `--check` rejected it (or its graph did not hold together).
    Check,
    /// Its `--health` command never passed during probation.
    Health,
    /// A person rolled back from it (`weightcast rollback`).
    Rollback,
}

/// `rejected/<v>/failure.json`: a version never installed again until
/// `weightcast retry`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// The version.
    pub version: String,
    /// What failed, in words.
    pub reason: String,
    /// Which gate failed it.
    pub cause: Cause,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// How the last round ended (kept while it stays the same: a poll that
/// changes nothing writes nothing, so the flash is not worn every 30 s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRound {
    /// current, updated, rejected, rolled back or failed.
    pub status: String,
    /// The version it was about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What went wrong, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Since when rounds end this way (Unix ms).
    pub at_ms: u64,
}

/// `state.json`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct SavedState {
    /// ETag of the manifest the current version was built from.
    pub(super) etag: Option<String>,
    /// Versions refused by releases before version states (a list here);
    /// read so they stay refused, never written.
    #[serde(default, skip_serializing)]
    pub(super) rejected: Vec<String>,
    /// The newest signed publication time accepted (`--trust`): an older one
    /// is a rollback. The kept versions' signed manifests hold it too.
    #[serde(default)]
    pub(super) published_at_ms: Option<u64>,
    /// When the current manifest's signature expires: a hub still answering
    /// `304` after it has frozen.
    #[serde(default)]
    pub(super) expires_at_ms: Option<u64>,
    #[serde(default)]
    pub(super) last_round: Option<LastRound>,
}

impl SavedState {
    /// Remembers the signed times of the manifest the current version came
    /// with; the floor only rises.
    pub(super) fn signed_times(&mut self, m: &crate::wire::proto::Manifest) {
        if m.signature.is_empty() {
            self.expires_at_ms = None;
            return;
        }
        self.published_at_ms = Some(self.published_at_ms.unwrap_or(0).max(m.published_at_ms));
        self.expires_at_ms = Some(m.expires_at_ms);
    }
}

/// Reads a record; `None` when absent or unreadable (an older release's
/// folder, or a file cut by a crash before its rename).
pub(super) fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > 1 << 20 {
        return None;
    }
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Writes a record whole: a temporary file beside it, fsynced, renamed over
/// it, and the folder fsynced (the rename itself is durable).
pub(super) fn write<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let _ = fs::remove_file(&tmp); // a link planted there is removed, not followed
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    super::durable::write_synced(&tmp, &bytes)?;
    fs::rename(&tmp, path).map_err(|e| io::Error::new(e.kind(), format!("cannot save {}: {e}", path.display())))?;
    super::durable::sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub(super) use crate::wire::unix_ms;
