//! The HTTP client of `weightcast pull` and `weightcast push`: one request
//! per connection over async-h1 on smol (the server's own stack), plain or
//! TLS (rustls), with a deadline, credentials a [`Authorizer`] keeps (a hub's
//! bearer token, a registry's token dance), redirects followed for reads,
//! and checks that a body arrived whole and no larger than expected.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;
use http_types::{Method, Request, Url};

/// What answers a server's `401`: the `Authorization` header to send, and
/// new credentials when challenged (`WWW-Authenticate`).
pub trait Authorizer: Send + Sync {
    /// The `Authorization` value for a request to `url`, if any.
    fn header(&self, url: &Url) -> Option<String>;
    /// Called with a `401`'s `WWW-Authenticate`; `Ok(true)`: new credentials
    /// are ready and the request is sent once more.
    fn challenge<'a>(
        &'a self,
        url: &'a Url,
        challenge: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<bool, FetchError>> + Send + 'a>>;
}

/// A fixed bearer token (a hub's `--token-file`): nothing to renew.
pub struct Bearer(pub String);

impl Authorizer for Bearer {
    fn header(&self, _: &Url) -> Option<String> {
        Some(format!("Bearer {}", self.0))
    }
    fn challenge<'a>(
        &'a self,
        _: &'a Url,
        _: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<bool, FetchError>> + Send + 'a>> {
        Box::pin(async { Ok(false) })
    }
}

/// A connection refused or unreachable, and what to check.
fn connect_problem(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    match e.kind() {
        ErrorKind::ConnectionRefused => format!("{text}; is the hub (or registry) running there, on that port?"),
        _ => format!("{text}; check the host name and the network"),
    }
}

/// A failed handshake, and what to check: a server that answers TLS with
/// plain HTTP, or a certificate not signed by the CA trusted.
fn tls_problem(e: &str) -> String {
    match e.contains("InvalidContentType") || e.contains("corrupt message") || e.contains("handshake eof") {
        true => "the server does not speak TLS; is it http:// (for a registry: add --plain-http)?".into(),
        false => format!("{e} (is the server's certificate signed by the CA given with --ca, or by a system root?)"),
    }
}

/// Why a request did not give a usable answer.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum FetchError {
    #[error("cannot connect to {0}: {problem}", problem = connect_problem(.1))]
    Connect(String, std::io::Error),
    #[error("{0}: {1}")]
    Http(String, String),
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{url}: body cut short ({got} of {want} bytes)")]
    Truncated { url: String, got: usize, want: usize },
    #[error("{0}: body cut short (the connection closed before its last chunk)")]
    CutChunked(String),
    #[error("{url}: the body is larger than the {limit} bytes expected; refused")]
    TooLarge { url: String, limit: u64 },
    #[error("TLS with {0} failed: {problem}", problem = tls_problem(.1))]
    Tls(String, String),
    #[error("{0}: cannot decode zstd body: {1}")]
    Zstd(String, std::io::Error),
    #[error("{url}: {problem}")]
    Auth { url: String, problem: String },
    #[error("{0}: more than {MAX_REDIRECTS} redirects")]
    Redirects(String),
}

/// Redirects followed for one read (registries send blob reads to storage).
const MAX_REDIRECTS: usize = 5;

/// A zstd body decoded to at most `limit` bytes (an error past it: a small
/// body must not inflate to gigabytes).
fn decode_zstd(raw: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(raw)?.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::other(format!("decodes to more than the {limit} bytes expected")));
    }
    Ok(out)
}

/// A body that could not be read: async-h1 reports a chunked body whose
/// connection closed early only by this message, so it is told apart here.
fn body_error(url: &str, message: String) -> FetchError {
    if message.contains("Unexpected EOF when decoding chunked data") {
        FetchError::CutChunked(url.to_string())
    } else {
        FetchError::Http(url.to_string(), message)
    }
}

/// An answer.
pub struct Reply {
    /// The status code.
    pub status: u16,
    headers: Vec<(String, String)>,
    /// Decoded (zstd undone).
    pub body: Vec<u8>,
    /// Bytes that crossed the wire for the body.
    pub wire_bytes: usize,
}

impl Reply {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A body being written to a file: what arrived so far stays there, so a later
/// request can resume it with `Range`.
pub struct Download<'a> {
    /// The file.
    pub path: &'a std::path::Path,
    /// Bytes already in the file (asked for with `Range: bytes=N-`).
    pub have: u64,
    /// Most bytes the whole file may hold: reading stops there, with an error.
    pub limit: u64,
    /// Called with each piece of the body as it is written (hash, progress).
    pub on_piece: &'a dyn Fn(&[u8]),
    /// Called with the answer's head before its body is read.
    pub on_head: &'a dyn Fn(&Reply),
}

/// The HTTP client.
#[derive(Clone)]
pub struct Client {
    /// Credentials for every request (a hub's token, a registry's dance).
    pub auth: Option<Arc<dyn Authorizer>>,
    /// Deadline of each request (`--timeout`).
    pub timeout: Duration,
    /// How `https://` hubs are verified ([`tls_config`]).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Headers sent with every request: a device's report to its hub
    /// (`wire::report`), never set on a registry's client.
    pub headers: Vec<(&'static str, String)>,
}

/// TLS for `https://` hubs: the hub's certificate must chain to the CA in
/// `ca` (PEM; `--ca`), or else to the system's roots. Verification is never
/// skipped.
pub fn tls_config(ca: Option<&std::path::Path>) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read --ca {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("--ca {}: no usable certificate in it", path.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err("no system CA certificates found (install ca-certificates, or give --ca FILE)".into());
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(cfg))
}

impl Client {
    /// This client, sending `headers` with every request too.
    pub fn with_headers(&self, headers: Vec<(&'static str, String)>) -> Client {
        Client { headers, ..self.clone() }
    }

    /// GETs `url` into `dl.path`: appended after `dl.have` bytes on a `206`,
    /// written from the start on a `200`. The reply's body is left empty.
    pub async fn download(&self, url: &Url, headers: &[(&str, &str)], dl: Download<'_>) -> Result<Reply, FetchError> {
        use futures_lite::AsyncReadExt;
        use std::io::Write;
        let name = url.to_string();
        let io = |e: std::io::Error| FetchError::Http(name.clone(), format!("cannot write {}: {e}", dl.path.display()));
        let work = async {
            let mut res = self.send(Method::Get, url, headers, None).await?;
            let status = u16::from(res.status());
            let reply_headers: Vec<(String, String)> =
                res.iter().map(|(k, v)| (k.as_str().to_string(), v.last().as_str().to_string())).collect();
            let mut reply = Reply { status, headers: reply_headers, body: Vec::new(), wire_bytes: 0 };
            let append = status == 206;
            if status != 200 && !append {
                return Ok(reply);
            }
            let announced = reply.header("Content-Length").and_then(|v| v.parse::<u64>().ok());
            if announced.is_some_and(|n| dl.have.saturating_add(n) > dl.limit) {
                return Err(FetchError::TooLarge { url: name.clone(), limit: dl.limit });
            }
            // A 206 must continue exactly where the file ends.
            let from = format!("bytes {}-", dl.have);
            if append && !reply.header("Content-Range").is_some_and(|r| r.starts_with(&from)) {
                let got = reply.header("Content-Range").unwrap_or("none").to_string();
                return Err(FetchError::Http(name.clone(), format!("206 for range {got}, asked {from}")));
            }
            (dl.on_head)(&reply);
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(dl.path)
                .map_err(io)?;
            let mut body = res.take_body().into_reader();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = body.read(&mut buf).await.map_err(|e| body_error(&name, e.to_string()))?;
                if n == 0 {
                    break;
                }
                if dl.have + (reply.wire_bytes + n) as u64 > dl.limit {
                    return Err(FetchError::TooLarge { url: name.clone(), limit: dl.limit });
                }
                file.write_all(&buf[..n]).map_err(io)?;
                reply.wire_bytes += n;
                (dl.on_piece)(&buf[..n]);
            }
            if let Some(want) = reply.header("Content-Length").and_then(|v| v.parse::<usize>().ok()) {
                if reply.wire_bytes != want {
                    return Err(FetchError::Truncated { url: name.clone(), got: reply.wire_bytes, want });
                }
            }
            Ok(reply)
        };
        self.deadline(url.as_str(), work).await
    }

    /// Sends a request: credentials from the [`Authorizer`], once more
    /// after a `401` it answered with new ones; a read follows redirects
    /// (credentials go only where the authorizer gives them).
    async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: &[(&str, &str)],
        body: Option<&bytes::Bytes>,
    ) -> Result<http_types::Response, FetchError> {
        let mut url = url.clone();
        let (mut challenged, mut redirects) = (false, 0);
        loop {
            let auth = self.auth.as_ref().and_then(|a| a.header(&url));
            let started = std::time::Instant::now();
            let res = self.send_once(method, &url, headers, body, auth).await?;
            let status = u16::from(res.status());
            let ms = started.elapsed().as_millis() as u64;
            tracing::debug!(%method, url = %url, status, ms, length = res.len(), "request");
            if status == 401 && !challenged {
                if let (Some(a), Some(c)) = (&self.auth, res.header("WWW-Authenticate")) {
                    challenged = true;
                    if a.challenge(&url, c.last().as_str()).await? {
                        continue;
                    }
                }
            }
            let read = matches!(method, Method::Get | Method::Head);
            if read && matches!(status, 301 | 302 | 303 | 307 | 308) {
                if let Some(to) = res.header("Location").and_then(|l| url.join(l.last().as_str()).ok()) {
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        return Err(FetchError::Redirects(url.to_string()));
                    }
                    url = to;
                    continue;
                }
            }
            return Ok(res);
        }
    }

    async fn send_once(
        &self,
        method: Method,
        url: &Url,
        headers: &[(&str, &str)],
        body: Option<&bytes::Bytes>,
        auth: Option<String>,
    ) -> Result<http_types::Response, FetchError> {
        let name = url.to_string();
        let host = url.host_str().unwrap_or("127.0.0.1");
        let port = url.port_or_known_default().unwrap_or(80);
        let stream = smol::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| FetchError::Connect(format!("{host}:{port}"), e))?;
        let mut req = Request::new(method, url.clone());
        req.insert_header("Accept-Encoding", "zstd");
        req.insert_header("Connection", "close");
        if let Some(a) = auth {
            req.insert_header("Authorization", a);
        }
        for (k, v) in &self.headers {
            req.insert_header(*k, v.as_str());
        }
        for (k, v) in headers {
            req.insert_header(*k, *v);
        }
        if let Some(b) = body {
            let len = b.len();
            req.set_body(http_types::Body::from_reader(futures_lite::io::Cursor::new(b.clone()), Some(len)));
        }
        if url.scheme() != "https" {
            return async_h1::connect(stream, req).await.map_err(|e| FetchError::Http(name, e.to_string()));
        }
        let tls = self.tls.clone().ok_or_else(|| FetchError::Http(name.clone(), "no TLS configuration".into()))?;
        let server = rustls_pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| FetchError::Http(name.clone(), format!("'{host}' is not a TLS server name: {e}")))?;
        let stream = futures_rustls::TlsConnector::from(tls)
            .connect(server, stream)
            .await
            .map_err(|e| FetchError::Tls(format!("{host}:{port}"), e.to_string()))?;
        async_h1::connect(stream, req).await.map_err(|e| FetchError::Http(name, e.to_string()))
    }

    /// Sends `method` with `body` (a registry upload, a manifest); reads an
    /// answer of at most `limit` bytes (not decoded).
    pub async fn request(
        &self,
        method: Method,
        url: &Url,
        headers: &[(&str, &str)],
        body: Option<bytes::Bytes>,
        limit: u64,
    ) -> Result<Reply, FetchError> {
        use futures_lite::AsyncReadExt;
        let name = url.to_string();
        let work = async {
            let mut res = self.send(method, url, headers, body.as_ref()).await?;
            let headers: Vec<(String, String)> =
                res.iter().map(|(k, v)| (k.as_str().to_string(), v.last().as_str().to_string())).collect();
            let mut raw = Vec::new();
            if method != Method::Head {
                let mut reader = res.take_body().into_reader().take(limit + 1);
                reader.read_to_end(&mut raw).await.map_err(|e| body_error(&name, e.to_string()))?;
                if raw.len() as u64 > limit {
                    return Err(FetchError::TooLarge { url: name.clone(), limit });
                }
            }
            Ok(Reply { status: u16::from(res.status()), headers, wire_bytes: raw.len(), body: raw })
        };
        self.deadline(&name, work).await
    }

    async fn deadline<T>(
        &self,
        name: &str,
        work: impl Future<Output = Result<T, FetchError>>,
    ) -> Result<T, FetchError> {
        let deadline = self.timeout;
        work.or(async {
            smol::Timer::after(deadline).await;
            Err(FetchError::Timeout(name.to_string(), deadline))
        })
        .await
    }

    /// GETs `url` with `headers`; asks for zstd and decodes it. The body may
    /// be at most `limit` bytes, on the wire and decoded: a hub cannot make
    /// the device read or inflate more than what it expects. Decoding runs
    /// on the blocking pool, so the deadline fires whatever the body holds.
    pub async fn get(&self, url: &Url, headers: &[(&str, &str)], limit: u64) -> Result<Reply, FetchError> {
        use futures_lite::AsyncReadExt;
        let name = url.to_string();
        let too_large = || FetchError::TooLarge { url: name.clone(), limit };
        // zstd may add a little to incompressible bytes: frame and block headers.
        let wire_limit = limit + limit / 128 + 4096;
        let work = async {
            let mut res = self.send(Method::Get, url, headers, None).await?;
            let headers: Vec<(String, String)> =
                res.iter().map(|(k, v)| (k.as_str().to_string(), v.last().as_str().to_string())).collect();
            let reply = Reply { status: u16::from(res.status()), headers, body: Vec::new(), wire_bytes: 0 };
            let announced = reply.header("Content-Length").and_then(|v| v.parse::<u64>().ok());
            if announced.is_some_and(|n| n > wire_limit) {
                return Err(too_large());
            }
            let mut raw = Vec::new();
            let mut body = res.take_body().into_reader().take(wire_limit + 1);
            body.read_to_end(&mut raw).await.map_err(|e| body_error(&name, e.to_string()))?;
            if raw.len() as u64 > wire_limit {
                return Err(too_large());
            }
            // async-h1 stops reading at EOF without complaint: a short body is
            // found here, by its announced length.
            if let Some(want) = announced.map(|n| n as usize) {
                if raw.len() != want {
                    return Err(FetchError::Truncated { url: name.clone(), got: raw.len(), want });
                }
            }
            let reply = Reply { wire_bytes: raw.len(), ..reply };
            let encoded = reply.header("Content-Encoding").is_some_and(|e| e.eq_ignore_ascii_case("zstd"));
            let body = if encoded && reply.status != 304 && !raw.is_empty() {
                let url = name.clone();
                smol::unblock(move || decode_zstd(&raw, limit).map_err(|e| FetchError::Zstd(url, e))).await?
            } else if raw.len() as u64 > limit {
                return Err(too_large());
            } else {
                raw
            };
            Ok(Reply { body, ..reply })
        };
        self.deadline(&name, work).await
    }
}
