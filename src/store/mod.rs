//! The loaded models: their tensors, digests and versions, the runtime
//! session each one holds, and a byte-bounded cache of derived bytes.
//!
//! Digests of the stored bytes are computed once at load; those of a cast
//! representation once, on first use, and kept with the model.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::onnx::cast::{self, Target};
use crate::onnx::stats::{Diff, Stats};
use crate::onnx::{DataType, ModelInfo, OnnxModel, Tensor, TensorData};
use crate::runtime::{self, OpenSession, Runtime};

mod disk;
use crate::wire;
pub use disk::DISK_FROM;

/// Why a model did not load.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum LoadError {
    #[error("model '{model}': {source}")]
    Onnx { model: String, source: crate::onnx::OnnxError },
    #[error("model '{model}': {source}")]
    Runtime { model: String, source: runtime::RuntimeError },
    #[error(
        "model '{model}': loading it hit a bug ({what}); the last good version keeps serving — please report the file"
    )]
    Panic { model: String, what: String },
    #[error("model '{model}': cannot rewrite it with external data for /graph: {source}")]
    Graph { model: String, source: crate::onnx::graph::RewriteError },
}

/// A model to load: its name and file.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Its name in URLs (`[A-Za-z0-9._-]+`).
    pub name: String,
    /// Its file.
    pub path: PathBuf,
}

/// Checks a model name: `[A-Za-z0-9._-]+`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// One tensor as a representation serves it.
#[derive(Debug, Clone)]
pub struct TensorMeta {
    /// The dtype served.
    pub dtype: DataType,
    /// The stored dtype, when `dtype` is a cast of it.
    pub source_dtype: Option<DataType>,
    /// Byte length of its data as served.
    pub nbytes: u64,
    /// sha256 of its data as served.
    pub sha256: [u8; 32],
    /// CRC-32 of the data bytes (zip members need it before the data).
    pub crc32: u32,
    /// Finite values that became ±inf in the cast (0 as stored).
    pub overflowed: u64,
}

/// Which representation of a model's weights: as stored, or cast.
pub type Representation = Option<Target>;

/// Per-tensor facts and the version of one representation.
#[derive(Debug)]
pub struct View {
    /// One per tensor, in model order.
    pub tensors: Vec<TensorMeta>,
    /// The representation's version (`wire::version`).
    pub version: String,
}

/// What the runtime reported for a model.
#[derive(Debug, Clone, Default)]
pub struct RuntimeInfo {
    /// "ort" or "none".
    pub engine: &'static str,
    /// Execution providers the config asked for.
    pub requested: Vec<String>,
    /// Those that work, CPU last.
    pub active: Vec<String>,
    /// Inputs (the session's view, or the file's without ONNX Runtime).
    pub inputs: Vec<crate::onnx::ValueInfo>,
    /// Outputs, likewise.
    pub outputs: Vec<crate::onnx::ValueInfo>,
    /// Whether the warm-up inference ran.
    pub warmed_up: bool,
}

/// A loaded model.
pub struct Model {
    /// Its name in URLs.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// Facts besides the tensors.
    pub info: ModelInfo,
    /// Its tensors, as stored.
    pub tensors: Vec<Tensor>,
    /// What ONNX Runtime reported.
    pub runtime: RuntimeInfo,
    /// How long loading took (reading, session, digests, graph), in ms.
    pub load_ms: u64,
    /// When this version was loaded (Unix ms): its publication time in a
    /// signed manifest.
    pub published_at_ms: u64,
    /// The external data files it was read from (watched for changes).
    pub external_files: Vec<PathBuf>,
    index: HashMap<String, usize>,
    stored: Arc<View>,
    cast: [OnceLock<Arc<View>>; 2],
    /// The model file with its large initializers as external data at
    /// `wire::tensor_file(name)` (`/graph`), made at load, and its sha256.
    graph: Bytes,
    graph_sha256: [u8; 32],
    /// Kept open for the model's lifetime: the session is the proof it loads.
    _session: Option<OpenSession>,
    cache: Arc<Cache>,
    stats: OnceLock<Arc<Vec<Option<Stats>>>>,
    changes: OnceLock<Arc<Changes>>,
}

/// What changed from the version a model replaced to this one.
#[derive(Debug)]
pub struct Changes {
    /// The version replaced.
    pub from_version: String,
    /// When that version was loaded (Unix ms).
    pub from_loaded_at_ms: u64,
    /// What differs.
    pub diff: Diff,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("name", &self.name).field("path", &self.path).finish_non_exhaustive()
    }
}

impl Model {
    /// Index of the tensor called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The version of the weights as stored.
    pub fn version(&self) -> &str {
        &self.stored.version
    }

    /// Each tensor's statistics (computed once per version; run it on the
    /// blocking pool: it reads every tensor).
    pub fn stats(&self) -> Arc<Vec<Option<Stats>>> {
        self.stats.get_or_init(|| Arc::new(self.tensors.iter().map(crate::onnx::stats::stats).collect())).clone()
    }

    /// What changed since the version this one replaced, once computed
    /// (after a reload; `None` for the first version a server loads).
    pub fn changes(&self) -> Option<Arc<Changes>> {
        self.changes.get().cloned()
    }

    /// Bytes of all its tensors, as stored.
    pub fn total_bytes(&self) -> u64 {
        self.stored.tensors.iter().map(|t| t.nbytes).sum()
    }

    /// The view of a representation if it needs no work now (stored, or a
    /// cast already computed): the async handlers skip the blocking pool then.
    pub fn view_ready(&self, repr: Representation) -> Option<Arc<View>> {
        match repr {
            None => Some(self.stored.clone()),
            Some(target) => self.cast[target as usize].get().cloned(),
        }
    }

    /// Per-tensor facts in a representation (computing the cast once).
    pub fn view(&self, repr: Representation) -> Arc<View> {
        let Some(target) = repr else {
            return self.stored.clone();
        };
        self.cast[target as usize]
            .get_or_init(|| {
                let tensors = (0..self.tensors.len())
                    .map(|i| {
                        let t = &self.tensors[i];
                        if let Some(meta) = self.large_cast_meta(i, target) {
                            return meta;
                        }
                        match self.cast_data(i, target) {
                            Some((bytes, overflowed)) => TensorMeta {
                                dtype: target.dtype(),
                                source_dtype: Some(t.dtype),
                                nbytes: bytes.len() as u64,
                                sha256: Sha256::digest(&bytes).into(),
                                crc32: crc32fast::hash(&bytes),
                                overflowed,
                            },
                            None => self.stored.tensors[i].clone(),
                        }
                    })
                    .collect();
                Arc::new(View::new(&self.tensors, tensors, &self.graph_sha256))
            })
            .clone()
    }

    /// The facts of a cast too large to cache in memory (over an eighth of
    /// the budget), computed a window at a time: the cast is never whole in
    /// memory (responses cast their windows as they send them).
    fn large_cast_meta(&self, index: usize, target: Target) -> Option<TensorMeta> {
        let t = &self.tensors[index];
        let TensorData::Bytes(stored) = &t.data else { return None };
        let (from, to) = (t.dtype.bits()? as usize / 8, target.dtype().bits()? as usize / 8);
        if !cast::applies(t.dtype, target)
            || from == 0
            || ((stored.len() / from * to) as u64) <= self.cache.budget() / 8
        {
            return None;
        }
        let (mut sha, mut crc, mut overflowed, mut nbytes) = (Sha256::new(), crc32fast::Hasher::new(), 0, 0);
        for window in stored.chunks(CAST_WINDOW_ELEMENTS * from) {
            let c = cast::cast(t.dtype, window, target)?;
            sha.update(&c.bytes);
            crc.update(&c.bytes);
            overflowed += c.overflowed;
            nbytes += c.bytes.len() as u64;
        }
        Some(TensorMeta {
            dtype: target.dtype(),
            source_dtype: Some(t.dtype),
            nbytes,
            sha256: sha.finalize().into(),
            crc32: crc.finalize(),
            overflowed,
        })
    }

    /// A tensor's data in a representation: the stored bytes (zero copy), or
    /// the cast bytes from the cache (computed on a miss).
    pub fn data(&self, index: usize, repr: Representation) -> TensorData {
        match repr.and_then(|target| self.cast_data(index, target)) {
            Some((bytes, _)) => TensorData::Bytes(bytes),
            None => self.tensors[index].data.clone(),
        }
    }

    /// Bytes `range` of a tensor's data in a representation, computing no
    /// more than needed: a slice of the stored bytes; of the cast, cached
    /// whole when it is small next to the cache (an eighth of its budget),
    /// else cast just for this window — so a request for a large tensor that
    /// is not cached holds a window at a time, not the whole cast.
    pub fn data_range(&self, index: usize, repr: Representation, range: std::ops::Range<usize>) -> Bytes {
        let t = &self.tensors[index];
        let (Some(target), TensorData::Bytes(stored)) = (repr, &t.data) else {
            return match &t.data {
                TensorData::Bytes(b) => b.slice(range),
                TensorData::Strings(_) => Bytes::new(),
            };
        };
        if !cast::applies(t.dtype, target) {
            return stored.slice(range);
        }
        let (from, to) = (t.dtype.bits().unwrap_or(32) as usize / 8, target.dtype().bits().unwrap_or(16) as usize / 8);
        let whole = (stored.len() / from * to) as u64;
        if let Some(bytes) = self.cache.get_range(&self.cache_key(index, format!("cast-{target:?}")), range.clone()) {
            return bytes;
        }
        if whole <= self.cache.budget() / 8 {
            return self.data(index, repr).bytes().slice(range);
        }
        // Whole elements around the window, cast, then cut to it.
        let (first, last) = (range.start / to, range.end.div_ceil(to));
        let window = cast::cast(t.dtype, &stored[first * from..last * from], target).map(|c| Bytes::from(c.bytes));
        window.map_or_else(Bytes::new, |w| w.slice(range.start - first * to..range.end - first * to))
    }

    fn cast_data(&self, index: usize, target: Target) -> Option<(Bytes, u64)> {
        let t = &self.tensors[index];
        let TensorData::Bytes(stored) = &t.data else { return None };
        if !cast::applies(t.dtype, target) {
            return None;
        }
        let key = self.cache_key(index, format!("cast-{target:?}"));
        let mut overflowed = None;
        let bytes = self
            .cache
            .get_or_compute(key, || {
                let c = cast::cast(t.dtype, stored, target).ok_or("not castable")?;
                overflowed = Some(c.overflowed);
                Ok(Bytes::from(c.bytes))
            })
            .ok()?;
        // A cached cast's overflow count lives in the view computed with it.
        let overflowed = overflowed.or_else(|| self.cast[target as usize].get().map(|v| v.tensors[index].overflowed));
        Some((bytes, overflowed.unwrap_or(0)))
    }

    /// The model as `/graph` serves it: the file with its large main-graph
    /// initializers as external data at `wire::tensor_file(name)`, small ones
    /// and those shape inference reads inline (`onnx::graph::externalize`).
    pub fn graph(&self) -> &Bytes {
        &self.graph
    }

    /// sha256 of [`Model::graph`] (in the manifest, and part of the version).
    pub fn graph_sha256(&self) -> &[u8; 32] {
        &self.graph_sha256
    }

    /// The cache key of bytes derived from this version of the model:
    /// `tensor` is a tensor's index, or [`WHOLE_MODEL`]; `variant` says how
    /// they were derived (a cast, a zstd frame, a rendered manifest, …).
    pub fn cache_key(&self, tensor: usize, variant: String) -> CacheKey {
        CacheKey { model: self.name.clone(), version: self.version().to_string(), tensor, variant }
    }

    /// The shared cache of derived bytes (for the encoders).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}

impl View {
    fn new(tensors: &[Tensor], metas: Vec<TensorMeta>, graph_sha256: &[u8; 32]) -> View {
        let rows = tensors.iter().zip(&metas).map(|(t, m)| (t.name.as_str(), m.dtype, t.dims.as_slice(), &m.sha256));
        View { version: wire::version(graph_sha256, rows), tensors: metas }
    }
}

/// How each model's ONNX Runtime session is opened; `None` where the
/// server runs without ONNX Runtime (`engine = "none"`).
#[derive(Clone)]
pub struct Sessions {
    /// The loaded library.
    pub runtime: &'static Runtime,
    /// Providers and their options.
    pub options: runtime::SessionOptions,
}

/// Loads one model: reads it, opens its session, computes digests.
pub fn load(spec: &ModelSpec, sessions: Option<&Sessions>, cache: Arc<Cache>) -> Result<Model, LoadError> {
    let started = std::time::Instant::now();
    let mut onnx =
        OnnxModel::open(&spec.path).map_err(|source| LoadError::Onnx { model: spec.name.clone(), source })?;
    // Digests and the version first: the session's TensorRT engine cache is
    // kept per version (its key ignores the weights' values).
    let metas = digests(&onnx.tensors);
    let index: HashMap<String, usize> = onnx.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    let graph = crate::onnx::graph::externalize(&onnx.bytes, wire::tensor_file, |name| {
        index.get(name).map(|&i| match &onnx.tensors[i].data {
            TensorData::Bytes(b) => b.clone(),
            TensorData::Strings(_) => Bytes::new(),
        })
    })
    .map(Bytes::from)
    .map_err(|source| LoadError::Graph { model: spec.name.clone(), source })?;
    let graph_sha256: [u8; 32] = Sha256::digest(&graph).into();
    let stored = Arc::new(View::new(&onnx.tensors, metas, &graph_sha256));
    let (session, runtime) = match sessions {
        None => (
            None,
            RuntimeInfo {
                engine: "none",
                inputs: onnx.info.inputs.clone(),
                outputs: onnx.info.outputs.clone(),
                ..Default::default()
            },
        ),
        Some(sessions) => {
            let s = open_session(spec, &mut onnx, sessions, &stored.version)?;
            let info = RuntimeInfo {
                engine: "ort",
                requested: s.requested.iter().map(|p| p.name().to_string()).collect(),
                active: s.active.iter().map(|p| p.name().to_string()).collect(),
                inputs: s.inputs.clone(),
                outputs: s.outputs.clone(),
                warmed_up: s.warmed_up,
            };
            (s.is_open().then_some(s), info)
        }
    };
    Ok(Model {
        name: spec.name.clone(),
        path: spec.path.clone(),
        info: onnx.info,
        tensors: onnx.tensors,
        runtime,
        index,
        stored,
        cast: [OnceLock::new(), OnceLock::new()],
        graph,
        graph_sha256,
        load_ms: started.elapsed().as_millis() as u64,
        published_at_ms: unix_ms(),
        external_files: onnx.external_files,
        _session: session,
        cache,
        stats: OnceLock::new(),
        changes: OnceLock::new(),
    })
}

/// Computes what changed from `old` to `new` (after the switch: serving
/// the new version does not wait for it) and keeps it with `new`.
fn record_changes(old: &Model, new: &Model) {
    let changes = Changes {
        from_version: old.version().to_string(),
        from_loaded_at_ms: old.published_at_ms,
        diff: crate::onnx::stats::diff(&old.tensors, &new.tensors),
    };
    let _ = new.changes.set(Arc::new(changes));
}

/// The model's session, running on the bytes weightcast serves: tensors are
/// first aligned (`OnnxModel::align_tensors`), then ONNX Runtime gets the
/// graph with the main graph's large tensors as placeholders and those
/// tensors' bytes in place (`Runtime::open_shared`).
///
/// A configured TensorRT `engine_cache_path` becomes `PATH/<model>/<version>`:
/// TensorRT's cache key hashes the graph's names, not the weights' values,
/// so a shared folder would run the old weights' engine after a
/// weights-only update.
fn open_session(
    spec: &ModelSpec,
    onnx: &mut OnnxModel,
    sessions: &Sessions,
    version: &str,
) -> Result<OpenSession, LoadError> {
    let dir = spec.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    onnx.align_tensors(dir).map_err(|source| LoadError::Onnx { model: spec.name.clone(), source })?;
    let index: HashMap<&str, &crate::onnx::Tensor> = onnx.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let data_of = |name: &str| index.get(name).map(|t| t.data.clone().bytes());
    let share = |name: &str| index.get(name).is_some_and(|t| runtime::shareable(t.dtype));
    let (graph, names) = crate::onnx::graph::for_session(&onnx.bytes, runtime::PLACEHOLDER, data_of, share)
        .map_err(|source| LoadError::Graph { model: spec.name.clone(), source })?;
    let shared = names
        .iter()
        .filter_map(|n| index.get(n.as_str()))
        .map(|t| runtime::SharedTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            dims: t.dims.clone(),
            data: t.data.clone().bytes(),
        })
        .collect();
    let runtime_error = |source| LoadError::Runtime { model: spec.name.clone(), source };
    let mut options = sessions.options.clone();
    if let Some(path) = &options.tensorrt.engine_cache_path {
        let per_version = std::path::Path::new(path).join(&spec.name).join(version);
        options.tensorrt.engine_cache_path = Some(per_version.display().to_string());
    }
    sessions.runtime.open_shared(&graph, shared, &options).map_err(runtime_error)
}

/// Digests of every tensor, spread over the available cores.
fn digests(tensors: &[Tensor]) -> Vec<TensorMeta> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(tensors.len().max(1));
    let mut out: Vec<Option<([u8; 32], u32)>> = vec![None; tensors.len()];
    std::thread::scope(|s| {
        let chunk = tensors.len().div_ceil(threads).max(1);
        for (ts, slots) in tensors.chunks(chunk).zip(out.chunks_mut(chunk)) {
            s.spawn(move || {
                for (t, slot) in ts.iter().zip(slots) {
                    *slot = Some(sums(&t.data));
                }
            });
        }
    });
    tensors
        .iter()
        .zip(out)
        .map(|(t, d)| (t, d.unwrap_or_else(|| sums(&t.data))))
        .map(|(t, d)| TensorMeta {
            dtype: t.dtype,
            source_dtype: None,
            nbytes: t.nbytes(),
            sha256: d.0,
            crc32: d.1,
            overflowed: 0,
        })
        .collect()
}

/// sha256 and CRC-32 of a tensor's data (STRING tensors: CRC-32 is 0, no
/// format that needs it can carry strings).
fn sums(data: &TensorData) -> ([u8; 32], u32) {
    let crc = match data {
        TensorData::Bytes(b) => crc32fast::hash(b),
        TensorData::Strings(_) => 0,
    };
    (wire::digest(data), crc)
}

/// Every model the server was asked to serve: loaded, or failed with a
/// reason; each reloaded when its file is replaced.
pub struct Store {
    slots: Vec<Slot>,
    sessions: Option<Sessions>,
    cache: Arc<Cache>,
    load_failures: std::sync::atomic::AtomicU64,
}

struct Slot {
    spec: ModelSpec,
    /// What serves, and the stamps of the files it was loaded from.
    state: RwLock<(Entry, Stamps)>,
    /// Stamps seen changed at the last look, not yet loaded: a change is
    /// loaded once it holds still for one look (a graph and its data being
    /// replaced one after the other are not loaded half-way).
    pending: Mutex<Option<Stamps>>,
    /// The version replaced last, while responses still hold it: no newer
    /// file is loaded until it is gone, so a model never holds three
    /// versions (the one serving, the one before, one loading).
    replaced: Mutex<std::sync::Weak<Model>>,
}

/// A model's files and what identified each when looked at.
type Stamps = Vec<(PathBuf, Option<FileStamp>)>;

/// Stamps of a model's files: the model file and, once loaded, its
/// external data files.
fn stamps(spec: &ModelSpec, entry: Option<&Entry>) -> Stamps {
    let mut files = vec![spec.path.clone()];
    if let Some(Entry::Loaded(m)) = entry {
        files.extend(m.external_files.iter().cloned());
    }
    files.into_iter().map(|f| (stamp(&f), f)).map(|(s, f)| (f, s)).collect()
}

/// A model in the listing.
#[derive(Clone)]
pub enum Entry {
    /// Serving.
    Loaded(Arc<Model>),
    /// Never loaded.
    Failed {
        /// The model's name.
        name: String,
        /// Why.
        error: String,
    },
}

impl Entry {
    /// The model's name.
    pub fn name(&self) -> &str {
        match self {
            Entry::Loaded(m) => &m.name,
            Entry::Failed { name, .. } => name,
        }
    }
}

/// What identifies a file's content cheaply: replaced files (renamed over)
/// change inode; rewritten ones change size or mtime.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp { inode: m.ino(), len: m.len(), modified: m.modified().ok() })
}

fn load_entry(spec: &ModelSpec, sessions: Option<&Sessions>, cache: &Arc<Cache>) -> Entry {
    let started = std::time::Instant::now();
    // A bug that panics on some file must cost that file's load, not the
    // server (or the reload thread, and with it every later reload).
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(spec, sessions, cache.clone())))
        .unwrap_or_else(|panic| {
            let what =
                panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
            Err(LoadError::Panic { model: spec.name.clone(), what: what.unwrap_or_default() })
        });
    match loaded {
        Ok(m) => {
            tracing::info!(model = %m.name, path = %spec.path.display(), tensors = m.tensors.len(), bytes = m.total_bytes(),
                version = %crate::wire::short(m.version()), providers = ?m.runtime.active, ms = started.elapsed().as_millis() as u64, "model loaded");
            Entry::Loaded(Arc::new(m))
        }
        Err(e) => {
            tracing::error!(model = %spec.name, "model failed to load: {e}; it is loaded when the file is replaced (until then its routes answer 404 and /readyz 503)");
            Entry::Failed { name: spec.name.clone(), error: e.to_string() }
        }
    }
}

/// The slot's files' stamps if they changed and held still since the last
/// look (then they are loaded); `None` otherwise.
fn settled_change(slot: &Slot) -> Option<Stamps> {
    let recorded = slot.state.read().ok()?;
    let now = stamps(&slot.spec, Some(&recorded.0));
    let changed = now != recorded.1;
    drop(recorded);
    let mut pending = slot.pending.lock().ok()?;
    if !changed {
        *pending = None;
        return None;
    }
    if pending.as_ref() == Some(&now) {
        *pending = None;
        return Some(now);
    }
    *pending = Some(now);
    None
}

/// Stamps taken before a load, completed with the external data files the
/// load found (those were read after the stamps were taken, so a change to
/// one during the load is seen at the next look).
fn refine(spec: &ModelSpec, entry: &Entry, before: Stamps) -> Stamps {
    let mut all = stamps(spec, Some(entry));
    for (file, stamp) in &mut all {
        if let Some((_, s)) = before.iter().find(|(f, _)| f == file) {
            *stamp = s.clone();
        }
    }
    all
}

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
        Store { slots, sessions, cache, load_failures: (failures as u64).into() }
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

    /// Loads that failed since start (at start and on reloads).
    pub fn load_failures(&self) -> u64 {
        self.load_failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The shared cache of derived bytes.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Reloads every model one of whose files (the model, its external data)
    /// changed since it was loaded and has held still since the last look;
    /// returns the models loaded anew. A model whose new files fail to load
    /// keeps serving its previous version (and the failure is logged).
    pub fn refresh(&self) -> Vec<Arc<Model>> {
        let mut fresh = Vec::new();
        for slot in &self.slots {
            let Some(now) = settled_change(slot) else { continue };
            if let Some(held) = slot.replaced.lock().ok().and_then(|r| r.upgrade()) {
                tracing::info!(model = %slot.spec.name, version = %wire::short(held.version()),
                    "a new file waits until the responses still sending the version before the current one finish");
                continue;
            }
            let entry = load_entry(&slot.spec, self.sessions.as_ref(), &self.cache);
            let now = refine(&slot.spec, &entry, now);
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

/// Why the list of models to serve was refused.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum SpecError {
    #[error("model name '{name}' (from {}) must match [A-Za-z0-9._-]+; name it in the config ([[models]] name = ...) or rename the file", path.display())]
    BadName { name: String, path: PathBuf },
    #[error("two models are named '{name}': {} and {}; name one in the config ([[models]] name = ...)", first.display(), second.display())]
    SameName { name: String, first: PathBuf, second: PathBuf },
}

/// Names models after their files unless told otherwise, and refuses two
/// models with one name or a name outside `[A-Za-z0-9._-]+`.
pub fn specs(named: &[(Option<String>, PathBuf)]) -> Result<Vec<ModelSpec>, SpecError> {
    let mut out: Vec<ModelSpec> = Vec::new();
    for (name, path) in named {
        let name = match name {
            Some(n) => n.clone(),
            None => path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string(),
        };
        if !valid_name(&name) {
            return Err(SpecError::BadName { name, path: path.clone() });
        }
        if let Some(other) = out.iter().find(|s| s.name == name) {
            return Err(SpecError::SameName { name, first: other.path.clone(), second: path.clone() });
        }
        out.push(ModelSpec { name, path: path.clone() });
    }
    Ok(out)
}

/// Now, in ms since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Elements cast at a time where a cast is not made whole.
const CAST_WINDOW_ELEMENTS: usize = 1 << 20;

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
    pub fn with_disk(budget: u64, dir: &std::path::Path) -> std::io::Result<Cache> {
        Ok(Cache { disk: Some(disk::Disk::open(dir)?), ..Cache::new(budget) })
    }

    /// Whether large blobs go to disk (then the memory budget does not bound them).
    pub fn has_disk(&self) -> bool {
        self.disk.is_some()
    }

    /// Bytes of blobs on disk that are mapped now.
    pub fn disk_bytes(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.held_bytes())
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
        let found = match self.find(key, true)? {
            Found::Memory(b) => Some(b),
            Found::Disk(n) => self.read_disk(key, 0..n),
        }?;
        self.count(true);
        Some(found)
    }

    /// Bytes `range` of the blob under `key`, if cached: a disk blob is read
    /// for that range only.
    pub fn get_range(&self, key: &CacheKey, range: std::ops::Range<usize>) -> Option<Bytes> {
        let start = range.start;
        let found = match self.find(key, true)? {
            Found::Memory(b) => (range.end <= b.len()).then(|| b.slice(range)),
            Found::Disk(_) => self.read_disk(key, range),
        }?;
        if start == 0 {
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

    /// Hits, misses and evictions since start.
    pub fn counts(&self) -> &CacheCounts {
        &self.counts
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.inner.lock().map_or(0, |i| i.used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let c = Cache::with_disk(1 << 20, dir.path()).unwrap();
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
        let big = Bytes::from(vec![7u8; disk::DISK_FROM * 2]);
        c.get_or_compute(key(2), || Ok(big.clone())).unwrap();
        assert_eq!(counts(&c), (1, 2));
        assert!(matches!(c.lookup(&key(2)), Some(Found::Disk(_))));
        for at in (0..big.len()).step_by(1000) {
            assert!(c.get_range(&key(2), at..(at + 1000).min(big.len())).is_some());
        }
        assert_eq!(counts(&c), (2, 2));
        // Left by an earlier run: checked and counted when read.
        let again = Cache::with_disk(1 << 20, dir.path()).unwrap();
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
