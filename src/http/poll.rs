//! A device's poll answered from its parsed request head: `GET` or `HEAD
//! /v1/models/{model}` whose `If-None-Match` names the manifest it holds gets
//! its `304` without a `Request`, a `Url` or a `Response` being built.
//!
//! Why a path of its own: every device sends this request every interval,
//! so it is the hub's hottest path, and building those three objects (a
//! header map hashed with SipHash, a parsed URL, a dozen small allocations)
//! cost 0.69–0.76× nginx's rate at c=64 (PERFORMANCE.md). Anything this path
//! is not sure of — another route, a query, an escaped name, `Range`,
//! `Origin`, CORS configured, a token that may not read the model, an ETag
//! that does not match — goes the general way ([`super::respond`]), which
//! answers the same request the same way: the token rule, the negotiation,
//! the ETag and the `304`'s headers are the same functions.

use super::auth;
use super::conditional::{self, not_modified_headers};
use super::documents;
use super::negotiate;
use super::State;
use crate::encode::Format;

/// The request head's fields this path reads.
pub(crate) struct Poll<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) headers: &'a [httparse::Header<'a>],
}

impl Poll<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        let h = self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))?;
        std::str::from_utf8(h.value).ok()
    }
}

/// The `304`'s headers (without framing, `connection` or `date`), or `None`:
/// answer it the general way.
pub(crate) fn not_modified(state: &State, poll: &Poll) -> Option<Vec<(&'static str, String)>> {
    if !matches!(poll.method, "GET" | "HEAD") || !state.options.cors.origins.is_empty() {
        return None;
    }
    // A name that needs no decoding: letters, digits and `-._~`.
    let name = poll.path.strip_prefix("/v1/models/")?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
        return None;
    }
    // The general way refuses a head with bytes over 0x7F in a value.
    if !poll.headers.iter().all(|h| h.value.is_ascii()) {
        return None;
    }
    let held = poll.header("If-None-Match")?;
    if poll.header("Range").is_some() || poll.header("Origin").is_some() {
        return None;
    }
    if let Some(tokens) = &state.tokens {
        let scope = tokens.scope(poll.header("Authorization")).ok()?;
        auth::may_read(&scope, name).ok()?;
    }
    let format = negotiate::format(Format::DOCUMENTS, None, poll.header("Accept"))?;
    let encoding = negotiate::encoding(poll.header("Accept-Encoding"));
    let header = |n: &str| poll.header(n);
    let report = crate::wire::report::DeviceReport::from_headers(header);
    let device = report.as_ref().map(|r| r.device.as_str());
    let model = state.model_for(name, device)?;
    if let Some(report) = &report {
        state.fleet.report(name, report);
    }
    let etag = documents::manifest_etag(&model, None, documents::signing_period(state), format, encoding);
    if !conditional::holds(held, &etag) {
        return None;
    }
    state.metrics.request("manifest", 304);
    Some(not_modified_headers(&etag, encoding, None))
}
