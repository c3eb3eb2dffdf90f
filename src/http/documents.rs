//! The documents the API serves — the page, health, readiness, metrics, the
//! model listing, and each model version's manifest, statistics, changes and
//! graph — all through one path: the ETag's precondition first, then a body
//! rendered and compressed on the blocking pool (a per-version one once,
//! kept in the cache), never on the executor's threads.

use std::future::Future;
use std::sync::Arc;

use http_types::{Response, StatusCode};
use sha2::{Digest, Sha256};

use super::auth::Scope;
use super::body::ChunkReader;
use super::conditional::{last_modified, Ask};
use super::error::{internal, not_found, ApiError};
use super::negotiate::Query;
use super::State;
use crate::encode::{self, manifest, Encoding, Format};
use crate::store::{Model, WHOLE_MODEL};
use crate::wire::MODEL_VERSION;

/// The page (`page.html`, in the binary): models, tensors with statistics
/// and histograms, what changed; plain HTML, CSS and JS, nothing fetched
/// from elsewhere (devices are often offline).
const PAGE: &str = include_str!("page.html");

/// The page's ETag: its digest, computed on the first request.
static PAGE_ETAG: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("\"page-{}\"", &hex::encode(Sha256::digest(PAGE.as_bytes()))[..16]));

/// The page's Content-Security-Policy: its one script allowed by its
/// sha256, no other script (no `'unsafe-inline'`: the policy must not rest
/// on the page building its DOM with `textContent` only), and no framing by
/// any site (`frame-ancestors 'none'`, and `X-Frame-Options` for older
/// browsers).
static PAGE_POLICY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use base64::Engine;
    let script = PAGE.split_once("<script>").and_then(|(_, rest)| rest.split_once("</script>")).map_or("", |s| s.0);
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script.as_bytes()));
    format!(
        "default-src 'none'; connect-src 'self'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
});

pub(super) fn page(ask: &Ask) -> Response {
    let etag = PAGE_ETAG.as_str();
    // Sent as it is, in every encoding: its 304 carries only the ETag.
    if ask.not_modified(etag) {
        let mut r = Response::new(StatusCode::NotModified);
        r.insert_header("ETag", etag);
        return r;
    }
    let mut r = Response::new(StatusCode::Ok);
    r.set_body(PAGE);
    r.insert_header("Content-Type", "text/html; charset=utf-8");
    r.insert_header("ETag", etag);
    r.insert_header("Cache-Control", "no-cache");
    r.insert_header("X-Content-Type-Options", "nosniff");
    r.insert_header("Content-Security-Policy", PAGE_POLICY.as_str());
    r.insert_header("X-Frame-Options", "DENY");
    r
}

/// A browser on a model's API URL: the page, at that model (`/#/m/{m}`).
pub(super) fn to_page(model: &str) -> Response {
    let mut r = Response::new(StatusCode::Found);
    let name = percent_encoding::utf8_percent_encode(model, percent_encoding::NON_ALPHANUMERIC);
    r.insert_header("Location", format!("/#/m/{name}"));
    r.insert_header("Cache-Control", "no-store");
    r.insert_header("Vary", "Accept");
    r
}

/// An empty JSON list (a Hugging Face tree listing below the top: every
/// file of a repo is at its top).
pub(super) fn empty_list() -> Response {
    let mut r = Response::new(StatusCode::Ok);
    r.set_body("[]");
    r.insert_header("Content-Type", "application/json");
    r
}

pub(super) fn healthz() -> Response {
    let mut r = Response::new(StatusCode::Ok);
    r.set_body("ok\n");
    r.insert_header("Content-Type", "text/plain");
    r.insert_header("Cache-Control", "no-store");
    r
}

/// `/readyz`: `200` when every configured model is loaded and serving,
/// else `503`, with how many are not (`/healthz` only says the process
/// answers). Which ones, and why, only to `seen` (a token that may read
/// them, or everyone where tokens are off): an anonymous probe must not
/// learn model names, file paths or parser errors.
pub(super) fn readyz(state: &State, seen: Option<&Scope>) -> Response {
    let failed: Vec<(String, String)> = state
        .store
        .entries()
        .into_iter()
        .filter_map(|e| match e {
            crate::store::Entry::Failed { name, error } => Some((name, error)),
            crate::store::Entry::Loaded(_) => None,
        })
        .collect();
    let mut body = serde_json::json!({"ready": failed.is_empty(), "not_loaded_count": failed.len()});
    if let Some(scope) = seen {
        let told: Vec<serde_json::Value> = failed
            .iter()
            .filter(|(name, _)| scope.may_read(name))
            .map(|(name, error)| serde_json::json!({"model": name, "error": error}))
            .collect();
        body["not_loaded"] = serde_json::Value::Array(told);
    }
    let mut r = Response::new(if failed.is_empty() { StatusCode::Ok } else { StatusCode::ServiceUnavailable });
    r.set_body(serde_json::to_vec(&body).unwrap_or_default());
    r.insert_header("Content-Type", "application/json");
    r.insert_header("Cache-Control", "no-store");
    r
}

/// `/v1/fleet`: the devices and rollouts of the models `scope` may read.
pub(super) fn fleet(state: &State, scope: &Scope) -> Response {
    let mut r = Response::new(StatusCode::Ok);
    r.set_body(serde_json::to_vec(&state.fleet.document(|m| scope.may_read(m))).unwrap_or_default());
    r.insert_header("Content-Type", "application/json");
    r.insert_header("Cache-Control", "no-store");
    r
}

/// `/metrics`: Prometheus' text format.
pub(super) fn metrics(state: &State) -> Response {
    let mut r = Response::new(StatusCode::Ok);
    r.set_body(state.metrics.render(&state.store) + &state.fleet.metrics());
    r.insert_header("Content-Type", "text/plain; version=0.0.4");
    r.insert_header("Cache-Control", "no-store");
    r
}

/// One way to serve a document: its precondition (a `304`), else the body
/// `produce` makes, with the headers every document carries; one about a
/// model version says which (`X-Weightcast-Model-Version`).
async fn serve(
    ask: &Ask,
    etag: &str,
    format: Format,
    model: Option<&Model>,
    produce: impl Future<Output = Result<bytes::Bytes, ApiError>>,
) -> Result<Response, ApiError> {
    if let Some(not_modified) = ask.precondition(etag, None) {
        return Ok(not_modified);
    }
    let body = produce.await?;
    let mut r = Response::new(StatusCode::Ok);
    ask.headers(&mut r, etag, format);
    if let Some(model) = model {
        r.insert_header(MODEL_VERSION, model.version());
    }
    set_bytes(&mut r, body);
    Ok(r)
}

/// A document's bytes in an encoding, rendered and compressed on the
/// blocking pool (for documents that are not per version: the listing).
async fn compressed(
    encoding: Encoding,
    level: i32,
    render: impl FnOnce() -> Vec<u8> + Send + 'static,
) -> Result<bytes::Bytes, ApiError> {
    smol::unblock(move || {
        let raw = render();
        match encoding {
            Encoding::Identity => Ok(raw.into()),
            Encoding::Zstd => encode::zstd_frame(&raw, level).map(Into::into),
        }
    })
    .await
    .map_err(internal)
}

/// `/v1/models`: every model the token may read, loaded or failed.
pub(super) async fn listing(state: &State, ask: &Ask, q: &Query, scope: &Scope) -> Result<Response, ApiError> {
    let format = ask.format(Format::DOCUMENTS, q)?;
    let entries: Vec<_> = state.store.entries().into_iter().filter(|e| scope.may_read(e.name())).collect();
    let versions: Vec<String> = entries
        .iter()
        .map(|e| match e {
            crate::store::Entry::Loaded(m) => m.version().to_string(),
            crate::store::Entry::Failed { name, .. } => format!("failed:{name}"),
        })
        .collect();
    let etag = ask.etag(&versions.join(","), "models", format);
    let render = move || manifest::render_listing(&manifest::listing(&entries), format);
    serve(ask, &etag, format, None, compressed(ask.encoding, state.options.zstd_level, render)).await
}

/// `/v1/models/{model}`: the manifest of a representation, signed where
/// the hub has a key.
pub(super) async fn manifest(state: &State, ask: &Ask, q: &Query, model: Arc<Model>) -> Result<Response, ApiError> {
    let format = ask.format(Format::DOCUMENTS, q)?;
    let signer = state.options.signer.clone();
    let period = signing_period(state);
    let etag = manifest_etag(&model, q.dtype, period, format, ask.encoding);
    let (m, repr) = (model.clone(), q.dtype);
    let variant = format!("manifest-{repr:?}-{}-{period:?}", format.name());
    let body = model_document(&model, variant, ask.encoding, state.options.zstd_level, move || {
        let mut doc = manifest::manifest(&m, &m.view(repr));
        if let (Some(signer), Some(period)) = (signer, period) {
            signer.sign(&mut doc, period);
        }
        Ok(manifest::render_manifest(&doc, format))
    });
    serve(ask, &etag, format, Some(&model), body).await
}

/// The signing period a manifest signed now falls in (`None`: unsigned).
pub(super) fn signing_period(state: &State) -> Option<u64> {
    state.options.signer.as_ref().map(|s| s.period(crate::wire::unix_ms()))
}

/// The ETag of a manifest representation. A signed manifest changes each
/// signing period: so does its ETag.
pub(super) fn manifest_etag(
    model: &Model,
    dtype: Option<crate::onnx::cast::Target>,
    period: Option<u64>,
    format: Format,
    encoding: Encoding,
) -> String {
    let resource = format!("manifest|{dtype:?}|{period:?}");
    super::conditional::etag(model.version(), &resource, format, encoding)
}

/// `/v1/models/{m}/stats`: each tensor's statistics, computed and rendered
/// once per version on the blocking pool.
pub(super) async fn stats(state: &State, ask: &Ask, model: Arc<Model>) -> Result<Response, ApiError> {
    let m = model.clone();
    version_document(state, ask, &model, "stats".into(), move || Ok(encode::inspect::stats(&m, &m.stats()))).await
}

/// `/v1/models/{m}/changes`: what changed from the version this one
/// replaced; 404 until the model's file has been replaced once.
pub(super) async fn changes(state: &State, ask: &Ask, model: Arc<Model>) -> Result<Response, ApiError> {
    let Some(changes) = model.changes() else {
        let detail = format!(
            "this server has served only one version of '{}' so far (or is still comparing): \
             changes appear once its file is replaced; for two versions on disk use `weightcast diff A B`",
            model.name
        );
        return Err(not_found("no earlier version", detail));
    };
    let resource = format!("changes|{}", changes.from_version);
    let m = model.clone();
    version_document(state, ask, &model, resource, move || Ok(encode::inspect::changes(&m, &changes))).await
}

/// A JSON document about one version of a model (its `resource`), rendered
/// and compressed once ([`model_document`]).
async fn version_document(
    state: &State,
    ask: &Ask,
    model: &Arc<Model>,
    resource: String,
    render: impl FnOnce() -> Result<Vec<u8>, String> + Send + 'static,
) -> Result<Response, ApiError> {
    let etag = ask.etag(model.version(), &resource, Format::Json);
    let body = model_document(model, resource, ask.encoding, state.options.zstd_level, render);
    serve(ask, &etag, Format::Json, Some(model), body).await
}

/// The model as an ONNX file whose large main-graph initializers are external,
/// each at the location `wire::tensor_file(tensor)`: a client rebuilds the
/// model from it and tensors it already has.
pub(super) async fn graph(state: &State, ask: &Ask, model: Arc<Model>) -> Result<Response, ApiError> {
    let format = Format::Protobuf; // only for the ETag: the body is an ONNX file
    let etag = ask.etag(model.version(), "graph", format);
    if let Some(not_modified) = ask.precondition(&etag, Some(&model)) {
        return Ok(not_modified);
    }
    let body = match ask.encoding {
        // The graph is in memory already (a view of the model's map).
        Encoding::Identity => model.graph().clone(),
        Encoding::Zstd => {
            let m = model.clone();
            model_document(&model, "graph".into(), ask.encoding, state.options.zstd_level, move || {
                Ok(m.graph().to_vec())
            })
            .await?
        }
    };
    let mut r = Response::new(StatusCode::Ok);
    ask.headers(&mut r, &etag, format);
    r.insert_header("Content-Type", "application/octet-stream");
    r.insert_header(MODEL_VERSION, model.version());
    last_modified(&mut r, &model);
    r.insert_header("Content-Disposition", format!("attachment; filename=\"{}.onnx\"", model.name));
    set_bytes(&mut r, body);
    Ok(r)
}

/// A whole-model document (manifest, zstd graph) in one encoding: from the
/// cache's memory at once; else read from its disk, or rendered and
/// compressed once (concurrent requests wait for that one), on the blocking
/// pool, never on the executor's threads.
async fn model_document(
    model: &Arc<Model>,
    variant: String,
    encoding: Encoding,
    level: i32,
    render: impl FnOnce() -> Result<Vec<u8>, String> + Send + 'static,
) -> Result<bytes::Bytes, ApiError> {
    let key = model.cache_key(WHOLE_MODEL, format!("{variant}-{}", encoding.name()));
    if let Some(crate::store::Found::Memory(body)) = model.cache().lookup(&key) {
        return Ok(body);
    }
    let m = model.clone();
    smol::unblock(move || {
        m.cache().get_or_compute(key, || {
            let raw = render()?;
            match encoding {
                Encoding::Identity => Ok(raw.into()),
                Encoding::Zstd => encode::zstd_frame(&raw, level).map(Into::into).map_err(|e| e.to_string()),
            }
        })
    })
    .await
    .map_err(internal)
}

/// A body that is already in memory, sent without another copy.
fn set_bytes(r: &mut Response, body: bytes::Bytes) {
    let len = body.len();
    r.set_body(http_types::Body::from_reader(ChunkReader::new(vec![encode::Chunk::Ready(body)]), Some(len)));
}
