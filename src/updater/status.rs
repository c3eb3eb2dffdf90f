//! `weightcast status`: what a device holds — current and its state, every
//! kept version, every failed version with its reason, the last round.

use std::path::Path;

use prost::Message;
use serde::Serialize;

use super::layout::Dest;
use super::record::{Failure, LastRound};
use super::MANIFEST_FILE;

/// A kept version in [`Status`].
#[derive(Debug, Serialize)]
pub struct KeptVersion {
    /// The version.
    pub version: String,
    /// Committed or on trial.
    pub state: &'static str,
    /// When it was installed (Unix ms).
    pub installed_at_ms: u64,
}

/// What `weightcast status` shows (and `--json` prints).
#[derive(Debug, Serialize)]
pub struct Status {
    /// The folder.
    pub dest: String,
    /// The model its current version is of.
    pub model: Option<String>,
    /// The version `current` points at.
    pub current: Option<String>,
    /// Its state.
    pub state: Option<&'static str>,
    /// Kept versions, newest installed first.
    pub versions: Vec<KeptVersion>,
    /// Failed versions, newest first: never installed again until `retry`.
    pub rejected: Vec<Failure>,
    /// How the last round ended, and since when.
    pub last_round: Option<LastRound>,
}

/// Reads the state of the folder `pull --dest` keeps (no lock: it answers
/// while a round runs; every record is written whole).
pub fn status(dest: &Path) -> std::io::Result<Status> {
    let dest = Dest::reading(dest)?;
    let current = dest.current();
    let versions = dest.versions();
    let state_of = |v: &str| versions.iter().find(|k| k.version == v).map(|k| k.record.state.name());
    let model = current
        .as_ref()
        .and_then(|(_, dir)| std::fs::read(dir.join(MANIFEST_FILE)).ok())
        .and_then(|b| crate::wire::proto::Manifest::decode(b.as_slice()).ok())
        .map(|m| m.model);
    let saved = dest.state();
    let mut rejected = dest.failures();
    let legacy: Vec<Failure> = saved
        .rejected
        .iter()
        .filter(|v| !rejected.iter().any(|f| &f.version == *v))
        .filter_map(|v| dest.failure(v))
        .collect();
    rejected.extend(legacy);
    Ok(Status {
        dest: dest.root().display().to_string(),
        model,
        state: current.as_ref().and_then(|(v, _)| state_of(v)),
        current: current.map(|c| c.0),
        versions: versions
            .iter()
            .map(|k| KeptVersion {
                version: k.version.clone(),
                state: k.record.state.name(),
                installed_at_ms: k.record.installed_at_ms,
            })
            .collect(),
        rejected,
        last_round: saved.last_round,
    })
}

fn when(ms: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}: model {}", self.dest, self.model.as_deref().unwrap_or("(none installed)"))?;
        match (&self.current, self.state) {
            (Some(v), Some(s)) => writeln!(f, "current: {v} ({s})")?,
            _ => writeln!(f, "current: none")?,
        }
        writeln!(f, "kept versions ({}):", self.versions.len())?;
        for k in &self.versions {
            let mark = if Some(&k.version) == self.current.as_ref() { "*" } else { " " };
            writeln!(f, " {mark} {}  {:<9}  installed {}", k.version, k.state, when(k.installed_at_ms))?;
        }
        writeln!(f, "failed versions ({}), never installed again until `weightcast retry`:", self.rejected.len())?;
        for r in &self.rejected {
            writeln!(f, "   {}  {}  ({})", r.version, r.reason, when(r.at_ms))?;
        }
        match &self.last_round {
            Some(r) => {
                let about = r.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
                let error = r.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
                writeln!(f, "last round: {}{about}{error} (since {})", r.status, when(r.at_ms))
            }
            None => writeln!(f, "last round: none recorded"),
        }
    }
}
