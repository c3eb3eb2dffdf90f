//! The byte-bounded cache of derived bytes (casts, zstd frames, rendered
//! documents): least recently used out, one computation per key, and an
//! optional folder on disk (`disk`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

mod disk;
pub use disk::{default_budget as default_dir_budget, DISK_FROM};

/// [`Model::cache_key`]'s `tensor` for bytes about the whole model.
pub const WHOLE_MODEL: usize = usize::MAX;

/// What a cached blob is: bytes derived from one version of one model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The model's name.
    pub model: String,
    /// The version they were derived from.
    pub version: String,
    /// A tensor's index, or [`WHOLE_MODEL`].
    pub tensor: usize,
    /// What was derived: a cast, a zstd frame, a rendered manifest (whose
    /// `tensor` is `usize::MAX`: it covers the whole model), …
    pub variant: String,
}

/// A value being computed: the first requester fills it, others wait on it.
type InFlight = OnceLock<Result<Bytes, String>>;

/// Derived bytes (cast tensors, compressed records), least recently used out
/// once they exceed the byte budget. A value being computed is computed once:
/// concurrent requesters of the same key wait for it and share it.
pub struct Cache {
    budget: u64,
    disk: Option<disk::Disk>,
    inner: Mutex<CacheInner>,
    in_flight: Mutex<HashMap<CacheKey, Arc<InFlight>>>,
    counts: CacheCounts,
}

/// Where a cached blob is ([`Cache::lookup`]).
pub enum Found {
    /// In memory.
    Memory(Bytes),
    /// On disk, this many bytes long.
    Disk(usize),
}

/// What the cache did since start (for `/metrics`). Each blob a response
/// uses counts once: a hit when it comes from the cache, a miss when it is
/// computed — not once per method that looked (planning a response looks
/// first on the executor, then reads or computes on the blocking pool).
#[derive(Debug, Default)]
pub struct CacheCounts {
    /// Blobs used from the cache (a blob read in parts counts at its start).
    pub hits: std::sync::atomic::AtomicU64,
    /// Blobs computed because they were not cached.
    pub misses: std::sync::atomic::AtomicU64,
    /// Blobs dropped to stay within the budget.
    pub evictions: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<CacheKey, (Bytes, u64)>,
    used: u64,
    clock: u64,
}

impl Cache {
    /// An empty cache holding at most `budget` bytes, in memory only.
    pub fn new(budget: u64) -> Cache {
        Cache {
            budget,
            disk: None,
            inner: Mutex::new(CacheInner::default()),
            in_flight: Mutex::new(HashMap::new()),
            counts: CacheCounts::default(),
        }
    }

    /// A cache that keeps blobs of [`disk::DISK_FROM`] bytes or more in
    /// files under `dir` (mapped, not counted in `budget`), the rest in at
    /// most `budget` bytes of memory.
    /// `dir_budget` bounds the folder ([`disk::default_budget`] where the
    /// config names none).
    pub fn with_disk(budget: u64, dir: &std::path::Path, dir_budget: u64) -> std::io::Result<Cache> {
        Ok(Cache { disk: Some(disk::Disk::open(dir, dir_budget)?), ..Cache::new(budget) })
    }

    /// Whether large blobs go to disk (then the memory budget does not bound them).
    pub fn has_disk(&self) -> bool {
        self.disk.is_some()
    }

    /// Bytes of the cache folder's files now.
    pub fn disk_bytes(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.held_bytes())
    }

    /// Files the cache folder removed to keep its budget, since start.
    pub fn disk_evictions(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.evictions())
    }

    /// Drops the disk blobs of `model` other than `version`'s (called once a
    /// new version serves).
    pub fn retire(&self, model: &str, version: &str) {
        if let Some(d) = &self.disk {
            d.retire(model, version);
        }
    }

    /// The cached value, or `compute`'s, computed by one caller at a time per
    /// key (others block until it is ready; call from a blocking thread).
    pub fn get_or_compute(
        &self,
        key: CacheKey,
        compute: impl FnOnce() -> Result<Bytes, String>,
    ) -> Result<Bytes, String> {
        if let Some(hit) = self.get(&key) {
            return Ok(hit);
        }
        let cell = match self.in_flight.lock() {
            Ok(mut m) => m.entry(key.clone()).or_default().clone(),
            Err(_) => Arc::new(OnceLock::new()),
        };
        let mut computed_here = false;
        let result = cell
            .get_or_init(|| {
                computed_here = true;
                // Waiters get the kept bytes: a map of the disk file, not a
                // second anonymous copy.
                compute().map(|bytes| self.keep(&key, bytes))
            })
            .clone();
        if computed_here {
            if let Ok(mut m) = self.in_flight.lock() {
                m.remove(&key);
            }
        }
        self.count(!computed_here);
        result
    }

    /// Stores `bytes` on disk if large and the disk takes them, else in
    /// memory; returns them (for the requests waiting on this computation).
    fn keep(&self, key: &CacheKey, bytes: Bytes) -> Bytes {
        if let Some(disk) = self.disk.as_ref().filter(|_| bytes.len() >= disk::DISK_FROM) {
            if disk.put(key, &bytes) {
                return bytes;
            }
        }
        self.put(key.clone(), bytes.clone());
        bytes
    }

    /// Where the blob under `key` is, if cached (and marks it used): bytes
    /// in memory, or the length of a blob on disk (read it with
    /// [`Cache::get`] or [`Cache::get_range`] when it is needed: a response
    /// lists its frames when it starts, and reads each one when it gets there).
    ///
    /// Touches no file (it runs on the executor): a disk blob left by an
    /// earlier run counts only once checked, which [`Cache::get`] (on the
    /// blocking pool) does; until then the response computes that chunk
    /// when it gets there, through the cache.
    ///
    /// Counts a hit for bytes in memory (used as they are); a disk blob
    /// counts when read, a blob not found when computed or found later.
    pub fn lookup(&self, key: &CacheKey) -> Option<Found> {
        let found = self.find(key, false);
        if let Some(Found::Memory(_)) = found {
            self.count(true);
        }
        found
    }

    fn count(&self, hit: bool) {
        let counter = if hit { &self.counts.hits } else { &self.counts.misses };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn find(&self, key: &CacheKey, check_disk: bool) -> Option<Found> {
        let mut inner = self.inner.lock().ok()?;
        inner.clock += 1;
        let now = inner.clock;
        let found = inner.map.get_mut(key).map(|(b, last)| {
            *last = now;
            Found::Memory(b.clone())
        });
        drop(inner);
        let on_disk = |d: &disk::Disk| if check_disk { d.len(key) } else { d.known_len(key) };
        found.or_else(|| self.disk.as_ref().and_then(on_disk).map(|n| Found::Disk(n as usize)))
    }

    /// The blob under `key`, whole, if cached (read from disk if there, a
    /// file left by an earlier run checked first; call from a blocking thread).
    pub fn get(&self, key: &CacheKey) -> Option<Bytes> {
        self.read(key, None)
    }

    /// Bytes `range` of the blob under `key`, if cached: a disk blob is read
    /// for that range only.
    pub fn get_range(&self, key: &CacheKey, range: std::ops::Range<usize>) -> Option<Bytes> {
        self.read(key, Some(range))
    }

    /// The one read path (memory, else disk). Counting rule, for every read
    /// and for [`Cache::lookup`]: a read that begins at the blob's first byte
    /// is one hit; a response reading a large blob a window at a time reads
    /// its start once, so each blob a response uses counts once.
    fn read(&self, key: &CacheKey, range: Option<std::ops::Range<usize>>) -> Option<Bytes> {
        let found = match self.find(key, true)? {
            Found::Memory(b) => match &range {
                None => Some(b),
                Some(r) => (r.end <= b.len()).then(|| b.slice(r.clone())),
            },
            Found::Disk(n) => self.read_disk(key, range.clone().unwrap_or(0..n)),
        }?;
        if range.as_ref().is_none_or(|r| r.start == 0) {
            self.count(true);
        }
        Some(found)
    }

    fn read_disk(&self, key: &CacheKey, range: std::ops::Range<usize>) -> Option<Bytes> {
        let disk = self.disk.as_ref()?;
        match disk.read(key, range.start as u64..range.end as u64) {
            Ok(b) => Some(b.into()),
            Err(e) => {
                tracing::warn!(model = %key.model, "cannot read a cache file: {e}");
                None
            }
        }
    }

    /// Keeps `bytes` unless they alone exceed the budget.
    pub fn put(&self, key: CacheKey, bytes: Bytes) {
        let size = bytes.len() as u64;
        if size > self.budget {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else { return };
        inner.clock += 1;
        let now = inner.clock;
        if let Some((old, _)) = inner.map.insert(key, (bytes, now)) {
            inner.used -= old.len() as u64;
        }
        inner.used += size;
        while inner.used > self.budget {
            let Some(oldest) = inner.map.iter().min_by_key(|(_, (_, last))| *last).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some((b, _)) = inner.map.remove(&oldest) {
                inner.used -= b.len() as u64;
                self.counts.evictions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Whether a derived blob of `len` bytes is kept whole: at most an
    /// eighth of the budget. A larger one (a cast, a byte-grouped tensor) is
    /// computed a window at a time as a response sends it, never whole in
    /// memory — the one place this rule lives.
    pub fn holds_whole(&self, len: u64) -> bool {
        len <= self.budget / 8
    }

    /// Hits, misses and evictions since start.
    pub fn counts(&self) -> &CacheCounts {
        &self.counts
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.inner.lock().map_or(0, |i| i.used)
    }
}
