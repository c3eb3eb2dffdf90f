//! The `weightcast` command: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use weightcast::config::Config;
use weightcast::demo;
use weightcast::encode;
use weightcast::http::{self, ServeOptions};
use weightcast::onnx::OnnxModel;
use weightcast::runtime::{self, LibrarySearch, Runtime};
use weightcast::store::{self, Cache, Store};

#[derive(Parser)]
#[command(name = "weightcast", version, about = "Serve an ONNX model's weights over HTTP")]
struct Cli {
    /// Log every request (debug level). RUST_LOG overrides.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve models' weights over HTTP (the built-in demo model when given none).
    Serve {
        /// TOML config (see configs/weightcast.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long)]
        listen: Option<String>,
        /// "ort" opens an ONNX Runtime session per model; "none" serves weights only.
        #[arg(long, value_parser = ["ort", "none"])]
        runtime: Option<String>,
        /// Path of libonnxruntime.so.
        #[arg(long)]
        ort_lib: Option<PathBuf>,
        /// Model files; each is named after its file stem.
        models: Vec<PathBuf>,
    },
    /// Print a model's tensors: name, dtype, shape, bytes, storage.
    Inspect { model: PathBuf },
    /// Write the built-in demo model to a file.
    Demo {
        /// Where to write it.
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = if cli.verbose { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},async_io=warn,polling=warn")));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let result = match cli.command {
        Command::Serve { config, listen, runtime, ort_lib, models } => serve(config, listen, runtime, ort_lib, models),
        Command::Inspect { model } => inspect(&model),
        Command::Demo { out } => demo::write(&out).map_err(|e| format!("cannot write {}: {e}", out.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weightcast: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How often model files are checked for replacement.
const RELOAD_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

fn serve(
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
    let mut named: Vec<(Option<String>, PathBuf)> =
        cfg.models.iter().map(|m| (m.name.clone(), m.path.clone())).collect();
    named.extend(models.into_iter().map(|p| (None, p)));
    if named.is_empty() {
        let path = demo::default_path();
        demo::write(&path).map_err(|e| format!("cannot write the demo model to {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "no model given: serving the built-in demo model");
        named.push((Some("demo".into()), path));
    }
    let specs = store::specs(&named)?;
    let engine = match cfg.runtime.engine {
        runtime::Engine::None => store::Engine::None,
        runtime::Engine::Ort => {
            let rt = Runtime::load(&LibrarySearch { flag: ort_lib, config: cfg.runtime.ort_lib.clone() })
                .map_err(|e| e.to_string())?;
            store::Engine::Ort(rt, cfg.runtime.clone())
        }
    };
    let prepared = cfg.prepared()?;
    let cache = Arc::new(Cache::new(cfg.cache_bytes));
    let store = Store::load(&specs, engine, cache.clone());
    let state = Arc::new(http::State {
        store,
        options: ServeOptions { zstd_level: cfg.zstd_level, json_max_bytes: cfg.json_max_bytes },
    });
    // Encodings clients will ask for are made now, in the background, not on
    // the first request (a request that comes first shares the same work);
    // then model files are watched, and a replaced file is loaded and prepared
    // while the previous version keeps serving.
    let watched = state.clone();
    let level = cfg.zstd_level;
    std::thread::spawn(move || {
        let prepare_all = |models: Vec<Arc<store::Model>>| {
            for model in &models {
                for what in &prepared {
                    let started = std::time::Instant::now();
                    let (n, from, to) = encode::prepare(model, *what, level, cache.budget());
                    if what.zstd || what.repr.is_some() || what.bytegroup {
                        tracing::info!(model = %model.name, ?what, tensors = n, bytes_in = from, bytes_out = to,
                            ms = started.elapsed().as_millis() as u64, cache_used = cache.used(), "prepared");
                    }
                }
            }
        };
        prepare_all(watched.store.models());
        loop {
            std::thread::sleep(RELOAD_CHECK);
            prepare_all(watched.store.refresh());
        }
    });
    let listener = std::net::TcpListener::bind(cfg.listen.as_str())
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // On stdout, for scripts and tests that start us on port 0.
    println!("weightcast listening on http://{addr}");
    tracing::info!("listening on http://{addr}");
    http::run(listener, state).map_err(|e| format!("server stopped: {e}"))
}

fn inspect(path: &std::path::Path) -> Result<(), String> {
    let model = OnnxModel::open(path).map_err(|e| e.to_string())?;
    let width = model.tensors.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    println!("{:<width$}  {:<14}  {:<20}  {:>12}  storage", "name", "dtype", "shape", "bytes");
    let mut total = 0;
    for t in &model.tensors {
        let shape = format!("{:?}", t.dims);
        let storage =
            if t.constant { format!("{} (Constant)", t.storage.name()) } else { t.storage.name().to_string() };
        println!("{:<width$}  {:<14}  {:<20}  {:>12}  {}", t.name, t.dtype.name(), shape, t.nbytes(), storage);
        total += t.nbytes();
    }
    println!("{} tensors, {total} bytes", model.tensors.len());
    Ok(())
}
