//! Keeping what is served current: the encodings clients will ask for are
//! made right after a model loads, in the background, not on the first
//! request (a request that comes first shares the same work); model files
//! are watched, and a replaced one is loaded and prepared while the previous
//! version keeps serving.
//!
//! `encode` says what work a representation needs ([`encode::preparation`]);
//! this module decides where it runs (a thread per core) and when it stops
//! (the cache's budget).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::encode::{self, Prepared};
use crate::store::{Cache, Model, Store};

/// What to prepare for every loaded model.
pub struct Preparation {
    /// The config's `prepare` entries.
    pub what: Vec<Prepared>,
    /// zstd level of compressed answers.
    pub zstd_level: i32,
    /// Where prepared bytes go; its budget ends preparation.
    pub cache: Arc<Cache>,
}

/// What preparing one representation of one model did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareReport {
    /// Computations run (casts, zstd frames).
    pub jobs: usize,
    /// Bytes of the whole-model body the work was for.
    pub bytes_in: u64,
    /// Bytes the work put in the cache.
    pub bytes_out: u64,
}

impl Preparation {
    /// Prepares every entry for each model, logging what each took.
    pub fn prepare(&self, models: &[Arc<Model>]) {
        for model in models {
            for what in &self.what {
                let started = Instant::now();
                let done = self.prepare_one(model, *what);
                if what.zstd || what.repr.is_some() || what.bytegroup {
                    tracing::info!(model = %model.name, what = %what, jobs = done.jobs, bytes_in = done.bytes_in,
                        bytes_out = done.bytes_out, ms = started.elapsed().as_millis() as u64,
                        cache_used = self.cache.used(), "prepared");
                }
            }
        }
    }

    /// Runs one representation's work, a computation per core at a time,
    /// until it is done or the cache's budget is full.
    pub fn prepare_one(&self, model: &Arc<Model>, what: Prepared) -> PrepareReport {
        let (bytes_in, work) = encode::preparation(model, what, self.zstd_level);
        let queue = Mutex::new(work.into_iter().rev().collect::<Vec<_>>());
        let totals = Mutex::new((0usize, 0u64));
        let budget = self.cache.budget();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    // On disk, frames are not bounded by the memory budget.
                    if totals.lock().map_or(true, |t| t.1 >= budget && !self.cache.has_disk()) {
                        break;
                    }
                    let Some(job) = queue.lock().ok().and_then(|mut q| q.pop()) else { break };
                    let out = job().map_or(0, |b| b.len() as u64);
                    if let Ok(mut t) = totals.lock() {
                        *t = (t.0 + 1, t.1 + out);
                    }
                });
            }
        });
        let (jobs, bytes_out) = totals.into_inner().unwrap_or_default();
        PrepareReport { jobs, bytes_in, bytes_out }
    }

    /// One look at the model files: reloads those replaced since, and
    /// prepares the new versions. Returns them.
    pub fn refresh(&self, store: &Store) -> Vec<Arc<Model>> {
        let fresh = store.refresh();
        self.prepare(&fresh);
        fresh
    }

    /// Prepares what is loaded, then looks at the files every `interval`,
    /// forever (run it on a thread of its own).
    pub fn watch(&self, store: &Store, interval: Duration) {
        self.prepare(&store.models());
        loop {
            std::thread::sleep(interval);
            self.refresh(store);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::ModelProto;
    use crate::store::specs;
    use prost::Message;

    fn preparation(cache: &Arc<Cache>) -> Preparation {
        Preparation { what: vec!["zstd".parse().unwrap()], zstd_level: 3, cache: cache.clone() }
    }

    /// The demo model with one initializer's bytes changed, renamed over `path`.
    fn republish(path: &std::path::Path, bytes: Vec<u8>) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn a_replaced_file_is_loaded_and_prepared_and_a_broken_one_keeps_the_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.onnx");
        crate::demo::write(&path).unwrap();
        let cache = Arc::new(Cache::new(64 << 20));
        let mut store = Store::load(&specs(&[(None, path.clone())]).unwrap(), None, cache.clone());
        // A change is loaded at the first look after it held still this long.
        store.set_reload_settle(std::time::Duration::ZERO);
        let prep = preparation(&cache);
        let first = store.get("demo").unwrap();
        let done = prep.prepare_one(&first, prep.what[0]);
        assert!(done.jobs > 0 && done.bytes_out > 0 && done.bytes_out < done.bytes_in, "{done:?}");
        assert!(cache.used() >= done.bytes_out);
        assert!(prep.refresh(&store).is_empty(), "nothing changed");

        let mut model = ModelProto::decode(crate::demo::model_bytes().as_slice()).unwrap();
        let graph = model.graph.as_mut().unwrap();
        let t = graph.initializer.iter_mut().find(|t| t.raw_data.as_ref().is_some_and(|r| r.len() > 4096)).unwrap();
        let mut raw = t.raw_data.clone().unwrap().to_vec();
        raw[0] ^= 1;
        t.raw_data = Some(raw.into());
        republish(&path, model.encode_to_vec());
        assert!(prep.refresh(&store).is_empty(), "a change is loaded once it held still for one look");
        let fresh = prep.refresh(&store);
        assert_eq!(fresh.len(), 1);
        let second = store.get("demo").unwrap();
        assert_ne!(second.version(), first.version());
        let (_, left) = encode::preparation(&second, prep.what[0], 3);
        assert!(left.is_empty(), "the new version's frames were prepared by refresh");

        republish(&path, b"not a model".to_vec());
        assert!(prep.refresh(&store).is_empty());
        assert!(prep.refresh(&store).is_empty());
        assert_eq!(store.get("demo").unwrap().version(), second.version(), "the last good version keeps serving");
    }
}
