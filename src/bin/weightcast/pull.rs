//! `weightcast pull`: the loop of rounds, and what each round tells (a log
//! line, a JSON line for `--json`, an exit code for `--once`).

use std::process::ExitCode;

use weightcast::config::Config;
use weightcast::runtime::{self, LibrarySearch};

use weightcast::wire::signature::read_trusted_key;

use crate::cli::PullArgs;
use crate::client::client_for;

/// What `weightcast pull` was told, checked: the updater's options and its client.
/// A hub to report to (`--report`), and the client that reaches it.
type HubReport = Option<(http_types::Url, weightcast::net::Client)>;

fn pull_setup(a: &PullArgs) -> Result<(weightcast::updater::Options, weightcast::net::Client, HubReport), String> {
    use weightcast::updater::{self, Check, Options};
    let url = http_types::Url::parse(&a.url).map_err(|e| format!("bad URL '{}': {e}", a.url))?;
    let cfg = match &a.config {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let check = check(a, &cfg);
    let inputs_given = !a.check_shape.is_empty() || !a.check_value.is_empty();
    if inputs_given && !matches!(check, Check::Load(..)) {
        return Err(
            "--check-shape and --check-value give the inputs of --check ort's inference: add --check ort".into()
        );
    }
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
    let trust =
        a.trust.iter().map(|t| read_trusted_key(t)).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    hub_model_url(&url)?;
    let model = match a.model.clone().or_else(|| updater::model_of(&url)) {
        Some(model) => model,
        None => return Err(format!("cannot tell the model's name from {url}: give --model NAME")),
    };
    let (token, report) = token_and_report(a, &url, &model)?;
    let client = client_for(&a.url, token, &a.client)?;
    let plain_http = a.client.plain_http;
    let device_id = match &a.device_id {
        Some(id) => id.clone(),
        None => updater::default_device_id()
            .ok_or("cannot tell this device's id (no /etc/machine-id, no hostname): give --device-id ID")?,
    };
    if !weightcast::wire::report::valid_device_id(&device_id) {
        return Err(format!(
            "--device-id '{device_id}': give 1 to {} visible ASCII characters (no spaces)",
            weightcast::wire::report::MAX_DEVICE_ID
        ));
    }
    let opts = Options {
        url,
        model,
        device_id,
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
    Ok((opts, client, report))
}

pub(crate) fn pull(a: PullArgs) -> ExitCode {
    use weightcast::updater;
    let (opts, client, hub) = match pull_setup(&a) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("weightcast: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = crate::process::exit_on_signal() {
        eprintln!("weightcast: {e}");
        return ExitCode::FAILURE;
    }
    let heartbeat = crate::process::watchdog();
    let mut failures = 0u32;
    let mut quiet = Quiet::default();
    for round in 0u64.. {
        let started = std::time::Instant::now();
        let result = smol::block_on(crate::process::beating(updater::round(&opts, &client), heartbeat.as_ref()));
        let ms = started.elapsed().as_millis() as u64;
        if let Some((url, hub_client)) = &hub {
            smol::block_on(crate::process::beating(updater::report_to(&opts, hub_client, url), heartbeat.as_ref()));
        }
        let report = report(&result, ms, a.exit_no_change.unwrap_or(0), &mut quiet);
        tell_systemd(round == 0, &opts.dest, &result);
        if a.json {
            // A log shipper that went away does not stop the device's updates.
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{}", report.json);
        }
        if a.once {
            return ExitCode::from(report.code);
        }
        failures = if result.is_ok() { 0 } else { failures + 1 };
        let wait = updater::next_wait(a.interval, 0.1, failures, report.retry_after);
        smol::block_on(crate::process::beating(smol::Timer::after(wait), heartbeat.as_ref()));
    }
    ExitCode::SUCCESS
}

/// systemd (`Type=notify`): ready once the first round is done, whatever
/// its outcome (a hub down at boot must not fail the unit: the next round
/// retries), and a status line naming what the device holds.
fn tell_systemd(
    first: bool,
    dest: &std::path::Path,
    result: &Result<weightcast::updater::Outcome, weightcast::updater::UpdateError>,
) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return; // not under systemd: the folder is not read every poll for nothing
    }
    let held = weightcast::updater::status(dest).ok();
    let current = held.as_ref().and_then(|s| {
        s.current.as_deref().map(|v| format!("{} ({})", weightcast::wire::short(v), s.state.unwrap_or("?")))
    });
    let last = match result {
        Ok(outcome) => outcome.status().to_string(),
        Err(_) => "failed".to_string(),
    };
    let status = format!("current {}; last round: {last}", current.as_deref().unwrap_or("none"));
    let mut states = vec![sd_notify::NotifyState::Status(&status)];
    if first {
        states.push(sd_notify::NotifyState::Ready);
    }
    crate::process::notify(&states);
}

/// "No change" is the answer of almost every round: at 30 s, 2,880 info lines
/// a day per model in journald. It is logged at debug each round, and at
/// info at the first quiet round after anything else and once an hour while
/// it lasts; every change of state is logged at info or above.
#[derive(Default)]
struct Quiet {
    said_at: Option<std::time::Instant>,
    rounds: u64,
}

impl Quiet {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

    fn no_change(&mut self, version: Option<&str>, ms: u64) {
        self.rounds += 1;
        match self.said_at {
            Some(at) if at.elapsed() < Quiet::EVERY => tracing::debug!(version, ms, "no change"),
            _ => {
                let rounds = std::mem::take(&mut self.rounds);
                tracing::info!(
                    version,
                    ms,
                    rounds,
                    "no change (said once an hour while nothing changes; -v for every round)"
                );
                self.said_at = Some(std::time::Instant::now());
            }
        }
    }

    fn changed(&mut self) {
        self.said_at = None;
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
    quiet: &mut Quiet,
) -> Report {
    use weightcast::updater::Outcome;
    use weightcast::wire::short;
    let (code, retry_after, json) = match result {
        Ok(Outcome::Current { version }) => {
            quiet.no_change(version.as_deref().map(short), ms);
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
            let to_text =
                to.as_deref().map_or("nothing (no committed version was kept)".to_string(), |v| short(v).to_string());
            tracing::error!(version = short(version), "rolled back to {to_text}: {reason}");
            (2, None, serde_json::json!({"status": "rolled back", "version": version, "to": to, "reason": reason}))
        }
        Err(e) => {
            tracing::error!(ms, "update failed: {e}");
            (1, e.retry_after(), serde_json::json!({"status": "failed", "error": e.to_string(), "ms": ms}))
        }
    };
    if !matches!(result, Ok(Outcome::Current { .. })) {
        quiet.changed();
    }
    Report { code, retry_after, json }
}

/// A hub URL must name a model (`…/v1/models/NAME`): the hub's root, its
/// page (`/#/m/NAME`, copied from a browser) or the listing answer other
/// things, which would fail later as "not a manifest".
fn hub_model_url(url: &http_types::Url) -> Result<(), String> {
    if url.scheme() == "oci" {
        return Ok(());
    }
    let segments: Vec<&str> = url.path().split('/').filter(|s| !s.is_empty()).collect();
    if let [.., "v1", "models", _] = segments.as_slice() {
        return Ok(());
    }
    let base = url.origin().ascii_serialization();
    let from_page = url.fragment().and_then(|f| f.strip_prefix("/m/")).and_then(|r| r.split('/').next());
    let give = match from_page.filter(|n| !n.is_empty()) {
        Some(name) => format!("{base}/v1/models/{name}"),
        None => format!("{base}/v1/models/NAME ({base}/v1/models lists the models)"),
    };
    Err(format!("{url} is not a model's URL on a hub: give {give}"))
}

/// `--check`: none, ONNX Runtime (with `--check-shape`/`--check-value`
/// inputs), or a command.
fn check(a: &PullArgs, cfg: &Config) -> weightcast::updater::Check {
    use weightcast::updater::{self, Check};
    match a.check.as_deref() {
        None => Check::None,
        Some("ort") => {
            let search = LibrarySearch { flag: a.ort_lib.clone(), config: cfg.runtime.ort_lib.clone() };
            let mut options = cfg.runtime.clone();
            options.input_shapes.extend(a.check_shape.iter().cloned());
            options.input_values.extend(a.check_value.iter().cloned());
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
    }
}

/// The hub's token (`--token-file`, else the systemd credential), and with
/// `--report` (a registry source) the hub to report to: the token is then
/// the hub's.
fn token_and_report(a: &PullArgs, url: &http_types::Url, model: &str) -> Result<(Option<String>, HubReport), String> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let token = match &a.token_file {
        Some(p) => Some(read(p)?),
        // systemd's credential (`LoadCredential=weightcast-pull-%i.token` in
        // the packaged unit): a root-only file handed to this service alone.
        None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => {
                let path = std::path::Path::new(&dir).join(format!("weightcast-pull-{model}.token"));
                path.exists().then(|| read(&path)).transpose()?
            }
            None => None,
        },
    };
    let token = token.filter(|t| !t.is_empty());
    // From a registry with --report, the token is the hub's, for the reports.
    Ok(match &a.report {
        None => (token, None),
        Some(_) if url.scheme() != "oci" => {
            return Err("--report is for devices pulling from a registry: from a hub, reports ride on the polls".into())
        }
        Some(r) => match http_types::Url::parse(r) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.path().contains("/v1/models/") => {
                (None, Some((u, crate::client::report_client(r, token, &a.client)?)))
            }
            _ => return Err(format!("--report {r}: give the model's URL on the hub, http://hub:8080/v1/models/NAME")),
        },
    })
}
