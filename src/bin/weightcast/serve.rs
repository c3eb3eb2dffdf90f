//! `weightcast serve`: the config and flags wired into a running server.

use std::path::PathBuf;
use std::sync::Arc;

use weightcast::config::Config;
use weightcast::demo;
use weightcast::http::{self, ServeOptions};
use weightcast::prepare::Preparation;
use weightcast::runtime::{self, LibrarySearch, Runtime};
use weightcast::store::{self, Cache, Store};

/// Why `serve` cannot listen on `addr`, and what to do.
fn cannot_listen(addr: &str, e: std::io::Error) -> String {
    use std::io::ErrorKind;
    let hint = match e.kind() {
        ErrorKind::AddrInUse => "another process listens there: stop it, or choose another port with --listen",
        ErrorKind::AddrNotAvailable => "no network interface of this machine has that address",
        ErrorKind::PermissionDenied => "ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a higher port",
        _ => "give HOST:PORT: 127.0.0.1:8080 for this machine only, 0.0.0.0:8080 for the network",
    };
    let e = e.to_string();
    let e = e.split(" (os error").next().unwrap_or(&e);
    format!("cannot listen on {addr}: {e}; {hint}")
}

/// How often model files are checked for replacement.
const RELOAD_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

pub(crate) fn serve(
    config: Option<PathBuf>,
    listen: Option<String>,
    engine: Option<String>,
    ort_lib: Option<PathBuf>,
    models: Vec<PathBuf>,
) -> Result<(), String> {
    let mut cfg = match &config {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(l) = listen {
        cfg.listen = l;
    }
    if let Some(e) = engine {
        cfg.runtime.engine = if e == "none" { runtime::Engine::None } else { runtime::Engine::Ort };
    }
    let specs = store::specs(&model_files(&cfg, models)?).map_err(|e| e.to_string())?;
    // Keys and tokens first: a mistake there must not wait for the models to load.
    let tokens = cfg.tokens_file.as_deref().map(http::Tokens::load).transpose()?;
    let tls = cfg.tls.as_ref().map(|t| http::ServerTls::load(&t.cert, &t.key)).transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let signer = match &cfg.signing_key {
        None => None,
        Some(path) => Some(weightcast::http::ManifestSigner {
            key: weightcast::wire::signature::read_secret_key(path).map_err(|e| e.to_string())?,
            validity_ms: cfg.manifest_validity_hours.max(1).saturating_mul(3_600_000),
        }),
    };
    let sessions = sessions(&cfg, ort_lib)?;
    let prepared = cfg.prepared().map_err(|e| e.to_string())?;
    let cache = cache(&cfg);
    // Before loading models: a taken port is told at once, not after minutes of loading.
    let listener = std::net::TcpListener::bind(cfg.listen.as_str()).map_err(|e| cannot_listen(&cfg.listen, e))?;
    let mut store = Store::load(&specs, sessions, cache.clone());
    store.set_reload_settle(cfg.reload_settle().map_err(|e| e.to_string())?);
    let cors = http::Cors { origins: cfg.cors_origins.clone() };
    let heartbeat = crate::process::watchdog();
    let options =
        ServeOptions { zstd_level: cfg.zstd_level, json_max_bytes: cfg.json_max_bytes, signer, cors, heartbeat };
    let fleet = fleet(&cfg, &specs, &store)?;
    let mut state = http::State::new(store, options, tokens);
    state.tls = tls;
    state.fleet = fleet.clone();
    let state = Arc::new(state);
    // The fleet thread: the table written (each device at most once a
    // second), rollout commands, new versions and stages, four times a
    // second: a staged change waits on two ticks (its start, its next
    // stage), which at one a second cost up to 2 s of a 9.4 s rollout.
    let ticking = state.clone();
    std::thread::spawn(move || loop {
        fleet.tick(&ticking.store);
        std::thread::sleep(std::time::Duration::from_millis(250));
    });
    // Encodings are prepared in the background and replaced model files
    // reloaded, while requests are served (`prepare`).
    let watched = state.clone();
    let preparation = Preparation { what: prepared, zstd_level: cfg.zstd_level, cache };
    std::thread::spawn(move || preparation.watch(&watched.store, RELOAD_CHECK));
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // On stdout, for scripts and tests that start us on port 0.
    println!("weightcast listening on {scheme}://{addr}");
    tracing::info!("listening on {scheme}://{addr}");
    let open_files = http::raise_open_files_limit();
    let max_connections = cfg.max_connections.unwrap_or_else(|| http::default_max_connections(open_files));
    tracing::info!(open_files, max_connections, "connection limits");
    // systemd `Type=notify`: ready once the models are loaded and the socket
    // listens (a no-op without $NOTIFY_SOCKET).
    // Counted, not kept: a model held here would never be released, and a
    // replaced version still held blocks the next reload.
    let (total, failed) = {
        let entries = state.store.entries();
        (entries.len(), entries.iter().filter(|e| matches!(e, store::Entry::Failed { .. })).count())
    };
    let status = format!("serving {} of {total} models on {scheme}://{addr}", total - failed);
    crate::process::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]);
    http::run(listener, state, max_connections, crate::process::stop_on_signal()?)
        .map_err(|e| format!("server stopped: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

/// The fleet table in the state folder, with each model's rollout config;
/// in memory only where there is no state folder and no rollout needs one.
fn fleet(cfg: &Config, specs: &[store::ModelSpec], store: &Store) -> Result<Arc<weightcast::fleet::Fleet>, String> {
    let mut rollouts = std::collections::HashMap::new();
    for (entry, spec) in cfg.models.iter().zip(specs) {
        if let Some(r) = &entry.rollout {
            let plan = r.plan().map_err(|e| format!("model '{}': [models.rollout] {e}", spec.name))?;
            rollouts.insert(spec.name.clone(), plan);
        }
    }
    let Some(dir) = cfg.state_folder() else {
        if !rollouts.is_empty() {
            return Err("[models.rollout] needs a state folder: set state_dir (no $HOME to default to)".into());
        }
        tracing::warn!("no state folder (no $HOME): the fleet table is kept in memory only");
        return Ok(Arc::default());
    };
    tracing::info!(dir = %dir.display(), rollouts = rollouts.len(), "state folder");
    let staged = !rollouts.is_empty();
    match weightcast::fleet::Fleet::open(dir, rollouts, store) {
        Ok(fleet) => Ok(Arc::new(fleet)),
        Err(e) if staged => Err(e),
        Err(e) => {
            tracing::warn!("{e}: the fleet table is kept in memory only (set state_dir to a writable folder)");
            Ok(Arc::default())
        }
    }
}

/// The config's models and those named on the command line; the built-in
/// demo model (written to a file) where there are none.
fn model_files(cfg: &Config, models: Vec<PathBuf>) -> Result<Vec<(Option<String>, PathBuf)>, String> {
    let mut named: Vec<(Option<String>, PathBuf)> =
        cfg.models.iter().map(|m| (m.name.clone(), m.path.clone())).collect();
    named.extend(models.into_iter().map(|p| (None, p)));
    if named.is_empty() {
        let path = demo::default_path();
        demo::write(&path).map_err(|e| format!("cannot write the demo model to {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "no model given: serving the built-in demo model");
        named.push((Some("demo".into()), path));
    }
    Ok(named)
}

/// ONNX Runtime, loaded where the engine is "ort" (the default).
fn sessions(cfg: &Config, ort_lib: Option<PathBuf>) -> Result<Option<store::Sessions>, String> {
    match cfg.runtime.engine {
        runtime::Engine::None => Ok(None),
        runtime::Engine::Ort => {
            let rt = Runtime::load(&LibrarySearch { flag: ort_lib, config: cfg.runtime.ort_lib.clone() })
                .map_err(|e| e.to_string())?;
            Ok(Some(store::Sessions { runtime: rt, options: cfg.runtime.clone() }))
        }
    }
}

/// The cache of derived bytes, with its folder on disk where one is usable.
fn cache(cfg: &Config) -> Arc<Cache> {
    Arc::new(match cfg.cache_folder() {
        None => Cache::new(cfg.cache_bytes),
        Some(dir) => {
            let dir_budget = cfg.cache_dir_bytes.unwrap_or_else(|| store::default_dir_budget(&dir));
            tracing::info!(dir = %dir.display(), bytes = dir_budget, "cache folder");
            Cache::with_disk(cfg.cache_bytes, &dir, dir_budget).unwrap_or_else(|e| {
                tracing::warn!(dir = %dir.display(), "cannot use the cache folder; derived data stays in memory: {e}");
                Cache::new(cfg.cache_bytes)
            })
        }
    })
}
