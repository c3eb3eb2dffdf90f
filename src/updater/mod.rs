//! `weightcast pull`: keeps a device's copy of a model current with a hub
//! or an OCI registry, and safe to run for months.
//!
//! A round: a conditional GET of the manifest (a 304 costs one small
//! request); on a new version, the graph and only the tensors the device
//! does not already hold (verified) are fetched, each verified against the
//! manifest; the new version is written beside the old ones, optionally
//! checked, `current` is switched atomically, and with `--health` the
//! version is on trial until the device's own health command passes.
//!
//! Files, one job each: [`source`] (hub or registry: the manifest and the
//! graph), [`check`] (what is verified, and `--check`), [`write`] (reuse and
//! the new folder), [`fetch`] (tensors over the wire), [`layout`] (the
//! folder, its lock and links), [`record`] (version states, failures, the
//! last round), [`report`] (what the device tells its hub), [`health`] (the health gate), [`rollback`] (rollback and
//! retry), [`status`], [`verify`] (offline), [`schedule`] (the next round).

mod check;
mod command;
mod durable;
mod fetch;
mod health;
mod layout;
mod lock;
mod record;
mod report;
mod rollback;
mod schedule;
mod source;
mod status;
mod stfile;
mod verify;
mod write;

pub use check::{verify_manifest, Check, CheckFailure, Inconsistent, LoadCheck};
pub use record::{Cause, Failure, LastRound, VersionState};
pub use report::default_device_id;
pub use rollback::{retry, rollback, RetryError, RollbackError};
pub use schedule::{next_wait, MAX_BACKOFF};
pub use status::{status, KeptVersion, Status};
pub use verify::{verify, Verified, VerifyError};

pub(crate) use check::verify_graph;
pub(crate) use fetch::assemble;

use std::path::PathBuf;
use std::time::Duration;

use http_types::Url;

use crate::net::{Client, FetchError};
use crate::wire::proto::Manifest;
use layout::Dest;
use record::{unix_ms, SavedState, VersionState as State};
use source::{Offer, Source};

/// What a version folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `model.onnx` (the hub's graph) with one external data file per tensor.
    Onnx,
    /// `model.safetensors` with every tensor safetensors can express.
    Safetensors,
}

/// What `weightcast pull` was told.
#[derive(Debug, Clone)]
pub struct Options {
    /// What a version folder holds.
    pub output: Output,
    /// `f16` / `bf16`: the representation asked of the hub (safetensors only:
    /// an ONNX graph declares its initializers' types).
    pub dtype: Option<crate::onnx::cast::Target>,
    /// The model's URL on the hub: `http://hub:8080/v1/models/NAME`.
    pub url: Url,
    /// The model this device wants: a manifest of another is refused.
    pub model: String,
    /// This device's id, in its reports to a hub (`--device-id`).
    pub device_id: String,
    /// The device's folder (`--dest`).
    pub dest: PathBuf,
    /// Versions kept on disk (`--keep`).
    pub keep: usize,
    /// How a new version is checked before the switch.
    pub check: Check,
    /// Run after a switch, and after each rollback (`sh -c`), with `$WEIGHTCAST_DIR`.
    pub exec: Option<String>,
    /// Run after the switch and `exec` until it passes (`--health`).
    pub health: Option<String>,
    /// How long `health` may take to pass (`--probation`).
    pub probation: Duration,
    /// Keys whose signature a manifest must carry (`--trust`); empty: no
    /// signature is asked for.
    pub trust: Vec<ed25519_dalek::VerifyingKey>,
    /// An `oci://` registry speaks plain HTTP (`--plain-http`).
    pub plain_http: bool,
}

/// The model a URL names: the segment after `/v1/models/` of a hub URL, the
/// repository's last segment of an `oci://` reference.
pub fn model_of(url: &Url) -> Option<String> {
    let name = match url.scheme() {
        "oci" => crate::oci::Reference::parse(url.as_str(), false).ok()?.model_name().to_string(),
        _ => {
            let (_, rest) = url.path().split_once("/v1/models/")?;
            let segment = rest.split('/').next()?;
            percent_encoding::percent_decode_str(segment).decode_utf8().ok()?.into_owned()
        }
    };
    (!name.is_empty()).then_some(name)
}

/// How a round ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing new (or only a version that failed before).
    Current {
        /// The version `current` points at, if any.
        version: Option<String>,
    },
    /// `current` now points at a new version (committed, or with `--health`
    /// passed).
    Updated {
        /// The new version.
        version: String,
        /// The version it replaced; `None` on the first install.
        previous: Option<String>,
        /// Bytes that crossed the wire this round.
        fetched_bytes: u64,
        /// Bytes of the model's tensors.
        model_bytes: u64,
        /// Tensor files fetched (the rest were reused from kept versions).
        tensors_fetched: usize,
        /// Tensors held in files (the rest travel inside the graph).
        tensor_files: usize,
        /// Tensors in the manifest.
        tensors_total: usize,
    },
    /// The new version failed its check (or failed before); `current` is unchanged.
    Rejected {
        /// The version set aside.
        version: String,
        /// What the check said.
        reason: String,
    },
    /// The new version was switched to and failed `--health`; `current`
    /// went back.
    RolledBack {
        /// The version that failed.
        version: String,
        /// The version current again (`None`: nothing was committed before).
        to: Option<String>,
        /// What failed.
        reason: String,
    },
}

impl Outcome {
    /// Its name in `--json` and `status`.
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Current { .. } => "current",
            Outcome::Updated { .. } => "updated",
            Outcome::Rejected { .. } => "rejected",
            Outcome::RolledBack { .. } => "rolled back",
        }
    }

    fn version(&self) -> Option<&str> {
        match self {
            Outcome::Current { version } => version.as_deref(),
            Outcome::Updated { version, .. }
            | Outcome::Rejected { version, .. }
            | Outcome::RolledBack { version, .. } => Some(version),
        }
    }
}

/// Why a round failed; the next round starts over. None of these marks a
/// version failed: bytes that do not match a manifest, or a manifest that
/// is not trusted, say nothing of the version they claim to be (anyone
/// between device and hub could send them to blacklist a good version).
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum UpdateError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{url} answered {status}{}", .explanation.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    Status { url: String, status: u16, retry_after: Option<Duration>, explanation: Option<String> },
    #[error("bad hub URL {url}: {problem}; give one like http://hub:8080/v1/models/NAME")]
    BadUrl { url: String, problem: String },
    #[error("{url} answered 304 Not Modified to a request that named no version: the hub, or a cache in front of it, is broken; nothing was installed")]
    Unconditional304 { url: String },
    #[error("the hub's manifest is unusable: {problem}; the current version is kept")]
    Manifest { problem: String },
    #[error("refused the manifest: it is for model '{got}', not '{want}' (the model this device pulls): a proxy, mirror or tag answers with another model's manifest; the current version is kept (--model names the model where the URL does not)")]
    OtherModel { got: String, want: String },
    #[error("{} holds model '{holds}', and this pull is for '{want}': give each model its own --dest", dest.display())]
    OtherDest { dest: PathBuf, holds: String, want: String },
    #[error("refused the hub's manifest: {0}; the current version is kept")]
    Untrusted(#[from] crate::wire::signature::SignatureError),
    #[error("the hub's graph is not the one its manifest names: {problem}; the current version is kept")]
    Graph { problem: String },
    #[error("tensor '{name}': {problem}; the current version is kept and the next round fetches it again")]
    Tensor { name: String, problem: String },
    #[error("the hub's weights answer is unusable: {problem}; the next round fetches it again")]
    Weights { problem: String },
    #[error("the hub published another version during this update; the next round starts over")]
    Republished,
    #[error("the new version needs {needed} bytes in {}, and {free} are free; make room (or keep fewer versions with --keep)", dest.display())]
    NoSpace { needed: u64, free: u64, dest: PathBuf },
    #[error("switched to the new version, but --exec failed: {0} (the switch stands)")]
    Exec(String),
    #[error("this device cannot run {what}: {problem}; fix it here: the version is not marked failed, and the next round tries it again")]
    Device { what: String, problem: String },
    #[error(transparent)]
    Registry(#[from] crate::oci::RegistryError),
    #[error("{0}")]
    Disk(#[from] std::io::Error),
}

impl UpdateError {
    /// How long the hub asked us to wait (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UpdateError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

fn tensor_error(name: &str, problem: impl Into<String>) -> UpdateError {
    UpdateError::Tensor { name: name.to_string(), problem: problem.into() }
}

/// Most bytes a manifest may take (about 400,000 tensors).
const MANIFEST_LIMIT: u64 = 64 << 20;

/// The version folder's own files (tensors live under `wire::TENSOR_DIR`).
const GRAPH_FILE: &str = "model.onnx";
const MANIFEST_FILE: &str = "manifest.pb";
const SAFETENSORS_FILE: &str = "model.safetensors";
/// An empty folder in each version for TensorRT's engine cache: its cache
/// key hashes the model's file name and tensor names, not the weights, so
/// one cache across versions runs the old weights' engine after a
/// weights-only update.
const ENGINE_CACHE_DIR: &str = "engine-cache";

/// One round of the updater, holding the folder's lock: fetch the manifest
/// → plan what the device lacks → fetch it → write the version → check it,
/// switch, and (with `--health`) commit it or roll back. How it ended is
/// remembered for `weightcast status`.
pub async fn round(opts: &Options, client: &Client) -> Result<Outcome, UpdateError> {
    let dest = Dest::open(&opts.dest, "weightcast pull")?;
    let result = locked_round(opts, client, &dest).await;
    remember(&dest, &result);
    result
}

/// Reports the device to a hub at `url` (its model's URL there) with
/// `client`: for a device pulling from a registry (`pull --report`); from a
/// hub, reports ride on the polls. A failure is logged, never returned.
pub async fn report_to(opts: &Options, client: &Client, url: &Url) {
    match Dest::reading(&opts.dest) {
        Ok(dest) => report::send(opts, client, &dest, url).await,
        Err(e) => tracing::debug!("no report: {e}"),
    }
}

/// Saves how the round ended when that differs from the last one.
fn remember(dest: &Dest, result: &Result<Outcome, UpdateError>) {
    let (status, version, error) = match result {
        Ok(o) => (o.status().to_string(), o.version().map(str::to_string), None),
        Err(e) => ("failed".to_string(), None, Some(e.to_string())),
    };
    let mut state = dest.state();
    let same =
        state.last_round.as_ref().is_some_and(|r| r.status == status && r.version == version && r.error == error);
    if !same {
        state.last_round = Some(record::LastRound { status, version, error, at_ms: unix_ms() });
        if let Err(e) = dest.save_state(&state) {
            tracing::warn!("cannot record the round's outcome: {e}");
        }
    }
}

async fn locked_round(opts: &Options, client: &Client, dest: &Dest) -> Result<Outcome, UpdateError> {
    // A probation cut short (a restart) is taken up again first.
    if let Some((version, _)) = dest.current() {
        let on_trial = dest.versions().iter().any(|k| k.version == version && k.record.state == State::Trial);
        if on_trial {
            if let Some(rolled_back) = health::gate(opts, dest, &version).await? {
                return Ok(rolled_back);
            }
        }
    }
    let mut state = dest.state();
    let current = dest.current();
    let current_dir = current.as_ref().map(|c| c.1.as_path());
    held_model(opts, dest)?;
    let source = Source::new(opts, client)?;
    // Every request to a hub carries the device's report; a registry's
    // client is its own and hears nothing of it.
    let client = &client.with_headers(report::of(opts, dest).headers());
    let etag = state.etag.clone().filter(|_| current.is_some());
    let Some(offer) = source.offer(client, etag.as_deref()).await? else {
        still_signed(opts, &state)?;
        return Ok(Outcome::Current { version: current.map(|c| c.0) });
    };
    if offer.manifest.model != opts.model {
        return Err(UpdateError::OtherModel { got: offer.manifest.model.clone(), want: opts.model.clone() });
    }
    trusted(opts, dest, &offer.manifest, &state)?;
    if current.as_ref().is_some_and(|(v, _)| *v == offer.manifest.version) {
        state.etag = offer.etag;
        state.signed_times(&offer.manifest);
        dest.save_state(&state)?;
        return Ok(Outcome::Current { version: Some(offer.manifest.version) });
    }
    if let Some(failed) = dest.failure(&offer.manifest.version) {
        let version = offer.manifest.version;
        let Some((current, _)) = current else {
            // Nothing installed: not "current", which would exit 0.
            let retry = format!("weightcast retry --dest {} {version}", dest.root().display());
            let reason = format!(
                "it failed before ({}) and nothing is installed; `{retry}` lets the next round try it again",
                failed.reason
            );
            return Ok(Outcome::Rejected { version, reason });
        };
        tracing::info!(version = %crate::wire::short(&version), "the hub still offers a version that failed here ({}); keeping the current one", failed.reason);
        return Ok(Outcome::Current { version: Some(current) });
    }
    let contents = source.contents(client, opts, &offer, current_dir).await?;
    let reusable = write::reusable(opts, dest, &offer.manifest, &contents.held).await;
    let needed = write::plan(&offer.manifest, &contents.held, &reusable)?;
    write::check_space(dest.root(), opts.output, &offer, &contents, &needed)?;
    let partial = dest.root().join(layout::PARTIAL_DIR);
    let (fetched, tensor_bytes) = fetch::fetch_tensors(client, &source, &offer, &needed, &partial).await?;
    let tmp = write::write_version(dest, &offer, &contents, &fetched, &reusable)?;
    let outcome = Outcome::Updated {
        version: offer.manifest.version.clone(),
        previous: current.map(|c| c.0),
        fetched_bytes: offer.wire_bytes + contents.wire_bytes + tensor_bytes,
        model_bytes: offer.manifest.tensors.iter().map(|t| t.nbytes).sum(),
        tensors_fetched: needed.len(),
        tensor_files: contents.held.len(),
        tensors_total: offer.manifest.tensors.len(),
    };
    check_and_switch(opts, dest, &mut state, offer, tmp, outcome).await
}

/// A folder holds one model: its current version's manifest names it.
fn held_model(opts: &Options, dest: &Dest) -> Result<(), UpdateError> {
    use prost::Message;
    let Some((_, dir)) = dest.current() else { return Ok(()) };
    let Some(held) = std::fs::read(dir.join(MANIFEST_FILE)).ok().and_then(|b| Manifest::decode(b.as_slice()).ok())
    else {
        return Ok(());
    };
    match held.model == opts.model {
        true => Ok(()),
        false => Err(UpdateError::OtherDest { dest: opts.dest.clone(), holds: held.model, want: opts.model.clone() }),
    }
}

/// With `--trust`: the manifest is signed by a trusted key, not expired, and
/// not published before the newest signed manifest this device accepted —
/// which `state.json` holds, and so does every kept or failed version's own
/// signed `manifest.pb` (losing `state.json` lowers nothing).
fn trusted(opts: &Options, dest: &Dest, manifest: &Manifest, state: &SavedState) -> Result<(), UpdateError> {
    if opts.trust.is_empty() {
        return Ok(());
    }
    let held = dest
        .held_manifests()
        .into_iter()
        .filter(|m| crate::wire::signature::check(m, &opts.trust, 0, None).is_ok())
        .map(|m| m.published_at_ms);
    let floor = held.chain(state.published_at_ms).max();
    crate::wire::signature::check(manifest, &opts.trust, unix_ms(), floor)?;
    Ok(())
}

/// With `--trust`, a `304` is only as good as the signature of the manifest
/// it confirms: once that has expired, the hub (or a mirror) is frozen.
fn still_signed(opts: &Options, state: &SavedState) -> Result<(), UpdateError> {
    let now = unix_ms();
    match state.expires_at_ms {
        Some(expired_at_ms) if !opts.trust.is_empty() && expired_at_ms <= now => {
            Err(crate::wire::signature::SignatureError::Expired { expired_at_ms, now_ms: now }.into())
        }
        _ => Ok(()),
    }
}

/// Check the new version; switch `current` to it (on trial with
/// `--health`), or record it failed. A check that cannot run on this device
/// fails the round and records nothing.
async fn check_and_switch(
    opts: &Options,
    dest: &Dest,
    state: &mut SavedState,
    offer: Offer,
    tmp: PathBuf,
    updated: Outcome,
) -> Result<Outcome, UpdateError> {
    let version = offer.manifest.version.clone();
    match check::check(&opts.check, &tmp).await {
        Ok(()) => {}
        Err(CheckFailure::Device(problem)) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(UpdateError::Device { what: "--check".into(), problem });
        }
        Err(CheckFailure::Version(reason)) => {
            let failure = Failure {
                version: version.clone(),
                reason: format!("check: {reason}"),
                cause: Cause::Check,
                at_ms: unix_ms(),
            };
            let aside = dest.record_failure(Some(&tmp), &failure)?;
            let kept = if dest.current().is_some() { "keeping the current one" } else { "nothing is installed" };
            tracing::error!(version = %version, path = %aside.display(), "new version failed its check; {kept}: {reason}");
            return Ok(Outcome::Rejected { version, reason });
        }
    }
    let trial = if opts.health.is_some() { State::Trial } else { State::Committed };
    let dir = dest.commit(&tmp, &version, trial)?;
    dest.switch(&version)?;
    state.signed_times(&offer.manifest);
    state.etag = offer.etag;
    dest.save_state(state)?;
    // Resume state of the downloads this version needed: done with.
    let _ = std::fs::remove_dir_all(dest.root().join(layout::PARTIAL_DIR));
    if let Some(cmd) = &opts.exec {
        command::run_command(cmd, &dir, None).await.map_err(|e| UpdateError::Exec(e.to_string()))?;
    }
    if let Some(rolled_back) = health::gate(opts, dest, &version).await? {
        dest.prune(opts.keep);
        return Ok(rolled_back);
    }
    dest.prune(opts.keep);
    Ok(updated)
}
