//! Loading a model file: read it, compute digests and the version, open
//! its ONNX Runtime session.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::onnx::{OnnxModel, Tensor, TensorData};
use crate::runtime::{self, OpenSession, Runtime};
use crate::wire;

use super::*;

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
        index.get(name).map(|&i| onnx.tensors[i].data.clone().bytes())
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
    let model = Model {
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
        outside: OnceLock::new(),
    };
    // Read here, on the loading thread, not by the first request that needs
    // it on the executor (a graph of thousands of nodes takes milliseconds).
    model.outside();
    Ok(model)
}

/// Computes what changed from `old` to `new` (after the switch: serving
/// the new version does not wait for it) and keeps it with `new`.
pub(super) fn record_changes(old: &Model, new: &Model) {
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
pub(super) fn open_session(
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
pub(super) fn digests(tensors: &[Tensor]) -> Vec<TensorMeta> {
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
pub(super) fn sums(data: &TensorData) -> ([u8; 32], u32) {
    let crc = match data {
        TensorData::Bytes(b) => crc32fast::hash(b),
        TensorData::Strings(_) => 0,
    };
    (wire::digest(data), crc)
}
