//! The distribution API calls weightcast makes: manifests by tag (with
//! `If-None-Match`), blobs by digest (bounded, verified), `HEAD` to skip
//! blobs a registry holds, monolithic uploads, manifest `PUT`.

use bytes::Bytes;
use http_types::{Method, Url};
use oci_spec::image::ImageManifest;
use sha2::{Digest, Sha256};

use super::{Reference, MANIFEST_LIMIT, MANIFEST_TYPE};
use crate::net::{Client, FetchError, Reply};

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum RegistryError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{url} answered {status}{}", .explanation.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    Status { url: String, status: u16, explanation: Option<String> },
    #[error("{url}: {problem}")]
    Invalid { url: String, problem: String },
}

/// A manifest read from a registry.
pub struct RegistryManifest {
    /// Parsed.
    pub manifest: ImageManifest,
    /// Its digest (`sha256:…`), computed from the bytes.
    pub digest: String,
    /// What to send as `If-None-Match` next time.
    pub etag: String,
    /// Bytes that crossed the wire.
    pub wire_bytes: u64,
}

/// One repository of one registry.
pub struct Registry {
    client: Client,
    base: String,
}

impl Registry {
    /// `client` carries the registry's [`super::RegistryAuth`].
    pub fn new(reference: &Reference, client: Client) -> Registry {
        Registry { client, base: format!("{}/v2/{}", reference.origin, reference.repository) }
    }

    /// The client (and its credentials) for reads of [`Registry::blob_url`].
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn url(&self, path: &str) -> Result<Url, RegistryError> {
        let url = format!("{}/{path}", self.base);
        Url::parse(&url).map_err(|e| RegistryError::Invalid { url, problem: e.to_string() })
    }

    /// A blob's URL.
    pub fn blob_url(&self, digest: &str) -> Result<Url, RegistryError> {
        self.url(&format!("blobs/{digest}"))
    }

    /// The manifest at `reference` (a tag or digest); `None` when it is
    /// still `etag`.
    pub async fn manifest(
        &self,
        reference: &str,
        etag: Option<&str>,
    ) -> Result<Option<RegistryManifest>, RegistryError> {
        let url = self.url(&format!("manifests/{reference}"))?;
        let mut headers = vec![("Accept", MANIFEST_TYPE)];
        if let Some(tag) = etag {
            headers.push(("If-None-Match", tag));
        }
        let reply = self.client.request(Method::Get, &url, &headers, None, MANIFEST_LIMIT).await?;
        if reply.status == 304 && etag.is_some() {
            return Ok(None);
        }
        expect(&url, &reply, 200)?;
        let invalid = |problem: String| RegistryError::Invalid { url: url.to_string(), problem };
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&reply.body)));
        if reference.starts_with("sha256:") && reference != digest {
            return Err(invalid(format!("the manifest's bytes hash to {digest}, not the digest asked for")));
        }
        let manifest = ImageManifest::from_reader(reply.body.as_slice())
            .map_err(|e| invalid(format!("not an OCI image manifest ({e}); is the tag an image index?")))?;
        let etag = reply.header("ETag").map_or_else(|| format!("\"{digest}\""), str::to_string);
        Ok(Some(RegistryManifest { manifest, digest, etag, wire_bytes: reply.wire_bytes as u64 }))
    }

    /// A whole blob of at most `limit` bytes, checked against `digest`.
    pub async fn blob(&self, digest: &str, limit: u64) -> Result<Reply, RegistryError> {
        let url = self.blob_url(digest)?;
        let reply = self.client.request(Method::Get, &url, &[("Accept-Encoding", "identity")], None, limit).await?;
        expect(&url, &reply, 200)?;
        if format!("sha256:{}", hex::encode(Sha256::digest(&reply.body))) != digest {
            let problem = format!("{} bytes whose sha256 is not the digest asked for", reply.body.len());
            return Err(RegistryError::Invalid { url: url.to_string(), problem });
        }
        Ok(reply)
    }

    /// Whether the registry holds `digest` (`HEAD`).
    pub async fn has_blob(&self, digest: &str) -> Result<bool, RegistryError> {
        let url = self.blob_url(digest)?;
        let reply = self.client.request(Method::Head, &url, &[], None, 0).await?;
        match reply.status {
            200 => Ok(true),
            404 => Ok(false),
            _ => expect(&url, &reply, 200).map(|_| false),
        }
    }

    /// Uploads `data` as `digest`: `POST` an upload, `PUT` it whole.
    pub async fn upload(&self, digest: &str, data: Bytes) -> Result<(), RegistryError> {
        let start = self.url("blobs/uploads/")?;
        let reply = self.client.request(Method::Post, &start, &[("Content-Length", "0")], None, 1 << 16).await?;
        expect(&start, &reply, 202)?;
        let location = reply.header("Location").ok_or_else(|| RegistryError::Invalid {
            url: start.to_string(),
            problem: "202 without a Location for the upload".into(),
        })?;
        let mut put = start.join(location).map_err(|e| RegistryError::Invalid {
            url: start.to_string(),
            problem: format!("bad upload Location '{location}': {e}"),
        })?;
        put.query_pairs_mut().append_pair("digest", digest);
        let len = data.len().to_string();
        let headers = [("Content-Type", "application/octet-stream"), ("Content-Length", len.as_str())];
        let reply = self.client.request(Method::Put, &put, &headers, Some(data), 1 << 16).await?;
        expect(&put, &reply, 201)
    }

    /// Puts `body` (an image manifest) at `reference`; returns its digest.
    pub async fn put_manifest(&self, reference: &str, body: Vec<u8>) -> Result<String, RegistryError> {
        let url = self.url(&format!("manifests/{reference}"))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        let len = body.len().to_string();
        let headers = [("Content-Type", MANIFEST_TYPE), ("Content-Length", len.as_str())];
        let reply = self.client.request(Method::Put, &url, &headers, Some(Bytes::from(body)), 1 << 16).await?;
        expect(&url, &reply, 201)?;
        Ok(digest)
    }
}

fn expect(url: &Url, reply: &Reply, status: u16) -> Result<(), RegistryError> {
    if reply.status == status {
        return Ok(());
    }
    let hint = match reply.status {
        401 => Some("the registry wants credentials it accepts: give --registry-credentials FILE (USER:PASSWORD) or a Docker config.json entry for it"),
        403 => Some("these credentials may not do this on this repository"),
        _ => None,
    };
    let explanation = match (explanation(&reply.body), hint) {
        (Some(e), Some(h)) => Some(format!("{e}; {h}")),
        (e, h) => e.or(h.map(str::to_string)),
    };
    Err(RegistryError::Status { url: url.to_string(), status: reply.status, explanation })
}

/// A registry's error body (`{"errors":[{"code","message"}]}`), short.
pub(crate) fn explanation(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let first = &v["errors"][0];
    let text = match (first["code"].as_str(), first["message"].as_str()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(t), None) | (None, Some(t)) => t.to_string(),
        (None, None) => return None,
    };
    Some(text.chars().filter(|c| !c.is_control()).take(300).collect())
}
