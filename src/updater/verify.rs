//! `weightcast verify`: checks, offline, the version a device holds against
//! the manifest it came with — the manifest's own version formula, its
//! signature by a trusted key, the graph's digest and every tensor file's
//! digest — reading each file a MiB at a time.

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use prost::Message;
use sha2::Digest;

use super::layout::Dest;
use super::{verify_graph, verify_manifest, GRAPH_FILE, MANIFEST_FILE, SAFETENSORS_FILE};
use crate::wire::proto::Manifest;

/// What a verified version is.
#[derive(Debug)]
pub struct Verified {
    /// The model's name.
    pub model: String,
    /// The version.
    pub version: String,
    /// Tensors whose bytes were checked.
    pub tensors: usize,
    /// The key that signed its manifest, when keys were given.
    pub signed_by: Option<String>,
    /// When that signature expires (Unix ms): reported, not enforced offline.
    pub expires_at_ms: u64,
}

/// Why a held version did not verify.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum VerifyError {
    #[error("no current version in {0} (has `weightcast pull` installed one there?)")]
    NoCurrent(String),
    #[error("{path} is unusable: {problem}")]
    Manifest { path: String, problem: String },
    #[error("its manifest is not trusted: {0}")]
    Untrusted(#[from] crate::wire::signature::SignatureError),
    #[error("{path} is not the graph its manifest names: {problem}")]
    Graph { path: String, problem: String },
    #[error("tensor '{name}': {problem}")]
    Tensor { name: String, problem: String },
    #[error("{0}")]
    Disk(#[from] std::io::Error),
}

/// Hex sha256 of a file's bytes `[from, from + len)` (all of it when `len` is None).
fn file_digest(path: &Path, from: u64, len: Option<u64>) -> std::io::Result<String> {
    Ok(hex::encode(super::fetch::hash_range(path, from, len)?.finalize()))
}

/// Verifies the current version under `dest`; with `trust` keys, also that
/// its manifest is signed by one of them (expiry is reported, not enforced:
/// a device offline for long still holds authentic weights).
pub fn verify(dest: &Path, trust: &[VerifyingKey]) -> Result<Verified, VerifyError> {
    let dest = Dest::reading(dest)?;
    let (_, dir) = dest.current().ok_or_else(|| VerifyError::NoCurrent(dest.root().display().to_string()))?;
    let manifest_path = dir.join(MANIFEST_FILE).display().to_string();
    let unusable = |problem: String| VerifyError::Manifest { path: manifest_path.clone(), problem };
    let body = std::fs::read(dir.join(MANIFEST_FILE))?;
    let manifest =
        Manifest::decode(body.as_slice()).map_err(|e| unusable(format!("not a weightcast.v1.Manifest: {e}")))?;
    verify_manifest(&manifest).map_err(|e| unusable(e.to_string()))?;
    if !trust.is_empty() {
        crate::wire::signature::check(&manifest, trust, 0, None)?;
    }
    let digests: std::collections::HashMap<&str, &str> =
        manifest.tensors.iter().map(|t| (t.name.as_str(), t.sha256.as_str())).collect();
    let mismatch = |name: &str, problem: &str| VerifyError::Tensor { name: name.into(), problem: problem.into() };
    let tensors = if dir.join(GRAPH_FILE).is_file() {
        let graph = std::fs::read(dir.join(GRAPH_FILE))?;
        let graph_path = dir.join(GRAPH_FILE).display().to_string();
        let locations = verify_graph(&manifest, &graph)
            .map_err(|e| VerifyError::Graph { path: graph_path, problem: e.to_string() })?;
        for (name, location) in &locations {
            let digest = file_digest(&dir.join(location), 0, None)
                .map_err(|e| mismatch(name, &format!("cannot read {location}: {e}")))?;
            if digests.get(name.as_str()) != Some(&digest.as_str()) {
                return Err(mismatch(name, &format!("{location} does not match the manifest's sha256")));
            }
        }
        manifest.tensors.len()
    } else {
        let path = dir.join(SAFETENSORS_FILE);
        let st = super::stfile::Current::open(&path)
            .ok_or_else(|| mismatch("*", &format!("{} is missing or not a valid safetensors file", path.display())))?;
        let mut checked = 0;
        for t in &manifest.tensors {
            let Some((from, len)) = st.range(&t.name) else { continue };
            let digest = file_digest(&path, from, Some(len))?;
            if digest != t.sha256 {
                return Err(mismatch(&t.name, "its bytes in model.safetensors do not match the manifest's sha256"));
            }
            checked += 1;
        }
        checked
    };
    Ok(Verified {
        model: manifest.model.clone(),
        version: manifest.version.clone(),
        tensors,
        signed_by: (!trust.is_empty()).then(|| hex::encode(&manifest.signing_key)),
        expires_at_ms: manifest.expires_at_ms,
    })
}
