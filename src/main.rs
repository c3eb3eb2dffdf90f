//! The `weightcast` command: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use weightcast::config::Config;
use weightcast::demo;
use weightcast::http::{self, ServeOptions};
use weightcast::onnx::OnnxModel;
use weightcast::publish::Preparation;
use weightcast::runtime::{self, LibrarySearch, Runtime};
use weightcast::store::{self, Cache, Store};

#[derive(Parser)]
#[command(name = "weightcast", version, about = "Serve an ONNX model's weights over HTTP")]
struct Cli {
    /// Debug-level logs: every request served (serve), every request to the
    /// hub or registry (pull, push). RUST_LOG overrides.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Log lines as text, or one JSON object per line (for fleet log
    /// collectors: journald, Loki, Elasticsearch).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
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
    Inspect {
        /// The model file (.onnx), or a version folder `weightcast pull` wrote.
        model: PathBuf,
    },
    /// Keep a local copy of a model current with a hub: fetch only changed
    /// tensors, verify them, switch versions atomically.
    Pull(PullArgs),
    /// Publish a model version to an OCI registry (oci://HOST[:PORT]/REPO:TAG):
    /// one layer per tensor, named by its sha256; blobs the registry holds are
    /// not uploaded again.
    Push(PushArgs),
    /// Point `current` back at the newest committed version installed
    /// before it (never forward); the version left is recorded failed and
    /// not installed again until `weightcast retry`.
    Rollback {
        /// The folder `weightcast pull --dest` keeps.
        #[arg(long)]
        dest: PathBuf,
        /// Shell command run after the switch ($WEIGHTCAST_DIR is the
        /// version now current), as pull's --exec.
        #[arg(long)]
        exec: Option<String>,
    },
    /// What a device holds: current and its state (committed, on trial),
    /// kept versions, failed versions with their reasons, the last round.
    Status {
        /// The folder `weightcast pull --dest` keeps.
        #[arg(long)]
        dest: PathBuf,
        /// One JSON object on stdout instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Forget that a version failed on this device (its check, its health
    /// command, a rollback): the next round of `pull` may install it again.
    Retry {
        /// The folder `weightcast pull --dest` keeps.
        #[arg(long)]
        dest: PathBuf,
        /// The version, as `weightcast status` names it.
        version: String,
    },
    /// Check, offline, the version a device holds: the manifest's version
    /// formula and signature, the graph's and every tensor file's digest.
    Verify {
        /// The folder `weightcast pull --dest` keeps.
        #[arg(long)]
        dest: PathBuf,
        /// Require a manifest signed by this public key (repeatable).
        #[arg(long)]
        trust: Vec<String>,
    },
    /// Write a new Ed25519 key pair for signing manifests: PREFIX.key (secret,
    /// mode 0600: the hub's `signing_key`) and PREFIX.pub (for `pull --trust`).
    Keygen {
        /// Path prefix of the two files, e.g. /etc/weightcast/hub
        prefix: PathBuf,
    },
    /// What changed between two versions of a model: each tensor that
    /// differs, by how much (max |Δ|, relative L2), added or removed. A and B
    /// are model files or version folders (`weightcast pull`'s
    /// versions/<v>, or its --dest for the current one).
    Diff {
        /// The older version.
        a: PathBuf,
        /// The newer version.
        b: PathBuf,
        /// One JSON object on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write the built-in demo model to a file.
    Demo {
        /// Where to write it.
        out: PathBuf,
    },
}

/// Prints a line on stdout. A reader that went away (`weightcast diff A B |
/// head`) ends the command quietly with exit 0, as `inspect`'s output does,
/// where `println!` would panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("weightcast: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }};
}

/// The exit code of a command line weightcast cannot parse (sysexits'
/// EX_USAGE): apart from `pull --once`'s 2, "rejected by --check".
const USAGE_ERROR: u8 = 64;

fn main() -> ExitCode {
    return_large_buffers();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { USAGE_ERROR } else { 0 });
        }
    };
    let default = if cli.verbose { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},async_io=warn,polling=warn")));
    {
        use std::io::IsTerminal;
        // Colours only for a person at a terminal, not in journald or files.
        let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
        match cli.log_format.as_str() {
            "json" => logs.json().flatten_event(true).init(),
            _ => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        }
    }
    let result = match cli.command {
        Command::Serve { config, listen, runtime, ort_lib, models } => serve(config, listen, runtime, ort_lib, models),
        Command::Inspect { model } => inspect(&model),
        Command::Pull(args) => return pull(args),
        Command::Push(args) => push(args),
        Command::Rollback { dest, exec } => weightcast::updater::rollback(&dest, exec.as_deref())
            .map(|v| say!("current is now {v}"))
            .map_err(|e| e.to_string()),
        Command::Status { dest, json } => status(&dest, json),
        Command::Retry { dest, version } => weightcast::updater::retry(&dest, &version)
            .map(|()| say!("{version} may be installed again at the next round"))
            .map_err(|e| e.to_string()),
        Command::Demo { out } => demo::write(&out).map_err(|e| format!("cannot write {}: {e}", out.display())),
        Command::Keygen { prefix } => keygen(&prefix),
        Command::Diff { a, b, json } => diff(&a, &b, json),
        Command::Verify { dest, trust } => verify(&dest, &trust),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weightcast: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A model file, or the `model.onnx` of a version folder (or of a pull
/// destination's `current`).
fn model_file(path: &std::path::Path) -> PathBuf {
    match (path.is_dir(), path.join("current").is_dir()) {
        (true, true) => path.join("current").join("model.onnx"),
        (true, false) => path.join("model.onnx"),
        _ => path.to_path_buf(),
    }
}

fn diff(a: &std::path::Path, b: &std::path::Path, json: bool) -> Result<(), String> {
    use weightcast::onnx::stats::{self, Change};
    let open = |p: &std::path::Path| {
        let file = model_file(p);
        OnnxModel::open(&file).map_err(|e| format!("{}: {e}", file.display()))
    };
    let (old, new) = (open(a)?, open(b)?);
    let diff = stats::diff(&old.tensors, &new.tensors);
    if json {
        say!("{}", weightcast::encode::inspect::diff(&diff));
        return Ok(());
    }
    for (name, c) in &diff.tensors {
        match c {
            Change::Values { max_abs, rel_l2 } => {
                say!("changed   {name}  max|Δ| {max_abs:.6e}  relative L2 {rel_l2:.6e}")
            }
            Change::Replaced => say!("replaced  {name}  (another dtype or shape)"),
            Change::Added => say!("added     {name}"),
            Change::Removed => say!("removed   {name}"),
        }
    }
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    say!("{}, {} unchanged", plural(diff.tensors.len(), "tensor differs", "tensors differ"), diff.unchanged);
    Ok(())
}

/// A duration of at least a second (`--interval`: a device must not poll
/// its hub in a tight loop).
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!("'{s}' is under a second; a fleet polling that fast would flood its hub (e.g. 30s, 5m)"));
    }
    Ok(d)
}

/// "30s", "5m", "250ms", "1h", or a number of seconds; more than zero.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = num.parse().map_err(|_| format!("'{s}' is not a duration (e.g. 30s, 5m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("'{s}' is not a duration above zero (e.g. 30s, 5m)"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// How push and pull reach a hub or registry.
#[derive(clap::Args)]
struct ClientArgs {
    /// CA certificate (PEM) an https:// hub's or a registry's certificate
    /// must chain to; without it, the system's roots.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Deadline for each request.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    timeout: std::time::Duration,
    /// File holding USER:PASSWORD for an oci:// registry; without it, the
    /// registry's entry in Docker's config.json (~/.docker/config.json or
    /// $DOCKER_CONFIG), if any; else anonymous.
    #[arg(long)]
    registry_credentials: Option<PathBuf>,
    /// The oci:// registry speaks plain HTTP, not HTTPS (a registry on
    /// loopback or a closed network; as `oras --plain-http`).
    #[arg(long)]
    plain_http: bool,
}

/// `weightcast push`'s flags.
#[derive(clap::Args)]
struct PushArgs {
    /// The model file.
    model: PathBuf,
    /// Where to publish it: oci://HOST[:PORT]/REPOSITORY[:TAG] (HTTPS, or
    /// plain HTTP with --plain-http).
    target: String,
    /// The model's name in its manifest [default: the repository's last
    /// segment, the name `pull oci://…` expects].
    #[arg(long)]
    name: Option<String>,
    /// Sign the manifest with this secret key (from `weightcast keygen`).
    #[arg(long)]
    signing_key: Option<PathBuf>,
    /// How long the signature is valid; devices refuse the manifest after
    /// that (freeze protection): push again before it ends.
    #[arg(long, default_value = "168h", value_parser = parse_duration)]
    valid_for: std::time::Duration,
    #[command(flatten)]
    client: ClientArgs,
}

/// The client for a hub or registry URL: TLS for https (and for oci://
/// unless the host is loopback), credentials for a registry.
fn client_for(url: &str, token: Option<String>, args: &ClientArgs) -> Result<weightcast::net::Client, String> {
    use weightcast::net::{self, Client};
    use weightcast::oci;
    let ca = args.ca.as_deref();
    let origin = match url.starts_with("oci://") {
        true => oci::Reference::parse(url, args.plain_http)?.origin,
        false => url.to_string(),
    };
    let tls = match origin.split("://").next() {
        Some("http") if ca.is_some() => {
            return Err(format!("--ca is for https:// hubs and TLS registries; {url} is plain HTTP"))
        }
        Some("http") => None,
        Some("https") => Some(net::tls_config(ca)?),
        _ => return Err(format!("'{url}': give http://, https:// or oci://")),
    };
    let plain = Client { auth: None, timeout: args.timeout, tls };
    if !url.starts_with("oci://") {
        if args.registry_credentials.is_some() || args.plain_http {
            return Err("--registry-credentials and --plain-http are for oci:// registries".into());
        }
        let auth = token.map(|t| std::sync::Arc::new(net::Bearer(t)) as std::sync::Arc<dyn net::Authorizer>);
        return Ok(Client { auth, ..plain });
    }
    if token.is_some() {
        return Err("--token-file is for hubs; a registry takes --registry-credentials or Docker's config.json".into());
    }
    let host = origin.split("://").nth(1).unwrap_or_default().to_string();
    let credentials = match &args.registry_credentials {
        Some(path) => Some(oci::Credentials::from_file(path)?),
        None => oci::Credentials::from_docker_config(&host),
    };
    let auth = oci::RegistryAuth::new(&origin, credentials, plain.clone());
    Ok(Client { auth: Some(std::sync::Arc::new(auth)), ..plain })
}

fn push(a: PushArgs) -> Result<(), String> {
    use weightcast::oci;
    let reference = oci::Reference::parse(&a.target, a.client.plain_http)?;
    let client = client_for(&a.target, None, &a.client)?;
    let key = a.signing_key.as_deref().map(secret_key).transpose()?;
    let name = a.name.clone().unwrap_or_else(|| reference.model_name().to_string());
    let named = [(Some(name), a.model.clone())];
    let spec = store::specs(&named).map_err(|e| e.to_string())?.remove(0);
    let started = std::time::Instant::now();
    let model = store::load(&spec, None, std::sync::Arc::new(Cache::new(64 << 20))).map_err(|e| e.to_string())?;
    let mut manifest = weightcast::push::config(&model);
    if let Some(key) = &key {
        manifest.expires_at_ms = manifest.published_at_ms.saturating_add(a.valid_for.as_millis() as u64);
        weightcast::wire::signature::sign(&mut manifest, key);
    }
    let registry = oci::Registry::new(&reference, client);
    let pushed = smol::block_on(weightcast::push::push(&model, &manifest, &registry, &reference.reference))
        .map_err(|e| e.to_string())?;
    let ms = started.elapsed().as_millis();
    say!(
        "pushed {} version {} as {}@{}: {} of {} blobs uploaded ({} of {} bytes), {ms} ms",
        model.name,
        pushed.version,
        a.target,
        pushed.digest,
        pushed.uploaded,
        pushed.blobs,
        pushed.uploaded_bytes,
        pushed.artifact_bytes
    );
    Ok(())
}

/// `weightcast pull`'s flags.
#[derive(clap::Args)]
struct PullArgs {
    /// The model on a hub (http://hub:8080/v1/models/detector) or in an OCI
    /// registry (oci://registry:5000/team/detector:prod).
    url: String,
    /// Folder holding versions/ and the `current` symlink.
    #[arg(long)]
    dest: PathBuf,
    /// Time between polls (e.g. 30s, 5m), with ±10% random jitter.
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    interval: std::time::Duration,
    /// Do one round and exit: 0 current or updated, 1 failed, 2 rejected.
    #[arg(long)]
    once: bool,
    /// With --once: exit with this code when nothing changed.
    #[arg(long, requires = "once")]
    exit_no_change: Option<u8>,
    /// Versions kept on disk (current included; at least 1).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    keep: u16,
    /// Check a new version before switching: "ort" (load it in ONNX Runtime
    /// by path: graph, shape inference, every tensor), or a shell command ($WEIGHTCAST_DIR is the new folder).
    #[arg(long)]
    check: Option<String>,
    /// Shell command run after a switch, and after each rollback
    /// ($WEIGHTCAST_DIR is the version now current).
    #[arg(long)]
    exec: Option<String>,
    /// Shell command that says the device is healthy on a new version (exit
    /// 0), run after the switch and --exec ($WEIGHTCAST_DIR is the new
    /// folder), tried again until --probation runs out; if it never passes,
    /// `current` goes back to the last committed version and the new one is
    /// recorded failed.
    #[arg(long)]
    health: Option<String>,
    /// How long --health may take to pass.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    probation: std::time::Duration,
    /// The model this device pulls: a manifest of another model is refused
    /// [default: the name after /v1/models/ in a hub URL, the repository's
    /// last segment in an oci:// one].
    #[arg(long)]
    model: Option<String>,
    /// File holding a bearer token for the hub.
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
    /// Print one JSON object per round on stdout (for fleet tooling).
    #[arg(long)]
    json: bool,
    /// What a version holds: "onnx" (model.onnx + one file per tensor) or
    /// "safetensors" (model.safetensors).
    #[arg(long, default_value = "onnx", value_parser = ["onnx", "safetensors"])]
    format: String,
    /// Ask the hub for f16 or bf16 weights (with --format safetensors).
    #[arg(long)]
    dtype: Option<weightcast::onnx::cast::Target>,
    /// TOML config: [runtime] options for --check ort.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Path of libonnxruntime.so, for --check ort.
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Accept only manifests signed by this public key (a .pub file from
    /// `weightcast keygen`, or its 64 hex digits); repeat to trust several
    /// (key rotation). Older or expired manifests are refused too.
    #[arg(long)]
    trust: Vec<String>,
}

/// What `weightcast pull` was told, checked: the updater's options and its client.
fn pull_setup(a: &PullArgs) -> Result<(weightcast::updater::Options, weightcast::net::Client), String> {
    use weightcast::updater::{self, Check, Options};
    let url = http_types::Url::parse(&a.url).map_err(|e| format!("bad URL '{}': {e}", a.url))?;
    let cfg = match &a.config {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let check = match a.check.as_deref() {
        None => Check::None,
        Some("ort") => {
            let search = LibrarySearch { flag: a.ort_lib.clone(), config: cfg.runtime.ort_lib.clone() };
            let options = cfg.runtime.clone();
            Check::Load(std::sync::Arc::new(move |model| {
                runtime::check_model(&search, &options, model).map_err(|e| match e {
                    // The library, not the version: fix the device, try again.
                    runtime::RuntimeError::NotFound { .. } | runtime::RuntimeError::Load { .. } => {
                        updater::CheckFailure::Device(e.to_string())
                    }
                    other => updater::CheckFailure::Version(other.to_string()),
                })
            }))
        }
        Some(cmd) => Check::Command(cmd.to_string()),
    };
    let token = match &a.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?.trim().to_string(),
        ),
        None => None,
    };
    let output = if a.format == "safetensors" { updater::Output::Safetensors } else { updater::Output::Onnx };
    if output == updater::Output::Onnx && a.dtype.is_some() {
        return Err("--dtype needs --format safetensors: an ONNX graph declares its initializers' types".into());
    }
    if output == updater::Output::Safetensors && matches!(check, Check::Load(..)) {
        return Err("--check ort loads model.onnx; with --format safetensors use --check CMD".into());
    }
    if url.scheme() == "oci" && a.dtype.is_some() {
        return Err("--dtype: a registry holds the weights as pushed (push a cast model instead)".into());
    }
    let trust = a.trust.iter().map(|t| public_key(t)).collect::<Result<Vec<_>, _>>()?;
    let client = client_for(&a.url, token, &a.client)?;
    let plain_http = a.client.plain_http;
    let model = match a.model.clone().or_else(|| updater::model_of(&url)) {
        Some(model) => model,
        None => return Err(format!("cannot tell the model's name from {url}: give --model NAME")),
    };
    let opts = Options {
        url,
        model,
        health: a.health.clone(),
        probation: a.probation,
        dest: a.dest.clone(),
        keep: a.keep.into(),
        check,
        exec: a.exec.clone(),
        output,
        dtype: a.dtype,
        trust,
        plain_http,
    };
    Ok((opts, client))
}

fn pull(a: PullArgs) -> ExitCode {
    use weightcast::updater;
    let (opts, client) = match pull_setup(&a) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("weightcast: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failures = 0u32;
    loop {
        let started = std::time::Instant::now();
        let result = smol::block_on(updater::round(&opts, &client));
        let report = report(&result, started.elapsed().as_millis() as u64, a.exit_no_change.unwrap_or(0));
        if a.json {
            // A log shipper that went away does not stop the device's updates.
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{}", report.json);
        }
        if a.once {
            return ExitCode::from(report.code);
        }
        failures = if result.is_ok() { 0 } else { failures + 1 };
        std::thread::sleep(updater::next_wait(a.interval, 0.1, failures, report.retry_after));
    }
}

/// What a round of `pull` tells: logged once, and as a JSON line for `--json`.
struct Report {
    code: u8,
    retry_after: Option<std::time::Duration>,
    json: serde_json::Value,
}

fn report(
    result: &Result<weightcast::updater::Outcome, weightcast::updater::UpdateError>,
    ms: u64,
    no_change: u8,
) -> Report {
    use weightcast::updater::Outcome;
    use weightcast::wire::short;
    let (code, retry_after, json) = match result {
        Ok(Outcome::Current { version }) => {
            tracing::info!(version = version.as_deref().map(short), ms, "no change");
            (no_change, None, serde_json::json!({"status": "current", "version": version, "ms": ms}))
        }
        Ok(Outcome::Updated {
            version,
            previous,
            fetched_bytes,
            model_bytes,
            tensors_fetched,
            tensor_files,
            tensors_total,
        }) => {
            let in_graph = tensors_total.saturating_sub(*tensor_files);
            match previous {
                None => tracing::info!(version = short(version), ms, "installed: fetched {fetched_bytes} bytes for a {model_bytes}-byte model ({tensors_total} tensors: {tensor_files} in tensor files, {in_graph} inside the graph)"),
                Some(p) => {
                    let copied = match tensor_files.saturating_sub(*tensors_fetched) {
                        0 => String::new(),
                        n => format!(", the other {n} copied from the current version"),
                    };
                    tracing::info!(version = short(version), ms, "updated from {}: fetched {fetched_bytes} bytes for a {model_bytes}-byte model ({tensors_fetched} of {tensor_files} tensor files fetched{copied}; {in_graph} tensors inside the graph)", short(p));
                }
            }
            let json = serde_json::json!({
                "status": "updated", "version": version, "previous": previous, "fetched_bytes": fetched_bytes,
                "model_bytes": model_bytes, "tensors_fetched": tensors_fetched, "tensor_files": tensor_files,
                "tensors_total": tensors_total, "ms": ms});
            (0, None, json)
        }
        Ok(Outcome::Rejected { version, reason }) => {
            tracing::error!(version = short(version), "rejected: {reason}");
            (2, None, serde_json::json!({"status": "rejected", "version": version, "reason": reason}))
        }
        Ok(Outcome::RolledBack { version, to, reason }) => {
            let to_text = to.as_deref().map_or("nothing (no committed version was kept)".to_string(), |v| short(v).to_string());
            tracing::error!(version = short(version), "rolled back to {to_text}: {reason}");
            (2, None, serde_json::json!({"status": "rolled back", "version": version, "to": to, "reason": reason}))
        }
        Err(e) => {
            tracing::error!(ms, "update failed: {e}");
            (1, e.retry_after(), serde_json::json!({"status": "failed", "error": e.to_string(), "ms": ms}))
        }
    };
    Report { code, retry_after, json }
}

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
    let specs = store::specs(&named).map_err(|e| e.to_string())?;
    // Keys and tokens first: a mistake there must not wait for the models to load.
    let tokens = cfg.tokens_file.as_deref().map(http::Tokens::load).transpose()?;
    let tls = cfg.tls.as_ref().map(|t| http::ServerTls::load(&t.cert, &t.key)).transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let signer = match &cfg.signing_key {
        None => None,
        Some(path) => Some(weightcast::http::ManifestSigner {
            key: secret_key(path)?,
            validity_ms: cfg.manifest_validity_hours.max(1).saturating_mul(3_600_000),
        }),
    };
    let sessions = match cfg.runtime.engine {
        runtime::Engine::None => None,
        runtime::Engine::Ort => {
            let rt = Runtime::load(&LibrarySearch { flag: ort_lib, config: cfg.runtime.ort_lib.clone() })
                .map_err(|e| e.to_string())?;
            Some(store::Sessions { runtime: rt, options: cfg.runtime.clone() })
        }
    };
    let prepared = cfg.prepared().map_err(|e| e.to_string())?;
    let cache = Arc::new(match cfg.cache_folder() {
        None => Cache::new(cfg.cache_bytes),
        Some(dir) => Cache::with_disk(cfg.cache_bytes, &dir).unwrap_or_else(|e| {
            tracing::warn!(dir = %dir.display(), "cannot use the cache folder; derived data stays in memory: {e}");
            Cache::new(cfg.cache_bytes)
        }),
    });
    // Before loading models: a taken port is told at once, not after minutes of loading.
    let listener = std::net::TcpListener::bind(cfg.listen.as_str()).map_err(|e| cannot_listen(&cfg.listen, e))?;
    let store = Store::load(&specs, sessions, cache.clone());
    let cors = http::Cors { origins: cfg.cors_origins.clone() };
    let options = ServeOptions { zstd_level: cfg.zstd_level, json_max_bytes: cfg.json_max_bytes, signer, cors };
    let mut state = http::State::new(store, options, tokens);
    state.tls = tls;
    let state = Arc::new(state);
    // Encodings are prepared in the background and replaced model files
    // reloaded, while requests are served (`publish`).
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
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!("cannot tell systemd we are ready: {e}");
    }
    http::run(listener, state, max_connections, stop_on_signal()?).map_err(|e| format!("server stopped: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

/// `weightcast keygen PREFIX`: PREFIX.key (0600, created new: an existing
/// key is never overwritten) and PREFIX.pub.
fn keygen(prefix: &std::path::Path) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use weightcast::wire::signature;
    if prefix.is_dir() || prefix.as_os_str().to_string_lossy().ends_with('/') {
        let dir = prefix.display().to_string();
        let dir = dir.trim_end_matches('/');
        return Err(format!(
            "{dir}/ is a folder; give the two files' path prefix, e.g. {dir}/hub (writes {dir}/hub.key and {dir}/hub.pub)"
        ));
    }
    let key = signature::generate().map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let with = |ext: &str| std::path::PathBuf::from(format!("{}.{ext}", prefix.display()));
    let (secret, public) = (with("key"), with("pub"));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .and_then(|mut f| f.write_all(signature::secret_key_text(&key).as_bytes()))
        .map_err(|e| format!("cannot create {}: {e} (an existing key is not overwritten)", secret.display()))?;
    std::fs::write(&public, signature::public_key_text(&key.verifying_key()))
        .map_err(|e| format!("cannot write {}: {e}", public.display()))?;
    say!("secret key: {} (the hub's signing_key; keep it private)", secret.display());
    say!("public key: {} (weightcast pull --trust {})", public.display(), public.display());
    Ok(())
}

/// `weightcast status --dest DIR [--json]`.
fn status(dest: &std::path::Path, json: bool) -> Result<(), String> {
    let status = weightcast::updater::status(dest).map_err(|e| e.to_string())?;
    match json {
        true => say!("{}", serde_json::to_string(&status).map_err(|e| e.to_string())?),
        false => say!("{}", status.to_string().trim_end()),
    }
    Ok(())
}

/// `weightcast verify --dest DIR [--trust KEY]`.
fn verify(dest: &std::path::Path, trust: &[String]) -> Result<(), String> {
    let keys = trust.iter().map(|t| public_key(t)).collect::<Result<Vec<_>, _>>()?;
    let v = weightcast::updater::verify(dest, &keys).map_err(|e| format!("{}: not verified: {e}", dest.display()))?;
    let signed = match &v.signed_by {
        Some(key) => {
            let expired = v.expires_at_ms <= weightcast::store::unix_ms();
            format!(
                "; signed by {key}{}",
                if expired { " (signature expired since: pull would refuse it now)" } else { "" }
            )
        }
        None => String::new(),
    };
    say!("verified: model {} version {}, {} tensors match{signed}", v.model, v.version, v.tensors);
    Ok(())
}

/// The hub's secret key, from the file the config names.
///
/// Both key files hold 64 hex digits, so the files `keygen` names tell them
/// apart: a `.pub` given as the secret key is refused (signing with it would
/// make every device refuse the manifests).
fn secret_key(path: &std::path::Path) -> Result<ed25519_dalek::SigningKey, String> {
    use std::os::unix::fs::PermissionsExt;
    if path.extension().is_some_and(|e| e == "pub") {
        let secret = path.with_extension("key");
        return Err(format!(
            "{} is a public key (keygen's .pub); signing needs the secret key: {}",
            path.display(),
            secret.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read signing_key {}: {e}", path.display()))?;
    if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
        tracing::warn!(path = %path.display(), "the signing key is readable by other users; chmod 600 it");
    }
    weightcast::wire::signature::parse_secret(&text, &path.display().to_string()).map_err(|e| e.to_string())
}

/// A trusted public key: a file's contents, or the hex itself.
fn public_key(arg: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    if let Some(prefix) = arg.strip_suffix(".key") {
        let problem = "is a secret key (keygen's .key): it stays on the hub; devices trust the public key";
        return Err(format!("--trust {arg} {problem}: {prefix}.pub"));
    }
    let text = match std::fs::read_to_string(arg) {
        Ok(text) => text,
        Err(_) if arg.len() == 64 => arg.to_string(),
        Err(e) => return Err(format!("--trust {arg}: cannot read it as a file ({e}), and it is not 64 hex digits")),
    };
    weightcast::wire::signature::parse_public(&text, &format!("--trust {arg}")).map_err(|e| e.to_string())
}

/// Responses allocate and free large buffers (a window of a cast, a piece
/// of a frame read from the cache folder) on many threads (the blocking
/// pool). glibc gives each thread an arena, up to 8 per core, and freed
/// memory stays in them: 8 concurrent zstd downloads of a 1 GB model left
/// +91 MiB resident. Two arenas hold that to +15 MiB at the same throughput
/// (a fixed 128 KiB mmap threshold did too, but cost 40% of zstd throughput
/// in page faults); measured with benches/memory.py.
fn return_large_buffers() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called first thing in
    // main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// A channel closed at the first SIGTERM or SIGINT (systemd's stop, Ctrl-C):
/// the server then drains and `serve` exits 0.
fn stop_on_signal() -> Result<smol::channel::Receiver<()>, String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot handle SIGTERM/SIGINT: {e}"))?;
    let (tx, rx) = smol::channel::bounded(1);
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let name = if signal == SIGTERM { "SIGTERM" } else { "SIGINT" };
            tracing::info!(signal = name, "asked to stop");
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            tx.close();
        }
    });
    Ok(rx)
}

fn inspect(path: &std::path::Path) -> Result<(), String> {
    let path = &model_file(path);
    let model = OnnxModel::open(path).map_err(|e| match e {
        weightcast::onnx::OnnxError::Tensor { .. } => format!("{}: {e}", path.display()),
        other => other.to_string(),
    })?;
    match print_tensors(&model) {
        // `inspect m.onnx | head` closes the pipe early: that is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| format!("cannot write to stdout: {e}")),
    }
}

/// The table `inspect` prints; names with control characters are escaped,
/// so a hostile name cannot move the cursor or recolour the terminal.
fn print_tensors(model: &OnnxModel) -> std::io::Result<()> {
    use std::io::Write;
    let printable = |name: &str| -> String {
        name.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
    };
    let names: Vec<String> = model.tensors.iter().map(|t| printable(&t.name)).collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(4).max(4);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<width$}  {:<14}  {:<20}  {:>12}  storage", "name", "dtype", "shape", "bytes")?;
    let mut total = 0;
    for (t, name) in model.tensors.iter().zip(&names) {
        let shape = format!("{:?}", t.dims);
        let storage =
            if t.constant { format!("{} (Constant)", t.storage.name()) } else { t.storage.name().to_string() };
        writeln!(out, "{name:<width$}  {:<14}  {:<20}  {:>12}  {storage}", t.dtype.name(), shape, t.nbytes())?;
        total += t.nbytes();
    }
    writeln!(out, "{} tensors, {total} bytes", model.tensors.len())?;
    out.flush()
}
