//! Tensor data: a selection of a model's tensors (`/weights`, one tensor)
//! or one tensor by its digest (`/v1/blobs/sha256/…`), encoded and streamed
//! chunk by chunk, with ranges where the body allows.

use std::sync::Arc;

use http_types::{Response, StatusCode};

use super::auth::Scope;
use super::body::{self, ChunkReader};
use super::conditional::{last_modified, with_range, Ask};
use super::error::{encode_error, not_found, ApiError};
use super::negotiate::Query;
use super::State;
use crate::encode::{self, Chunk, Encoding, Format, Selection};
use crate::store::Model;
use crate::wire::MODEL_VERSION;

/// Tensor data in the negotiated format, streamed chunk by chunk.
pub(super) async fn tensors(
    state: &State,
    ask: &Ask,
    q: &Query,
    model: Arc<Model>,
    tensors: Vec<usize>,
    single: bool,
) -> Result<Response, ApiError> {
    let format = ask.format(if single { Format::TENSOR } else { Format::BUNDLES }, q)?;
    let resource = format!("tensors|{single}|{:?}|{}|{}|{:?}", q.dtype, q.compress, q.bytegroup, tensors);
    let etag = ask.etag(model.version(), &resource, format);
    if let Some(not_modified) = ask.precondition(&etag, Some(&model)) {
        return Ok(not_modified);
    }
    let repr = q.dtype;
    let file = match single {
        true => crate::wire::safe_name(model.tensors[tensors[0]].name.as_str()),
        false => model.name.clone(),
    };
    let view = view(&model, repr).await;
    let version = view.version.clone();
    let selection = Selection { model, view, repr, tensors, single, bytegroup: q.bytegroup };
    let options = encode::Options {
        zstd_level: state.options.zstd_level,
        json_max_bytes: state.options.json_max_bytes,
        deflate: q.compress,
    };
    let chunks = encode::body(&selection, format, ask.encoding, options).map_err(encode_error)?;
    let mut r = Response::new(StatusCode::Ok);
    ask.headers(&mut r, &etag, format);
    r.insert_header("X-Weightcast-Version", version.as_str());
    r.insert_header(MODEL_VERSION, selection.model.version());
    last_modified(&mut r, &selection.model);
    r.insert_header("Content-Disposition", disposition(&file, format));
    with_body(ask, &etag, r, chunks, &selection.model)
}

/// `/v1/blobs/sha256/{digest}[?dtype=]`: a tensor's bytes by their digest,
/// in a representation (stored, or cast). The URL names its content, so
/// the answer may be kept by any cache for a year (`immutable`); its ETag is
/// the digest. A token sees the blobs of the models it may read.
pub(super) async fn blob(
    state: &State,
    ask: &Ask,
    q: &Query,
    digest: &str,
    scope: &Scope,
) -> Result<Response, ApiError> {
    let not_found = || not_found("unknown blob", format!("no tensor served has sha256 {digest}"));
    let digest_of = |hex_digest: &str| -> Option<[u8; 32]> { hex::decode(hex_digest).ok()?.try_into().ok() };
    let want = digest_of(digest).ok_or_else(not_found)?;
    let models: Vec<Arc<Model>> = state
        .store
        .models()
        .into_iter()
        .chain(state.fleet.stable_models())
        .filter(|m| scope.may_read(&m.name))
        .collect();
    // Only views already computed are searched; a cast view is computed for
    // the one model that holds the tensor it was cast `from` (the manifest's
    // blob URL names it): a request for an unknown digest costs no cast.
    let mut found = None;
    for model in &models {
        let Some(view) = model.view_ready(q.dtype) else { continue };
        if let Some(i) = view.tensors.iter().position(|t| t.sha256 == want) {
            found = Some((model.clone(), view, i));
            break;
        }
    }
    if let (None, Some(_), Some(source)) = (&found, q.dtype, q.from.as_deref().and_then(digest_of)) {
        let holder =
            models.iter().find(|m| m.view_ready(None).is_some_and(|v| v.tensors.iter().any(|t| t.sha256 == source)));
        if let Some(model) = holder {
            let view = view(model, q.dtype).await;
            found = view.tensors.iter().position(|t| t.sha256 == want).map(|i| (model.clone(), view, i));
        }
    }
    let (model, view, i) = found.ok_or_else(not_found)?;
    let etag = format!("\"sha256:{digest}\"");
    let immutable = |r: &mut Response| {
        r.insert_header("ETag", etag.as_str());
        r.insert_header("Cache-Control", "public, max-age=31536000, immutable");
        r.insert_header("Vary", "Accept-Encoding");
    };
    if ask.not_modified(&etag) {
        let mut r = Response::new(StatusCode::NotModified);
        immutable(&mut r);
        return Ok(r);
    }
    let selection = Selection { model, view, repr: q.dtype, tensors: vec![i], single: true, bytegroup: false };
    let options = encode::Options { zstd_level: state.options.zstd_level, json_max_bytes: 0, deflate: false };
    let chunks = encode::body(&selection, Format::Raw, ask.encoding, options).map_err(encode_error)?;
    let mut r = Response::new(StatusCode::Ok);
    immutable(&mut r);
    r.insert_header("Content-Type", Format::Raw.media_type());
    if ask.encoding == Encoding::Zstd {
        r.insert_header("Content-Encoding", "zstd");
    }
    with_body(ask, &etag, r, chunks, &selection.model)
}

/// Indices of the named tensors (model order, no repeats), or all of them.
/// Each `names=` value is one tensor's name when the model has a tensor of
/// exactly that name (so names with commas, and the empty name, can be
/// asked for), else a comma-separated list of names.
pub(super) fn select(model: &Model, names: Option<&[String]>) -> Result<Vec<usize>, ApiError> {
    let Some(values) = names else { return Ok((0..model.tensors.len()).collect()) };
    let mut picked = Vec::with_capacity(values.len());
    for value in values {
        if let Some(i) = model.position(value) {
            picked.push(i);
            continue;
        }
        for n in value.split(',').filter(|n| !n.is_empty()) {
            let i = model
                .position(n)
                .ok_or_else(|| not_found("unknown tensor", format!("model '{}' has no tensor '{n}'", model.name)))?;
            picked.push(i);
        }
    }
    picked.sort_unstable();
    picked.dedup();
    Ok(picked)
}

pub(super) fn unknown_tensor(model: &Model, name: &str) -> ApiError {
    let m = &model.name;
    let detail = format!("model '{m}' has no tensor '{name}'; GET /v1/models/{m} lists them");
    not_found("unknown tensor", detail)
}

/// A representation's view: at once when ready, else computed (casts) on the
/// blocking pool, never on the executor's threads.
async fn view(model: &Arc<Model>, repr: crate::store::Representation) -> Arc<crate::store::View> {
    match model.view_ready(repr) {
        Some(v) => v,
        None => {
            let m = model.clone();
            smol::unblock(move || m.view(repr)).await
        }
    }
}

/// `r` with `chunks` as its body (a `206` or `416` where a range asks), the
/// body holding its model's version until it is sent.
pub(super) fn with_body(
    ask: &Ask,
    etag: &str,
    mut r: Response,
    chunks: Vec<Chunk>,
    model: &Arc<Model>,
) -> Result<Response, ApiError> {
    let chunks = match with_range(ask, etag, &mut r, chunks) {
        Ok(chunks) => chunks,
        Err(unsatisfiable) => return Ok(*unsatisfiable),
    };
    let len = body::known_len(&chunks);
    let reader = ChunkReader::new(chunks).holding(model.clone());
    r.set_body(http_types::Body::from_reader(reader, len));
    Ok(r)
}

/// `Content-Disposition` with a file name a download tool can save under:
/// the model's name (or the tensor's, made file-safe) and the format's
/// extension; JSON is shown, the binary formats are downloaded.
fn disposition(stem: &str, format: Format) -> String {
    let ext = match format {
        Format::Protobuf => "pb",
        Format::Json => "json",
        Format::Npz => "npz",
        Format::Npy => "npy",
        Format::Safetensors => "safetensors",
        Format::Raw => "bin",
    };
    let kind = if format == Format::Json { "inline" } else { "attachment" };
    format!("{kind}; filename=\"{stem}.{ext}\"")
}
