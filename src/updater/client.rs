//! The updater's HTTP client: one GET per connection over async-h1 on smol
//! (the server's own stack), with a deadline, an optional bearer token, and
//! checks that a body arrived whole.

use std::time::Duration;

use futures_lite::FutureExt;
use http_types::{Method, Request, Url};

/// Why a request did not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("{0}: {1}")]
    Http(String, String),
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{url}: body cut short ({got} of {want} bytes)")]
    Truncated { url: String, got: usize, want: usize },
    #[error("{0}: cannot decode zstd body: {1}")]
    Zstd(String, std::io::Error),
}

/// An answer.
pub struct Reply {
    pub status: u16,
    headers: Vec<(String, String)>,
    /// Decoded (zstd undone).
    pub body: Vec<u8>,
    /// Bytes that crossed the wire for the body.
    pub wire_bytes: usize,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub struct Client {
    pub token: Option<String>,
    pub timeout: Duration,
}

impl Client {
    /// GETs `url` with `headers`; asks for zstd and decodes it.
    pub async fn get(&self, url: &Url, headers: &[(&str, &str)]) -> Result<Reply, FetchError> {
        let name = url.to_string();
        let work = async {
            let host = url.host_str().unwrap_or("127.0.0.1");
            let port = url.port_or_known_default().unwrap_or(80);
            let stream = smol::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| FetchError::Connect(format!("{host}:{port}"), e))?;
            let mut req = Request::new(Method::Get, url.clone());
            req.insert_header("Accept-Encoding", "zstd");
            req.insert_header("Connection", "close");
            if let Some(t) = &self.token {
                req.insert_header("Authorization", format!("Bearer {t}"));
            }
            for (k, v) in headers {
                req.insert_header(*k, *v);
            }
            let mut res =
                async_h1::connect(stream, req).await.map_err(|e| FetchError::Http(name.clone(), e.to_string()))?;
            let raw = res.body_bytes().await.map_err(|e| FetchError::Http(name.clone(), e.to_string()))?;
            let headers: Vec<(String, String)> =
                res.iter().map(|(k, v)| (k.as_str().to_string(), v.last().as_str().to_string())).collect();
            let reply = Reply { status: u16::from(res.status()), headers, body: Vec::new(), wire_bytes: raw.len() };
            // async-h1 stops reading at EOF without complaint: a short body is
            // found here, by its announced length.
            if let Some(want) = reply.header("Content-Length").and_then(|v| v.parse::<usize>().ok()) {
                if raw.len() != want {
                    return Err(FetchError::Truncated { url: name.clone(), got: raw.len(), want });
                }
            }
            let encoded = reply.header("Content-Encoding").is_some_and(|e| e.eq_ignore_ascii_case("zstd"));
            let body = if encoded && reply.status != 304 && !raw.is_empty() {
                zstd::stream::decode_all(raw.as_slice()).map_err(|e| FetchError::Zstd(name.clone(), e))?
            } else {
                raw
            };
            Ok(Reply { body, ..reply })
        };
        let deadline = self.timeout;
        work.or(async {
            smol::Timer::after(deadline).await;
            Err(FetchError::Timeout(name.clone(), deadline))
        })
        .await
    }
}
