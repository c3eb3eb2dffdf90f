//! The HTTP/1.1 API (smol + async-h1 + http-types): routes, negotiation,
//! conditional requests and errors. See README.md for the API itself.

mod auth;
mod body;
pub(crate) mod conn;
mod metrics;
mod negotiate;
mod reloading;
mod tls;

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use http_types::{Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};

use body::ChunkReader;
use negotiate::Query;

use crate::encode::{self, manifest, Chunk, EncodeError, Encoding, Format, Selection};
use crate::store::{Model, Store, WHOLE_MODEL};

/// Header on every answer about one model: the version of its weights as
/// stored, whatever representation was asked, so a client can tell that
/// several answers come from the same model file.
use crate::wire::MODEL_VERSION;

/// Serving choices from the config.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// zstd level for `Content-Encoding: zstd`.
    pub zstd_level: i32,
    /// Largest tensor payload a JSON bundle may carry.
    pub json_max_bytes: u64,
    /// Signs every manifest, where the config names a key.
    pub signer: Option<ManifestSigner>,
    /// Browser pages of other origins allowed to call the API.
    pub cors: Cors,
}

/// Which other origins' pages may call the API from a browser (CORS).
#[derive(Debug, Clone, Default)]
pub struct Cors {
    /// Allowed origins (`https://app.example:8443`), or `*` for any. Empty:
    /// none (the default: browsers keep pages of other origins out).
    pub origins: Vec<String>,
}

impl Cors {
    /// The `Access-Control-Allow-Origin` value for a request from `origin`.
    fn allows(&self, origin: &str) -> Option<String> {
        if self.origins.iter().any(|o| o == "*") {
            return Some("*".into());
        }
        self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)).then(|| origin.to_string())
    }
}

/// Response headers a page of another origin may read.
const EXPOSED: &str =
    "ETag, X-Weightcast-Model-Version, X-Weightcast-Version, Content-Range, Content-Length, Accept-Ranges, Content-Disposition";

/// The answer to a CORS preflight from an allowed origin: GET and HEAD, with
/// the headers clients send for conditional, ranged and authorized requests.
fn preflight(allowed: &str, req: &Request) -> Response {
    let asked = req.header("Access-Control-Request-Method").map(|v| v.as_str().to_ascii_uppercase());
    if asked.as_deref().is_some_and(|m| m != "GET" && m != "HEAD") {
        let detail = "only GET and HEAD are served";
        let mut e = ApiError::new(StatusCode::MethodNotAllowed, "method not allowed", detail);
        e.allow = true;
        return e.into_response();
    }
    let mut r = Response::new(StatusCode::NoContent);
    r.insert_header("Access-Control-Allow-Origin", allowed);
    r.insert_header("Access-Control-Allow-Methods", "GET, HEAD");
    r.insert_header(
        "Access-Control-Allow-Headers",
        "Authorization, If-None-Match, If-Modified-Since, If-Range, Range, Accept, Accept-Encoding",
    );
    r.insert_header("Access-Control-Max-Age", "600");
    r.insert_header("Vary", "Origin");
    r
}

/// The hub's manifest signing: its key, and how long a signature holds.
#[derive(Debug, Clone)]
pub struct ManifestSigner {
    /// The secret key (`signing_key` in the config).
    pub key: ed25519_dalek::SigningKey,
    /// How long a signature is valid. Manifests are signed again every half
    /// of it, so a device always gets one with at least half left.
    pub validity_ms: u64,
}

impl ManifestSigner {
    /// The signing period `now_ms` falls in (a new signature each period).
    fn period(&self, now_ms: u64) -> u64 {
        now_ms / (self.validity_ms / 2).max(1)
    }

    /// Signs `m` for the period `period`: expires two half-validities after
    /// the period's start (so between half and all of the validity from now).
    fn sign(&self, m: &mut crate::wire::proto::Manifest, period: u64) {
        let half = (self.validity_ms / 2).max(1);
        m.expires_at_ms = (period + 2) * half;
        crate::wire::signature::sign(m, &self.key);
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions { zstd_level: 3, json_max_bytes: 16 << 20, signer: None, cors: Cors::default() }
    }
}

/// What every request handler sees.
pub struct State {
    /// The models served.
    pub store: Store,
    /// Encoding choices from the config.
    pub options: ServeOptions,
    /// Who may read what; `None`: everyone (no `tokens_file`).
    pub tokens: Option<Tokens>,
    /// `[tls]`: connections speak TLS; `None`: plain HTTP.
    pub tls: Option<ServerTls>,
    metrics: metrics::Metrics,
}

pub use auth::Tokens;
pub use tls::ServerTls;

impl State {
    /// What the handlers of a server of `store` see.
    pub fn new(store: Store, options: ServeOptions, tokens: Option<Tokens>) -> State {
        State { store, options, tokens, tls: None, metrics: metrics::Metrics::default() }
    }
}

/// An error answer: status, a short message and what to do about it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    detail: String,
    allow: bool,
    /// `WWW-Authenticate` value of a `401`.
    challenge: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>, detail: impl Into<String>) -> ApiError {
        ApiError { status, error: error.into(), detail: detail.into(), allow: false, challenge: None }
    }

    fn into_response(self) -> Response {
        let mut r = Response::new(self.status);
        let body = serde_json::json!({ "error": self.error, "detail": self.detail });
        r.set_body(serde_json::to_vec(&body).unwrap_or_default());
        r.insert_header("Content-Type", "application/json");
        r.insert_header("Cache-Control", "no-store");
        if self.allow {
            r.insert_header("Allow", "GET, HEAD");
        }
        if let Some(challenge) = self.challenge {
            r.insert_header("WWW-Authenticate", challenge);
        }
        r
    }
}

/// The `401` of a request without a usable token.
fn unauthorized(refusal: auth::Refusal) -> ApiError {
    let (detail, challenge) = match refusal {
        auth::Refusal::Missing => {
            ("this server needs a token: send `Authorization: Bearer TOKEN`", r#"Bearer realm="weightcast""#)
        }
        auth::Refusal::Invalid => (
            "the token is not valid here (expired, revoked or mistyped)",
            r#"Bearer realm="weightcast", error="invalid_token""#,
        ),
    };
    ApiError { challenge: Some(challenge), ..ApiError::new(StatusCode::Unauthorized, "unauthorized", detail) }
}

/// What the request's token may read: everything where no tokens are
/// configured; else its grant, or the `401`.
fn scope(state: &State, req: &Request) -> Result<auth::Scope, ApiError> {
    match &state.tokens {
        None => Ok(auth::Scope::All),
        Some(tokens) => tokens.scope(req.header("Authorization").map(|v| v.as_str())).map_err(unauthorized),
    }
}

/// The `403` unless `scope` may read `model` (percent-encoded as in the path).
fn may_read(scope: &auth::Scope, model: &str) -> Result<(), ApiError> {
    let name = percent_decode(model);
    match scope.may_read(&name) {
        true => Ok(()),
        false => {
            Err(ApiError::new(StatusCode::Forbidden, "forbidden", format!("this token may not read model '{name}'")))
        }
    }
}

fn bad_request(detail: impl ToString) -> ApiError {
    ApiError::new(StatusCode::BadRequest, "bad request", detail.to_string())
}

/// Serves on `listener` with one executor thread per core (CPU-heavy work —
/// casts, compression — runs on the blocking pool instead), until `stop` is
/// closed: then no connection is accepted, idle ones are closed, and those
/// answering finish (for at most [`DRAIN`]) before this returns. At most
/// `max_connections` are open at once; more get a fast `503`.
pub fn run(
    listener: std::net::TcpListener,
    state: Arc<State>,
    max_connections: usize,
    stop: smol::channel::Receiver<()>,
) -> io::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let executor = Arc::new(smol::Executor::new());
    for k in 1..threads {
        let ex = executor.clone();
        std::thread::Builder::new()
            .name(format!("weightcast-io-{k}"))
            .spawn(move || smol::block_on(ex.run(smol::future::pending::<()>())))?;
    }
    let listener = smol::net::TcpListener::try_from(listener)?;
    let open = state.metrics.connections_open.clone();
    let accepting = accept(listener, state, executor.clone(), max_connections, open.clone(), stop.clone());
    smol::block_on(executor.run(accepting.or(async {
        let _ = stop.recv().await;
    })));
    let in_flight = open.load(std::sync::atomic::Ordering::Relaxed);
    tracing::info!(in_flight, "stopping: no new connections; finishing those in flight");
    let deadline = Instant::now() + DRAIN;
    smol::block_on(executor.run(async {
        while open.load(std::sync::atomic::Ordering::Relaxed) > 0 && Instant::now() < deadline {
            smol::Timer::after(Duration::from_millis(20)).await;
        }
    }));
    let left = open.load(std::sync::atomic::Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(left, "stopped with connections still open after {DRAIN:?}");
    }
    Ok(())
}

/// A TLS handshake, within [`HANDSHAKE_TIME`].
async fn handshake(
    acceptor: futures_rustls::TlsAcceptor,
    stream: smol::net::TcpStream,
) -> io::Result<futures_rustls::server::TlsStream<smol::net::TcpStream>> {
    acceptor
        .accept(stream)
        .or(async {
            smol::Timer::after(HANDSHAKE_TIME).await;
            Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake took too long"))
        })
        .await
}

/// How long a client may take over the TLS handshake.
const HANDSHAKE_TIME: Duration = Duration::from_secs(10);

/// How long a stopping server lets answers in flight finish.
pub const DRAIN: Duration = Duration::from_secs(30);

/// Raises this process's soft limit on open files to its hard limit (a
/// fleet's pollers each hold a connection: systemd's default soft limit is
/// 1,024). Returns the soft limit now in force.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum) {
        if soft < hard {
            let raised = rustix::process::Rlimit { current: Some(hard), maximum: Some(hard) };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                return hard;
            }
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

/// The default connection cap for a soft open-files limit: what is left
/// after files, maps and the listener (64 kept aside).
pub fn default_max_connections(open_files: u64) -> usize {
    open_files.saturating_sub(64).clamp(16, 1 << 20) as usize
}

/// Accepts connections forever: an accept error (out of file descriptors,
/// a connection reset before it was taken) is logged once per burst and
/// waited out, never the end of the server.
async fn accept(
    listener: smol::net::TcpListener,
    state: Arc<State>,
    executor: Arc<smol::Executor<'static>>,
    max_connections: usize,
    open: Arc<std::sync::atomic::AtomicUsize>,
    stop: smol::channel::Receiver<()>,
) {
    let mut errors_in_a_row = 0u32;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                errors_in_a_row = 0;
                accepted
            }
            Err(e) => {
                state.metrics.accept_error();
                if errors_in_a_row == 0 {
                    tracing::warn!("accept failed, retrying while it lasts: {e}");
                }
                errors_in_a_row = errors_in_a_row.saturating_add(1);
                // Out of descriptors: give closing connections time to free some.
                let pause = Duration::from_millis(10u64 << errors_in_a_row.min(7));
                smol::Timer::after(pause).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let guard = ConnectionGuard::take(&open);
        let (state, stop) = (state.clone(), stop.clone());
        executor
            .spawn(async move {
                let result = match (guard.count <= max_connections, &state.tls) {
                    (true, None) => conn::serve(stream.clone(), stream, state, stop).await,
                    (true, Some(tls)) => match handshake(tls.acceptor(), stream).await {
                        Ok(tls) => {
                            let (read, write) = futures_lite::io::split(tls);
                            conn::serve(read, write, state, stop).await
                        }
                        Err(e) => Err(e),
                    },
                    // Over the cap on TLS: closed (a 503 would cost a handshake).
                    (false, Some(_)) => {
                        state.metrics.refused();
                        Ok(())
                    }
                    (false, None) => {
                        state.metrics.refused();
                        conn::busy(stream).await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                drop(guard);
            })
            .detach();
    }
}

/// One open connection, counted while it lives.
struct ConnectionGuard {
    open: Arc<std::sync::atomic::AtomicUsize>,
    /// Open connections, this one included, when it was accepted.
    count: usize,
}

impl ConnectionGuard {
    fn take(open: &Arc<std::sync::atomic::AtomicUsize>) -> ConnectionGuard {
        let count = open.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        ConnectionGuard { open: open.clone(), count }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Answers one request; a panic inside becomes a logged 500.
pub async fn respond(state: &Arc<State>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method();
    let path = req.url().path().to_string();
    let origin = req.header("Origin").map(|v| v.as_str().to_string());
    let cors = origin.as_deref().and_then(|o| state.options.cors.allows(o));
    if let (Some(allowed), Method::Options) = (&cors, method) {
        return preflight(allowed, &req);
    }
    let answer = AssertUnwindSafe(route(state.clone(), req)).catch_unwind().await;
    let mut response = match answer {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => e.into_response(),
        Err(panic) => {
            let what = crate::store::panic_message(panic.as_ref());
            tracing::error!(%method, %path, "handler panicked: {what}");
            ApiError::new(
                StatusCode::InternalServerError,
                "internal error",
                "the server hit a bug answering this request; it is logged",
            )
            .into_response()
        }
    };
    if let Some(allowed) = cors {
        response.insert_header("Access-Control-Allow-Origin", allowed.as_str());
        response.insert_header("Access-Control-Expose-Headers", EXPOSED);
    }
    if !state.options.cors.origins.is_empty() {
        response.append_header("Vary", "Origin");
    }
    state.metrics.request(route_label(&path), u16::from(response.status()));
    tracing::debug!(%method, %path, status = u16::from(response.status()), us = started.elapsed().as_micros() as u64, "request");
    response
}

async fn route(state: Arc<State>, req: Request) -> Result<Response, ApiError> {
    if !matches!(req.method(), Method::Get | Method::Head) {
        let mut e = ApiError::new(
            StatusCode::MethodNotAllowed,
            "method not allowed",
            format!("{} is not served; use GET or HEAD", req.method()),
        );
        e.allow = true;
        return Err(e);
    }
    let path = req.url().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let pairs: Vec<(String, String)> = req.url().query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let header = |name: &str| req.header(name).map(|v| v.as_str().to_string());
    let ask = Ask {
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
    };
    // Health and readiness stay open to probes; everything else needs a token
    // once tokens are configured.
    // The page holds no data (it asks for a token when the API wants one).
    let open = matches!(segments.as_slice(), ["healthz"] | ["readyz"] | [""]);
    let scope = if open { auth::Scope::All } else { scope(&state, &req)? };
    if let ["v1", "models", model, ..] = segments.as_slice() {
        may_read(&scope, model)?;
    }
    match segments.as_slice() {
        [""] => {
            negotiate::query(pairs, &[]).map_err(bad_request)?;
            Ok(page(&ask))
        }
        ["healthz"] => {
            negotiate::query(pairs, &[]).map_err(bad_request)?;
            Ok(healthz())
        }
        ["readyz"] => {
            negotiate::query(pairs, &[]).map_err(bad_request)?;
            Ok(readyz(&state))
        }
        ["metrics"] => {
            negotiate::query(pairs, &[]).map_err(bad_request)?;
            let mut r = Response::new(StatusCode::Ok);
            r.set_body(state.metrics.render(&state.store));
            r.insert_header("Content-Type", "text/plain; version=0.0.4");
            r.insert_header("Cache-Control", "no-store");
            Ok(r)
        }
        ["v1", "blobs", "sha256", digest] => {
            let q = negotiate::query(pairs, &["dtype"]).map_err(bad_request)?;
            blob(&state, &ask, &q, digest, &scope).await
        }
        ["v1", "models"] => {
            let q = negotiate::query(pairs, &["format"]).map_err(bad_request)?;
            // A browser opening the listing gets the page that shows it.
            if q.format.is_none() && ask.accept.as_deref().is_some_and(|a| a.contains("text/html")) {
                return Ok(page(&ask));
            }
            listing(&state, &ask, &q, &scope)
        }
        ["v1", "models", model, "stats"] => {
            negotiate::query(pairs, &[]).map_err(bad_request)?;
            let model = find_model(&state, model)?;
            model_stats(&state, &ask, model).await
        }
        ["v1", "models", model, "changes"] => {
            negotiate::query(pairs, &[]).map_err(bad_request)?;
            let model = find_model(&state, model)?;
            model_changes(&state, &ask, model).await
        }
        ["v1", "models", model] => {
            let q = negotiate::query(pairs, &["format", "dtype"]).map_err(bad_request)?;
            let model = find_model(&state, model)?;
            model_manifest(&state, &ask, &q, model).await
        }
        ["v1", "models", model, "weights"] => {
            let q = negotiate::query(pairs, &["format", "dtype", "names", "compress", "codec"]).map_err(bad_request)?;
            let model = find_model(&state, model)?;
            let selection = select(&model, q.names.as_deref())?;
            tensors(&state, &ask, &q, model, selection, false).await
        }
        ["v1", "models", model, "graph"] => {
            negotiate::query(pairs, &[]).map_err(bad_request)?;
            let model = find_model(&state, model)?;
            graph(&state, &ask, model).await
        }
        ["v1", "models", model, "tensors", name @ ..] if !name.is_empty() => {
            let q = negotiate::query(pairs, &["format", "dtype", "compress", "codec"]).map_err(bad_request)?;
            let model = find_model(&state, model)?;
            let name = percent_decode(&name.join("/"));
            let index = model.position(&name).ok_or_else(|| unknown_tensor(&model, &name))?;
            tensors(&state, &ask, &q, model, vec![index], true).await
        }
        _ => Err(ApiError::new(StatusCode::NotFound, "not found", format!("no route for {path}; routes: {ROUTES}"))),
    }
}

/// The page (`page.html`, in the binary): models, tensors with statistics
/// and histograms, what changed; plain HTML, CSS and JS, nothing fetched
/// from elsewhere (devices are often offline).
const PAGE: &str = include_str!("page.html");

/// The page's ETag: its digest, computed on the first request.
static PAGE_ETAG: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("\"page-{}\"", &hex::encode(Sha256::digest(PAGE.as_bytes()))[..16]));

fn page(ask: &Ask) -> Response {
    let etag = PAGE_ETAG.as_str();
    if ask.not_modified(etag) {
        let mut r = Response::new(StatusCode::NotModified);
        r.insert_header("ETag", etag);
        return r;
    }
    let mut r = Response::new(StatusCode::Ok);
    r.set_body(PAGE);
    r.insert_header("Content-Type", "text/html; charset=utf-8");
    r.insert_header("ETag", etag);
    r.insert_header("Cache-Control", "no-cache");
    r.insert_header("X-Content-Type-Options", "nosniff");
    r.insert_header(
        "Content-Security-Policy",
        "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
    );
    r
}

/// `/v1/models/{m}/stats`: each tensor's statistics, computed and rendered
/// once per version on the blocking pool.
async fn model_stats(state: &State, ask: &Ask, model: Arc<Model>) -> Result<Response, ApiError> {
    let m = model.clone();
    version_document(state, ask, &model, "stats".into(), move || Ok(encode::inspect::stats(&m, &m.stats()))).await
}

/// `/v1/models/{m}/changes`: what changed from the version this one
/// replaced; 404 until the model's file has been replaced once.
async fn model_changes(state: &State, ask: &Ask, model: Arc<Model>) -> Result<Response, ApiError> {
    let Some(changes) = model.changes() else {
        let detail = format!(
            "this server has served only one version of '{}' so far (or is still comparing): \
             changes appear once its file is replaced; for two versions on disk use `weightcast diff A B`",
            model.name
        );
        return Err(ApiError::new(StatusCode::NotFound, "no earlier version", detail));
    };
    let resource = format!("changes|{}", changes.from_version);
    let m = model.clone();
    version_document(state, ask, &model, resource, move || Ok(encode::inspect::changes(&m, &changes))).await
}

/// A JSON document about one version of a model (its `resource`), rendered
/// and compressed once ([`model_document`]), with its ETag.
async fn version_document(
    state: &State,
    ask: &Ask,
    model: &Arc<Model>,
    resource: String,
    render: impl FnOnce() -> Result<Vec<u8>, String> + Send + 'static,
) -> Result<Response, ApiError> {
    let etag = ask.etag(model.version(), &resource, Format::Json);
    if ask.not_modified(&etag) {
        return Ok(ask.not_modified_response(&etag, Format::Json));
    }
    let body = model_document(model, resource, ask.encoding, state.options.zstd_level, render).await?;
    let mut r = Response::new(StatusCode::Ok);
    ask.headers(&mut r, &etag, Format::Json);
    set_bytes(&mut r, body);
    Ok(r)
}

fn healthz() -> Response {
    let mut r = Response::new(StatusCode::Ok);
    r.set_body("ok\n");
    r.insert_header("Content-Type", "text/plain");
    r.insert_header("Cache-Control", "no-store");
    r
}

/// The route a path belongs to, as `/metrics` labels it (a fixed set: a
/// client's paths must not grow the label space).
fn route_label(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["healthz"] => "healthz",
        ["readyz"] => "readyz",
        ["metrics"] => "metrics",
        ["v1", "models"] => "models",
        ["v1", "models", _] => "manifest",
        ["v1", "models", _, "weights"] => "weights",
        ["v1", "models", _, "graph"] => "graph",
        ["v1", "models", _, "stats"] => "stats",
        ["v1", "models", _, "changes"] => "changes",
        [""] => "page",
        ["v1", "models", _, "tensors", ..] => "tensor",
        ["v1", "blobs", ..] => "blob",
        _ => "other",
    }
}

/// `/readyz`: `200` when every configured model is loaded and serving,
/// else `503` naming those that are not (`/healthz` only says the process
/// answers).
fn readyz(state: &State) -> Response {
    let failed: Vec<serde_json::Value> = state
        .store
        .entries()
        .into_iter()
        .filter_map(|e| match e {
            crate::store::Entry::Failed { name, error } => Some(serde_json::json!({"model": name, "error": error})),
            crate::store::Entry::Loaded(_) => None,
        })
        .collect();
    let mut r = Response::new(if failed.is_empty() { StatusCode::Ok } else { StatusCode::ServiceUnavailable });
    let body = serde_json::json!({"ready": failed.is_empty(), "not_loaded": failed});
    r.set_body(serde_json::to_vec(&body).unwrap_or_default());
    r.insert_header("Content-Type", "application/json");
    r.insert_header("Cache-Control", "no-store");
    r
}

/// `/v1/models`: every model, loaded or failed.
fn listing(state: &State, ask: &Ask, q: &Query, scope: &auth::Scope) -> Result<Response, ApiError> {
    let format = ask.format(Format::DOCUMENTS, q)?;
    // A token sees the models it may read.
    let entries: Vec<_> = state.store.entries().into_iter().filter(|e| scope.may_read(e.name())).collect();
    let body = manifest::render_listing(&manifest::listing(&entries), format);
    let versions: Vec<String> = entries
        .iter()
        .map(|e| match e {
            crate::store::Entry::Loaded(m) => m.version().to_string(),
            crate::store::Entry::Failed { name, .. } => format!("failed:{name}"),
        })
        .collect();
    ask.document(&versions.join(","), "models", format, body, state.options.zstd_level)
}

/// `/v1/models/{model}`: the manifest of a representation.
async fn model_manifest(state: &State, ask: &Ask, q: &Query, model: Arc<Model>) -> Result<Response, ApiError> {
    let format = ask.format(Format::DOCUMENTS, q)?;
    // A signed manifest changes each signing period: so does its ETag.
    let signer = state.options.signer.clone();
    let period = signer.as_ref().map(|s| s.period(crate::store::unix_ms()));
    let etag = ask.etag(model.version(), &format!("manifest|{:?}|{period:?}", q.dtype), format);
    if ask.not_modified(&etag) {
        return Ok(ask.not_modified_response(&etag, format));
    }
    let (m, repr) = (model.clone(), q.dtype);
    let variant = format!("manifest-{repr:?}-{}-{period:?}", format.name());
    let body = model_document(&model, variant, ask.encoding, state.options.zstd_level, move || {
        let mut doc = manifest::manifest(&m, &m.view(repr));
        if let (Some(signer), Some(period)) = (signer, period) {
            signer.sign(&mut doc, period);
        }
        Ok(manifest::render_manifest(&doc, format))
    })
    .await?;
    let mut r = Response::new(StatusCode::Ok);
    ask.headers(&mut r, &etag, format);
    r.insert_header(MODEL_VERSION, model.version());
    set_bytes(&mut r, body);
    Ok(r)
}

fn unknown_tensor(model: &Model, name: &str) -> ApiError {
    let m = &model.name;
    let detail = format!("model '{m}' has no tensor '{name}'; GET /v1/models/{m} lists them");
    ApiError::new(StatusCode::NotFound, "unknown tensor", detail)
}

/// A representation's view: at once when ready, else computed (casts) on the
/// blocking pool, never on the executor's threads.
async fn view(model: &Arc<Model>, repr: crate::store::Representation) -> Arc<crate::store::View> {
    match model.view_ready(repr) {
        Some(v) => v,
        None => {
            let m = model.clone();
            smol::unblock(move || m.view(repr)).await
        }
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn find_model(state: &State, raw: &str) -> Result<Arc<Model>, ApiError> {
    let name = percent_decode(raw);
    if let Some(m) = state.store.get(&name) {
        return Ok(m.clone());
    }
    Err(match state.store.failure(&name) {
        Some(error) => ApiError::new(StatusCode::NotFound, "model failed to load", error.to_string()),
        None => ApiError::new(
            StatusCode::NotFound,
            "unknown model",
            format!("no model '{name}'; GET /v1/models lists them"),
        ),
    })
}

/// Every route, for the 404 of an unknown one.
const ROUTES: &str = "/ (the page), /healthz, /readyz, /metrics, /v1/models, /v1/models/{model}, \
    /v1/models/{model}/weights, /v1/models/{model}/tensors/{name}, /v1/models/{model}/graph, \
    /v1/models/{model}/stats, /v1/models/{model}/changes, /v1/blobs/sha256/{digest}";

/// Indices of the named tensors (model order, no repeats), or all of them.
/// Each `names=` value is one tensor's name when the model has a tensor of
/// exactly that name (so names with commas, and the empty name, can be
/// asked for), else a comma-separated list of names.
fn select(model: &Model, names: Option<&[String]>) -> Result<Vec<usize>, ApiError> {
    let Some(values) = names else { return Ok((0..model.tensors.len()).collect()) };
    let mut picked = Vec::with_capacity(values.len());
    for value in values {
        if let Some(i) = model.position(value) {
            picked.push(i);
            continue;
        }
        for n in value.split(',').filter(|n| !n.is_empty()) {
            let i = model.position(n).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NotFound,
                    "unknown tensor",
                    format!("model '{}' has no tensor '{n}'", model.name),
                )
            })?;
            picked.push(i);
        }
    }
    picked.sort_unstable();
    picked.dedup();
    Ok(picked)
}

/// What the client's headers ask for.
struct Ask {
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
    range: Option<String>,
    if_range: Option<String>,
    accept: Option<String>,
    encoding: Encoding,
}

impl Ask {
    fn format(&self, offers: &[Format], q: &Query) -> Result<Format, ApiError> {
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
    fn etag(&self, version: &str, resource: &str, format: Format) -> String {
        let mut h = Sha256::new();
        h.update(format!("{version}|{resource}|{}|{}", format.name(), self.encoding.name()));
        format!("\"{}\"", &hex::encode(h.finalize())[..32])
    }

    /// `If-Modified-Since` (only without `If-None-Match`, which wins, RFC
    /// 9110 13.1.3): the version was loaded at or before that date.
    fn unmodified_since(&self, model: &Model) -> bool {
        let since = self.if_modified_since.as_deref().and_then(|d| httpdate::parse_http_date(d).ok());
        let loaded = std::time::UNIX_EPOCH + Duration::from_secs(model.published_at_ms / 1000);
        self.if_none_match.is_none() && since.is_some_and(|since| loaded <= since)
    }

    fn not_modified(&self, etag: &str) -> bool {
        self.if_none_match
            .as_deref()
            .is_some_and(|h| h.split(',').map(|t| t.trim().trim_start_matches("W/")).any(|t| t == etag || t == "*"))
    }

    /// Headers every successful answer carries.
    fn headers(&self, r: &mut Response, etag: &str, format: Format) {
        r.insert_header("ETag", etag);
        r.insert_header("Cache-Control", "no-cache");
        r.insert_header("Vary", "Accept, Accept-Encoding");
        r.insert_header("Content-Type", format.media_type());
        if self.encoding == Encoding::Zstd {
            r.insert_header("Content-Encoding", "zstd");
        }
    }

    fn not_modified_response(&self, etag: &str, format: Format) -> Response {
        let mut r = Response::new(StatusCode::NotModified);
        self.headers(&mut r, etag, format);
        r.remove_header("Content-Type");
        r
    }

    /// A small document (manifest, listing), compressed whole if asked.
    fn document(
        &self,
        version: &str,
        resource: &str,
        format: Format,
        body: Vec<u8>,
        level: i32,
    ) -> Result<Response, ApiError> {
        let etag = self.etag(version, resource, format);
        if self.not_modified(&etag) {
            return Ok(self.not_modified_response(&etag, format));
        }
        let body = match self.encoding {
            Encoding::Identity => body,
            Encoding::Zstd => encode::zstd_frame(&body, level).map_err(internal)?,
        };
        let mut r = Response::new(StatusCode::Ok);
        r.set_body(body);
        self.headers(&mut r, &etag, format);
        Ok(r)
    }
}

fn internal(e: io::Error) -> ApiError {
    tracing::error!("internal error: {e}");
    ApiError::new(StatusCode::InternalServerError, "internal error", e.to_string())
}

/// Tensor data in the negotiated format, streamed chunk by chunk.
async fn tensors(
    state: &State,
    ask: &Ask,
    q: &Query,
    model: Arc<Model>,
    tensors: Vec<usize>,
    single: bool,
) -> Result<Response, ApiError> {
    let format = ask.format(if single { Format::TENSOR } else { Format::BUNDLES }, q)?;
    let resource = format!("tensors|{single}|{:?}|{}|{}|{:?}", q.dtype, q.compress, q.bytegroup, tensors);
    let etag = ask.etag(model.version(), &resource, format);
    if ask.not_modified(&etag) || ask.unmodified_since(&model) {
        let mut r = ask.not_modified_response(&etag, format);
        last_modified(&mut r, &model);
        return Ok(r);
    }
    let repr = q.dtype;
    let file = match single {
        true => crate::wire::safe_name(model.tensors[tensors[0]].name.as_str()),
        false => model.name.clone(),
    };
    let view = view(&model, repr).await;
    let version = view.version.clone();
    let selection = Selection { model, view, repr, tensors, single, bytegroup: q.bytegroup };
    let options = encode::Options {
        zstd_level: state.options.zstd_level,
        json_max_bytes: state.options.json_max_bytes,
        deflate: q.compress,
    };
    let chunks = encode::body(&selection, format, ask.encoding, options).map_err(encode_error)?;
    let mut r = Response::new(StatusCode::Ok);
    ask.headers(&mut r, &etag, format);
    r.insert_header("X-Weightcast-Version", version.as_str());
    r.insert_header(MODEL_VERSION, selection.model.version());
    last_modified(&mut r, &selection.model);
    r.insert_header("Content-Disposition", disposition(&file, format));
    with_body(ask, &etag, r, chunks, &selection.model)
}

/// `/v1/blobs/sha256/{digest}[?dtype=]`: a tensor's bytes by their digest,
/// in a representation (stored, or cast). The URL names its content, so
/// the answer may be kept by any cache for a year (`immutable`); its ETag is
/// the digest. A token sees the blobs of the models it may read.
async fn blob(state: &State, ask: &Ask, q: &Query, digest: &str, scope: &auth::Scope) -> Result<Response, ApiError> {
    let not_found =
        || ApiError::new(StatusCode::NotFound, "unknown blob", format!("no tensor served has sha256 {digest}"));
    let want: [u8; 32] = hex::decode(digest).ok().and_then(|d| d.try_into().ok()).ok_or_else(not_found)?;
    let mut found = None;
    for model in state.store.models().into_iter().filter(|m| scope.may_read(&m.name)) {
        let view = view(&model, q.dtype).await;
        if let Some(i) = view.tensors.iter().position(|t| t.sha256 == want) {
            found = Some((model, view, i));
            break;
        }
    }
    let (model, view, i) = found.ok_or_else(not_found)?;
    let etag = format!("\"sha256:{digest}\"");
    let immutable = |r: &mut Response| {
        r.insert_header("ETag", etag.as_str());
        r.insert_header("Cache-Control", "public, max-age=31536000, immutable");
        r.insert_header("Vary", "Accept-Encoding");
    };
    if ask.not_modified(&etag) {
        let mut r = Response::new(StatusCode::NotModified);
        immutable(&mut r);
        return Ok(r);
    }
    let selection = Selection { model, view, repr: q.dtype, tensors: vec![i], single: true, bytegroup: false };
    let options = encode::Options { zstd_level: state.options.zstd_level, json_max_bytes: 0, deflate: false };
    let chunks = encode::body(&selection, Format::Raw, ask.encoding, options).map_err(encode_error)?;
    let mut r = Response::new(StatusCode::Ok);
    immutable(&mut r);
    r.insert_header("Content-Type", Format::Raw.media_type());
    if ask.encoding == Encoding::Zstd {
        r.insert_header("Content-Encoding", "zstd");
    }
    with_body(ask, &etag, r, chunks, &selection.model)
}

/// `r` with `chunks` as its body (a `206` or `416` where a range asks), the
/// body holding its model's version until it is sent.
fn with_body(
    ask: &Ask,
    etag: &str,
    mut r: Response,
    chunks: Vec<Chunk>,
    model: &Arc<Model>,
) -> Result<Response, ApiError> {
    let chunks = match with_range(ask, etag, &mut r, chunks) {
        Ok(chunks) => chunks,
        Err(unsatisfiable) => return Ok(*unsatisfiable),
    };
    let len = body::known_len(&chunks);
    let reader = ChunkReader::new(chunks).holding(model.clone());
    r.set_body(http_types::Body::from_reader(reader, len));
    Ok(r)
}

/// `Last-Modified`: when this version of the model was loaded (its bytes
/// never change after), for `curl -z` and `wget -N`.
fn last_modified(r: &mut Response, model: &Model) {
    let loaded = std::time::UNIX_EPOCH + Duration::from_millis(model.published_at_ms);
    r.insert_header("Last-Modified", httpdate::fmt_http_date(loaded));
}

/// `Content-Disposition` with a file name a download tool can save under:
/// the model's name (or the tensor's, made file-safe) and the format's
/// extension; JSON is shown, the binary formats are downloaded.
fn disposition(stem: &str, format: Format) -> String {
    let ext = match format {
        Format::Protobuf => "pb",
        Format::Json => "json",
        Format::Npz => "npz",
        Format::Npy => "npy",
        Format::Safetensors => "safetensors",
        Format::Raw => "bin",
    };
    let kind = if format == Format::Json { "inline" } else { "attachment" };
    format!("{kind}; filename=\"{stem}.{ext}\"")
}

fn encode_error(e: EncodeError) -> ApiError {
    match e {
        EncodeError::TooLarge { .. } => ApiError::new(StatusCode::PayloadTooLarge, "too large for JSON", e.to_string()),
        EncodeError::CodecNeedsProtobuf(_) => bad_request(e.to_string()),
        EncodeError::Unexpressible { .. } | EncodeError::SingleOnly(_) => {
            ApiError::new(StatusCode::UnprocessableEntity, "cannot express in this format", e.to_string())
        }
    }
}

/// Ranges, for resuming a download: on identity bodies of known length only
/// (a byte range of a zstd stream could not be decoded on its own). Returns
/// the chunks to send (`r` made a 206 where a range applies), or the 416.
fn with_range(ask: &Ask, etag: &str, r: &mut Response, chunks: Vec<Chunk>) -> Result<Vec<Chunk>, Box<Response>> {
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
            let mut e = ApiError::new(StatusCode::RequestedRangeNotSatisfiable, "range not satisfiable", detail)
                .into_response();
            e.insert_header("Content-Range", format!("bytes */{total}"));
            Err(Box::new(e))
        }
        None => Ok(chunks),
    }
}

/// The model as an ONNX file whose large main-graph initializers are external,
/// each at the location `wire::tensor_file(tensor)`: a client rebuilds the
/// model from it and tensors it already has.
async fn graph(state: &State, ask: &Ask, model: Arc<Model>) -> Result<Response, ApiError> {
    let format = Format::Protobuf; // only for the ETag: the body is an ONNX file
    let etag = ask.etag(model.version(), "graph", format);
    if ask.not_modified(&etag) || ask.unmodified_since(&model) {
        let mut r = ask.not_modified_response(&etag, format);
        last_modified(&mut r, &model);
        return Ok(r);
    }
    let body = match ask.encoding {
        // The graph is in memory already (a view of the model's map).
        Encoding::Identity => model.graph().clone(),
        Encoding::Zstd => {
            let m = model.clone();
            model_document(&model, "graph".into(), ask.encoding, state.options.zstd_level, move || {
                Ok(m.graph().to_vec())
            })
            .await?
        }
    };
    let mut r = Response::new(StatusCode::Ok);
    ask.headers(&mut r, &etag, format);
    r.insert_header("Content-Type", "application/octet-stream");
    r.insert_header(MODEL_VERSION, model.version());
    last_modified(&mut r, &model);
    r.insert_header("Content-Disposition", format!("attachment; filename=\"{}.onnx\"", model.name));
    set_bytes(&mut r, body);
    Ok(r)
}

/// A whole-model document (manifest, zstd graph) in one encoding: from the
/// cache's memory at once; else read from its disk, or rendered and
/// compressed once (concurrent requests wait for that one), on the blocking
/// pool, never on the executor's threads.
async fn model_document(
    model: &Arc<Model>,
    variant: String,
    encoding: Encoding,
    level: i32,
    render: impl FnOnce() -> Result<Vec<u8>, String> + Send + 'static,
) -> Result<bytes::Bytes, ApiError> {
    let key = model.cache_key(WHOLE_MODEL, format!("{variant}-{}", encoding.name()));
    if let Some(crate::store::Found::Memory(body)) = model.cache().lookup(&key) {
        return Ok(body);
    }
    let m = model.clone();
    smol::unblock(move || {
        m.cache().get_or_compute(key, || {
            let raw = render()?;
            match encoding {
                Encoding::Identity => Ok(raw.into()),
                Encoding::Zstd => encode::zstd_frame(&raw, level).map(Into::into).map_err(|e| e.to_string()),
            }
        })
    })
    .await
    .map_err(|e| {
        tracing::error!("internal error: {e}");
        ApiError::new(StatusCode::InternalServerError, "internal error", e)
    })
}

/// A body that is already in memory, sent without another copy.
fn set_bytes(r: &mut Response, body: bytes::Bytes) {
    let len = body.len();
    r.set_body(http_types::Body::from_reader(ChunkReader::new(vec![encode::Chunk::Ready(body)]), Some(len)));
}
