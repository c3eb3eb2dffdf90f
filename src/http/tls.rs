//! TLS for `serve`: rustls (ring provider) over smol's streams through
//! `futures-rustls`. The certificate chain and key are PEM files named in
//! the config (`[tls] cert`, `key`); they are looked at again (inode, size,
//! modification time) at most once a second, and a renewed pair applies to
//! the next connections — a pair that does not load keeps the last good one,
//! with an error in the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

type Stamp = Option<(u64, u64, Option<std::time::SystemTime>)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.ino(), m.len(), m.modified().ok()))
}

/// The server's certificate and key, reloaded when they change.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<([Stamp; 2], Instant, Arc<ServerConfig>)>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

/// How often the files are looked at, at most.
const LOOK_EVERY: Duration = Duration::from_secs(1);

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
        let cfg = config(cert, key)?;
        let stamps = [stamp(cert), stamp(key)];
        Ok(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Mutex::new((stamps, Instant::now(), Arc::new(cfg))),
        })
    }

    /// The acceptor for a new connection, with the pair in force now.
    pub(super) fn acceptor(&self) -> futures_rustls::TlsAcceptor {
        let mut current = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.1.elapsed() >= LOOK_EVERY {
            current.1 = Instant::now();
            let now = [stamp(&self.cert), stamp(&self.key)];
            if now != current.0 {
                current.0 = now;
                match config(&self.cert, &self.key) {
                    Ok(cfg) => {
                        tracing::info!(cert = %self.cert.display(), "TLS certificate re-read");
                        current.2 = Arc::new(cfg);
                    }
                    Err(e) => tracing::error!("TLS certificate not re-read; the last good one stays: {e}"),
                }
            }
        }
        futures_rustls::TlsAcceptor::from(current.2.clone())
    }
}
