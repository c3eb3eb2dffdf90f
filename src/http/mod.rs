//! The HTTP/1.1 API (smol + async-h1's request parsing, weightcast's own
//! connection loop in `conn`): see docs/api.md for the API itself.
//!
//! Rooms: [`server`] (the server's life), `conn` (one connection),
//! `routes` (the route table and dispatch), `auth` (tokens), `cors`,
//! `conditional` (ETags, 304, ranges), `negotiate` (format, encoding,
//! query), `poll` (a device's poll answered from its head), `documents` and
//! `tensors` (the handlers), `hf` (Hugging Face's read API), `body` (streamed
//! bodies), `error`, `metrics`, `tls`, `reloading`.

mod auth;
mod body;
mod conditional;
pub(crate) mod conn;
mod cors;
mod documents;
mod error;
mod hf;
mod metrics;
mod negotiate;
mod poll;
mod reloading;
mod routes;
mod server;
mod slots;
mod tensors;
mod tls;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures_lite::FutureExt;
use http_types::{Method, Request, Response, StatusCode};

pub use auth::Tokens;
pub use cors::Cors;
pub use error::ApiError;
pub use server::{default_max_connections, raise_open_files_limit, run, DRAIN};
pub use tls::ServerTls;

use crate::store::Store;
use routes::Route;

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
    /// Called every so often from the executor that answers requests (a
    /// service manager's watchdog): if the executor wedges, it stops.
    pub heartbeat: Option<Heartbeat>,
}

/// A beat, and how often it is due.
#[derive(Clone)]
pub struct Heartbeat {
    /// Time between beats.
    pub every: std::time::Duration,
    /// What a beat does (systemd: `WATCHDOG=1`).
    pub beat: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat").field("every", &self.every).finish_non_exhaustive()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions { zstd_level: 3, json_max_bytes: 16 << 20, signer: None, cors: Cors::default(), heartbeat: None }
    }
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
    pub(crate) fn period(&self, now_ms: u64) -> u64 {
        now_ms / (self.validity_ms / 2).max(1)
    }

    /// Signs `m` for the period `period`: expires two half-validities after
    /// the period's start (so between half and all of the validity from now).
    pub(crate) fn sign(&self, m: &mut crate::wire::proto::Manifest, period: u64) {
        let half = (self.validity_ms / 2).max(1);
        m.expires_at_ms = (period + 2) * half;
        crate::wire::signature::sign(m, &self.key);
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
    /// The devices' reports and the models' rollouts.
    pub fleet: Arc<crate::fleet::Fleet>,
    metrics: metrics::Metrics,
    slots: Arc<slots::Slots>,
}

impl State {
    /// What the handlers of a server of `store` see.
    pub fn new(store: Store, options: ServeOptions, tokens: Option<Tokens>) -> State {
        State {
            store,
            options,
            tokens,
            tls: None,
            fleet: Default::default(),
            metrics: metrics::Metrics::default(),
            slots: Default::default(),
        }
    }

    /// The version of `name` to serve `device` (`None`: not a device): the
    /// one its file holds, or the stable one where a rollout says so.
    pub(crate) fn model_for(&self, name: &str, device: Option<&str>) -> Option<Arc<crate::store::Model>> {
        let current = self.store.get(name)?;
        Some(self.fleet.offer(name, &current, device).unwrap_or(current))
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
        return cors::preflight(allowed, &req);
    }
    let route = Route::parse(&path);
    let label = Route::label(route.as_ref());
    let answer = AssertUnwindSafe(routes::dispatch(state.clone(), req, route)).catch_unwind().await;
    let mut response = match answer {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => e.into_response(),
        Err(panic) => {
            let what = crate::store::panic_message(panic.as_ref());
            tracing::error!(%method, %path, "handler panicked: {what}");
            let detail = "the server hit a bug answering this request; it is logged";
            ApiError::new(StatusCode::InternalServerError, "internal error", detail).into_response()
        }
    };
    state.options.cors.decorate(&mut response, cors.as_deref());
    state.metrics.request(label, u16::from(response.status()));
    tracing::debug!(%method, %path, status = u16::from(response.status()), us = started.elapsed().as_micros() as u64, "request");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_lasts_between_half_and_all_of_its_validity() {
        let signer = ManifestSigner { key: ed25519_dalek::SigningKey::from_bytes(&[7; 32]), validity_ms: 1000 };
        assert_eq!(signer.period(0), 0);
        assert_eq!(signer.period(499), 0);
        assert_eq!(signer.period(500), 1, "a new period every half validity");
        for now in [0, 250, 499, 500, 999, 12_345] {
            let mut m = crate::wire::proto::Manifest { model: "m".into(), version: "v".into(), ..Default::default() };
            signer.sign(&mut m, signer.period(now));
            let left = m.expires_at_ms - now;
            assert!((500..=1000).contains(&left), "at {now}: {left} ms left");
            assert!(crate::wire::signature::check(&m, &[signer.key.verifying_key()], now, None).is_ok());
        }
    }
}
