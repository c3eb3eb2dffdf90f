//! `weightcast push MODEL oci://REGISTRY/REPO:TAG`: publishes a model
//! version to an OCI registry as the artifact [`crate::oci`] describes —
//! the hub's manifest as config, the hub's graph, one layer per external
//! tensor named by the tensor's sha256. Blobs the registry already holds
//! (`HEAD`) are not uploaded: republishing a fine-tune uploads only the
//! tensors that changed, the graph if it changed, the config and the
//! manifest.

use std::collections::HashMap;

use bytes::Bytes;
use oci_spec::image::{Descriptor, DescriptorBuilder, ImageManifestBuilder, MediaType};
use prost::Message;

use crate::oci::{self, Registry, RegistryError};
use crate::onnx::TensorData;
use crate::store::Model;

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pushed {
    /// The weightcast version published.
    pub version: String,
    /// The image manifest's digest (`oci://…@sha256:…` pulls exactly this).
    pub digest: String,
    /// Blobs in the artifact (config, graph, tensors; each digest once).
    pub blobs: usize,
    /// Blobs uploaded (the rest the registry held).
    pub uploaded: usize,
    /// Bytes uploaded, the manifest included.
    pub uploaded_bytes: u64,
    /// Bytes of the artifact: every blob and the manifest.
    pub artifact_bytes: u64,
}

/// Why a push failed; the registry's tag is unchanged (the manifest is put
/// last, after every blob it names is there).
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum PushError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the model cannot be published: {0}")]
    Model(String),
}

/// The manifest a model is published with (signed, if at all, by the
/// caller): the stored representation's, without hub blob paths (a
/// registry names blobs by digest alone).
pub fn config(model: &Model) -> crate::wire::proto::Manifest {
    let mut manifest = crate::encode::manifest::manifest(model, &model.view(None));
    for t in &mut manifest.tensors {
        t.blob.clear();
    }
    manifest
}

struct Blob {
    descriptor: Descriptor,
    data: Bytes,
}

fn descriptor(
    media: &str,
    data: &[u8],
    digest: String,
    annotations: HashMap<String, String>,
) -> Result<Descriptor, PushError> {
    let mut b = DescriptorBuilder::default().media_type(MediaType::Other(media.into())).size(data.len() as u64);
    b = b.digest(oci_spec::image::Digest::try_from(digest).map_err(|e| PushError::Model(e.to_string()))?);
    if !annotations.is_empty() {
        b = b.annotations(annotations);
    }
    b.build().map_err(|e| PushError::Model(e.to_string()))
}

fn title(path: &str) -> HashMap<String, String> {
    HashMap::from([(oci::TITLE.to_string(), path.to_string())])
}

/// The artifact's blobs: config, graph, then each external tensor in the
/// graph's order.
fn blobs(model: &Model, manifest: &crate::wire::proto::Manifest) -> Result<Vec<Blob>, PushError> {
    let config = Bytes::from(manifest.encode_to_vec());
    let sha = |b: &[u8]| oci::digest_of(&hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b)));
    let mut out =
        vec![Blob { descriptor: descriptor(oci::CONFIG_TYPE, &config, sha(&config), HashMap::new())?, data: config }];
    let graph = model.graph().clone();
    out.push(Blob {
        descriptor: descriptor(oci::GRAPH_TYPE, &graph, sha(&graph), title("model.onnx"))?,
        data: graph.clone(),
    });
    let parts = crate::onnx::graph_parts(graph).map_err(|e| PushError::Model(e.to_string()))?;
    let digests: HashMap<&str, &str> = manifest.tensors.iter().map(|t| (t.name.as_str(), t.sha256.as_str())).collect();
    for (name, location) in &parts.external {
        let index =
            model.position(name).ok_or_else(|| PushError::Model(format!("graph tensor '{name}' not loaded")))?;
        let TensorData::Bytes(data) = model.data(index, None) else {
            return Err(PushError::Model(format!("tensor '{name}' is STRING and cannot be external")));
        };
        let digest =
            digests.get(name.as_str()).ok_or_else(|| PushError::Model(format!("'{name}' not in the manifest")))?;
        let mut notes = title(location);
        notes.insert(oci::TENSOR_NAME.to_string(), name.clone());
        out.push(Blob { descriptor: descriptor(oci::TENSOR_TYPE, &data, oci::digest_of(digest), notes)?, data });
    }
    Ok(out)
}

/// Pushes `model` to `registry` at `tag`, with `manifest` as its config.
pub async fn push(
    model: &Model,
    manifest: &crate::wire::proto::Manifest,
    registry: &Registry,
    tag: &str,
) -> Result<Pushed, PushError> {
    let blobs = blobs(model, manifest)?;
    let mut report = Pushed { version: manifest.version.clone(), ..Default::default() };
    let mut done = std::collections::HashSet::new();
    for blob in &blobs {
        let digest = blob.descriptor.digest().to_string();
        if !done.insert(digest.clone()) {
            continue;
        }
        report.blobs += 1;
        report.artifact_bytes += blob.data.len() as u64;
        if registry.has_blob(&digest).await? {
            continue;
        }
        registry.upload(&digest, blob.data.clone()).await?;
        report.uploaded += 1;
        report.uploaded_bytes += blob.data.len() as u64;
    }
    let image = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::Other(oci::ARTIFACT_TYPE.into()))
        .config(blobs[0].descriptor.clone())
        .layers(blobs[1..].iter().map(|b| b.descriptor.clone()).collect::<Vec<_>>())
        .annotations(HashMap::from([
            ("org.opencontainers.image.version".to_string(), manifest.version.clone()),
            ("dev.weightcast.model".to_string(), manifest.model.clone()),
        ]))
        .build()
        .map_err(|e| PushError::Model(e.to_string()))?;
    let body = image.to_string().map_err(|e| PushError::Model(e.to_string()))?.into_bytes();
    if body.len() as u64 > oci::MANIFEST_LIMIT {
        let problem = format!(
            "its OCI manifest would take {} bytes, over the {} registries accept ({} layers)",
            body.len(),
            oci::MANIFEST_LIMIT,
            blobs.len() - 1
        );
        return Err(PushError::Model(problem));
    }
    report.uploaded_bytes += body.len() as u64;
    report.artifact_bytes += body.len() as u64;
    report.digest = registry.put_manifest(tag, body).await?;
    Ok(report)
}
