//! The fleet table on disk: SQLite (rusqlite, its bundled SQLite) in the
//! state folder, `fleet.sqlite`. The hub answers polls from memory and
//! writes here from its fleet thread, a batch per second in one
//! transaction; `weightcast rollout` reads it and leaves its commands here.
//!
//! Why SQLite: a table that survives restarts and power cuts (WAL,
//! transactions), that two processes (the hub, the `rollout` command) may
//! open at once, and that an operator can query with `sqlite3` — without a
//! server beside the hub.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::rollout::Rollout;
use super::Device;
use crate::wire::report::{DeviceFailure, DeviceState};

/// The database file in the state folder.
pub const FILE: &str = "fleet.sqlite";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devices (
    model TEXT NOT NULL, device TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
    version TEXT, state TEXT NOT NULL,
    failure_version TEXT, failure_cause TEXT, failure_reason TEXT,
    PRIMARY KEY (model, device));
CREATE TABLE IF NOT EXISTS history (
    model TEXT NOT NULL, device TEXT NOT NULL, at_ms INTEGER NOT NULL,
    version TEXT, state TEXT NOT NULL, failure_version TEXT, failure_cause TEXT, failure_reason TEXT);
CREATE INDEX IF NOT EXISTS history_by_device ON history (model, device, at_ms);
CREATE TABLE IF NOT EXISTS rollouts (model TEXT PRIMARY KEY, rollout TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stable (model TEXT PRIMARY KEY, version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commands (id INTEGER PRIMARY KEY, model TEXT NOT NULL, command TEXT NOT NULL, at_ms INTEGER NOT NULL);
";

/// An open fleet database.
pub struct Db(Connection);

/// What a `weightcast rollout` command asks of the running hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// No stage opens, no device joins, until `resume`.
    Pause,
    /// Stages open again.
    Resume,
    /// Halt for good: no device joins; a new file starts a new rollout.
    Abort,
    /// The candidate becomes the stable version: every device is offered it.
    Promote,
}

impl Command {
    /// Its name on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort => "abort",
            Command::Promote => "promote",
        }
    }

    /// The command a name names.
    pub fn parse(s: &str) -> Option<Command> {
        [Command::Pause, Command::Resume, Command::Abort, Command::Promote].into_iter().find(|c| c.name() == s)
    }
}

impl Db {
    /// Opens (creating) `STATE_DIR/fleet.sqlite`.
    pub fn open(state_dir: &Path) -> rusqlite::Result<Db> {
        let c = Connection::open(state_dir.join(FILE))?;
        // The hub and `weightcast rollout` may write at once: wait for the
        // other's transaction (a batch takes milliseconds) rather than fail.
        c.busy_timeout(std::time::Duration::from_secs(5))?;
        c.pragma_update(None, "journal_mode", "WAL")?;
        c.pragma_update(None, "synchronous", "NORMAL")?;
        c.execute_batch(SCHEMA)?;
        Ok(Db(c))
    }

    /// Every device's last report, by model.
    pub fn devices(&self) -> rusqlite::Result<Vec<(String, Device)>> {
        let mut q = self.0.prepare(
            "SELECT model, device, first_seen_ms, last_seen_ms, version, state, failure_version, failure_cause, \
             failure_reason FROM devices ORDER BY model, device",
        )?;
        let rows = q.query_map([], |r| {
            let failure = match (r.get::<_, Option<String>>(6)?, r.get::<_, Option<String>>(7)?) {
                (Some(version), Some(cause)) => {
                    Some(DeviceFailure { version, cause, reason: r.get::<_, Option<String>>(8)?.unwrap_or_default() })
                }
                _ => None,
            };
            let state: String = r.get(5)?;
            Ok((
                r.get::<_, String>(0)?,
                Device {
                    id: r.get(1)?,
                    first_seen_ms: r.get::<_, i64>(2)? as u64,
                    last_seen_ms: r.get::<_, i64>(3)? as u64,
                    version: r.get(4)?,
                    state: DeviceState::parse(&state).unwrap_or(DeviceState::None),
                    failure,
                },
            ))
        })?;
        rows.collect()
    }

    /// Writes changed devices (and, for those whose version, state or
    /// failure changed, a history row) in one transaction.
    pub fn write_devices(&mut self, changed: &[(String, Device, bool)]) -> rusqlite::Result<()> {
        let tx = self.0.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO devices VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (model, device) DO UPDATE \
                 SET last_seen_ms = ?4, version = ?5, state = ?6, failure_version = ?7, failure_cause = ?8, \
                 failure_reason = ?9",
            )?;
            let mut history = tx.prepare_cached("INSERT INTO history VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")?;
            for (model, d, news) in changed {
                let f = d.failure.as_ref();
                let (fv, fc, fr) = (f.map(|f| &f.version), f.map(|f| &f.cause), f.map(|f| &f.reason));
                upsert.execute(params![
                    model,
                    d.id,
                    d.first_seen_ms as i64,
                    d.last_seen_ms as i64,
                    d.version,
                    d.state.name(),
                    fv,
                    fc,
                    fr
                ])?;
                if *news {
                    history.execute(params![
                        model,
                        d.id,
                        d.last_seen_ms as i64,
                        d.version,
                        d.state.name(),
                        fv,
                        fc,
                        fr
                    ])?;
                }
            }
        }
        tx.commit()
    }

    /// The rollout of each model that has one.
    pub fn rollouts(&self) -> rusqlite::Result<Vec<(String, Rollout)>> {
        let mut q = self.0.prepare("SELECT model, rollout FROM rollouts")?;
        let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (model, json) = row?;
            match serde_json::from_str(&json) {
                Ok(rollout) => out.push((model, rollout)),
                Err(e) => tracing::error!(%model, "the fleet table's rollout does not read ({e}); it is dropped"),
            }
        }
        Ok(out)
    }

    /// Saves a model's rollout (`None`: it has none).
    pub fn set_rollout(&self, model: &str, rollout: Option<&Rollout>) -> rusqlite::Result<()> {
        match rollout {
            Some(r) => {
                let json = serde_json::to_string(r).unwrap_or_default();
                self.0.execute("INSERT OR REPLACE INTO rollouts VALUES (?1, ?2)", params![model, json])?;
            }
            None => {
                self.0.execute("DELETE FROM rollouts WHERE model = ?1", params![model])?;
            }
        }
        Ok(())
    }

    /// The stable version of a model under rollouts.
    pub fn stable(&self, model: &str) -> rusqlite::Result<Option<String>> {
        self.0.query_row("SELECT version FROM stable WHERE model = ?1", params![model], |r| r.get(0)).optional()
    }

    /// Sets it.
    pub fn set_stable(&self, model: &str, version: &str) -> rusqlite::Result<()> {
        self.0.execute("INSERT OR REPLACE INTO stable VALUES (?1, ?2)", params![model, version])?;
        Ok(())
    }

    /// Leaves a command for the running hub.
    pub fn command(&self, model: &str, command: Command) -> rusqlite::Result<()> {
        self.0.execute(
            "INSERT INTO commands (model, command, at_ms) VALUES (?1, ?2, ?3)",
            params![model, command.name(), crate::wire::unix_ms() as i64],
        )?;
        Ok(())
    }

    /// Commands for `model` the hub has not taken yet.
    pub fn pending(&self, model: &str) -> rusqlite::Result<i64> {
        self.0.query_row("SELECT count(*) FROM commands WHERE model = ?1", params![model], |r| r.get(0))
    }

    /// Takes the commands left since the last call, oldest first.
    pub fn take_commands(&mut self) -> rusqlite::Result<Vec<(String, Command)>> {
        // Asked four times a second: a read, and a write only for commands.
        let waiting: i64 = self.0.query_row("SELECT count(*) FROM commands", [], |r| r.get(0))?;
        if waiting == 0 {
            return Ok(Vec::new());
        }
        let tx = self.0.transaction()?;
        let commands: Vec<(String, String)> = {
            let mut q = tx.prepare("SELECT model, command FROM commands ORDER BY id")?;
            let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        tx.execute("DELETE FROM commands", [])?;
        tx.commit()?;
        Ok(commands.into_iter().filter_map(|(m, c)| Command::parse(&c).map(|c| (m, c))).collect())
    }
}
