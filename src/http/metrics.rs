//! `/metrics`: counters in Prometheus' text format (version 0.0.4), kept
//! with atomics and one small map, so counting costs a request almost
//! nothing. Model and cache figures are read from the store when scraped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::store::{Entry, Store};

/// What the server counted since start.
#[derive(Default)]
pub(super) struct Metrics {
    /// (route, status) → answers.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    body_bytes_identity: AtomicU64,
    body_bytes_zstd: AtomicU64,
    /// Shared with the accept loop, which counts connections in and out.
    pub(super) connections_open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    connections_refused: AtomicU64,
    accept_errors: AtomicU64,
}

impl Metrics {
    pub(super) fn request(&self, route: &'static str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route, status)).or_default() += 1;
        }
    }

    pub(super) fn body_bytes(&self, zstd: bool, n: u64) {
        let counter = if zstd { &self.body_bytes_zstd } else { &self.body_bytes_identity };
        counter.fetch_add(n, Relaxed);
    }

    pub(super) fn refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    pub(super) fn accept_error(&self) {
        self.accept_errors.fetch_add(1, Relaxed);
    }

    /// The text a scrape gets.
    pub(super) fn render(&self, store: &Store) -> String {
        let mut out = String::new();
        let o = &mut out;
        family(o, "weightcast_requests_total", "counter", "Answers by route and status (304: revalidated).");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                sample(o, "weightcast_requests_total", &format!("route=\"{route}\",status=\"{status}\""), *n);
            }
        }
        family(o, "weightcast_body_bytes_total", "counter", "Response body bytes written, by Content-Encoding.");
        sample(o, "weightcast_body_bytes_total", "encoding=\"identity\"", self.body_bytes_identity.load(Relaxed));
        sample(o, "weightcast_body_bytes_total", "encoding=\"zstd\"", self.body_bytes_zstd.load(Relaxed));
        for (name, kind, help, value) in self.scalars(store) {
            family(o, name, kind, help);
            sample(o, name, "", value);
        }
        models(o, store);
        out
    }

    /// The families of one unlabelled sample: connections, loads, the cache.
    fn scalars(&self, store: &Store) -> [(&'static str, &'static str, &'static str, u64); 11] {
        let cache = store.cache();
        let counts = cache.counts();
        [
            (
                "weightcast_connections_open",
                "gauge",
                "Connections open now.",
                self.connections_open.load(Relaxed) as u64,
            ),
            (
                "weightcast_connections_refused_total",
                "counter",
                "Connections over the cap, answered 503.",
                self.connections_refused.load(Relaxed),
            ),
            (
                "weightcast_accept_errors_total",
                "counter",
                "accept() failures (out of descriptors, …), waited out.",
                self.accept_errors.load(Relaxed),
            ),
            (
                "weightcast_model_load_failures_total",
                "counter",
                "Model loads that failed, at start and on reloads.",
                store.load_failures(),
            ),
            (
                "weightcast_cache_hits_total",
                "counter",
                "Derived blobs (casts, zstd frames, documents) a response used from the cache, each counted once.",
                counts.hits.load(Relaxed),
            ),
            (
                "weightcast_cache_misses_total",
                "counter",
                "Derived blobs computed because they were not cached.",
                counts.misses.load(Relaxed),
            ),
            (
                "weightcast_cache_evictions_total",
                "counter",
                "Blobs dropped to stay within the cache budget.",
                counts.evictions.load(Relaxed),
            ),
            ("weightcast_cache_bytes", "gauge", "Bytes the cache holds in memory now.", cache.used()),
            (
                "weightcast_cache_disk_bytes",
                "gauge",
                "Bytes of the cache folder's files (at most cache_dir_bytes).",
                cache.disk_bytes(),
            ),
            (
                "weightcast_cache_disk_evictions_total",
                "counter",
                "Files the cache folder removed to stay within cache_dir_bytes.",
                cache.disk_evictions(),
            ),
            ("weightcast_cache_budget_bytes", "gauge", "The cache's budget.", cache.budget()),
        ]
    }
}

/// The families labelled by model: load state, versions held, load time.
fn models(o: &mut String, store: &Store) {
    let entries = store.entries();
    family(o, "weightcast_model_loaded", "gauge", "1 if the model serves, 0 if it failed to load.");
    for entry in &entries {
        let (name, loaded) = match entry {
            Entry::Loaded(m) => (m.name.as_str(), 1),
            Entry::Failed { name, .. } => (name.as_str(), 0),
        };
        sample(o, "weightcast_model_loaded", &format!("model=\"{name}\""), loaded);
    }
    family(
        o,
        "weightcast_model_versions_held",
        "gauge",
        "Versions of the model alive: serving, and replaced but still sending.",
    );
    for (name, held) in store.versions_held() {
        sample(o, "weightcast_model_versions_held", &format!("model=\"{name}\""), held as u64);
    }
    family(o, "weightcast_model_load_seconds", "gauge", "How long the serving version of a model took to load.");
    for entry in &entries {
        if let Entry::Loaded(m) = entry {
            let _ = writeln!(o, "weightcast_model_load_seconds{{model=\"{}\"}} {:.3}", m.name, m.load_ms as f64 / 1e3);
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: u64) {
    match labels.is_empty() {
        true => {
            let _ = writeln!(out, "{name} {value}");
        }
        false => {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}
