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
