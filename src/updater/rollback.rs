//! A person's say over the device's versions: `weightcast rollback` (back
//! to the last committed version, never forward) and `weightcast retry`
//! (forget that a version failed).

use std::path::Path;

use super::command::run_command;
use super::layout::Dest;
use super::record::{unix_ms, Cause, Failure};

/// Why `weightcast rollback` could not roll back.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum RollbackError {
    #[error("no current version to roll back from (has `weightcast pull` installed one in this folder?)")]
    NoCurrent,
    #[error("no committed version installed before {current} is kept (keep more with pull's --keep); a version rolled back from is not rolled back to")]
    NoPrevious { current: String },
    #[error("rolled back to {to}, but --exec failed: {problem} (the rollback stands)")]
    Exec { to: String, problem: String },
    #[error("{0}")]
    Disk(#[from] std::io::Error),
}

/// Points `current` at the newest committed version installed before it,
/// records the version left as failed (never installed again until
/// `retry`), then runs `exec` for the version now current. Returns it.
pub fn rollback(dest: &Path, exec: Option<&str>) -> Result<String, RollbackError> {
    let dest = Dest::existing(dest, "weightcast rollback")?;
    let (current, current_dir) = dest.current().ok_or(RollbackError::NoCurrent)?;
    let to = dest.last_good(&current).ok_or_else(|| RollbackError::NoPrevious { current: current.clone() })?;
    dest.switch(&to.version)?;
    let failure =
        Failure { version: current, reason: "rolled back by hand".into(), cause: Cause::Rollback, at_ms: unix_ms() };
    dest.record_failure(Some(&current_dir), &failure)?;
    let mut state = dest.state();
    state.etag = None;
    dest.save_state(&state)?;
    if let Some(cmd) = exec {
        smol::block_on(run_command(cmd, &to.dir, None))
            .map_err(|e| RollbackError::Exec { to: to.version.clone(), problem: e.to_string() })?;
    }
    Ok(to.version)
}

/// Why `weightcast retry` did nothing.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum RetryError {
    #[error("{version} has not failed in this folder; failed versions: {}", if .failed.is_empty() { "none".to_string() } else { .failed.join(", ") })]
    NotFailed { version: String, failed: Vec<String> },
    #[error("{0}")]
    Disk(#[from] std::io::Error),
}

/// Forgets that `version` failed: the next round may install it again
/// (and its manifest is fetched whole, not answered 304).
pub fn retry(dest: &Path, version: &str) -> Result<(), RetryError> {
    let dest = Dest::existing(dest, "weightcast retry")?;
    if !dest.forget_failure(version)? {
        let failed = dest.failures().into_iter().map(|f| f.version).collect();
        return Err(RetryError::NotFailed { version: version.to_string(), failed });
    }
    Ok(())
}
