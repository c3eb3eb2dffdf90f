//! What a client's headers ask for, and the answers HTTP semantics give
//! it: the representation's ETag, one precondition check answering `304`
//! (`If-None-Match`, `If-Modified-Since`), `Last-Modified`, and byte ranges
//! (`Range`, `If-Range`).

use std::time::Duration;

use http_types::{Request, Response, StatusCode};
use sha2::{Digest, Sha256};

use super::body::{self, Chunk};
use super::error::ApiError;
use super::negotiate::{self, Query};
use crate::encode::{Encoding, Format};
use crate::store::Model;

/// What the client's headers ask for.
#[derive(Clone)]
pub(super) struct Ask {
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
    range: Option<String>,
    if_range: Option<String>,
    accept: Option<String>,
    pub(super) encoding: Encoding,
}

impl Ask {
    /// What `req`'s headers ask for.
    pub(super) fn of(req: &Request) -> Ask {
        let header = |name: &str| req.header(name).map(|v| v.as_str().to_string());
        Ask {
            if_none_match: header("If-None-Match"),
            if_modified_since: header("If-Modified-Since"),
            range: header("Range"),
            if_range: header("If-Range"),
            accept: header("Accept"),
            // A byte range applies to identity bodies only (a range of a zstd
            // stream cannot be decoded on its own), so a request for one gets
            // identity: requests and httpx offer zstd by default, and their Range
            // requests would otherwise get the whole body.
            encoding: match header("Range") {
                Some(_) => Encoding::Identity,
                None => negotiate::encoding(header("Accept-Encoding").as_deref()),
            },
        }
    }

    /// The same ask, answered in identity (Hugging Face's clients size and
    /// name a file by the bytes on the wire).
    pub(super) fn identity(mut self) -> Ask {
        self.encoding = Encoding::Identity;
        self
    }

    /// A browser asking for a page (`Accept: text/html`).
    pub(super) fn wants_html(&self) -> bool {
        self.accept.as_deref().is_some_and(|a| a.contains("text/html"))
    }

    /// A browser navigating (`text/html` first in `Accept`, as Chromium and
    /// Firefox send), not a program that also takes HTML.
    pub(super) fn browser(&self) -> bool {
        self.accept.as_deref().is_some_and(|a| a.trim_start().starts_with("text/html"))
    }

    /// The `304` where the client holds this representation already
    /// (`If-None-Match`; with `model`, also `If-Modified-Since` against when
    /// its version was loaded), with the headers a `200` would carry; else
    /// `None`: answer in full. The one precondition check of every route.
    pub(super) fn precondition(&self, etag: &str, model: Option<&Model>) -> Option<Response> {
        let unmodified = model.is_some_and(|m| self.unmodified_since(m));
        if !self.not_modified(etag) && !unmodified {
            return None;
        }
        Some(self.not_modified_response(etag, model))
    }

    pub(super) fn format(&self, offers: &[Format], q: &Query) -> Result<Format, ApiError> {
        negotiate::format(offers, q.format, self.accept.as_deref()).ok_or_else(|| {
            let media: Vec<&str> = offers.iter().map(|f| f.media_type()).collect();
            let names: Vec<&str> = offers.iter().map(|f| f.name()).collect();
            let asked = match q.format {
                Some(f) => format!("format={} is not offered here", f.name()),
                None => format!("Accept: {} matches nothing offered here", self.accept.as_deref().unwrap_or("")),
            };
            ApiError::new(
                StatusCode::NotAcceptable,
                "not acceptable",
                format!("{asked}; this route offers {} (?format={})", media.join(", "), names.join("|")),
            )
        })
    }

    /// The strong ETag of one representation of one resource.
    pub(super) fn etag(&self, version: &str, resource: &str, format: Format) -> String {
        etag(version, resource, format, self.encoding)
    }

    /// `If-Modified-Since` (only without `If-None-Match`, which wins, RFC
    /// 9110 13.1.3): the version was loaded at or before that date.
    fn unmodified_since(&self, model: &Model) -> bool {
        let since = self.if_modified_since.as_deref().and_then(|d| httpdate::parse_http_date(d).ok());
        let loaded = std::time::UNIX_EPOCH + Duration::from_secs(model.published_at_ms / 1000);
        self.if_none_match.is_none() && since.is_some_and(|since| loaded <= since)
    }

    pub(super) fn not_modified(&self, etag: &str) -> bool {
        self.if_none_match.as_deref().is_some_and(|h| holds(h, etag))
    }

    /// Headers every successful answer carries.
    pub(super) fn headers(&self, r: &mut Response, etag: &str, format: Format) {
        r.insert_header("ETag", etag);
        r.insert_header("Cache-Control", "no-cache");
        r.insert_header("Vary", "Accept, Accept-Encoding");
        r.insert_header("Content-Type", format.media_type());
        if self.encoding == Encoding::Zstd {
            r.insert_header("Content-Encoding", "zstd");
        }
    }

    fn not_modified_response(&self, etag: &str, model: Option<&Model>) -> Response {
        let mut r = Response::new(StatusCode::NotModified);
        for (name, value) in not_modified_headers(etag, self.encoding, model) {
            r.insert_header(name, value);
        }
        r
    }
}

/// The strong ETag of one representation (format and encoding) of one
/// resource of one version.
pub(super) fn etag(version: &str, resource: &str, format: Format, encoding: Encoding) -> String {
    let mut h = Sha256::new();
    h.update(format!("{version}|{resource}|{}|{}", format.name(), encoding.name()));
    format!("\"{}\"", hex::encode(&h.finalize()[..16]))
}

/// Whether an `If-None-Match` value names `etag` (or is `*`); weak
/// comparison, as RFC 9110 13.1.2 asks of it.
pub(super) fn holds(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(|t| t.trim().trim_start_matches("W/")).any(|t| t == etag || t == "*")
}

/// A `304`'s headers: those of the `200` it stands for (RFC 9110 15.4.5)
/// but `Content-Type`; with `model`, its `Last-Modified`.
pub(super) fn not_modified_headers(
    etag: &str,
    encoding: Encoding,
    model: Option<&Model>,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("ETag", etag.to_string()),
        ("Cache-Control", "no-cache".to_string()),
        ("Vary", "Accept, Accept-Encoding".to_string()),
    ];
    if encoding == Encoding::Zstd {
        headers.push(("Content-Encoding", "zstd".to_string()));
    }
    if let Some(m) = model {
        headers.push(("Last-Modified", last_modified_date(m)));
    }
    headers
}

/// `Last-Modified`: when this version of the model was loaded (its bytes
/// never change after), for `curl -z` and `wget -N`.
pub(super) fn last_modified(r: &mut Response, model: &Model) {
    r.insert_header("Last-Modified", last_modified_date(model));
}

fn last_modified_date(model: &Model) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_millis(model.published_at_ms))
}

/// Ranges, for resuming a download: on identity bodies of known length only
/// (a byte range of a zstd stream could not be decoded on its own). Returns
/// the chunks to send (`r` made a 206 where a range applies), or the 416.
pub(super) fn with_range(
    ask: &Ask,
    etag: &str,
    r: &mut Response,
    chunks: Vec<Chunk>,
) -> Result<Vec<Chunk>, Box<Response>> {
    let (Some(total), Encoding::Identity) = (body::known_len(&chunks), ask.encoding) else {
        r.insert_header("Accept-Ranges", "none");
        return Ok(chunks);
    };
    r.insert_header("Accept-Ranges", "bytes");
    let fresh = ask.if_range.as_deref().is_none_or(|t| t.trim() == etag);
    match ask.range.as_deref().filter(|_| fresh).and_then(|h| body::parse_range(h, total)) {
        Some(Ok((start, end))) => {
            r.set_status(StatusCode::PartialContent);
            r.insert_header("Content-Range", format!("bytes {start}-{}/{total}", end - 1));
            Ok(body::slice(chunks, start, end))
        }
        Some(Err(())) => {
            let detail = format!("the body is {total} bytes");
            let e = ApiError::new(StatusCode::RequestedRangeNotSatisfiable, "range not satisfiable", detail)
                .with_header("Content-Range", format!("bytes */{total}"));
            Err(Box::new(e.into_response()))
        }
        None => Ok(chunks),
    }
}
