//! OCI registries as a fleet's distribution engine: how a weightcast version
//! lies in a registry (an artifact), and the distribution API client that
//! `weightcast push` and `weightcast pull oci://…` share.
//!
//! # The artifact
//!
//! An OCI image manifest (`application/vnd.oci.image.manifest.v1+json`)
//! with `artifactType` [`ARTIFACT_TYPE`]:
//! - **config**: the weightcast `Manifest` protobuf ([`CONFIG_TYPE`]), the
//!   same bytes a hub serves, signed when the publisher signs;
//! - **layer 1**: the graph ([`GRAPH_TYPE`]), the hub's `/graph`: every
//!   tensor of 1 KiB or more points at `tensors/<name>.bin`;
//! - **one layer per external tensor** ([`TENSOR_TYPE`]) whose digest is the
//!   tensor's sha256 in the manifest: the stored bytes, little-endian, as
//!   ONNX holds them. Unchanged tensors keep their digest across versions,
//!   so a registry stores them once and a device fetches only new ones.
//!
//! Each layer's `org.opencontainers.image.title` is its path in a version
//! folder (`model.onnx`, `tensors/…`): `oras pull` of the artifact gives a
//! folder ONNX Runtime loads. No small tensors are packed together: tensors
//! under 1 KiB already travel inside the graph, and a pack would break that
//! property (figures in docs/fleet.md).
//!
//! The distribution API runs on [`crate::net`]'s smol client (the
//! `oci-client` crate needs tokio); `oci-spec` gives the JSON types.

mod auth;
mod registry;

pub use auth::{Credentials, CredentialsError, RegistryAuth};
pub use registry::{Registry, RegistryError, RegistryManifest};

/// The artifact's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.weightcast.model.v1";
/// The config blob: a `weightcast.v1.Manifest`.
pub const CONFIG_TYPE: &str = "application/vnd.weightcast.manifest.v1+protobuf";
/// The graph layer: ONNX with external tensors under `tensors/`.
pub const GRAPH_TYPE: &str = "application/vnd.weightcast.graph.v1+onnx";
/// A tensor layer: its raw bytes.
pub const TENSOR_TYPE: &str = "application/vnd.weightcast.tensor.v1";
/// The media type of the manifest itself.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// A layer's file name (what `oras pull` writes it as).
pub const TITLE: &str = "org.opencontainers.image.title";
/// A tensor layer's tensor name.
pub const TENSOR_NAME: &str = "dev.weightcast.tensor";

/// Registries refuse manifests above 4 MiB (distribution, Harbor, ECR).
pub const MANIFEST_LIMIT: u64 = 4 << 20;

/// Where an artifact lies: `oci://HOST[:PORT]/REPOSITORY[:TAG][@DIGEST]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `https://host:port` (`http://` with `--plain-http`).
    pub origin: String,
    /// `team/detector`.
    pub repository: String,
    /// The tag or `sha256:…` digest a manifest is read at.
    pub reference: String,
}

/// Why an `oci://` reference could not be read.
#[derive(Debug, thiserror::Error)]
#[error("'{url}': {problem}{}", if *.example { "; give one like oci://registry.example:5000/team/detector:v1" } else { "" })]
pub struct ReferenceError {
    url: String,
    problem: String,
    example: bool,
}

impl Reference {
    /// The repository's last segment (`detector` in `team/detector`): the
    /// model's name, unless `push --name` or `pull --model` says otherwise,
    /// so a tag cannot silently carry another model.
    pub fn model_name(&self) -> &str {
        self.repository.rsplit('/').next().unwrap_or(&self.repository)
    }

    /// Parses `oci://…`. The tag defaults to `latest`. The registry speaks
    /// HTTPS, or plain HTTP when `plain_http` (as `oras --plain-http`).
    pub fn parse(url: &str, plain_http: bool) -> Result<Reference, ReferenceError> {
        let error =
            |problem: &str, example| ReferenceError { url: url.to_string(), problem: problem.to_string(), example };
        let rest = url.strip_prefix("oci://").ok_or_else(|| match url.starts_with("http") {
            // A hub's URL: a hub serves the model files it is configured with
            // and takes no pushes (and pull takes it as it is).
            true => error("is a hub's URL; push publishes to an OCI registry (a hub serves its own model files)", true),
            false => error("does not start with oci://", false),
        })?;
        let bad = |why: &str| error(why, true);
        if !rest.contains('/') {
            return Err(bad("no repository"));
        }
        let parsed = oci_spec::distribution::Reference::try_from(rest).map_err(|e| bad(&e.to_string()))?;
        let host = parsed.registry().to_string();
        if !rest.starts_with(&host) {
            return Err(bad("no registry host (the first part must be a host, with a port or a dot)"));
        }
        let reference = match (parsed.digest(), parsed.tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".to_string(),
        };
        let scheme = if plain_http { "http" } else { "https" };
        Ok(Reference { origin: format!("{scheme}://{host}"), repository: parsed.repository().to_string(), reference })
    }
}

/// `sha256:<hex>`.
pub fn digest_of(hex: &str) -> String {
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        let r = Reference::parse("oci://127.0.0.1:5000/team/detector:v2", true).unwrap();
        assert_eq!(r.origin, "http://127.0.0.1:5000");
        assert_eq!((r.repository.as_str(), r.reference.as_str()), ("team/detector", "v2"));
        let r = Reference::parse("oci://registry.example/detector", false).unwrap();
        assert_eq!((r.origin.as_str(), r.reference.as_str()), ("https://registry.example", "latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("oci://localhost:5000/m@{d}"), true).unwrap();
        assert_eq!((r.origin.as_str(), r.reference.as_str()), ("http://localhost:5000", d.as_str()));
        for bad in ["http://x/y", "oci://detector", "oci://reg:5000/UPPER:tag", "oci://reg:5000/x:bad tag"] {
            assert!(Reference::parse(bad, false).is_err(), "{bad}");
        }
    }
}
