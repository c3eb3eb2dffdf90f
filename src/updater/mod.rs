//! `weightcast pull`: keeps a device's copy of a model current with a hub.
//!
//! A round: a conditional GET of the manifest (a 304 costs one small request);
//! on a new version, the graph and only the tensors whose digest changed are
//! fetched, each verified against the manifest, unchanged tensors are copied
//! from the current version, the new version is written beside the old one
//! ([`layout`]), optionally checked, and `current` is switched atomically.

mod layout;
mod stfile;
mod verify;

pub use verify::{verify, Verified, VerifyError};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_types::Url;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::net::{self as client, Client, FetchError};
use crate::onnx::DataType;
use crate::wire::proto::{Bundle, Manifest};
use crate::wire::{self, MODEL_VERSION};
use layout::{write_synced, Dest};

/// How a new version is checked before `current` moves to it.
#[derive(Clone)]
pub enum Check {
    /// Switch without a check.
    None,
    /// Open `model.onnx` of the new folder (given its path) in a runtime;
    /// `Err` rejects the version. The binary passes ONNX Runtime's
    /// (`runtime::check_model`): the updater itself knows no runtime.
    Load(LoadCheck),
    /// Run a command (`sh -c`); the new folder is in `$WEIGHTCAST_DIR`.
    Command(String),
}

/// A check that opens a version's `model.onnx` (its path) in a runtime.
pub type LoadCheck = Arc<dyn Fn(&Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::None => f.write_str("None"),
            Check::Load(_) => f.write_str("Load"),
            Check::Command(cmd) => write!(f, "Command({cmd:?})"),
        }
    }
}

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
    /// The device's folder (`--dest`).
    pub dest: PathBuf,
    /// Versions kept on disk (`--keep`).
    pub keep: usize,
    /// How a new version is checked before the switch.
    pub check: Check,
    /// Run after a successful switch (`sh -c`), with `$WEIGHTCAST_DIR`.
    pub exec: Option<String>,
    /// Keys whose signature a manifest must carry (`--trust`); empty: no
    /// signature is asked for.
    pub trust: Vec<ed25519_dalek::VerifyingKey>,
    /// An `oci://` registry speaks plain HTTP (`--plain-http`).
    pub plain_http: bool,
}

/// How a round ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing new (or only a version rejected before).
    Current {
        /// The version `current` points at, if any.
        version: Option<String>,
    },
    /// `current` now points at a new version.
    Updated {
        /// The new version.
        version: String,
        /// The version it replaced; `None` on the first install.
        previous: Option<String>,
        /// Bytes that crossed the wire this round.
        fetched_bytes: u64,
        /// Bytes of the model's tensors.
        model_bytes: u64,
        /// Tensor files fetched (the rest were copied from the current version).
        tensors_fetched: usize,
        /// Tensors held in files (the rest travel inside the graph).
        tensor_files: usize,
        /// Tensors in the manifest.
        tensors_total: usize,
    },
    /// The new version failed its check; `current` is unchanged.
    Rejected {
        /// The version set aside.
        version: String,
        /// What the check said.
        reason: String,
    },
}

/// Why a round failed; the next round starts over.
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
    #[error("switched to the new version, but --exec failed: {0} (it is not run again for this version)")]
    Exec(String),
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

/// Checks a manifest's `version` against its graph digest and tensor list.
pub fn verify_manifest(m: &Manifest) -> Result<(), UpdateError> {
    let problem = |problem: String| UpdateError::Manifest { problem };
    let graph = sha256_hex(&m.graph_sha256)
        .ok_or_else(|| problem("no valid graph_sha256 (is the hub older than this updater?)".into()))?;
    let mut rows = Vec::with_capacity(m.tensors.len());
    for t in &m.tensors {
        let dtype = DataType::from_onnx(t.dtype)
            .ok_or_else(|| problem(format!("tensor '{}' has unknown dtype {}", t.name, t.dtype)))?;
        let digest =
            sha256_hex(&t.sha256).ok_or_else(|| problem(format!("tensor '{}' has a malformed sha256", t.name)))?;
        rows.push((t.name.as_str(), dtype, t.dims.as_slice(), digest));
    }
    let version = wire::version(&graph, rows.iter().map(|(n, d, dims, h)| (*n, *d, *dims, h)));
    if version == m.version {
        Ok(())
    } else {
        Err(problem(format!("version {} does not match its graph and tensor list ({version})", m.version)))
    }
}

fn sha256_hex(hex: &str) -> Option<[u8; 32]> {
    hex::decode(hex).ok()?.try_into().ok()
}

fn retry_after(reply: &client::Reply) -> Option<Duration> {
    reply.header("Retry-After").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs)
}

fn expect_ok(url: &Url, reply: &client::Reply) -> Result<(), UpdateError> {
    if reply.status == 200 {
        Ok(())
    } else {
        Err(UpdateError::Status {
            url: url.to_string(),
            status: reply.status,
            retry_after: retry_after(reply),
            explanation: explanation(&reply.body),
        })
    }
}

/// What a hub's JSON error body says (`error: detail`), printable and short.
fn explanation(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = match (v["error"].as_str(), v["detail"].as_str()) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(t), None) | (None, Some(t)) => t.to_string(),
        (None, None) => return None,
    };
    Some(text.chars().filter(|c| !c.is_control()).take(300).collect())
}

/// The model's routes on the hub, in the representation asked for.
struct Hub {
    base: String,
    /// `dtype=…`, or empty.
    query: String,
}

impl Hub {
    fn new(opts: &Options) -> Hub {
        Hub {
            base: opts.url.as_str().trim_end_matches('/').to_string(),
            query: opts.dtype.map_or(String::new(), |d| format!("dtype={}", d.name())),
        }
    }

    /// A blob's URL: its path (from the manifest) on the hub's origin. Only
    /// paths under `/v1/blobs/` are followed: a manifest cannot send the
    /// device elsewhere.
    fn blob(&self, path: &str) -> Result<Url, UpdateError> {
        let bad = |problem: &str| UpdateError::BadUrl { url: path.to_string(), problem: problem.to_string() };
        if !path.starts_with("/v1/blobs/sha256/") || path.contains("..") || path.contains("//") {
            return Err(bad("a manifest's blob must be a path under /v1/blobs/sha256/"));
        }
        let base = Url::parse(&self.base).map_err(|e| bad(&e.to_string()))?;
        base.join(path).map_err(|e| bad(&e.to_string()))
    }

    /// Where a large tensor's raw bytes are: its blob, or (an older hub) the
    /// tensor route.
    fn tensor_url(&self, info: &crate::wire::proto::TensorInfo) -> Result<Url, UpdateError> {
        match info.blob.is_empty() {
            false => self.blob(&info.blob),
            true => {
                let name = percent_encoding::utf8_percent_encode(&info.name, QUERY);
                self.url(&format!("/tensors/{name}?format=raw"), true)
            }
        }
    }

    /// `base + suffix`, with the representation's query appended when `dtype`.
    fn url(&self, suffix: &str, dtype: bool) -> Result<Url, UpdateError> {
        let sep = if suffix.contains('?') { '&' } else { '?' };
        let url = match dtype && !self.query.is_empty() {
            true => format!("{}{suffix}{sep}{}", self.base, self.query),
            false => format!("{}{suffix}", self.base),
        };
        Url::parse(&url).map_err(|e| UpdateError::BadUrl { url, problem: e.to_string() })
    }
}

/// Where versions come from: a hub's model URL, or an OCI registry's tag.
enum Source {
    Hub(Hub),
    Registry { registry: crate::oci::Registry, reference: String },
}

impl Source {
    fn new(opts: &Options, client: &Client) -> Result<Source, UpdateError> {
        if opts.url.scheme() != "oci" {
            return Ok(Source::Hub(Hub::new(opts)));
        }
        let r = crate::oci::Reference::parse(opts.url.as_str(), opts.plain_http)
            .map_err(|problem| UpdateError::BadUrl { url: opts.url.to_string(), problem })?;
        Ok(Source::Registry { registry: crate::oci::Registry::new(&r, client.clone()), reference: r.reference })
    }
}

/// The blobs of an OCI artifact, by digest.
struct Artifact {
    layers: std::collections::HashSet<String>,
}

/// A manifest the hub offered, verified against itself.
struct Offer {
    manifest: Manifest,
    /// Its body, kept as the version's `manifest.pb`.
    body: Vec<u8>,
    /// The stored weights' version every later answer must carry.
    model_version: String,
    etag: Option<String>,
    wire_bytes: u64,
    /// From a registry: the artifact's blobs.
    artifact: Option<Artifact>,
}

/// Step 1: the manifest, conditionally. `None`: not modified since `etag`.
async fn fetch_manifest(client: &Client, hub: &Hub, etag: Option<&str>) -> Result<Option<Offer>, UpdateError> {
    let url = hub.url("", true)?;
    let mut headers = vec![("Accept", "application/x-protobuf")];
    if let Some(tag) = etag {
        headers.push(("If-None-Match", tag));
    }
    let reply = client.get(&url, &headers, MANIFEST_LIMIT).await?;
    if reply.status == 304 {
        return match etag {
            Some(_) => Ok(None),
            None => Err(UpdateError::Unconditional304 { url: url.to_string() }),
        };
    }
    expect_ok(&url, &reply)?;
    let manifest = Manifest::decode(reply.body.as_slice())
        .map_err(|e| UpdateError::Manifest { problem: format!("not a weightcast.v1.Manifest: {e}") })?;
    verify_manifest(&manifest)?;
    Ok(Some(Offer {
        model_version: reply.header(MODEL_VERSION).unwrap_or_default().to_string(),
        etag: reply.header("ETag").map(str::to_string),
        wire_bytes: reply.wire_bytes as u64,
        manifest,
        body: reply.body,
        artifact: None,
    }))
}

/// Step 1 from a registry: the tag's manifest, conditionally, then its
/// config (a weightcast manifest). `None`: not modified since `etag`.
async fn fetch_artifact(
    registry: &crate::oci::Registry,
    reference: &str,
    etag: Option<&str>,
) -> Result<Option<Offer>, UpdateError> {
    use crate::oci;
    let Some(found) = registry.manifest(reference, etag).await? else {
        return Ok(None);
    };
    let image = &found.manifest;
    let unusable =
        |problem: String| UpdateError::Manifest { problem: format!("{reference} ({}): {problem}", found.digest) };
    let config = image.config();
    if config.media_type().as_ref() != oci::CONFIG_TYPE {
        return Err(unusable(format!(
            "its config is '{}', not a weightcast manifest ({}); push it with `weightcast push`",
            config.media_type(),
            oci::CONFIG_TYPE
        )));
    }
    let limit = config.size().min(MANIFEST_LIMIT);
    let reply = registry.blob(config.digest().as_ref(), limit).await?;
    let manifest = Manifest::decode(reply.body.as_slice())
        .map_err(|e| unusable(format!("its config is not a weightcast.v1.Manifest: {e}")))?;
    verify_manifest(&manifest)?;
    let layers: std::collections::HashSet<String> = image.layers().iter().map(|l| l.digest().to_string()).collect();
    if !layers.contains(&oci::digest_of(&manifest.graph_sha256)) {
        return Err(unusable("no layer holds the graph its config names".into()));
    }
    Ok(Some(Offer {
        manifest,
        body: reply.body,
        model_version: String::new(),
        etag: Some(found.etag),
        wire_bytes: found.wire_bytes + reply.wire_bytes as u64,
        artifact: Some(Artifact { layers }),
    }))
}

/// What a new version holds besides the manifest.
struct Contents {
    /// The hub's `/graph` (ONNX output), verified against the manifest.
    graph: Option<Vec<u8>>,
    /// The tensors held in files (ONNX: the graph's external initializers, at
    /// `wire::tensor_file`) or in the safetensors file: (name, location).
    held: Vec<(String, String)>,
    wire_bytes: u64,
}

/// Step 2: which tensors the version holds, and where. The graph comes from
/// the current version when its digest is the one the manifest names (only
/// weights changed), else from the hub.
async fn contents(
    client: &Client,
    source: &Source,
    opts: &Options,
    offer: &Offer,
    current: Option<&Path>,
) -> Result<Contents, UpdateError> {
    let manifest = &offer.manifest;
    if opts.output == Output::Safetensors {
        let mut held = Vec::new();
        for t in &manifest.tensors {
            match DataType::from_onnx(t.dtype).and_then(wire::safetensors_dtype) {
                Some(_) => held.push((t.name.clone(), t.name.clone())),
                None => tracing::warn!(tensor = %t.name, "safetensors cannot hold this tensor's dtype; left out"),
            }
        }
        return Ok(Contents { graph: None, held, wire_bytes: 0 });
    }
    let local = current.and_then(|dir| std::fs::read(dir.join(GRAPH_FILE)).ok());
    let (graph, wire_bytes) = match local.filter(|g| hex::encode(Sha256::digest(g)) == manifest.graph_sha256) {
        Some(graph) => (graph, 0),
        None => match source {
            Source::Registry { registry, .. } => {
                let digest = crate::oci::digest_of(&manifest.graph_sha256);
                let reply = registry.blob(&digest, offer.manifest.graph_bytes).await?;
                (reply.body, reply.wire_bytes as u64)
            }
            Source::Hub(hub) => {
                let url = hub.url("/graph", false)?;
                let reply = client.get(&url, &[], offer.manifest.graph_bytes).await?;
                expect_ok(&url, &reply)?;
                same_model(&reply, &offer.model_version)?;
                (reply.body, reply.wire_bytes as u64)
            }
        },
    };
    let held = verify_graph(manifest, &graph)?;
    Ok(Contents { graph: Some(graph), held, wire_bytes })
}

/// The graph is the one the manifest names (length and sha256); its inline
/// tensors are the manifest's, byte for byte; each external one lies at
/// exactly `wire::tensor_file(name)` (a hub must not make us write outside
/// the version's tensor folder, nor over another file). Returns those.
pub(crate) fn verify_graph(manifest: &Manifest, graph: &[u8]) -> Result<Vec<(String, String)>, UpdateError> {
    if graph.len() as u64 != manifest.graph_bytes || hex::encode(Sha256::digest(graph)) != manifest.graph_sha256 {
        let (got, want) = (graph.len(), manifest.graph_bytes);
        let problem = format!("{got} bytes whose sha256 is not graph_sha256 ({want} bytes expected)");
        return Err(UpdateError::Graph { problem });
    }
    let digests: HashMap<&str, &str> = manifest.tensors.iter().map(|t| (t.name.as_str(), t.sha256.as_str())).collect();
    let parts = crate::onnx::graph_parts(bytes::Bytes::copy_from_slice(graph))
        .map_err(|e| UpdateError::Graph { problem: e.to_string() })?;
    for t in &parts.inline {
        let want = digests
            .get(t.name.as_str())
            .ok_or_else(|| tensor_error(&t.name, "in the graph but not in the manifest"))?;
        if hex::encode(wire::digest(&t.data)) != *want {
            return Err(tensor_error(&t.name, "inline tensor in the graph whose sha256 is not the manifest's"));
        }
    }
    for (name, location) in &parts.external {
        if *location != wire::tensor_file(name) {
            let want = wire::tensor_file(name);
            return Err(tensor_error(name, format!("the graph puts it at '{location}', not at '{want}'")));
        }
    }
    Ok(parts.external)
}

/// Step 3: the held tensors to fetch (digest differs from the current
/// version's, or not in its files), in manifest order; the rest are reused.
fn plan(
    manifest: &Manifest,
    held: &[(String, String)],
    local: &HashMap<String, String>,
    in_current: impl Fn(&str, &str) -> bool,
) -> Result<Vec<String>, UpdateError> {
    let digests: HashMap<&str, &str> = manifest.tensors.iter().map(|t| (t.name.as_str(), t.sha256.as_str())).collect();
    let mut needed = Vec::new();
    for (name, location) in held {
        let want =
            digests.get(name.as_str()).ok_or_else(|| tensor_error(name, "in the graph but not in the manifest"))?;
        let reusable = local.get(name).is_some_and(|have| have == want) && in_current(name, location);
        if !reusable {
            needed.push(name.clone());
        }
    }
    Ok(needed)
}

/// The digests of the current version's tensors, by name.
fn local_digests(current: Option<&Path>) -> HashMap<String, String> {
    current
        .and_then(|dir| std::fs::read(dir.join(MANIFEST_FILE)).ok())
        .and_then(|b| Manifest::decode(b.as_slice()).ok())
        .map(|m| m.tensors.into_iter().map(|t| (t.name, t.sha256)).collect())
        .unwrap_or_default()
}

/// Most bytes a manifest may take (about 400,000 tensors).
const MANIFEST_LIMIT: u64 = 64 << 20;

/// Most bytes the protobuf records of tensor `t` may take: its data, its
/// name, up to 16 bytes per dim, a length per string element, and the
/// fixed fields.
fn record_bound(t: &crate::wire::proto::TensorInfo) -> u64 {
    let elements: u64 = t.dims.iter().map(|&d| d.max(0) as u64).product();
    let strings = if t.dtype == DataType::String as i32 { elements.saturating_mul(10) } else { 0 };
    t.nbytes.saturating_add(strings).saturating_add(t.name.len() as u64 + 16 * t.dims.len() as u64 + 128)
}

/// The version folder's own files (tensors live under `wire::TENSOR_DIR`).
const GRAPH_FILE: &str = "model.onnx";
const MANIFEST_FILE: &str = "manifest.pb";
const SAFETENSORS_FILE: &str = "model.safetensors";

/// A fetched tensor's bytes, verified against the manifest: small ones in
/// memory, large ones in a file under `.partial` that the version folder
/// takes over (never read whole).
pub(crate) enum Fetched {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// Step 4: the changed tensors, each verified: large ones one by one, raw,
/// into partial files a later round resumes; the rest in batches. Returns
/// them with the bytes that crossed the wire.
async fn fetch_tensors(
    client: &Client,
    source: &Source,
    offer: &Offer,
    needed: &[String],
    partial: &Path,
) -> Result<(HashMap<String, Fetched>, u64), UpdateError> {
    let manifest = &offer.manifest;
    let digests: HashMap<&str, &str> = manifest.tensors.iter().map(|t| (t.name.as_str(), t.sha256.as_str())).collect();
    let infos: HashMap<&str, &crate::wire::proto::TensorInfo> =
        manifest.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let bound = |name: &str| infos.get(name).map_or(0, |t| record_bound(t));
    let size = |name: &str| infos.get(name).map_or(0, |t| t.nbytes);
    // Tensors with a blob URL (not STRING) from BY_DIGEST on come by digest,
    // one by one: a cache between hub and devices keeps each one; the small
    // rest in batches. Without a blob URL (an older hub), from RESUME_FROM on
    // through the tensor route.
    // From a registry, every tensor is a blob.
    let registry = matches!(source, Source::Registry { .. });
    let (large, small): (Vec<String>, Vec<String>) = needed.iter().cloned().partition(|n| {
        registry
            || infos.get(n.as_str()).is_some_and(|t| {
                let by_digest = !t.blob.is_empty() && t.nbytes >= BY_DIGEST;
                t.dtype != DataType::String as i32 && (by_digest || t.nbytes >= RESUME_FROM)
            })
    });
    let bar = progress(needed.iter().map(|n| size(n)).sum());
    let mut fetched: HashMap<String, Fetched> = HashMap::new();
    let mut wire_bytes = 0;
    clean_partials(partial, &manifest.version);
    for name in &large {
        let info = infos.get(name.as_str()).ok_or_else(|| tensor_error(name, "not in the manifest"))?;
        let dir = partial.join(&manifest.version);
        let (client, url, model_version) = match source {
            Source::Hub(hub) => {
                (client, hub.tensor_url(info)?, (info.blob.is_empty()).then_some(offer.model_version.as_str()))
            }
            Source::Registry { registry, .. } => (registry.client(), artifact_blob(registry, offer, info)?, None),
        };
        let (file, wire) = fetch_large(client, &url, model_version, info, &dir, &bar).await?;
        wire_bytes += wire;
        fetched.insert(name.clone(), Fetched::File(file));
    }
    for batch in batches(&small) {
        let Source::Hub(hub) = source else {
            return Err(tensor_error(&batch[0], "a registry has no batch route"));
        };
        let names: Vec<String> =
            batch.iter().map(|n| format!("names={}", percent_encoding::utf8_percent_encode(n, QUERY))).collect();
        let url = hub.url(&format!("/weights?{}", names.join("&")), true)?;
        let limit = batch.iter().map(|n| bound(n)).sum();
        let r = client.get(&url, &[("Accept", "application/x-protobuf")], limit).await?;
        expect_ok(&url, &r)?;
        same_model(&r, &offer.model_version)?;
        wire_bytes += r.wire_bytes as u64;
        for (name, data) in assemble(&r.body)? {
            verify_tensor(&digests, &name, &data)?;
            bar.inc(data.len() as u64);
            fetched.insert(name, Fetched::Bytes(data));
        }
    }
    bar.finish_and_clear();
    if let Some(missing) = needed.iter().find(|n| !fetched.contains_key(*n)) {
        return Err(tensor_error(missing, "asked for, but the hub did not send it"));
    }
    Ok((fetched, wire_bytes))
}

/// Refuses to start a version the disk cannot hold: the new folder takes
/// every tensor it holds (fetched or copied), the graph and the manifest.
fn check_space(root: &Path, offer: &Offer, contents: &Contents) -> Result<(), UpdateError> {
    let held: std::collections::HashSet<&str> = contents.held.iter().map(|(n, _)| n.as_str()).collect();
    let tensors: u64 = offer.manifest.tensors.iter().filter(|t| held.contains(t.name.as_str())).map(|t| t.nbytes).sum();
    let needed = tensors + offer.manifest.graph_bytes + offer.body.len() as u64;
    let stat = rustix::fs::statvfs(root).map_err(std::io::Error::from)?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    if free < needed {
        return Err(UpdateError::NoSpace { needed, free, dest: root.to_path_buf() });
    }
    Ok(())
}

/// Step 5: the new version in a temporary folder beside the current one.
fn write_version(
    dest: &Dest,
    offer: &Offer,
    contents: &Contents,
    fetched: &HashMap<String, Fetched>,
    current: Option<&Path>,
    current_st: Option<&stfile::Current>,
) -> Result<PathBuf, UpdateError> {
    let tmp = dest.temp_dir()?;
    let written = (|| -> std::io::Result<()> {
        match &contents.graph {
            Some(graph) => {
                write_synced(&tmp.join(GRAPH_FILE), graph)?;
                if !contents.held.is_empty() {
                    std::fs::create_dir(tmp.join(wire::TENSOR_DIR))?;
                }
                for (name, location) in &contents.held {
                    let path = tmp.join(location);
                    match fetched.get(name) {
                        Some(Fetched::Bytes(data)) => write_synced(&path, data)?,
                        Some(Fetched::File(file)) => {
                            std::fs::rename(file, &path)?;
                            std::fs::File::open(&path)?.sync_all()?;
                        }
                        None => reuse(&current.map(|c| c.join(location)).unwrap_or_default(), &path)?,
                    }
                }
                if !contents.held.is_empty() {
                    std::fs::File::open(tmp.join(wire::TENSOR_DIR))?.sync_all()?;
                }
            }
            None => stfile::write(&tmp.join(SAFETENSORS_FILE), &offer.manifest, &contents.held, fetched, current_st)?,
        }
        write_synced(&tmp.join(MANIFEST_FILE), &offer.body)
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e.into())
        }
    }
}

/// One round of the updater: fetch the manifest → plan the changed tensors →
/// fetch them → write the version → check it and switch.
pub async fn round(opts: &Options, client: &Client) -> Result<Outcome, UpdateError> {
    let dest = Dest::open(&opts.dest)?;
    let mut state = dest.state();
    let current = dest.current();
    let current_dir = current.as_ref().map(|c| c.1.as_path());
    let source = Source::new(opts, client)?;
    let etag = state.etag.clone().filter(|_| current.is_some());
    let offer = match &source {
        Source::Hub(hub) => fetch_manifest(client, hub, etag.as_deref()).await?,
        Source::Registry { registry, reference } => fetch_artifact(registry, reference, etag.as_deref()).await?,
    };
    let Some(offer) = offer else {
        still_signed(opts, &state)?;
        return Ok(Outcome::Current { version: current.map(|c| c.0) });
    };
    trusted(opts, &offer.manifest, &state)?;
    if current.as_ref().is_some_and(|(v, _)| *v == offer.manifest.version) {
        state.etag = offer.etag;
        state.signed_times(&offer.manifest);
        dest.save_state(&state)?;
        return Ok(Outcome::Current { version: Some(offer.manifest.version) });
    }
    if state.rejected.contains(&offer.manifest.version) {
        let Some((version, _)) = current else {
            // Nothing installed: not "current", which would exit 0.
            let reason = format!(
                "it failed its check before and nothing is installed; to try it again, remove {} from \"rejected\" in {}",
                offer.manifest.version,
                dest.root().join("state.json").display()
            );
            return Ok(Outcome::Rejected { version: offer.manifest.version, reason });
        };
        tracing::info!(version = %offer.manifest.version, "the hub still offers a version that failed its check or was rolled back from; keeping the current one");
        return Ok(Outcome::Current { version: Some(version) });
    }
    let contents = contents(client, &source, opts, &offer, current_dir).await?;
    let current_st = current_dir.and_then(|dir| stfile::Current::open(&dir.join(SAFETENSORS_FILE)));
    let needed =
        plan(&offer.manifest, &contents.held, &local_digests(current_dir), |name, location| match opts.output {
            Output::Onnx => current_dir.is_some_and(|dir| dir.join(location).is_file()),
            Output::Safetensors => current_st.as_ref().is_some_and(|st| st.holds(name)),
        })?;
    check_space(dest.root(), &offer, &contents)?;
    let (fetched, tensor_bytes) =
        fetch_tensors(client, &source, &offer, &needed, &dest.root().join(PARTIAL_DIR)).await?;
    let tmp = write_version(&dest, &offer, &contents, &fetched, current_dir, current_st.as_ref())?;
    let fetched_bytes = offer.wire_bytes + contents.wire_bytes + tensor_bytes;
    let outcome = Outcome::Updated {
        version: offer.manifest.version.clone(),
        previous: current.map(|c| c.0),
        fetched_bytes,
        model_bytes: offer.manifest.tensors.iter().map(|t| t.nbytes).sum(),
        tensors_fetched: needed.len(),
        tensor_files: contents.held.len(),
        tensors_total: offer.manifest.tensors.len(),
    };
    check_and_switch(opts, &dest, &mut state, offer, tmp, outcome).await
}

/// With `--trust`: the manifest is signed by a trusted key, not expired, and
/// not published before the one the current version came with.
fn trusted(opts: &Options, manifest: &Manifest, state: &layout::SavedState) -> Result<(), UpdateError> {
    if opts.trust.is_empty() {
        return Ok(());
    }
    let now = layout::unix_ms();
    crate::wire::signature::check(manifest, &opts.trust, now, state.published_at_ms)?;
    Ok(())
}

/// With `--trust`, a `304` is only as good as the signature of the manifest
/// it confirms: once that has expired, the hub (or a mirror) is frozen.
fn still_signed(opts: &Options, state: &layout::SavedState) -> Result<(), UpdateError> {
    let now = layout::unix_ms();
    match state.expires_at_ms {
        Some(expired_at_ms) if !opts.trust.is_empty() && expired_at_ms <= now => {
            Err(crate::wire::signature::SignatureError::Expired { expired_at_ms, now_ms: now }.into())
        }
        _ => Ok(()),
    }
}

/// Step 6: check the new version; switch `current` to it, or set it aside.
async fn check_and_switch(
    opts: &Options,
    dest: &Dest,
    state: &mut layout::SavedState,
    offer: Offer,
    tmp: PathBuf,
    updated: Outcome,
) -> Result<Outcome, UpdateError> {
    let version = offer.manifest.version.clone();
    if let Err(reason) = check(&opts.check, &tmp).await {
        let aside = dest.reject(&tmp, &version)?;
        state.rejected.push(version.clone());
        dest.save_state(state)?;
        let kept = if dest.current().is_some() { "keeping the current one" } else { "nothing is installed" };
        tracing::error!(version = %version, path = %aside.display(), "new version failed its check; {kept}: {reason}");
        return Ok(Outcome::Rejected { version, reason });
    }
    let dir = dest.commit(&tmp, &version)?;
    dest.switch(&version)?;
    state.signed_times(&offer.manifest);
    state.etag = offer.etag;
    state.rejected.clear();
    dest.save_state(state)?;
    dest.prune(opts.keep);
    // Resume state of the downloads this version needed: done with.
    let _ = std::fs::remove_dir_all(dest.root().join(PARTIAL_DIR));
    if let Some(cmd) = &opts.exec {
        run_command(cmd, &dir).await.map_err(UpdateError::Exec)?;
    }
    Ok(updated)
}

/// The folder under a destination holding tensors being fetched, kept
/// across rounds so a cut download resumes.
const PARTIAL_DIR: &str = ".partial";

/// Tensors at least this large are fetched one by one, uncompressed (a byte
/// range of a zstd stream cannot be decoded alone), into a partial file that a
/// later round resumes with `Range` after a cut.
const RESUME_FROM: u64 = 8 << 20;

/// Tensors at least this large come by digest (`/v1/blobs/sha256/…`) where
/// the hub names a blob: one request each, which a cache can keep; smaller
/// ones cost more as requests than they save as cached bytes.
const BY_DIGEST: u64 = 64 << 10;

fn verify_tensor(digests: &HashMap<&str, &str>, name: &str, data: &[u8]) -> Result<(), UpdateError> {
    let want = digests.get(name).ok_or_else(|| tensor_error(name, "sent, but not in the manifest"))?;
    if hex::encode(Sha256::digest(data)) != *want {
        return Err(tensor_error(name, "its bytes' sha256 is not the manifest's"));
    }
    Ok(())
}

/// A progress bar on a terminal; nothing otherwise (logs say the rest).
fn progress(total: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() || total == 0 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Removes partial downloads of versions other than `keep`.
fn clean_partials(partial: &Path, keep: &str) {
    for entry in std::fs::read_dir(partial).into_iter().flatten().flatten() {
        if entry.file_name().to_str() != Some(keep) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// One large tensor's raw bytes (`tensors/{name}?format=raw`) into
/// `dir/<safe name>.raw`, resuming what an earlier round left there, hashed
/// as they arrive (a resumed file's prefix is hashed from disk first): the
/// tensor is never in memory whole. Returns the verified file and the bytes
/// that crossed the wire this time.
async fn fetch_large(
    client: &Client,
    url: &Url,
    model_version: Option<&str>,
    info: &crate::wire::proto::TensorInfo,
    dir: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<(PathBuf, u64), UpdateError> {
    let name = info.name.as_str();
    std::fs::create_dir_all(dir)?;
    let stem = wire::tensor_file(name);
    let stem = stem.trim_start_matches(wire::TENSOR_DIR).trim_start_matches('/');
    let part = dir.join(format!("{stem}.raw"));
    let tag_file = dir.join(format!("{stem}.etag"));
    let tag = std::fs::read_to_string(&tag_file).ok();
    let have = match (&tag, std::fs::metadata(&part)) {
        (Some(_), Ok(m)) if m.len() <= info.nbytes => m.len(),
        _ => 0,
    };
    let range = format!("bytes={have}-");
    let mut headers = vec![("Accept", "application/octet-stream"), ("Accept-Encoding", "identity")];
    let mut prefix = Sha256::new();
    if have > 0 {
        if let Some(tag) = &tag {
            headers.push(("Range", &range));
            headers.push(("If-Range", tag.trim()));
            tracing::info!(tensor = name, resume_at = have, "resuming an interrupted download");
            let file = part.clone();
            prefix = smol::unblock(move || hash_range(&file, 0, Some(have))).await?;
        }
    }
    let hasher = std::cell::RefCell::new(prefix);
    let on_head = |r: &client::Reply| {
        if r.status == 200 {
            // The whole body comes again: what was held is not part of it.
            *hasher.borrow_mut() = Sha256::new();
        }
        if let Some(t) = r.header("ETag") {
            let _ = std::fs::write(&tag_file, t);
        }
    };
    let on_piece = |piece: &[u8]| {
        hasher.borrow_mut().update(piece);
        bar.inc(piece.len() as u64);
    };
    let dl = client::Download { path: &part, have, limit: info.nbytes, on_piece: &on_piece, on_head: &on_head };
    let reply = client.download(url, &headers, dl).await?;
    if reply.status == 416 {
        // What we hold is not a prefix of this body: start over next round.
        let _ = std::fs::remove_file(&part);
    }
    if reply.status != 200 && reply.status != 206 {
        return Err(UpdateError::Status {
            url: url.to_string(),
            status: reply.status,
            retry_after: retry_after(&reply),
            explanation: None,
        });
    }
    if let Some(version) = model_version {
        // A blob is checked by its digest alone: it belongs to no one version.
        same_model(&reply, version)?;
    }
    // Complete now, valid or not: a bad body is not resumed but fetched anew.
    let _ = std::fs::remove_file(&tag_file);
    let len = std::fs::metadata(&part)?.len();
    let digest = hex::encode(hasher.into_inner().finalize());
    if len != info.nbytes || digest != info.sha256 {
        let _ = std::fs::remove_file(&part);
        let problem = match len == info.nbytes {
            true => "its bytes' sha256 is not the manifest's".to_string(),
            false => format!("{len} bytes came, the manifest says {}", info.nbytes),
        };
        return Err(tensor_error(name, problem));
    }
    Ok((part, reply.wire_bytes as u64))
}

/// sha256 state after bytes `[from, from + len)` of `path` (to its end
/// when `len` is `None`), read a MiB at a time.
fn hash_range(path: &Path, from: u64, len: Option<u64>) -> std::io::Result<Sha256> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut reader = file.take(len.unwrap_or(u64::MAX));
    let (mut hasher, mut buf) = (Sha256::new(), vec![0u8; 1 << 20]);
    loop {
        match reader.read(&mut buf)? {
            0 => return Ok(hasher),
            n => hasher.update(&buf[..n]),
        }
    }
}

/// A tensor's blob in a registry: a layer of the artifact named by its digest.
fn artifact_blob(
    registry: &crate::oci::Registry,
    offer: &Offer,
    info: &crate::wire::proto::TensorInfo,
) -> Result<Url, UpdateError> {
    let digest = crate::oci::digest_of(&info.sha256);
    if !offer.artifact.as_ref().is_some_and(|a| a.layers.contains(&digest)) {
        return Err(tensor_error(&info.name, format!("the artifact has no layer {digest}")));
    }
    registry.blob_url(&digest).map_err(|e| UpdateError::BadUrl { url: digest, problem: e.to_string() })
}

/// Characters escaped in a tensor name inside `?names=` (commas separate names).
const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'.').remove(b'_').remove(b'-');

/// Name lists short enough for one request line each.
fn batches(names: &[String]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut len = 0;
    for n in names {
        if out.is_empty() || len + n.len() * 3 > 6000 {
            out.push(Vec::new());
            len = 0;
        }
        len += n.len() * 3 + 7;
        if let Some(b) = out.last_mut() {
            b.push(n.clone());
        }
    }
    out
}

fn same_model(reply: &client::Reply, version: &str) -> Result<(), UpdateError> {
    match reply.header(MODEL_VERSION) {
        Some(v) if v == version => Ok(()),
        _ => Err(UpdateError::Republished),
    }
}

/// Tensors of a protobuf bundle, pieces joined in order.
pub(crate) fn assemble(body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, UpdateError> {
    let bundle = Bundle::decode(body)
        .map_err(|e| UpdateError::Weights { problem: format!("not a weightcast.v1.Bundle ({e}); cut short?") })?;
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for t in bundle.tensors {
        if !t.codec.is_empty() {
            return Err(tensor_error(&t.name, format!("came with codec '{}', which was not asked for", t.codec)));
        }
        match out.last_mut() {
            Some((name, data)) if *name == t.name && t.offset as usize == data.len() => data.extend_from_slice(&t.data),
            _ if t.offset == 0 => out.push((t.name.clone(), t.data.to_vec())),
            _ => return Err(tensor_error(&t.name, format!("piece at offset {} out of order", t.offset))),
        }
        if let Some((_, data)) = out.last() {
            if data.len() as u64 > t.total_bytes {
                return Err(tensor_error(&t.name, "more bytes than its total_bytes"));
            }
        }
    }
    Ok(out)
}

/// Copies an unchanged tensor file from the current version (no network).
/// Not a hard link: the onnx package refuses external data files with more
/// than one link (it takes them for a hard-link attack), and a copy keeps
/// versions independent. The copy is fsynced like a fetched file.
fn reuse(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::copy(from, to)?;
    std::fs::File::open(to)?.sync_all()
}

async fn check(check: &Check, dir: &Path) -> Result<(), String> {
    match check {
        Check::None => Ok(()),
        Check::Command(cmd) => run_command(cmd, dir).await,
        Check::Load(load) => {
            let (load, model) = (load.clone(), dir.join(GRAPH_FILE));
            smol::unblock(move || load(&model).map_err(|e| e.to_string())).await
        }
    }
}

async fn run_command(cmd: &str, dir: &Path) -> Result<(), String> {
    let status = smol::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("WEIGHTCAST_DIR", dir)
        .env("WEIGHTCAST_MODEL", dir.join("model.onnx"))
        .status()
        .await
        .map_err(|e| format!("cannot run '{cmd}': {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("'{cmd}' exited with {status}"))
    }
}

/// Why `weightcast rollback` could not roll back.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum RollbackError {
    #[error("no current version to roll back from (has `weightcast pull` installed one in this folder?)")]
    NoCurrent,
    #[error("no version before {current} is kept (keep more with pull's --keep); a version rolled back from is not rolled back to")]
    NoPrevious { current: String },
    #[error("{0}")]
    Disk(#[from] std::io::Error),
}

/// Points `current` at the previous version. Returns it.
/// Never forward: a version rolled back from (or rejected by the check) is
/// not a candidate, so a second rollback goes further back or says none is
/// kept.
pub fn rollback(dest: &Path) -> Result<String, RollbackError> {
    let dest = Dest::existing(dest)?;
    let current = dest.current().map(|c| c.0).ok_or(RollbackError::NoCurrent)?;
    let refused = dest.state().rejected;
    let previous = dest
        .versions()
        .into_iter()
        .find(|v| *v != current && !refused.contains(v))
        .ok_or_else(|| RollbackError::NoPrevious { current: current.clone() })?;
    dest.switch(&previous)?;
    // Do not fetch the version we rolled back from again until the hub moves on.
    let mut state = dest.state();
    state.etag = None;
    state.rejected.push(current);
    dest.save_state(&state)?;
    Ok(previous)
}

/// The wait before the next round: the interval with random jitter after a
/// success; after failures, exponential backoff (capped) with jitter, or what
/// the hub asked for with Retry-After.
pub fn next_wait(interval: Duration, jitter: f64, failures: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(r) = retry_after {
        return r;
    }
    let base = if failures == 0 {
        interval.as_secs_f64()
    } else {
        (interval.as_secs_f64() * 2f64.powi(failures.min(16) as i32)).min(MAX_BACKOFF.as_secs_f64())
    };
    let spread = base * jitter * (2.0 * random_unit() - 1.0);
    Duration::from_secs_f64((base + spread).max(0.0))
}

/// Backoff after failures never waits longer than this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

fn random_unit() -> f64 {
    // Jitter needs no cryptography: the clock's nanoseconds and the pid.
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = n ^ ((std::process::id() as u64) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_jitter_back_off_and_obey_retry_after() {
        let i = Duration::from_secs(30);
        for _ in 0..50 {
            let w = next_wait(i, 0.1, 0, None).as_secs_f64();
            assert!((27.0..=33.0).contains(&w), "{w}");
            let b = next_wait(i, 0.1, 2, None).as_secs_f64();
            assert!((108.0..=132.0).contains(&b), "{b}");
            assert!(next_wait(i, 0.1, 30, None) <= MAX_BACKOFF.mul_f64(1.1));
        }
        assert_eq!(next_wait(i, 0.1, 3, Some(Duration::from_secs(7))), Duration::from_secs(7));
    }

    #[test]
    fn pieces_join_and_out_of_order_is_refused() {
        use crate::wire::proto::Tensor;
        let piece = |offset: u64, data: &[u8]| Tensor {
            name: "t".into(),
            data: bytes::Bytes::copy_from_slice(data),
            offset,
            total_bytes: 4,
            ..Default::default()
        };
        let body = Bundle { tensors: vec![piece(0, b"ab"), piece(2, b"cd")] }.encode_to_vec();
        assert_eq!(assemble(&body).unwrap(), vec![("t".to_string(), b"abcd".to_vec())]);
        let body = Bundle { tensors: vec![piece(2, b"cd")] }.encode_to_vec();
        assert!(assemble(&body).is_err());
        assert!(assemble(&body[..body.len() - 1]).is_err(), "a cut body does not parse");
    }

    #[test]
    fn graphs_are_verified_and_locations_outside_the_tensor_folder_refused() {
        use crate::onnx::proto::{GraphProto, ModelProto, StringStringEntryProto, TensorProto};
        let graph = |location: &str| {
            ModelProto {
                graph: Some(GraphProto {
                    initializer: vec![TensorProto {
                        name: Some("w".into()),
                        data_type: Some(1),
                        dims: vec![1024],
                        data_location: Some(1),
                        external_data: vec![StringStringEntryProto {
                            key: Some("location".into()),
                            value: Some(location.into()),
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let manifest = |g: &[u8]| Manifest {
            graph_sha256: hex::encode(Sha256::digest(g)),
            graph_bytes: g.len() as u64,
            ..Default::default()
        };
        let good = graph("tensors/w.bin");
        assert_eq!(
            verify_graph(&manifest(&good), &good).unwrap(),
            vec![("w".to_string(), "tensors/w.bin".to_string())]
        );
        for bad in ["w", "tensors/../w.bin", "../../etc/passwd", "/etc/passwd", "manifest.pb", "model.onnx"] {
            let g = graph(bad);
            assert!(verify_graph(&manifest(&g), &g).is_err(), "{bad}");
        }
        let mut other = manifest(&good);
        other.graph_sha256 = hex::encode([0u8; 32]);
        assert!(verify_graph(&other, &good).unwrap_err().to_string().contains("graph_sha256"));
    }

    fn info(name: &str, sha: &str) -> crate::wire::proto::TensorInfo {
        crate::wire::proto::TensorInfo { name: name.into(), sha256: sha.into(), ..Default::default() }
    }

    #[test]
    fn the_plan_fetches_changed_and_missing_tensors_and_reuses_the_rest() {
        let manifest = Manifest {
            tensors: vec![info("same", "aa"), info("changed", "bb"), info("gone-file", "cc"), info("new", "dd")],
            ..Default::default()
        };
        let held: Vec<(String, String)> = ["same", "changed", "gone-file", "new"]
            .iter()
            .map(|n| (n.to_string(), format!("tensors/{n}.bin")))
            .collect();
        let local: HashMap<String, String> = [("same", "aa"), ("changed", "b0"), ("gone-file", "cc")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let needed = plan(&manifest, &held, &local, |name, _| name != "gone-file").unwrap();
        assert_eq!(needed, vec!["changed", "gone-file", "new"]);
        let stranger = vec![("stranger".to_string(), "tensors/stranger.bin".to_string())];
        assert!(plan(&manifest, &stranger, &local, |_, _| true).is_err(), "a tensor the manifest does not list");
    }
}
