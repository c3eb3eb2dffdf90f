//! A staged rollout of one model's new version: which devices are offered
//! it, when the next stage opens, and when the devices' own failures halt
//! it. Pure state and rules, no clock of its own and no I/O: the fleet
//! calls it with the time and the devices it knows, and stores it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How a model's new versions reach the fleet (`[models.rollout]`, checked
/// by `config`).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Percent of the model's known devices offered the new version in each
    /// stage: rising, none 0, the last 100.
    pub stages: Vec<u8>,
    /// How long a stage's devices must all have reported the new version
    /// committed before the next stage opens.
    pub wait: Duration,
    /// Devices reporting the new version failed (or rolled back from it)
    /// that halt the rollout (at least 1).
    pub max_failures: u32,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Stages open one after another.
    Running,
    /// A person paused it: no stage opens, no device joins.
    Paused,
    /// Devices failed the candidate (or a person aborted): no device joins;
    /// those that took it keep it.
    Halted,
}

/// A device offered the candidate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Admitted {
    /// When it was first offered the candidate (Unix ms).
    pub at_ms: u64,
    /// When it first reported the candidate committed.
    pub committed_ms: Option<u64>,
}

/// One model's rollout of `candidate` in place of `stable`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollout {
    /// The version every device outside the open stages is offered.
    pub stable: String,
    /// The version rolled out.
    pub candidate: String,
    /// The open stage (index into the config's stages).
    pub stage: usize,
    /// When the rollout began, and when its open stage opened (Unix ms).
    pub started_ms: u64,
    /// When the open stage opened.
    pub stage_opened_ms: u64,
    /// Running, paused or halted.
    pub status: Status,
    /// Why it halted.
    pub halted_reason: Option<String>,
    /// Devices offered the candidate: they keep it (their rollback floor
    /// would refuse the older stable version anyway).
    pub admitted: BTreeMap<String, Admitted>,
    /// Devices that reported the candidate failed.
    pub failed: BTreeSet<String>,
    /// Each known device's place in the candidate's order (see `in_stage`).
    #[serde(skip)]
    ranks: std::collections::HashMap<String, usize>,
    /// A report changed it since [`Rollout::take_changed`] (it is written
    /// then): told by the report itself, not found by counting every
    /// admitted device at every poll.
    #[serde(skip)]
    changed: bool,
}

/// What a device is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The new version.
    Candidate,
    /// The version before it.
    Stable,
}

impl Rollout {
    /// A rollout of `candidate` begun at `now_ms`, stage 0 open.
    pub fn new(stable: String, candidate: String, now_ms: u64) -> Rollout {
        Rollout {
            stable,
            candidate,
            stage: 0,
            started_ms: now_ms,
            stage_opened_ms: now_ms,
            status: Status::Running,
            halted_reason: None,
            admitted: BTreeMap::new(),
            failed: BTreeSet::new(),
            ranks: Default::default(),
            changed: false,
        }
    }

    /// Whether the open stage offers the candidate to `device`: its share of
    /// `known` (rounded up), taken in the order of a hash of device id and
    /// candidate — the same devices at every poll, other devices for the
    /// next version. The order is kept until a new device is known
    /// (devices are only ever added), so a poll costs a lookup.
    fn in_stage(&mut self, plan: &Plan, known: &[String], device: &str) -> bool {
        let share = self.share(plan, known.len());
        self.rank(known).get(device).is_some_and(|&rank| rank < share)
    }

    fn share(&self, plan: &Plan, known: usize) -> usize {
        let percent = usize::from(plan.stages.get(self.stage).copied().unwrap_or(100));
        (known * percent).div_ceil(100)
    }

    fn rank(&mut self, known: &[String]) -> &std::collections::HashMap<String, usize> {
        if self.ranks.len() != known.len() {
            let mut ranked: Vec<([u8; 32], &String)> = known
                .iter()
                .map(|d| (Sha256::digest(format!("{}\n{d}", self.candidate).as_bytes()).into(), d))
                .collect();
            ranked.sort();
            self.ranks = ranked.into_iter().enumerate().map(|(rank, (_, d))| (d.clone(), rank)).collect();
        }
        &self.ranks
    }

    /// What `device` is offered, admitting it where the open stage takes it.
    /// `known`: every device known for the model (this one included).
    pub fn offer(&mut self, plan: &Plan, known: &[String], device: &str, now_ms: u64) -> Offer {
        if self.admitted.contains_key(device) {
            return Offer::Candidate;
        }
        if self.status != Status::Running || !self.in_stage(plan, known, device) {
            return Offer::Stable;
        }
        self.admitted.insert(device.to_string(), Admitted { at_ms: now_ms, committed_ms: None });
        Offer::Candidate
    }

    /// A device's report of `version` in `state`, and of the newest version
    /// that failed on it. Returns the reason when this report halts the rollout.
    pub fn report(
        &mut self,
        plan: &Plan,
        device: &str,
        version: Option<&str>,
        committed: bool,
        failed_version: Option<&str>,
        now_ms: u64,
    ) -> Option<String> {
        if version == Some(self.candidate.as_str()) && committed {
            if let Some(a) = self.admitted.get_mut(device).filter(|a| a.committed_ms.is_none()) {
                a.committed_ms = Some(now_ms);
                self.changed = true;
            }
        }
        if failed_version != Some(self.candidate.as_str()) || !self.failed.insert(device.to_string()) {
            return None;
        }
        self.changed = true;
        let failures = self.failed.len() as u32;
        if self.status != Status::Halted && failures >= plan.max_failures {
            let reason = format!(
                "{failures} device(s) failed version {} (max_failures = {}), the last '{device}'",
                crate::wire::short(&self.candidate),
                plan.max_failures
            );
            self.halt(reason.clone());
            return Some(reason);
        }
        None
    }

    /// Whether a report changed it since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Stops the rollout where it stands.
    pub fn halt(&mut self, reason: String) {
        self.status = Status::Halted;
        self.halted_reason = Some(reason);
    }

    /// Opens the next stage when the open one is done: its share of the
    /// devices admitted, each reporting the candidate committed, the last
    /// of them at least `wait` ago. Returns whether the rollout is complete
    /// (the last stage done: every known device admitted and committed).
    pub fn advance(&mut self, plan: &Plan, known: &[String], now_ms: u64) -> bool {
        if self.status != Status::Running {
            return false;
        }
        let share = self.share(plan, known.len());
        self.rank(known);
        let all_in = share > 0
            && self.ranks.iter().filter(|(_, &rank)| rank < share).all(|(d, _)| self.admitted.contains_key(d));
        // The last commit, if every admitted device has committed.
        let last = self.admitted.values().try_fold(None::<u64>, |last, a| a.committed_ms.map(|c| last.max(Some(c))));
        let settled = last.flatten().is_some_and(|last| now_ms.saturating_sub(last) >= plan.wait.as_millis() as u64);
        if !(all_in && settled) {
            return false;
        }
        if self.stage + 1 >= plan.stages.len() {
            return true;
        }
        self.stage += 1;
        self.stage_opened_ms = now_ms;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Plan {
        Plan { stages: vec![20, 100], wait: Duration::from_secs(3), max_failures: 1 }
    }

    fn devices(n: usize) -> Vec<String> {
        (0..n).map(|k| format!("device-{k:02}")).collect()
    }

    #[test]
    fn the_first_stage_takes_its_share_and_the_same_devices_at_every_poll() {
        let (c, known) = (config(), devices(10));
        let mut r = Rollout::new("s".into(), "c".into(), 0);
        let first: Vec<Offer> = known.iter().map(|d| r.offer(&c, &known, d, 0)).collect();
        let again: Vec<Offer> = known.iter().map(|d| r.offer(&c, &known, d, 1)).collect();
        assert_eq!(first, again);
        assert_eq!(first.iter().filter(|o| **o == Offer::Candidate).count(), 2, "20% of 10");
        // Another candidate picks other devices (not always the same two).
        let mut other = Rollout::new("s".into(), "c2".into(), 0);
        let picked: Vec<Offer> = known.iter().map(|d| other.offer(&c, &known, d, 0)).collect();
        assert_ne!(first, picked);
    }

    #[test]
    fn the_next_stage_opens_only_after_every_admitted_device_committed_for_the_wait() {
        let (c, known) = (config(), devices(10));
        let mut r = Rollout::new("s".into(), "c".into(), 0);
        let admitted: Vec<String> =
            known.iter().filter(|d| r.offer(&c, &known, d, 0) == Offer::Candidate).cloned().collect();
        assert!(!r.advance(&c, &known, 10_000) && r.stage == 0, "nobody committed yet");
        r.report(&c, &admitted[0], Some("c"), true, None, 1_000);
        assert!(!r.advance(&c, &known, 10_000) && r.stage == 0, "one of two committed");
        r.report(&c, &admitted[1], Some("c"), true, None, 2_000);
        assert!(!r.advance(&c, &known, 4_000) && r.stage == 0, "the wait has not passed");
        assert!(!r.advance(&c, &known, 5_000));
        assert_eq!(r.stage, 1);
        let all = known.iter().filter(|d| r.offer(&c, &known, d, 5_000) == Offer::Candidate).count();
        assert_eq!(all, 10);
        for d in &known {
            r.report(&c, d, Some("c"), true, None, 6_000);
        }
        assert!(r.advance(&c, &known, 9_000), "complete");
    }

    #[test]
    fn a_failure_report_halts_it_and_nobody_else_joins_but_who_took_it_keeps_it() {
        let (c, known) = (config(), devices(10));
        let mut r = Rollout::new("s".into(), "c".into(), 0);
        let admitted: Vec<String> =
            known.iter().filter(|d| r.offer(&c, &known, d, 0) == Offer::Candidate).cloned().collect();
        assert_eq!(r.report(&c, &admitted[0], Some("s"), true, Some("other"), 1), None, "another version failed");
        let halted = r.report(&c, &admitted[0], Some("s"), true, Some("c"), 2);
        assert!(halted.is_some_and(|h| h.contains("max_failures = 1")));
        assert_eq!(r.status, Status::Halted);
        assert_eq!(r.report(&c, &admitted[0], Some("s"), true, Some("c"), 3), None, "told once");
        assert_eq!(r.offer(&c, &known, &admitted[1], 4), Offer::Candidate);
        let outside = known.iter().find(|d| !admitted.contains(d)).unwrap();
        assert_eq!(r.offer(&c, &known, outside, 4), Offer::Stable);
        assert!(!r.advance(&c, &known, 99_999));
    }
}
