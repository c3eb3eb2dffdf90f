//! TLS for `serve`: rustls (ring provider) over smol's streams through
//! `futures-rustls`. The certificate chain and key are PEM files named in
//! the config (`[tls] cert`, `key`), re-read when they change
//! ([`Reloading`]): a renewed pair applies to the next connections.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::reloading::Reloading;

/// The server's certificate and key, reloaded when they change.
pub struct ServerTls(Reloading<ServerConfig>);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("files", &self.0.paths()).finish_non_exhaustive()
    }
}

fn make(paths: &[PathBuf]) -> Result<ServerConfig, String> {
    config(&paths[0], &paths[1])
}

fn config(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("cannot read the certificate chain {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate in it", cert.display()));
    }
    warn_if_expiring(cert, &chain[0], crate::wire::unix_ms() / 1000);
    let secret =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("cannot read the key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, secret)
        .map_err(|e| format!("{} and {} do not make a usable pair: {e}", cert.display(), key.display()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Warns (at start and at each reload) when the certificate has expired or
/// expires within [`EXPIRY_WARNING_DAYS`]: clients refuse an expired one,
/// and the hub would otherwise serve it without a word. Returns the days
/// left (negative: expired), where the certificate can be read.
fn warn_if_expiring(path: &Path, cert: &CertificateDer<'_>, now_s: u64) -> Option<i64> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let not_after = parsed.tbs_certificate.validity.not_after.to_unix_duration().as_secs();
    let left_s = not_after as i64 - now_s as i64;
    let days = left_s.div_euclid(86_400);
    let date = httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(not_after));
    if left_s <= 0 {
        tracing::error!(cert = %path.display(), "the TLS certificate expired on {date}: clients refuse it; renew it (the file is re-read within a second)");
    } else if days < EXPIRY_WARNING_DAYS {
        tracing::warn!(cert = %path.display(), days, "the TLS certificate expires on {date}; renew it (the file is re-read within a second)");
    }
    Some(days)
}

/// A certificate this close to expiry is warned about.
const EXPIRY_WARNING_DAYS: i64 = 14;

impl ServerTls {
    /// Loads the pair; one that does not load is an error at start.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, String> {
        Reloading::load("TLS certificate and key", vec![cert.to_path_buf(), key.to_path_buf()], make).map(ServerTls)
    }

    /// The acceptor for a new connection, with the pair in force now.
    pub(super) fn acceptor(&self) -> futures_rustls::TlsAcceptor {
        futures_rustls::TlsAcceptor::from(self.0.get())
    }
}
