//! The loaded models: their tensors, digests and versions, the runtime
//! session each one holds, and a byte-bounded cache of derived bytes.
//!
//! Digests of the stored bytes are computed once at load; those of a cast
//! representation once, on first use, and kept with the model.

use std::sync::{Arc, Mutex, RwLock};

use crate::wire;

mod cache;
mod load;
mod model;
mod reload;

pub use cache::*;
pub use load::*;
pub use model::*;
use reload::*;
pub use reload::{panic_message, stamp, Entry, FileStamp};

/// Every model the server was asked to serve: loaded, or failed with a
/// reason; each reloaded when its file is replaced.
pub struct Store {
    slots: Vec<Slot>,
    sessions: Option<Sessions>,
    cache: Arc<Cache>,
    load_failures: std::sync::atomic::AtomicU64,
    /// How long a changed model's files must hold still before a reload.
    settle: std::time::Duration,
}

/// The default settle time (`reload_settle`): a graph and its data file
/// written one after the other in place, 0.8 s apart, were loaded whole
/// already; 2.5 s apart they were served as a version that never existed.
pub const RELOAD_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

impl Store {
    /// Loads each model; one that fails is logged and listed with its error.
    pub fn load(specs: &[ModelSpec], sessions: Option<Sessions>, cache: Arc<Cache>) -> Store {
        let slots = specs
            .iter()
            .map(|spec| {
                let before = stamps(spec, None);
                let entry = load_entry(spec, sessions.as_ref(), &cache);
                if let Entry::Loaded(m) = &entry {
                    cache.retire(&m.name, m.version());
                }
                let before = refine(spec, &entry, before);
                Slot {
                    spec: spec.clone(),
                    state: RwLock::new((entry, before)),
                    pending: Mutex::new(None),
                    replaced: Mutex::new(std::sync::Weak::new()),
                }
            })
            .collect::<Vec<_>>();
        let failures =
            slots.iter().filter(|s| s.state.read().is_ok_and(|st| matches!(st.0, Entry::Failed { .. }))).count();
        Store { slots, sessions, cache, load_failures: (failures as u64).into(), settle: RELOAD_SETTLE }
    }

    /// Versions of each model alive now (serving, and the one replaced last
    /// while responses still send it), by model name.
    pub fn versions_held(&self) -> Vec<(String, usize)> {
        self.slots
            .iter()
            .map(|slot| {
                let serving = slot.state.read().is_ok_and(|st| matches!(st.0, Entry::Loaded(_))) as usize;
                let replaced = slot.replaced.lock().map_or(0, |r| (r.strong_count() > 0) as usize);
                (slot.spec.name.clone(), serving + replaced)
            })
            .collect()
    }

    /// Sets how long a changed model's files must hold still before a reload.
    pub fn set_reload_settle(&mut self, settle: std::time::Duration) {
        self.settle = settle;
    }

    /// Loads that failed since start (at start and on reloads).
    pub fn load_failures(&self) -> u64 {
        self.load_failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The shared cache of derived bytes.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The shared cache, for a model loaded beside the store's (a rollout's
    /// stable version).
    pub fn shared_cache(&self) -> Arc<Cache> {
        self.cache.clone()
    }

    /// Reloads every model one of whose files (the model, its external data)
    /// changed since it was loaded and has held still since the last look;
    /// returns the models loaded anew. A model whose new files fail to load
    /// keeps serving its previous version (and the failure is logged).
    pub fn refresh(&self) -> Vec<Arc<Model>> {
        let mut fresh = Vec::new();
        for slot in &self.slots {
            let Some(now) = settled_change(slot, self.settle) else { continue };
            if let Some(held) = slot.replaced.lock().ok().and_then(|r| r.upgrade()) {
                tracing::info!(model = %slot.spec.name, version = %wire::short(held.version()),
                    "a new file waits until the responses still sending the version before the current one finish");
                continue;
            }
            let entry = load_entry(&slot.spec, self.sessions.as_ref(), &self.cache);
            let now = refine(&slot.spec, &entry, now);
            // Looked at again once the snapshot is taken: a file that changed
            // during the load may have given a graph and data of two versions.
            if stamps(&slot.spec, Some(&entry)) != now {
                tracing::info!(model = %slot.spec.name, "its files changed while it loaded; loading again once they hold still");
                continue;
            }
            if matches!(entry, Entry::Failed { .. }) {
                self.load_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let Ok(mut state) = slot.state.write() else { continue };
            match (&entry, &state.0) {
                (Entry::Failed { error, .. }, Entry::Loaded(old)) => {
                    tracing::warn!(model = %slot.spec.name, "new file did not load; still serving version {}: {error}", wire::short(old.version()));
                    state.1 = now;
                }
                _ => {
                    if let Entry::Loaded(m) = &entry {
                        fresh.push(m.clone());
                        self.cache.retire(&m.name, m.version());
                    }
                    let replaced_model = match &state.0 {
                        Entry::Loaded(old) => Some(old.clone()),
                        Entry::Failed { .. } => None,
                    };
                    if let (Some(old), Ok(mut replaced)) = (&replaced_model, slot.replaced.lock()) {
                        *replaced = Arc::downgrade(old);
                    }
                    let new = match &entry {
                        Entry::Loaded(m) => Some(m.clone()),
                        Entry::Failed { .. } => None,
                    };
                    *state = (entry, now);
                    drop(state);
                    if let (Some(old), Some(new)) = (replaced_model, new) {
                        record_changes(&old, &new);
                    }
                }
            }
        }
        fresh
    }

    /// The loaded models.
    pub fn models(&self) -> Vec<Arc<Model>> {
        self.entries().into_iter().filter_map(|e| if let Entry::Loaded(m) = e { Some(m) } else { None }).collect()
    }

    /// The model called `name`, if it is loaded.
    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        match self.entry(name)? {
            Entry::Loaded(m) => Some(m),
            Entry::Failed { .. } => None,
        }
    }

    fn entry(&self, name: &str) -> Option<Entry> {
        let slot = self.slots.iter().find(|s| s.spec.name == name)?;
        slot.state.read().ok().map(|s| s.0.clone())
    }

    /// Every model, in the order given.
    pub fn entries(&self) -> Vec<Entry> {
        self.slots.iter().filter_map(|s| s.state.read().ok().map(|s| s.0.clone())).collect()
    }

    /// The error of a model that failed to load.
    pub fn failure(&self, name: &str) -> Option<String> {
        match self.entry(name)? {
            Entry::Failed { error, .. } => Some(error),
            Entry::Loaded(_) => None,
        }
    }
}

pub use crate::wire::unix_ms;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::cast::{self, Target};
    use crate::onnx::TensorData;
    use bytes::Bytes;
    use std::sync::Arc;

    fn key(i: usize) -> CacheKey {
        CacheKey { model: "m".into(), version: "v".into(), tensor: i, variant: "x".into() }
    }

    #[test]
    fn a_cast_too_large_for_the_cache_is_made_a_window_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.onnx");
        crate::demo::write(&path).unwrap();
        let cache = Arc::new(Cache::new(1 << 20)); // an eighth: 128 KiB
        let model = load(&ModelSpec { name: "demo".into(), path }, None, cache.clone()).unwrap();
        let (i, t) = model.tensors.iter().enumerate().max_by_key(|(_, t)| t.nbytes()).unwrap();
        let TensorData::Bytes(stored) = &t.data else { panic!() };
        let whole = cast::cast(t.dtype, stored, Target::F16).unwrap().bytes;
        assert!(whole.len() as u64 > cache.budget() / 8, "the test needs a cast larger than an eighth of the cache");
        for range in [0..whole.len(), 1..4097, 777..whole.len() - 3, 65536..65538, 5..5] {
            assert_eq!(&model.data_range(i, Some(Target::F16), range.clone())[..], &whole[range.clone()], "{range:?}");
        }
        assert_eq!(cache.used(), 0, "windows are not cached whole");
        assert_eq!(&model.data_range(i, None, 10..20)[..], &stored[10..20]);
    }

    #[test]
    fn cache_evicts_least_recently_used_within_budget() {
        let c = Cache::new(10);
        c.put(key(1), Bytes::from_static(b"aaaa"));
        c.put(key(2), Bytes::from_static(b"bbbb"));
        assert!(c.get(&key(1)).is_some()); // 1 is now the most recent
        c.put(key(3), Bytes::from_static(b"cccc"));
        assert!(c.get(&key(2)).is_none(), "2 was least recently used");
        assert!(c.get(&key(1)).is_some() && c.get(&key(3)).is_some());
        assert_eq!(c.used(), 8);
        c.put(key(4), Bytes::from(vec![0u8; 11]));
        assert!(c.get(&key(4)).is_none(), "larger than the whole budget: not kept");
    }

    #[test]
    fn each_blob_a_response_uses_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::with_disk(1 << 20, dir.path(), u64::MAX).unwrap();
        use std::sync::atomic::Ordering::SeqCst;
        let counts = |c: &Cache| (c.counts().hits.load(SeqCst), c.counts().misses.load(SeqCst));
        // Not cached: the lookup that plans the response counts nothing, the
        // computation one miss.
        assert!(c.lookup(&key(1)).is_none());
        c.get_or_compute(key(1), || Ok(Bytes::from_static(b"small"))).unwrap();
        assert_eq!(counts(&c), (0, 1));
        // In memory: the lookup is the use.
        assert!(matches!(c.lookup(&key(1)), Some(Found::Memory(_))));
        assert_eq!(counts(&c), (1, 1));
        // On disk, read in parts: one hit, at the blob's start.
        let big = Bytes::from(vec![7u8; DISK_FROM * 2]);
        c.get_or_compute(key(2), || Ok(big.clone())).unwrap();
        assert_eq!(counts(&c), (1, 2));
        assert!(matches!(c.lookup(&key(2)), Some(Found::Disk(_))));
        for at in (0..big.len()).step_by(1000) {
            assert!(c.get_range(&key(2), at..(at + 1000).min(big.len())).is_some());
        }
        assert_eq!(counts(&c), (2, 2));
        // Left by an earlier run: checked and counted when read.
        let again = Cache::with_disk(1 << 20, dir.path(), u64::MAX).unwrap();
        assert!(again.lookup(&key(2)).is_none(), "not checked on the executor");
        assert_eq!(again.get_or_compute(key(2), || Err("computed again".into())).unwrap(), big);
        assert_eq!(counts(&again), (1, 0));
    }

    #[test]
    fn concurrent_requesters_share_one_computation() {
        let c = Arc::new(Cache::new(1 << 20));
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, runs) = (c.clone(), runs.clone());
                std::thread::spawn(move || {
                    c.get_or_compute(key(9), || {
                        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        Ok(Bytes::from_static(b"v"))
                    })
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap(), Bytes::from_static(b"v"));
        }
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn names_and_duplicates() {
        let s = specs(&[(None, "a/m.onnx".into()), (Some("n".into()), "b/m.onnx".into())]).unwrap();
        assert_eq!(s[0].name, "m");
        assert!(specs(&[(None, "a/m.onnx".into()), (None, "b/m.onnx".into())])
            .unwrap_err()
            .to_string()
            .contains("two models are named 'm'"));
        assert!(specs(&[(Some("a b".into()), "x.onnx".into())]).is_err());
    }
}
