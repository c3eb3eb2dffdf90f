//! The TOML config file (`configs/weightcast.toml` shows every key).
//! Unknown keys are an error: a typo must not be silently ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::runtime::SessionOptions;

/// Default listen address: loopback only; LAN exposure is a choice.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The config file (`--config`); every key has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on, `HOST:PORT`.
    pub listen: String,
    /// zstd level for `Content-Encoding: zstd` (1–22).
    pub zstd_level: i32,
    /// Bytes of derived data (casts, compressed records) kept in memory;
    /// blobs of 64 KiB or more go to `cache_dir` instead when there is one.
    pub cache_bytes: u64,
    /// Folder for derived data written once per version (zstd frames of
    /// large tensors, casts), served from maps of its files. Default:
    /// `$CACHE_DIRECTORY` (systemd's `CacheDirectory=`), else
    /// `$XDG_CACHE_HOME/weightcast/serve`, else `~/.cache/weightcast/serve`;
    /// `""`: memory only.
    pub cache_dir: Option<PathBuf>,
    /// Most bytes the cache folder may hold, least recently used files
    /// removed first. Default: a tenth of its filesystem, at most 16 GiB
    /// (any reader can make the hub derive new blobs: distinct `names=`
    /// selections wrote 1.9 GB in 2,000 requests without a bound).
    pub cache_dir_bytes: Option<u64>,
    /// How long a changed model's files (graph and external data) must hold
    /// still before it is reloaded, e.g. "2s" (the default).
    pub reload_settle: Option<String>,
    /// Largest tensor payload one JSON response may carry.
    pub json_max_bytes: u64,
    /// Representations computed in the background right after load.
    pub prepare: Vec<String>,
    /// Most connections open at once; more get a fast `503`. Default: the
    /// open-files limit (raised to its hard limit at start) less 64.
    pub max_connections: Option<usize>,
    /// Bearer tokens and the models each may read (see docs/fleet.md, "Trust");
    /// once set, every route but /healthz and /readyz needs one.
    pub tokens_file: Option<PathBuf>,
    /// Origins whose browser pages may call the API (CORS), e.g.
    /// `["https://dashboard.example"]`, or `["*"]`; default none.
    pub cors_origins: Vec<String>,
    /// Secret key file (`weightcast keygen`) that signs every manifest.
    pub signing_key: Option<PathBuf>,
    /// How long a manifest signature holds; manifests are signed again every
    /// half of it, so a device refuses a hub frozen for longer than this.
    pub manifest_validity_hours: u64,
    /// The `[tls]` table: serve HTTPS with this certificate chain and key.
    pub tls: Option<TlsFiles>,
    /// The `[runtime]` table: ONNX Runtime and its execution providers.
    pub runtime: SessionOptions,
    /// The `[[models]]` to serve, besides those named on the command line.
    pub models: Vec<ModelEntry>,
    /// Folder of the fleet table (`fleet.sqlite`) and of the versions a
    /// rollout keeps. Default: `$STATE_DIRECTORY` (systemd's
    /// `StateDirectory=`), else `$XDG_STATE_HOME/weightcast/serve`, else
    /// `~/.local/state/weightcast/serve`.
    pub state_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.to_string(),
            zstd_level: 3,
            cache_bytes: 64 << 20,
            cache_dir: None,
            cache_dir_bytes: None,
            reload_settle: None,
            json_max_bytes: 16 << 20,
            prepare: vec!["identity".into(), "zstd".into()],
            max_connections: None,
            tokens_file: None,
            cors_origins: Vec::new(),
            signing_key: None,
            manifest_validity_hours: 168,
            tls: None,
            runtime: SessionOptions::default(),
            models: Vec::new(),
            state_dir: None,
        }
    }
}

impl Config {
    /// The state folder in effect (see [`Config::state_dir`]); `None`: no
    /// home to put it in (the fleet table is then kept in memory only).
    pub fn state_folder(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.state_dir {
            return Some(dir.clone());
        }
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        env("STATE_DIRECTORY")
            .map(|d| d.join("serve"))
            .or_else(|| env("XDG_STATE_HOME").map(|d| d.join("weightcast/serve")))
            .or_else(|| env("HOME").map(|d| d.join(".local/state/weightcast/serve")))
    }

    /// The cache folder in effect (see [`Config::cache_dir`]); `None`: memory only.
    pub fn cache_folder(&self) -> Option<PathBuf> {
        match &self.cache_dir {
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(dir.clone()),
            None => {
                let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
                env("CACHE_DIRECTORY")
                    .map(|d| d.join("serve"))
                    .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("weightcast/serve")))
                    .or_else(|| env("HOME").map(|d| d.join(".cache/weightcast/serve")))
            }
        }
    }
}

/// The `[tls]` table: PEM files, re-read when they change.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A `[[models]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Defaults to the file's stem.
    pub name: Option<String>,
    /// Relative paths are relative to the config file's folder.
    pub path: PathBuf,
    /// `[models.rollout]`: a new file's version reaches the devices in
    /// stages (docs/fleet.md, "Rolling out to a fleet"); without it, all at once.
    pub rollout: Option<RolloutEntry>,
}

/// A `[models.rollout]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutEntry {
    /// Percent of the model's known devices offered a new version in each
    /// stage, rising, the last 100 (e.g. `[5, 25, 100]`).
    pub stages: Vec<u8>,
    /// How long a stage's devices must all have reported the new version
    /// committed before the next stage opens, e.g. "10m".
    pub wait: String,
    /// Devices reporting the new version failed (or rolled back from it)
    /// that halt the rollout (default 1).
    #[serde(default = "one_failure")]
    pub max_failures: u32,
}

fn one_failure() -> u32 {
    1
}

impl RolloutEntry {
    /// The rollout plan, checked: stages rise, none is 0, the last is 100.
    pub fn plan(&self) -> Result<crate::fleet::Plan, String> {
        let rising = self.stages.windows(2).all(|w| w[0] < w[1]);
        if self.stages.is_empty() || !rising || self.stages[0] == 0 || self.stages.last() != Some(&100) {
            return Err(format!("stages = {:?}: give rising percents ending at 100, e.g. [5, 25, 100]", self.stages));
        }
        if self.max_failures == 0 {
            return Err("max_failures = 0 would halt every rollout at once: give 1 or more".into());
        }
        let wait = parse_duration(&self.wait).map_err(|e| format!("wait = \"{}\": {e}", self.wait))?;
        Ok(crate::fleet::Plan { stages: self.stages.clone(), wait, max_failures: self.max_failures })
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("config {}: {source}", path.display())]
    Invalid { path: PathBuf, source: Invalid },
}

/// What is wrong inside a config file.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum Invalid {
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("zstd_level {0} is outside 1..=22")]
    ZstdLevel(i32),
    #[error(transparent)]
    Prepare(#[from] crate::encode::UnknownPrepare),
    #[error("reload_settle: {0}")]
    Settle(#[from] DurationError),
}

/// A duration that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("'{text}' {problem} (e.g. 30s, 5m)")]
pub struct DurationError {
    text: String,
    problem: &'static str,
}

/// "30s", "5m", "250ms", "1h", or a number of seconds; more than zero.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, DurationError> {
    let s = text.trim();
    let bad = |problem| DurationError { text: s.to_string(), problem };
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = num.parse().map_err(|_| bad("is not a duration"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad("has an unknown unit (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(bad("is not a duration above zero"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

impl Config {
    /// `reload_settle`, parsed ([`crate::store::RELOAD_SETTLE`] if unset).
    pub fn reload_settle(&self) -> Result<std::time::Duration, DurationError> {
        self.reload_settle.as_deref().map_or(Ok(crate::store::RELOAD_SETTLE), parse_duration)
    }

    /// The `prepare` entries, parsed.
    pub fn prepared(&self) -> Result<Vec<crate::encode::Prepared>, crate::encode::UnknownPrepare> {
        self.prepare.iter().map(|p| p.parse()).collect()
    }

    /// Reads `path`; relative paths inside it become relative to its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        let mut config =
            Config::parse(&text).map_err(|source| ConfigError::Invalid { path: path.to_path_buf(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for m in &mut config.models {
            if m.path.is_relative() {
                m.path = base.join(&m.path);
            }
        }
        let tls = config.tls.as_mut().map(|t| [&mut t.cert, &mut t.key]).into_iter().flatten();
        let paths = [
            &mut config.runtime.ort_lib,
            &mut config.tokens_file,
            &mut config.signing_key,
            &mut config.cache_dir,
            &mut config.state_dir,
        ];
        for path in paths.into_iter().flatten().chain(tls) {
            if path.is_relative() && !path.as_os_str().is_empty() {
                *path = base.join(&*path);
            }
        }
        Ok(config)
    }

    /// Parses a config's text (relative paths stay as written).
    pub fn parse(text: &str) -> Result<Config, Invalid> {
        let config: Config = toml::from_str(text)?;
        if !(1..=22).contains(&config.zstd_level) {
            return Err(Invalid::ZstdLevel(config.zstd_level));
        }
        config.prepared()?;
        config.reload_settle()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_refuse_zero_and_nonsense() {
        use std::time::Duration;
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration(" 7 ").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["0s", "-1s", "", "s", "5d", "1e400", "nan"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("5d").unwrap_err().to_string().contains("unknown unit"));
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../configs/weightcast.toml");
        let c = Config::parse(text).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN);
        // The example shows the defaults.
        let d = Config::default();
        assert_eq!((c.cache_bytes, c.zstd_level, c.json_max_bytes), (d.cache_bytes, d.zstd_level, d.json_max_bytes));
        assert_eq!((c.prepare, c.cache_dir), (d.prepare, d.cache_dir));
        assert_eq!(c.runtime.session, d.runtime.session);
        assert_eq!((c.cors_origins, c.manifest_validity_hours), (d.cors_origins, d.manifest_validity_hours));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Config::parse("listen = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err().to_string();
        assert!(e.contains("listen_port"), "{e}");
        let e = Config::parse("[runtime.cuda]\ndevice = 1\n").unwrap_err().to_string();
        assert!(e.contains("device"), "{e}");
        let e = Config::parse("[runtime]\nproviders = [\"gpu\"]\n").unwrap_err().to_string();
        assert!(e.contains("gpu"), "{e}");
        let e = Config::parse("prepare = [\"zstd+f8\"]\n").unwrap_err().to_string();
        assert!(e.contains("'f8'"), "{e}");
    }

    #[test]
    fn rollout_stages_must_rise_to_100_and_the_wait_must_parse() {
        let bad = |stages: Vec<u8>, wait: &str, max_failures| {
            RolloutEntry { stages, wait: wait.into(), max_failures }.plan().is_err()
        };
        assert!(bad(vec![50, 25, 100], "1s", 1) && bad(vec![5, 25], "1s", 1) && bad(vec![0, 100], "1s", 1));
        assert!(bad(vec![5, 100], "soon", 1) && bad(vec![5, 100], "1s", 0));
        let plan = RolloutEntry { stages: vec![5, 100], wait: "10m".into(), max_failures: 2 }.plan().unwrap();
        assert_eq!(plan.wait, std::time::Duration::from_secs(600));
    }
}
