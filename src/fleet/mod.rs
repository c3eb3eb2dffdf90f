//! The hub's view of its fleet: every device's last report per model (the
//! fleet table), and each model's staged rollout — which version each
//! device is offered.
//!
//! Devices report on their requests (`wire::report`); the poll is answered
//! from memory, and the fleet thread ([`Fleet::tick`], four times a second)
//! writes what changed to SQLite, takes `weightcast rollout` commands,
//! starts a rollout when a model's file holds a new version, and opens
//! stages. Rooms: [`rollout`] (the rules), [`db`] (the table on disk),
//! `kept` (versions kept in the state folder), `view` (`/v1/fleet` and
//! `/metrics`).

pub mod db;
mod kept;
pub mod rollout;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::store::{Model, Store};
use crate::wire::report::{DeviceFailure, DeviceReport, DeviceState};
use crate::wire::{short, unix_ms};
pub use rollout::{Plan, Rollout};

/// Most devices kept per model (a device is about 300 bytes in memory).
pub const MAX_DEVICES: usize = 100_000;

/// A device's last report for one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// Its id (`pull --device-id`).
    pub id: String,
    /// When it first and last reported (Unix ms).
    pub first_seen_ms: u64,
    /// See `first_seen_ms`.
    pub last_seen_ms: u64,
    /// The version it runs.
    pub version: Option<String>,
    /// What that version is to it.
    pub state: DeviceState,
    /// The newest version that failed on it.
    pub failure: Option<DeviceFailure>,
}

/// A device's row, and what the database has not seen of it.
struct Row {
    device: Device,
    /// When it was last written (a device polling every second is written
    /// at most once a second).
    written_ms: u64,
    /// Changed since written.
    dirty: bool,
    /// Its version, state or failure changed since written: a history row.
    news: bool,
}

/// One model's devices and rollout.
#[derive(Default)]
struct ModelFleet {
    rows: BTreeMap<String, Row>,
    /// Device ids in the order first seen (a rollout ranks them).
    ids: Vec<String>,
    /// The version offered outside a rollout's open stages (models with
    /// `[models.rollout]` only).
    stable: Option<Arc<Model>>,
    rollout: Option<Rollout>,
    /// The rollout changed since written.
    rollout_dirty: bool,
}

/// Rows and rollouts to write: (model, device, whether a history row too),
/// and (model, its rollout or none).
struct Batch {
    changed: Vec<(String, Device, bool)>,
    rollouts: Vec<(String, Option<Rollout>)>,
}

/// The fleet: devices and rollouts of every model.
pub struct Fleet {
    /// `state_dir`: the database and the kept versions; `None`: memory only.
    state_dir: Option<PathBuf>,
    db: Mutex<Option<db::Db>>,
    models: Mutex<HashMap<String, ModelFleet>>,
    /// `[models.rollout]` by model, with its parsed wait.
    rollouts: HashMap<String, Plan>,
}

impl Default for Fleet {
    /// A fleet kept in memory only, without rollouts.
    fn default() -> Fleet {
        Fleet { state_dir: None, db: Mutex::new(None), models: Mutex::new(HashMap::new()), rollouts: HashMap::new() }
    }
}

impl Fleet {
    /// The fleet kept in `state_dir` (created), with each model's rollout
    /// config; its table and rollouts as the last run left them.
    pub fn open(state_dir: PathBuf, rollouts: HashMap<String, Plan>, store: &Store) -> Result<Fleet, String> {
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| format!("cannot create the state folder {}: {e}", state_dir.display()))?;
        let what = |e: rusqlite::Error| format!("cannot open the fleet table in {}: {e}", state_dir.display());
        let db = db::Db::open(&state_dir).map_err(what)?;
        let mut models: HashMap<String, ModelFleet> = HashMap::new();
        for (model, device) in db.devices().map_err(what)? {
            let m = models.entry(model).or_default();
            m.ids.push(device.id.clone());
            m.rows.insert(device.id.clone(), Row { device, written_ms: 0, dirty: false, news: false });
        }
        for (model, rollout) in db.rollouts().map_err(what)? {
            models.entry(model).or_default().rollout = Some(rollout);
        }
        for name in rollouts.keys() {
            let m = models.entry(name.clone()).or_default();
            let Some(version) = db.stable(name).map_err(what)? else { continue };
            m.stable = match store.get(name).filter(|c| c.version() == version) {
                Some(current) => Some(current),
                None => match kept::load(&state_dir, name, &version, store.shared_cache()) {
                    Ok(model) => Some(Arc::new(model)),
                    Err(e) => {
                        tracing::error!(model = %name, "the stable version {} is lost ({e}); the current file's version is stable now", short(&version));
                        m.rollout = None;
                        None
                    }
                },
            };
            if let Some(r) = &m.rollout {
                tracing::info!(model = %name, stable = %short(&r.stable), candidate = %short(&r.candidate),
                    stage = r.stage, status = ?r.status, "rollout taken up again");
            }
        }
        Ok(Fleet { state_dir: Some(state_dir), db: Mutex::new(Some(db)), models: Mutex::new(models), rollouts })
    }

    /// Takes a device's report for `model` (from a poll the token may read).
    pub fn report(&self, model: &str, report: &DeviceReport) {
        let now = unix_ms();
        let Ok(mut models) = self.models.lock() else { return };
        let m = models.entry(model.to_string()).or_default();
        if !m.rows.contains_key(&report.device) {
            // Anyone who may read the model may report: the table is bounded.
            if m.rows.len() >= MAX_DEVICES {
                tracing::warn!(%model, "a new device is not kept: the fleet table holds {MAX_DEVICES} devices of this model already");
                return;
            }
            m.ids.push(report.device.clone());
        }
        let row = m.rows.entry(report.device.clone()).or_insert_with(|| Row {
            device: Device {
                id: report.device.clone(),
                first_seen_ms: now,
                last_seen_ms: now,
                version: None,
                state: DeviceState::None,
                failure: None,
            },
            written_ms: 0,
            dirty: true,
            news: true,
        });
        let d = &mut row.device;
        d.last_seen_ms = now;
        row.dirty = true;
        // Most polls report what the last one did: nothing copied then.
        if d.version != report.version || d.state != report.state || d.failure != report.failure {
            d.version = report.version.clone();
            d.state = report.state;
            d.failure = report.failure.clone();
            row.news = true;
        }
        let (Some(rollout), Some(plan)) = (m.rollout.as_mut(), self.rollouts.get(model)) else { return };
        let committed = report.state == DeviceState::Committed;
        let failed = report.failure.as_ref().map(|f| f.version.as_str());
        if let Some(halted) = rollout.report(plan, &report.device, report.version.as_deref(), committed, failed, now) {
            tracing::error!(%model, candidate = %short(&rollout.candidate), "rollout halted: {halted}; devices that took it keep it, no other device is offered it");
        }
        m.rollout_dirty |= rollout.take_changed();
    }

    /// The version to serve `device` (`None`: not a device) of `model`,
    /// whose file holds `current`: `Some` where its rollout offers it the
    /// stable version instead.
    pub fn offer(&self, model: &str, current: &Arc<Model>, device: Option<&str>) -> Option<Arc<Model>> {
        let plan = self.rollouts.get(model)?;
        let mut models = self.models.lock().ok()?;
        let m = models.get_mut(model)?;
        let stable = m.stable.clone()?;
        if stable.version() == current.version() {
            return None;
        }
        // A new file the fleet thread has not taken up yet: stable for all
        // until its rollout begins (within a second).
        let Some(rollout) = m.rollout.as_mut().filter(|r| r.candidate == current.version()) else {
            return Some(stable);
        };
        let Some(device) = device else { return Some(stable) };
        let before = rollout.admitted.len();
        let offer = rollout.offer(plan, &m.ids, device, unix_ms());
        m.rollout_dirty |= rollout.admitted.len() != before;
        match offer {
            rollout::Offer::Candidate => None,
            rollout::Offer::Stable => Some(stable),
        }
    }

    /// The stable versions held beside the models' files (their blobs are
    /// served too).
    pub fn stable_models(&self) -> Vec<Arc<Model>> {
        let Ok(models) = self.models.lock() else { return Vec::new() };
        models.values().filter_map(|m| m.stable.clone()).collect()
    }

    /// The fleet thread's work, four times a second: commands, new versions,
    /// stages, and the table written.
    pub fn tick(&self, store: &Store) {
        let now = unix_ms();
        let commands = self.with_db(|db| db.take_commands()).unwrap_or_default();
        // A version the fleet has not seen is kept in the state folder
        // before the table is locked: writing a model takes seconds (hundreds
        // of MB), and every poll takes that lock.
        let mut copies = HashMap::new();
        for name in self.rollouts.keys() {
            if let Some(current) = store.get(name).filter(|c| !self.seen(name, c.version())) {
                self.keep(&current);
                // The stable version stays offered beside the new one from its
                // own copy in the state folder, not the store's: the store
                // takes no newer file while the version before its current
                // one is still held (three versions at most), so holding the
                // store's copy kept a third file from ever loading.
                if let Some(copy) = self.stable_copy(name, store) {
                    copies.insert(name.clone(), copy);
                }
            }
        }
        let Ok(mut models) = self.models.lock() else { return };
        for (model, command) in commands {
            match models.get_mut(&model) {
                Some(m) => self.command(&model, m, command, store),
                None => tracing::warn!(%model, "rollout {}: no such model here", command.name()),
            }
        }
        for (name, plan) in &self.rollouts {
            let Some(current) = store.get(name) else { continue };
            let m = models.entry(name.clone()).or_default();
            self.take_up(name, m, &current, copies.remove(name));
            if let Some(r) = m.rollout.as_mut() {
                let stage = r.stage;
                if r.advance(plan, &m.ids, now) {
                    tracing::info!(model = %name, version = %short(current.version()), "rollout complete: every device runs it; it is the stable version now");
                    self.promote(name, m, current.clone());
                } else if r.stage != stage {
                    m.rollout_dirty = true;
                    tracing::info!(model = %name, candidate = %short(&r.candidate), stage = r.stage,
                        percent = plan.stages[r.stage], "rollout: the next stage opens");
                }
            }
        }
        let batch = self.batch(&mut models, now);
        drop(models);
        // Written with the table unlocked: polls never wait on the disk.
        self.write(batch);
    }

    /// The stable version of `name` loaded from the state folder (`None`:
    /// none yet, or it does not load: the store's copy is kept then).
    fn stable_copy(&self, name: &str, store: &Store) -> Option<Arc<Model>> {
        let version = self.models.lock().ok()?.get(name)?.stable.as_ref()?.version().to_string();
        let dir = self.state_dir.as_ref()?;
        kept::load(dir, name, &version, store.shared_cache())
            .map(Arc::new)
            .map_err(|e| {
                tracing::error!(
                    model = name,
                    "cannot load the stable version's copy ({e}); a newer file waits until this rollout ends"
                )
            })
            .ok()
    }

    /// Whether `version` of `name` is its stable version or its candidate.
    fn seen(&self, name: &str, version: &str) -> bool {
        let Ok(models) = self.models.lock() else { return true };
        models.get(name).is_some_and(|m| {
            m.stable.as_ref().is_some_and(|s| s.version() == version)
                || m.rollout.as_ref().is_some_and(|r| r.candidate == version)
        })
    }

    /// A model's file holding a version the fleet has not seen: the first
    /// becomes stable; a later one, the candidate of a new rollout.
    fn take_up(&self, name: &str, m: &mut ModelFleet, current: &Arc<Model>, stable_copy: Option<Arc<Model>>) {
        let version = current.version();
        let Some(stable) = m.stable.clone() else {
            self.with_db(|db| db.set_stable(name, version));
            m.stable = Some(current.clone());
            return;
        };
        if stable.version() == version {
            if let Some(r) = m.rollout.take() {
                tracing::warn!(model = name, candidate = %short(&r.candidate), "the file holds the stable version again: the rollout ends");
                m.rollout_dirty = true;
            }
            return;
        }
        if m.rollout.as_ref().is_some_and(|r| r.candidate == version) {
            return;
        }
        if let (Some(dir), Some(old)) = (&self.state_dir, &m.rollout) {
            tracing::warn!(model = name, replaced = %short(&old.candidate), "a new file replaces the candidate: a new rollout begins");
            kept::prune(dir, name, &[stable.version(), version]);
        }
        if let Some(copy) = stable_copy.filter(|c| c.version() == stable.version()) {
            m.stable = Some(copy);
        }
        tracing::info!(model = name, stable = %short(stable.version()), candidate = %short(version), "rollout begins");
        m.rollout = Some(Rollout::new(stable.version().to_string(), version.to_string(), unix_ms()));
        m.rollout_dirty = true;
    }

    /// The candidate becomes the stable version.
    fn promote(&self, name: &str, m: &mut ModelFleet, current: Arc<Model>) {
        self.with_db(|db| db.set_stable(name, current.version()));
        if let Some(dir) = &self.state_dir {
            kept::prune(dir, name, &[current.version()]);
        }
        m.stable = Some(current);
        m.rollout = None;
        m.rollout_dirty = true;
    }

    fn command(&self, name: &str, m: &mut ModelFleet, command: db::Command, store: &Store) {
        let Some(r) = m.rollout.as_mut() else {
            tracing::warn!(model = name, "rollout {}: no rollout is under way", command.name());
            return;
        };
        use rollout::Status;
        match command {
            db::Command::Pause if r.status == Status::Running => r.status = Status::Paused,
            db::Command::Resume if r.status == Status::Paused => r.status = Status::Running,
            db::Command::Abort => r.halt("aborted by `weightcast rollout abort`".into()),
            db::Command::Promote => match store.get(name).filter(|c| c.version() == r.candidate) {
                Some(current) => {
                    tracing::info!(model = name, version = %short(&r.candidate), "rollout promoted: every device is offered it");
                    self.promote(name, m, current);
                    return;
                }
                None => tracing::warn!(model = name, "rollout promote: the file no longer holds the candidate"),
            },
            other => {
                tracing::warn!(model = name, status = ?r.status, "rollout {}: nothing to do", other.name());
                return;
            }
        }
        tracing::info!(model = name, status = ?r.status, "rollout {}", command.name());
        m.rollout_dirty = true;
    }

    fn keep(&self, model: &Model) {
        if let Some(dir) = &self.state_dir {
            if let Err(e) = kept::keep(dir, model) {
                tracing::error!(model = %model.name, version = %short(model.version()), "cannot keep the version in the state folder ({e}); a restart during its rollout would lose it");
            }
        }
    }

    /// What changed since the last write: devices at most once a second
    /// each, rollouts.
    fn batch(&self, models: &mut HashMap<String, ModelFleet>, now: u64) -> Batch {
        let mut changed = Vec::new();
        for (name, m) in models.iter_mut() {
            for row in m.rows.values_mut().filter(|r| r.dirty && now.saturating_sub(r.written_ms) >= 1000) {
                changed.push((name.clone(), row.device.clone(), row.news));
                (row.dirty, row.news, row.written_ms) = (false, false, now);
            }
        }
        let rollouts: Vec<(String, Option<Rollout>)> = models
            .iter_mut()
            .filter(|(_, m)| m.rollout_dirty)
            .map(|(name, m)| {
                m.rollout_dirty = false;
                (name.clone(), m.rollout.clone())
            })
            .collect();
        Batch { changed, rollouts }
    }

    fn write(&self, Batch { changed, rollouts }: Batch) {
        if changed.is_empty() && rollouts.is_empty() {
            return;
        }
        self.with_db(|db| {
            db.write_devices(&changed)?;
            for (name, r) in &rollouts {
                db.set_rollout(name, r.as_ref())?;
            }
            Ok(())
        });
    }

    fn with_db<T>(&self, f: impl FnOnce(&mut db::Db) -> rusqlite::Result<T>) -> Option<T> {
        let mut db = self.db.lock().ok()?;
        let db = db.as_mut()?;
        f(db).map_err(|e| tracing::error!("the fleet table: {e}")).ok()
    }
}
