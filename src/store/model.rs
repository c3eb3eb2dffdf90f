//! A loaded model: its tensors, their digests in each representation
//! (stored, cast), its version, and the names models may have.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::onnx::cast::{self, Target};
use crate::onnx::stats::{Diff, Stats};
use crate::onnx::{DataType, ModelInfo, Tensor, TensorData};
use crate::runtime::OpenSession;
use crate::wire;

use super::*;

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
    pub(super) index: HashMap<String, usize>,
    pub(super) stored: Arc<View>,
    pub(super) cast: [OnceLock<Arc<View>>; 2],
    /// The model file with its large initializers as external data at
    /// `wire::tensor_file(name)` (`/graph`), made at load, and its sha256.
    pub(super) graph: Bytes,
    pub(super) graph_sha256: [u8; 32],
    /// Kept open for the model's lifetime: the session is the proof it loads.
    pub(super) _session: Option<OpenSession>,
    pub(super) cache: Arc<Cache>,
    pub(super) stats: OnceLock<Arc<Vec<Option<Stats>>>>,
    pub(super) changes: OnceLock<Arc<Changes>>,
    pub(super) outside: OnceLock<std::collections::HashMap<String, String>>,
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

    /// Where `/graph` keeps each tensor it moved out of the graph (tensor
    /// name → external data `location`), read back from `/graph` at load: the manifest's `location`s, and the size of a self-contained
    /// model (Hugging Face's `model.onnx`).
    pub fn outside(&self) -> &std::collections::HashMap<String, String> {
        self.outside.get_or_init(|| {
            crate::onnx::graph_parts(self.graph.clone()).map(|p| p.external.into_iter().collect()).unwrap_or_default()
        })
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
    pub(super) fn large_cast_meta(&self, index: usize, target: Target) -> Option<TensorMeta> {
        let t = &self.tensors[index];
        let TensorData::Bytes(stored) = &t.data else { return None };
        let (from, to) = (t.dtype.bits()? as usize / 8, target.dtype().bits()? as usize / 8);
        if !cast::applies(t.dtype, target) || from == 0 || self.cache.holds_whole((stored.len() / from * to) as u64) {
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
        if self.cache.holds_whole(whole) {
            return self.data(index, repr).bytes().slice(range);
        }
        // Whole elements around the window, cast, then cut to it.
        let (first, last) = (range.start / to, range.end.div_ceil(to));
        let window = cast::cast(t.dtype, &stored[first * from..last * from], target).map(|c| Bytes::from(c.bytes));
        window.map_or_else(Bytes::new, |w| w.slice(range.start - first * to..range.end - first * to))
    }

    pub(super) fn cast_data(&self, index: usize, target: Target) -> Option<(Bytes, u64)> {
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
    pub(super) fn new(tensors: &[Tensor], metas: Vec<TensorMeta>, graph_sha256: &[u8; 32]) -> View {
        let rows = tensors.iter().zip(&metas).map(|(t, m)| (t.name.as_str(), m.dtype, t.dims.as_slice(), &m.sha256));
        View { version: wire::version(graph_sha256, rows), tensors: metas }
    }
}

/// Elements cast at a time where a cast is not made whole.
pub(super) const CAST_WINDOW_ELEMENTS: usize = 1 << 20;

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
