//! The version's bytes from the hub or registry: the changed tensors, each
//! verified; large ones streamed into resumable partial files, small ones in
//! batches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use http_types::Url;

use prost::Message;
use sha2::{Digest, Sha256};

use super::check::{record_bound, verify_tensor};
use super::source::{expect_ok, retry_after, same_model, Hub, Offer, Source, QUERY};
use super::{tensor_error, UpdateError};
use crate::net::{self as client, Client};
use crate::onnx::DataType;
use crate::wire::{self, proto::Bundle};

/// A fetched tensor's bytes, verified against the manifest: small ones in
/// memory, large ones in a file under `.partial` that the version folder
/// takes over (never read whole).
pub(super) enum Fetched {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// Step 4: the changed tensors, each verified: large ones one by one, raw,
/// into partial files a later round resumes; the rest in batches. Returns
/// them with the bytes that crossed the wire.
pub(super) async fn fetch_tensors(
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
    let bound = |batch: &[String]| batch.iter().map(|n| infos.get(n.as_str()).map_or(0, |t| record_bound(t))).sum();
    let size = |name: &str| infos.get(name).map_or(0, |t| t.nbytes);
    // Tensors with a blob URL (not STRING) from BY_DIGEST on come by digest,
    // one by one: a cache between hub and devices keeps each one; the small
    // rest in batches. Without a blob URL (an older hub), from RESUME_FROM on
    // through the tensor route.
    // From a registry, every tensor is a blob.
    let hub = source.hub();
    let (large, small): (Vec<String>, Vec<String>) = needed.iter().cloned().partition(|n| {
        hub.is_none()
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
        let (client, url, model_version) = source.single(client, offer, info)?;
        let (file, wire) = fetch_large(client, &url, model_version, info, &dir, &bar).await?;
        wire_bytes += wire;
        fetched.insert(name.clone(), Fetched::File(file));
    }
    // From a registry, `small` is empty: every tensor is a blob.
    for (hub, batch) in hub.iter().flat_map(|hub| batches(&small).into_iter().map(move |batch| (*hub, batch))) {
        let (tensors, wire) = fetch_batch(client, hub, offer, &batch, bound(&batch)).await?;
        wire_bytes += wire;
        for (name, data) in tensors {
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

/// Tensors at least this large are fetched one by one, uncompressed (a byte
/// range of a zstd stream cannot be decoded alone), into a partial file that a
/// later round resumes with `Range` after a cut.
pub(super) const RESUME_FROM: u64 = 8 << 20;

/// Tensors at least this large come by digest (`/v1/blobs/sha256/…`) where
/// the hub names a blob: one request each, which a cache can keep; smaller
/// ones cost more as requests than they save as cached bytes.
pub(super) const BY_DIGEST: u64 = 64 << 10;

/// A progress bar on a terminal; nothing otherwise (logs say the rest).
pub(super) fn progress(total: u64) -> indicatif::ProgressBar {
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
pub(super) fn clean_partials(partial: &Path, keep: &str) {
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
pub(super) async fn fetch_large(
    client: &Client,
    url: &Url,
    model_version: Option<&str>,
    info: &crate::wire::proto::TensorInfo,
    dir: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<(PathBuf, u64), UpdateError> {
    let name = info.name.as_str();
    let Partial { part, tag_file, tag, have } = partial(dir, info)?;
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
    verify_download(&part, info, hasher.into_inner())?;
    Ok((part, reply.wire_bytes as u64))
}

/// One batch of small tensors (`/weights?names=…`), as protobuf records of
/// at most `limit` bytes in all; the bytes that crossed the wire.
async fn fetch_batch(
    client: &Client,
    hub: &Hub,
    offer: &Offer,
    batch: &[String],
    limit: u64,
) -> Result<(Vec<(String, Vec<u8>)>, u64), UpdateError> {
    let names: Vec<String> =
        batch.iter().map(|n| format!("names={}", percent_encoding::utf8_percent_encode(n, QUERY))).collect();
    let url = hub.url(&format!("/weights?{}", names.join("&")), true)?;
    let r = client.get(&url, &[("Accept", "application/x-protobuf")], limit).await?;
    expect_ok(&url, &r)?;
    same_model(&r, &offer.model_version)?;
    Ok((assemble(&r.body)?, r.wire_bytes as u64))
}

/// A large tensor's partial download: its file, the file holding the ETag
/// it came with, and the bytes held (resumed from there).
struct Partial {
    part: PathBuf,
    tag_file: PathBuf,
    tag: Option<String>,
    have: u64,
}

/// What an earlier round left of a tensor's download in `dir`. A link where
/// the folder or its files should be is removed, never followed: a link
/// planted under `--dest` must not make us write elsewhere.
fn partial(dir: &Path, info: &crate::wire::proto::TensorInfo) -> std::io::Result<Partial> {
    let is_link = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    if is_link(dir) {
        std::fs::remove_file(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let stem = wire::tensor_file(&info.name);
    let stem = stem.trim_start_matches(wire::TENSOR_DIR).trim_start_matches('/');
    let (part, tag_file) = (dir.join(format!("{stem}.raw")), dir.join(format!("{stem}.etag")));
    for file in [&part, &tag_file] {
        if is_link(file) {
            std::fs::remove_file(file)?;
        }
    }
    let tag = std::fs::read_to_string(&tag_file).ok();
    let have = match (&tag, std::fs::metadata(&part)) {
        (Some(_), Ok(m)) if m.len() <= info.nbytes => m.len(),
        _ => 0,
    };
    Ok(Partial { part, tag_file, tag, have })
}

/// A complete download is the tensor the manifest names (length and
/// sha256), or it is removed and the round fails.
fn verify_download(part: &Path, info: &crate::wire::proto::TensorInfo, hasher: Sha256) -> Result<(), UpdateError> {
    let len = std::fs::metadata(part)?.len();
    let digest = hex::encode(hasher.finalize());
    if len == info.nbytes && digest == info.sha256 {
        return Ok(());
    }
    let _ = std::fs::remove_file(part);
    let problem = match len == info.nbytes {
        true => "its bytes' sha256 is not the manifest's".to_string(),
        false => format!("{len} bytes came, the manifest says {}", info.nbytes),
    };
    Err(tensor_error(&info.name, problem))
}

/// sha256 state after bytes `[from, from + len)` of `path` (to its end
/// when `len` is `None`), read a MiB at a time.
pub(super) fn hash_range(path: &Path, from: u64, len: Option<u64>) -> std::io::Result<Sha256> {
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

/// Name lists short enough for one request line each.
pub(super) fn batches(names: &[String]) -> Vec<Vec<String>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
