//! What the device tells its hub with every request (`wire::report`): its
//! id, the version `current` points at and in which state, and the newest
//! version that failed here.

use super::layout::Dest;
use super::record::{Cause, VersionState};
use super::Options;
use crate::wire::report::{DeviceFailure, DeviceReport, DeviceState};

/// The device's report, read from its folder.
pub(super) fn of(opts: &Options, dest: &Dest) -> DeviceReport {
    let current = dest.current().map(|c| c.0);
    let kept = current.as_ref().and_then(|v| dest.versions().into_iter().find(|k| &k.version == v));
    let newest_failure = dest.failures().into_iter().next();
    let state = match (&current, &kept) {
        (None, _) => DeviceState::None,
        (Some(_), Some(k)) if k.record.state == VersionState::Trial => DeviceState::Trial,
        // Back on this version after a newer one failed its health here (or
        // a person rolled back from it) since this one was installed.
        (Some(_), Some(k))
            if newest_failure.as_ref().is_some_and(|f| {
                matches!(f.cause, Cause::Health | Cause::Rollback) && f.at_ms > k.record.installed_at_ms
            }) =>
        {
            DeviceState::RolledBack
        }
        (Some(_), _) => DeviceState::Committed,
    };
    let failure = newest_failure.map(|f| DeviceFailure {
        version: f.version,
        cause: match f.cause {
            Cause::Check => "check",
            Cause::Health => "health",
            Cause::Rollback => "rollback",
        }
        .to_string(),
        reason: f.reason,
    });
    DeviceReport { device: opts.device_id.clone(), version: current, state, failure }
}

/// The device's id where none is given: `/etc/machine-id` (systemd's, 32
/// hex digits, stable across reboots), else the hostname.
pub fn default_device_id() -> Option<String> {
    ["/etc/machine-id", "/proc/sys/kernel/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| crate::wire::report::valid_device_id(s))
}

/// Sends the report to a hub (`--report`, for a device pulling from a
/// registry): a `GET` of the model's manifest with `If-None-Match: *`, which
/// the hub answers with a bodiless `304`. A failure is logged, never the
/// round's: the report is not the update.
pub(super) async fn send(opts: &Options, client: &crate::net::Client, dest: &Dest, url: &http_types::Url) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let client = client.with_headers(of(opts, dest).headers());
    let problem = match client.get(url, &[("If-None-Match", "*")], 64 << 10).await {
        Ok(reply) if matches!(reply.status, 200 | 304) => return,
        Ok(reply) => format!("{url} answered {}", reply.status),
        Err(e) => e.to_string(),
    };
    match WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        false => tracing::warn!("cannot report to the hub (--report): {problem}; told once, then at debug"),
        true => tracing::debug!("cannot report to the hub (--report): {problem}"),
    }
}
