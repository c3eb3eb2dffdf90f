//! Where versions come from: a hub's model URL or an OCI registry's tag;
//! the manifest each offers (conditionally), and the graph it names.

use std::path::Path;
use std::time::Duration;

use http_types::Url;
use prost::Message;
use sha2::{Digest, Sha256};

use super::check::{verify_graph, verify_manifest};
use super::{tensor_error, Options, Output, UpdateError, GRAPH_FILE, MANIFEST_LIMIT};
use crate::net::{self as client, Client};
use crate::onnx::DataType;
use crate::wire::{self, proto::Manifest, MODEL_VERSION};

pub(super) fn retry_after(reply: &client::Reply) -> Option<Duration> {
    reply.header("Retry-After").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs)
}

pub(super) fn expect_ok(url: &Url, reply: &client::Reply) -> Result<(), UpdateError> {
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
pub(super) fn explanation(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = match (v["error"].as_str(), v["detail"].as_str()) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(t), None) | (None, Some(t)) => t.to_string(),
        (None, None) => return None,
    };
    Some(text.chars().filter(|c| !c.is_control()).take(300).collect())
}

/// The model's routes on the hub, in the representation asked for.
pub(super) struct Hub {
    pub(super) base: String,
    /// `dtype=…`, or empty.
    pub(super) query: String,
}

impl Hub {
    pub(super) fn new(opts: &Options) -> Hub {
        Hub {
            base: opts.url.as_str().trim_end_matches('/').to_string(),
            query: opts.dtype.map_or(String::new(), |d| format!("dtype={}", d.name())),
        }
    }

    /// A blob's URL: its path (from the manifest) on the hub's origin. Only
    /// paths under `/v1/blobs/` are followed: a manifest cannot send the
    /// device elsewhere.
    pub(super) fn blob(&self, path: &str) -> Result<Url, UpdateError> {
        let bad = |problem: &str| UpdateError::BadUrl { url: path.to_string(), problem: problem.to_string() };
        if !path.starts_with("/v1/blobs/sha256/") || path.contains("..") || path.contains("//") {
            return Err(bad("a manifest's blob must be a path under /v1/blobs/sha256/"));
        }
        let base = Url::parse(&self.base).map_err(|e| bad(&e.to_string()))?;
        base.join(path).map_err(|e| bad(&e.to_string()))
    }

    /// Where a large tensor's raw bytes are: its blob, or (an older hub) the
    /// tensor route.
    pub(super) fn tensor_url(&self, info: &crate::wire::proto::TensorInfo) -> Result<Url, UpdateError> {
        match info.blob.is_empty() {
            false => self.blob(&info.blob),
            true => {
                let name = percent_encoding::utf8_percent_encode(&info.name, QUERY);
                self.url(&format!("/tensors/{name}?format=raw"), true)
            }
        }
    }

    /// `base + suffix`, with the representation's query appended when `dtype`.
    pub(super) fn url(&self, suffix: &str, dtype: bool) -> Result<Url, UpdateError> {
        let sep = if suffix.contains('?') { '&' } else { '?' };
        let url = match dtype && !self.query.is_empty() {
            true => format!("{}{suffix}{sep}{}", self.base, self.query),
            false => format!("{}{suffix}", self.base),
        };
        Url::parse(&url).map_err(|e| UpdateError::BadUrl { url, problem: e.to_string() })
    }
}

/// Characters escaped in a tensor name inside `?names=` (commas separate names).
pub(super) const QUERY: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'.').remove(b'_').remove(b'-');

/// Where versions come from: a hub's model URL, or an OCI registry's tag.
pub(super) enum Source {
    Hub(Hub),
    Registry { registry: crate::oci::Registry, reference: String },
}

impl Source {
    pub(super) fn new(opts: &Options, client: &Client) -> Result<Source, UpdateError> {
        if opts.url.scheme() != "oci" {
            return Ok(Source::Hub(Hub::new(opts)));
        }
        let r = crate::oci::Reference::parse(opts.url.as_str(), opts.plain_http)
            .map_err(|e| UpdateError::BadUrl { url: opts.url.to_string(), problem: e.to_string() })?;
        Ok(Source::Registry { registry: crate::oci::Registry::new(&r, client.clone()), reference: r.reference })
    }

    /// Its manifest, conditionally. `None`: not modified since `etag`.
    pub(super) async fn offer(&self, client: &Client, etag: Option<&str>) -> Result<Option<Offer>, UpdateError> {
        match self {
            Source::Hub(hub) => fetch_manifest(client, hub, etag).await,
            Source::Registry { registry, reference } => fetch_artifact(registry, reference, etag).await,
        }
    }

    /// The hub, where small tensors come in batches (`/weights?names=`); a
    /// registry serves blobs only.
    pub(super) fn hub(&self) -> Option<&Hub> {
        match self {
            Source::Hub(hub) => Some(hub),
            Source::Registry { .. } => None,
        }
    }

    /// Where a tensor fetched alone comes from: the client to ask, its URL,
    /// and the stored version its answer must name (`None`: a blob, checked
    /// by its digest alone).
    pub(super) fn single<'a>(
        &'a self,
        client: &'a Client,
        offer: &'a Offer,
        info: &crate::wire::proto::TensorInfo,
    ) -> Result<(&'a Client, Url, Option<&'a str>), UpdateError> {
        match self {
            Source::Hub(hub) => {
                let version = info.blob.is_empty().then_some(offer.model_version.as_str());
                Ok((client, hub.tensor_url(info)?, version))
            }
            Source::Registry { registry, .. } => Ok((registry.client(), artifact_blob(registry, offer, info)?, None)),
        }
    }

    /// The offered version's graph, and the bytes that crossed the wire.
    async fn graph(&self, client: &Client, offer: &Offer) -> Result<(Vec<u8>, u64), UpdateError> {
        match self {
            Source::Registry { registry, .. } => {
                let digest = crate::oci::digest_of(&offer.manifest.graph_sha256);
                let reply = registry.blob(&digest, offer.manifest.graph_bytes).await?;
                Ok((reply.body, reply.wire_bytes as u64))
            }
            Source::Hub(hub) => {
                let url = hub.url("/graph", false)?;
                let reply = client.get(&url, &[], offer.manifest.graph_bytes).await?;
                expect_ok(&url, &reply)?;
                same_model(&reply, &offer.model_version)?;
                Ok((reply.body, reply.wire_bytes as u64))
            }
        }
    }

    /// What the offered version holds besides the manifest ([`contents`]).
    pub(super) async fn contents(
        &self,
        client: &Client,
        opts: &Options,
        offer: &Offer,
        current: Option<&Path>,
    ) -> Result<Contents, UpdateError> {
        contents(client, self, opts, offer, current).await
    }
}

/// The blobs of an OCI artifact, by digest.
pub(super) struct Artifact {
    pub(super) layers: std::collections::HashSet<String>,
}

/// A manifest the hub offered, verified against itself.
pub(super) struct Offer {
    pub(super) manifest: Manifest,
    /// Its body, kept as the version's `manifest.pb`.
    pub(super) body: Vec<u8>,
    /// The stored weights' version every later answer must carry.
    pub(super) model_version: String,
    pub(super) etag: Option<String>,
    pub(super) wire_bytes: u64,
    /// From a registry: the artifact's blobs.
    pub(super) artifact: Option<Artifact>,
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
    let content_type = reply.header("Content-Type").unwrap_or("no Content-Type").to_string();
    if content_type.starts_with("text/html") {
        let problem = format!("{url} answered a web page (text/html), not a manifest: is it a model's URL on a weightcast hub (http://hub:8080/v1/models/NAME)?");
        return Err(UpdateError::Manifest { problem });
    }
    let manifest = Manifest::decode(reply.body.as_slice()).map_err(|e| UpdateError::Manifest {
        problem: format!(
            "{url} answered {} bytes of {content_type} that are not a weightcast manifest ({e}); is it a model's URL on a weightcast hub?",
            reply.body.len()
        ),
    })?;
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
pub(super) struct Contents {
    /// The hub's `/graph` (ONNX output), verified against the manifest.
    pub(super) graph: Option<Vec<u8>>,
    /// The tensors held in files (ONNX: the graph's external initializers, at
    /// `wire::tensor_file`) or in the safetensors file: (name, location).
    pub(super) held: Vec<(String, String)>,
    /// Held tensors that may be hard-linked between versions: the main
    /// graph's initializers. ONNX Runtime 1.31 checks a subgraph's (an If
    /// branch's) external data with the onnx checker, which refuses a file
    /// with a second link ("potential hardlink attack": silero's and
    /// vad-web's If branches, measured); those are copied.
    pub(super) linkable: std::collections::HashSet<String>,
    pub(super) wire_bytes: u64,
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
        return Ok(Contents { graph: None, held, linkable: Default::default(), wire_bytes: 0 });
    }
    let local = current.and_then(|dir| std::fs::read(dir.join(GRAPH_FILE)).ok());
    let (graph, wire_bytes) = match local.filter(|g| hex::encode(Sha256::digest(g)) == manifest.graph_sha256) {
        Some(graph) => (graph, 0),
        None => source.graph(client, offer).await?,
    };
    let held = verify_graph(manifest, &graph)?;
    let linkable = crate::onnx::proto::ModelProto::decode(graph.as_slice())
        .ok()
        .and_then(|m| m.graph)
        .map(|g| g.initializer.into_iter().filter_map(|t| t.name).collect())
        .unwrap_or_default();
    Ok(Contents { graph: Some(graph), held, linkable, wire_bytes })
}

/// A tensor's blob in a registry: a layer of the artifact named by its digest.
pub(super) fn artifact_blob(
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

pub(super) fn same_model(reply: &client::Reply, version: &str) -> Result<(), UpdateError> {
    match reply.header(MODEL_VERSION) {
        Some(v) if v == version => Ok(()),
        _ => Err(UpdateError::Republished),
    }
}
