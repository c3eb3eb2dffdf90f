//! The health gate (`pull --health CMD`): a version switched to is on trial
//! until CMD exits 0, tried again until `--probation` runs out; if it never
//! passes, `current` goes back to the last committed version, `--exec` runs
//! again, and the version is recorded failed — as Mender commits an update
//! only once the device reports healthy.

use std::time::{Duration, Instant};

use super::command::{run_command, CommandError};
use super::layout::{Dest, Kept};
use super::record::{unix_ms, Cause, Failure, VersionState};
use super::{Options, Outcome, UpdateError};

/// Probations a version may begin: one that is cut short each time (the
/// device restarts, or the version crashes it) fails after this many.
const MAX_TRIALS: u32 = 3;

/// How a probation ended.
enum Verdict {
    Passed,
    Failed(String),
    /// The command cannot run: the device's fault, not the version's.
    CannotRun(String),
}

/// Runs the gate on `version`, current and on trial. `Ok(None)`: committed
/// (or no gate); `Ok(Some(RolledBack))`: failed and rolled back.
pub(super) async fn gate(opts: &Options, dest: &Dest, version: &str) -> Result<Option<Outcome>, UpdateError> {
    let Some(kept) = dest.versions().into_iter().find(|k| k.version == version) else {
        return Ok(None);
    };
    let mut record = kept.record.clone();
    let Some(cmd) = &opts.health else {
        record.state = VersionState::Committed;
        dest.set_record(version, &record)?;
        return Ok(None);
    };
    record.trials += 1;
    dest.set_record(version, &record)?;
    let verdict = if record.trials > MAX_TRIALS {
        let n = record.trials - 1;
        Verdict::Failed(format!("probation cut short {n} times (weightcast stopped, or the device restarted)"))
    } else {
        probation(cmd, &kept, opts.probation).await
    };
    match verdict {
        Verdict::Passed => {
            record.state = VersionState::Committed;
            dest.set_record(version, &record)?;
            tracing::info!(version = %crate::wire::short(version), "committed: --health passed");
            Ok(None)
        }
        Verdict::Failed(why) => {
            let reason = format!("health: {why}");
            let to = back_to_last_good(opts, dest, version).await?;
            let failure = Failure {
                version: version.to_string(),
                reason: reason.clone(),
                cause: Cause::Health,
                at_ms: unix_ms(),
            };
            dest.record_failure(Some(&kept.dir), &failure)?;
            let mut state = dest.state();
            state.etag = None;
            dest.save_state(&state)?;
            Ok(Some(Outcome::RolledBack { version: version.to_string(), to, reason }))
        }
        Verdict::CannotRun(problem) => {
            // Unknown health is not good health: back to the committed
            // version; this one stays on trial, tried again next round.
            back_to_last_good(opts, dest, version).await?;
            let mut state = dest.state();
            state.etag = None;
            dest.save_state(&state)?;
            Err(UpdateError::Device { what: "--health".into(), problem })
        }
    }
}

/// Tries `cmd` until it passes or `limit` runs out.
async fn probation(cmd: &str, kept: &Kept, limit: Duration) -> Verdict {
    let every = (limit / 5).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let started = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let left = limit.saturating_sub(started.elapsed()).max(every);
        let last = match run_command(cmd, &kept.dir, Some(left)).await {
            Ok(()) => return Verdict::Passed,
            Err(CommandError::CannotRun(problem)) => return Verdict::CannotRun(problem),
            Err(CommandError::Failed(why)) => why,
        };
        tracing::warn!(version = %crate::wire::short(&kept.version), tries, "--health: {last}");
        if started.elapsed() + every > limit {
            let plural = if tries == 1 { "try" } else { "tries" };
            return Verdict::Failed(format!("{last} after {tries} {plural} in {}s", limit.as_secs_f64().round()));
        }
        smol::Timer::after(every).await;
    }
}

/// Switches back to the last committed version (and runs `--exec` for it);
/// with none, removes `current`: a version that failed is not left running.
async fn back_to_last_good(opts: &Options, dest: &Dest, version: &str) -> Result<Option<String>, UpdateError> {
    let Some(good) = dest.last_good(version) else {
        tracing::error!(version = %crate::wire::short(version), "failed its probation and no committed version is kept: nothing is current now");
        dest.unset_current()?;
        return Ok(None);
    };
    dest.switch(&good.version)?;
    tracing::warn!(from = %crate::wire::short(version), to = %crate::wire::short(&good.version), "rolled back");
    if let Some(cmd) = &opts.exec {
        if let Err(e) = run_command(cmd, &good.dir, None).await {
            tracing::error!("rolled back, but --exec failed: {e}");
        }
    }
    Ok(Some(good.version))
}
