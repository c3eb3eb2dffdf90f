//! The command line's grammar: every command and flag, with its help.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use weightcast::config::parse_duration;

#[derive(Parser)]
#[command(name = "weightcast", version, about = "Serve an ONNX model's weights over HTTP")]
pub(crate) struct Cli {
    /// Debug-level logs: every request served (serve), every request to the
    /// hub or registry (pull, push). RUST_LOG overrides.
    #[arg(short, long, global = true)]
    pub(crate) verbose: bool,
    /// Log lines as text, or one JSON object per line (for fleet log
    /// collectors: journald, Loki, Elasticsearch).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub(crate) log_format: String,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    Pull(Box<PullArgs>),
    /// Publish a model version to an OCI registry (oci://HOST[:PORT]/REPO:TAG):
    /// one layer per tensor, named by its sha256; blobs the registry holds are
    /// not uploaded again.
    Push(PushArgs),
    /// See and steer a model's staged rollout on this hub: status, pause,
    /// resume, abort (no further device is offered the new version) or
    /// promote (every device is). Acts on the hub's state folder; the
    /// running hub follows within a second.
    Rollout {
        /// status, pause, resume, abort or promote.
        #[arg(value_parser = ["status", "pause", "resume", "abort", "promote"])]
        action: String,
        /// The model (as the hub names it).
        model: String,
        /// The hub's state folder [default: serve's: $STATE_DIRECTORY/serve,
        /// $XDG_STATE_HOME/weightcast/serve or ~/.local/state/weightcast/serve].
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// status: one JSON object (the model's part of /v1/fleet's rollout).
        #[arg(long)]
        json: bool,
    },
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

/// A duration of at least a second (`--interval`: a device must not poll
/// its hub in a tight loop).
pub(crate) fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!("'{s}' is under a second; a fleet polling that fast would flood its hub (e.g. 30s, 5m)"));
    }
    Ok(d)
}

/// How push and pull reach a hub or registry.
#[derive(clap::Args)]
pub(crate) struct ClientArgs {
    /// CA certificate (PEM) an https:// hub's or a registry's certificate
    /// must chain to; without it, the system's roots.
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,
    /// Deadline for each request.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub(crate) timeout: std::time::Duration,
    /// File holding USER:PASSWORD for an oci:// registry; without it, the
    /// registry's entry in Docker's config.json (~/.docker/config.json or
    /// $DOCKER_CONFIG), if any; else anonymous.
    #[arg(long)]
    pub(crate) registry_credentials: Option<PathBuf>,
    /// The oci:// registry speaks plain HTTP, not HTTPS (a registry on
    /// loopback or a closed network; as `oras --plain-http`).
    #[arg(long)]
    pub(crate) plain_http: bool,
}

/// `weightcast push`'s flags.
#[derive(clap::Args)]
pub(crate) struct PushArgs {
    /// The model file.
    pub(crate) model: PathBuf,
    /// Where to publish it: oci://HOST[:PORT]/REPOSITORY[:TAG] (HTTPS, or
    /// plain HTTP with --plain-http).
    pub(crate) target: String,
    /// The model's name in its manifest [default: the repository's last
    /// segment, the name `pull oci://…` expects].
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Sign the manifest with this secret key (from `weightcast keygen`).
    #[arg(long)]
    pub(crate) signing_key: Option<PathBuf>,
    /// How long the signature is valid; devices refuse the manifest after
    /// that (freeze protection): push again before it ends.
    #[arg(long, default_value = "168h", value_parser = parse_duration)]
    pub(crate) valid_for: std::time::Duration,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// `NAME=D0,D1,…`, every dim a positive number.
fn parse_shape(s: &str) -> Result<(String, Vec<i64>), String> {
    let bad = || format!("'{s}': give NAME=D0,D1,… (e.g. images=1,3,320,320)");
    let (name, dims) = s.split_once('=').ok_or_else(bad)?;
    let dims: Vec<i64> =
        dims.split(',').map(|d| d.trim().parse::<i64>()).collect::<Result<_, _>>().map_err(|_| bad())?;
    if name.is_empty() || dims.iter().any(|&d| d <= 0) {
        return Err(bad());
    }
    Ok((name.to_string(), dims))
}

/// `NAME=V`, a number.
fn parse_value(s: &str) -> Result<(String, f64), String> {
    let bad = || format!("'{s}': give NAME=V (e.g. sr=16000)");
    let (name, v) = s.split_once('=').ok_or_else(bad)?;
    let v: f64 = v.trim().parse().map_err(|_| bad())?;
    match name.is_empty() || !v.is_finite() {
        true => Err(bad()),
        false => Ok((name.to_string(), v)),
    }
}

/// `weightcast pull`'s flags.
#[derive(clap::Args)]
pub(crate) struct PullArgs {
    /// The model on a hub (http://hub:8080/v1/models/detector) or in an OCI
    /// registry (oci://registry:5000/team/detector:prod).
    pub(crate) url: String,
    /// Folder holding versions/ and the `current` symlink.
    #[arg(long)]
    pub(crate) dest: PathBuf,
    /// Time between polls (e.g. 30s, 5m), with ±10% random jitter.
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    pub(crate) interval: std::time::Duration,
    /// Do one round and exit: 0 current or updated, 1 failed, 2 rejected.
    #[arg(long)]
    pub(crate) once: bool,
    /// With --once: exit with this code when nothing changed.
    #[arg(long, requires = "once")]
    pub(crate) exit_no_change: Option<u8>,
    /// Versions kept on disk (current included; at least 1).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) keep: u16,
    /// Check a new version before switching: "ort" (load it in ONNX Runtime
    /// by path: graph, shape inference, every tensor), or a shell command ($WEIGHTCAST_DIR is the new folder).
    #[arg(long)]
    pub(crate) check: Option<String>,
    /// With --check ort: an input's shape for the check's inference
    /// (NAME=D0,D1,…; repeat per input; also `[runtime] input_shapes`).
    /// Given, a failed inference fails the version; without, symbolic dims
    /// are 1 and a failure only warns.
    #[arg(long, value_name = "NAME=D0,D1,…", value_parser = parse_shape)]
    pub(crate) check_shape: Vec<(String, Vec<i64>)>,
    /// With --check ort: the value of every element of an input where zeros
    /// will not do (NAME=V, e.g. sr=16000; also `[runtime] input_values`).
    #[arg(long, value_name = "NAME=V", value_parser = parse_value)]
    pub(crate) check_value: Vec<(String, f64)>,
    /// Shell command run after a switch, and after each rollback
    /// ($WEIGHTCAST_DIR is the version now current).
    #[arg(long)]
    pub(crate) exec: Option<String>,
    /// Shell command that says the device is healthy on a new version (exit
    /// 0), run after the switch and --exec ($WEIGHTCAST_DIR is the new
    /// folder), tried again until --probation runs out; if it never passes,
    /// `current` goes back to the last committed version and the new one is
    /// recorded failed.
    #[arg(long)]
    pub(crate) health: Option<String>,
    /// How long --health may take to pass.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) probation: std::time::Duration,
    /// The model this device pulls: a manifest of another model is refused
    /// [default: the name after /v1/models/ in a hub URL, the repository's
    /// last segment in an oci:// one].
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// File holding a bearer token for the hub.
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// This device's id in the hub's fleet table, sent with every request
    /// to a hub (never to a registry) with its version and state
    /// [default: /etc/machine-id, else the hostname].
    #[arg(long)]
    pub(crate) device_id: Option<String>,
    /// Pulling from a registry: after each round, report this device (id,
    /// version, state, last failure) to a hub serving the model, at its URL
    /// (http://hub:8080/v1/models/NAME; --token-file's token goes with it).
    /// From a hub, reports ride on the polls.
    #[arg(long)]
    pub(crate) report: Option<String>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
    /// Print one JSON object per round on stdout (for fleet tooling).
    #[arg(long)]
    pub(crate) json: bool,
    /// What a version holds: "onnx" (model.onnx + one file per tensor) or
    /// "safetensors" (model.safetensors).
    #[arg(long, default_value = "onnx", value_parser = ["onnx", "safetensors"])]
    pub(crate) format: String,
    /// Ask the hub for f16 or bf16 weights (with --format safetensors).
    #[arg(long)]
    pub(crate) dtype: Option<weightcast::onnx::cast::Target>,
    /// TOML config: [runtime] options for --check ort.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Path of libonnxruntime.so, for --check ort.
    #[arg(long)]
    pub(crate) ort_lib: Option<PathBuf>,
    /// Accept only manifests signed by this public key (a .pub file from
    /// `weightcast keygen`, or its 64 hex digits); repeat to trust several
    /// (key rotation). Older or expired manifests are refused too.
    #[arg(long)]
    pub(crate) trust: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("weightcast").chain(args.iter().copied()))
    }

    #[test]
    fn pull_flags_are_checked_before_anything_runs() {
        let url = "http://hub:8080/v1/models/m";
        assert!(parse(&["pull", url, "--dest", "d"]).is_ok());
        assert!(parse(&["pull", url, "--dest", "d", "--exit-no-change", "3"]).is_err(), "needs --once");
        assert!(parse(&["pull", url, "--dest", "d", "--keep", "0"]).is_err());
        assert!(parse(&["pull", url, "--dest", "d", "--interval", "500ms"]).is_err(), "under a second");
        assert!(parse(&["pull", url, "--dest", "d", "--probation", "0s"]).is_err());
        let Command::Pull(a) =
            parse(&["pull", url, "--dest", "d", "--probation", "3s", "--health", "true"]).unwrap().command
        else {
            panic!("not pull")
        };
        assert_eq!(a.probation, std::time::Duration::from_secs(3));
        assert_eq!(a.health.as_deref(), Some("true"));
    }

    #[test]
    fn folder_commands_need_a_dest() {
        assert!(parse(&["status"]).is_err());
        assert!(parse(&["retry", "--dest", "d"]).is_err(), "which version");
        assert!(parse(&["rollback", "--dest", "d", "--exec", "true"]).is_ok());
    }
}
