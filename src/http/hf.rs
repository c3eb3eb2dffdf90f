//! The Hugging Face Hub's read API, as much as its clients need to download
//! a model from a weightcast hub with no glue: `huggingface_hub`
//! (`snapshot_download`, `hf_hub_download`, with `endpoint=` or
//! `HF_ENDPOINT`), the `hf-hub` crate, transformers.js's URL template. A
//! model is a repo of two files: `model.onnx`, self-contained (weights
//! inline: the client's cache keeps files in `blobs/` behind symlinks, and
//! ONNX Runtime 1.31 refuses external data that resolves outside the model's
//! folder), and `model.safetensors` (`/weights?format=safetensors`).
//! Revision `main` is the version served to clients (the stable one while a
//! rollout runs); its first 40 hex digits — the "commit" — pin it.

use std::sync::Arc;

use http_types::{Response, StatusCode};
use serde_json::json;

use super::conditional::{last_modified, Ask};
use super::error::{internal, not_found, ApiError};
use super::negotiate::Query;
use super::{tensors, State};
use crate::encode::{Chunk, Format};
use crate::store::{Model, WHOLE_MODEL};

/// The repo's files.
pub(super) const ONNX: &str = "model.onnx";
pub(super) const SAFETENSORS: &str = "model.safetensors";

/// Largest protobuf message: a self-contained `model.onnx` above it cannot
/// be written (such a model is offered as `model.safetensors` only).
const PROTOBUF_LIMIT: u64 = (2 << 30) - 1;

/// A version's "commit": the first 40 hex digits of the version.
fn commit(model: &Model) -> &str {
    model.version().get(..40).unwrap_or(model.version())
}

/// The model a revision names: `main`, or a version's first 40 (or all 64)
/// hex digits among the versions this hub serves.
pub(super) fn revision(state: &State, name: &str, rev: &str) -> Result<Arc<Model>, ApiError> {
    let served = state.model_for(name, None).ok_or_else(|| {
        ApiError::new(StatusCode::NotFound, "repository not found", format!("no model '{name}' on this hub"))
            .with_header("X-Error-Code", "RepoNotFound")
    })?;
    if rev == "main" {
        return Ok(served);
    }
    let pinned = rev.len() >= 40 && rev.bytes().all(|b| b.is_ascii_hexdigit());
    let held = std::iter::once(served).chain(state.fleet.stable_models()).chain(state.store.get(name));
    for m in held {
        if pinned && m.name == name && m.version().starts_with(&rev.to_ascii_lowercase()) {
            return Ok(m);
        }
    }
    let detail = format!("model '{name}' has no revision '{rev}' here: give main, or the first 40 hex digits of a version this hub serves");
    Err(ApiError::new(StatusCode::NotFound, "revision not found", detail)
        .with_header("X-Error-Code", "RevisionNotFound"))
}

/// Whether `model.onnx` fits in one protobuf message (its graph and the
/// tensors `/graph` keeps outside).
fn onnx_fits(model: &Model) -> bool {
    let outside: u64 =
        model.outside().keys().filter_map(|n| model.position(n)).map(|i| model.tensors[i].nbytes()).sum();
    model.graph().len() as u64 + outside < PROTOBUF_LIMIT
}

fn files(model: &Model) -> Vec<&'static str> {
    match onnx_fits(model) {
        true => vec![ONNX, SAFETENSORS],
        false => vec![SAFETENSORS],
    }
}

/// `/api/models/{repo}[/revision/{rev}]`: the repo's facts and files.
pub(super) fn info(model: &Model) -> Response {
    let siblings: Vec<_> = files(model).into_iter().map(|f| json!({"rfilename": f})).collect();
    let modified = iso8601(model.published_at_ms);
    let body = json!({
        "_id": model.name, "id": model.name, "modelId": model.name, "author": "weightcast",
        "sha": commit(model), "lastModified": modified, "private": false, "disabled": false, "gated": false,
        "downloads": 0, "likes": 0, "library_name": "onnx", "tags": ["onnx", "safetensors"],
        "siblings": siblings,
    });
    json_response(body, commit(model))
}

/// `/api/models/{repo}/tree/{rev}`: the files with their sizes.
pub(super) async fn tree(state: &State, ask: &Ask, model: Arc<Model>) -> Result<Response, ApiError> {
    let mut entries = Vec::new();
    for f in files(&model) {
        let r = file(state, ask, model.clone(), f).await?;
        let size: u64 = r.header("Content-Length").and_then(|v| v.as_str().parse().ok()).unwrap_or(0);
        let oid = r.header("ETag").map(|e| e.as_str().trim_matches('"').to_string()).unwrap_or_default();
        entries.push(json!({"type": "file", "path": f, "size": size, "oid": oid.get(..40).unwrap_or(&oid)}));
    }
    Ok(json_response(serde_json::Value::Array(entries), commit(&model)))
}

/// `HEAD`/`GET` `/{repo}/resolve/{rev}/{file}`: a file, in identity, with
/// the headers the clients read (`X-Repo-Commit`, `ETag`, `Content-Length`,
/// ranges).
pub(super) async fn file(state: &State, ask: &Ask, model: Arc<Model>, name: &str) -> Result<Response, ApiError> {
    let ask = &ask.clone().identity();
    let mut r = match name {
        SAFETENSORS => {
            // What safetensors can hold: strings and packed sub-byte types
            // are left out (as `pull --format safetensors` leaves them), so a
            // model with one such tensor still has its weights file.
            let q = Query { format: Some(Format::Safetensors), ..Default::default() };
            let held = (0..model.tensors.len())
                .filter(|&i| crate::wire::safetensors_dtype(model.tensors[i].dtype).is_some())
                .collect();
            tensors::tensors(state, ask, &q, model.clone(), held, false).await?
        }
        ONNX if onnx_fits(&model) => self_contained(ask, model.clone()).await?,
        ONNX => {
            let detail = format!(
                "'{}' is over protobuf's 2 GiB as one file: take model.safetensors, or `weightcast pull` (external data)",
                model.name
            );
            return Err(
                not_found("file too large for one ONNX file", detail).with_header("X-Error-Code", "EntryNotFound")
            );
        }
        other => {
            let detail = format!("'{}' holds {}; not '{other}'", model.name, files(&model).join(" and "));
            return Err(not_found("entry not found", detail).with_header("X-Error-Code", "EntryNotFound"));
        }
    };
    r.insert_header("X-Repo-Commit", commit(&model));
    Ok(r)
}

/// `model.onnx` with every weight inline, made once per version (cached).
async fn self_contained(ask: &Ask, model: Arc<Model>) -> Result<Response, ApiError> {
    let etag = ask.etag(model.version(), "hf|model.onnx", Format::Protobuf);
    if let Some(not_modified) = ask.precondition(&etag, Some(&model)) {
        return Ok(not_modified);
    }
    let key = model.cache_key(WHOLE_MODEL, "hf-model.onnx".into());
    let m = model.clone();
    let body = smol::unblock(move || {
        m.cache().get_or_compute(key, || {
            let data_of = |name: &str| m.position(name).map(|i| m.data(i, None).bytes());
            crate::onnx::graph::inline(m.graph(), data_of).map(Into::into).map_err(|e| e.to_string())
        })
    })
    .await
    .map_err(internal)?;
    let mut r = Response::new(StatusCode::Ok);
    ask.headers(&mut r, &etag, Format::Protobuf);
    r.insert_header("Content-Type", "application/octet-stream");
    last_modified(&mut r, &model);
    r.insert_header("Content-Disposition", format!("attachment; filename=\"{ONNX}\""));
    tensors::with_body(ask, &etag, r, vec![Chunk::Ready(body)], &model)
}

fn json_response(body: serde_json::Value, commit: &str) -> Response {
    let mut r = Response::new(StatusCode::Ok);
    r.set_body(serde_json::to_vec(&body).unwrap_or_default());
    r.insert_header("Content-Type", "application/json");
    r.insert_header("Cache-Control", "no-cache");
    r.insert_header("X-Repo-Commit", commit);
    r
}

/// `2026-12-06T10:20:32.000Z`, the form Hugging Face's clients parse. By
/// hand: the civil-from-days algorithm (Howard Hinnant's) is ten lines, and
/// the tree holds no date crate (httpdate writes RFC 9110's form only).
fn iso8601(unix_ms: u64) -> String {
    let (days, ms) = ((unix_ms / 86_400_000) as i64, unix_ms % 86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{frac:03}Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_written_as_hugging_face_writes_them() {
        assert_eq!(super::iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(super::iso8601(1_796_552_432_123), "2026-12-06T10:20:32.123Z");
    }
}
