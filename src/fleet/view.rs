//! What the fleet shows: the `/v1/fleet` document (per model: versions and
//! states counted, the rollout, every device) and the `/metrics` series.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{Fleet, ModelFleet};
use crate::wire::unix_ms;

/// A device not heard from for this long is shown as not seen lately.
pub(super) const QUIET_MS: u64 = 10 * 60 * 1000;

impl Fleet {
    /// `/v1/fleet`: the models `may_read` allows, by name.
    pub fn document(&self, may_read: impl Fn(&str) -> bool) -> Value {
        let Ok(models) = self.models.lock() else { return json!({"models": []}) };
        let mut names: Vec<&String> = models.keys().filter(|n| may_read(n)).collect();
        names.sort();
        let now = unix_ms();
        let list: Vec<Value> = names.into_iter().map(|name| self.model_document(name, &models[name], now)).collect();
        json!({"now_ms": now, "quiet_after_ms": QUIET_MS, "models": list})
    }

    fn model_document(&self, name: &str, m: &ModelFleet, now: u64) -> Value {
        let mut versions: BTreeMap<(String, &str), u64> = BTreeMap::new();
        for row in m.rows.values() {
            let d = &row.device;
            *versions.entry((d.version.clone().unwrap_or_default(), d.state.name())).or_default() += 1;
        }
        let counts: Vec<Value> = versions
            .into_iter()
            .map(|((version, state), devices)| json!({"version": version, "state": state, "devices": devices}))
            .collect();
        let devices: Vec<Value> = m
            .rows
            .values()
            .map(|row| {
                let d = &row.device;
                json!({
                    "device": d.id,
                    "version": d.version,
                    "state": d.state.name(),
                    "first_seen_ms": d.first_seen_ms,
                    "last_seen_ms": d.last_seen_ms,
                    "quiet": now.saturating_sub(d.last_seen_ms) > QUIET_MS,
                    "failure": d.failure.as_ref().map(|f| json!({"version": f.version, "cause": f.cause, "reason": f.reason})),
                })
            })
            .collect();
        let rollout = m.rollout.as_ref().map(|r| {
            let config = self.rollouts.get(name);
            json!({
                "stable": r.stable,
                "candidate": r.candidate,
                "status": r.status,
                "stage": r.stage,
                "stages": config.map(|c| c.stages.clone()),
                "percent": config.and_then(|c| c.stages.get(r.stage).copied()),
                "wait_s": config.map(|c| c.wait.as_secs_f64()),
                "max_failures": config.map(|c| c.max_failures),
                "failures": r.failed.len(),
                "failed_devices": r.failed,
                "admitted": r.admitted.len(),
                "committed": r.admitted.values().filter(|a| a.committed_ms.is_some()).count(),
                "halted_reason": r.halted_reason,
                "started_ms": r.started_ms,
                "stage_opened_ms": r.stage_opened_ms,
            })
        });
        json!({
            "model": name,
            "stable": m.stable.as_ref().map(|s| s.version().to_string()),
            "staged": self.rollouts.contains_key(name),
            "rollout": rollout,
            "versions": counts,
            "devices": devices,
        })
    }

    /// `/metrics` series: devices by model, version and state; each
    /// rollout's stage, failures and whether it halted.
    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let Ok(models) = self.models.lock() else { return o };
        let mut names: Vec<&String> = models.keys().collect();
        names.sort();
        let _ = writeln!(o, "# HELP weightcast_fleet_devices Devices by the version they last reported and its state.");
        let _ = writeln!(o, "# TYPE weightcast_fleet_devices gauge");
        for name in &names {
            let mut counts: BTreeMap<(String, &str), u64> = BTreeMap::new();
            for row in models[*name].rows.values() {
                let d = &row.device;
                *counts.entry((d.version.clone().unwrap_or_default(), d.state.name())).or_default() += 1;
            }
            for ((version, state), n) in counts {
                let _ = writeln!(
                    o,
                    "weightcast_fleet_devices{{model=\"{name}\",version=\"{version}\",state=\"{state}\"}} {n}"
                );
            }
        }
        let rollouts: Vec<(&String, &super::Rollout)> =
            names.iter().filter_map(|n| models[*n].rollout.as_ref().map(|r| (*n, r))).collect();
        for (metric, help) in [
            ("weightcast_rollout_stage", "The open stage of the model's rollout (0 = the first)."),
            ("weightcast_rollout_failures", "Devices that reported the rollout's candidate failed."),
            ("weightcast_rollout_halted", "1 when the rollout halted (failures or `weightcast rollout abort`)."),
        ] {
            let _ = writeln!(o, "# HELP {metric} {help}\n# TYPE {metric} gauge");
            for (name, r) in &rollouts {
                let value = match metric {
                    "weightcast_rollout_stage" => r.stage as u64,
                    "weightcast_rollout_failures" => r.failed.len() as u64,
                    _ => u64::from(r.status == super::rollout::Status::Halted),
                };
                let _ = writeln!(o, "{metric}{{model=\"{name}\",candidate=\"{}\"}} {value}", r.candidate);
            }
        }
        o
    }
}
