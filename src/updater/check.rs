//! What a round checks before it writes or switches: a manifest against its
//! own version formula, the graph against the manifest, each tensor's bytes
//! against its digest, and the new version against `--check`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::command::{run_command, CommandError};
use super::{tensor_error, UpdateError, GRAPH_FILE};
use crate::onnx::DataType;
use crate::wire::{self, proto::Manifest};

/// How a new version is checked before `current` moves to it.
#[derive(Clone)]
pub enum Check {
    /// Switch without a check.
    None,
    /// Open `model.onnx` of the new folder (given its path) in a runtime;
    /// `Err` rejects the version. The binary passes ONNX Runtime's
    /// (`runtime::check_model`): the updater itself knows no runtime.
    Load(LoadCheck),
    /// Run a command (`sh -c`); the new folder is in `$WEIGHTCAST_DIR`.
    Command(String),
}

/// A check that opens a version's `model.onnx` (its path) in a runtime.
pub type LoadCheck = Arc<dyn Fn(&Path) -> Result<(), CheckFailure> + Send + Sync>;

/// Why a check did not pass: the version's fault (recorded, never installed
/// again until `retry`), or the device's (a runtime library missing, a
/// command not found: the round fails and the version is tried again once
/// the device is fixed).
#[derive(Debug, Clone)]
pub enum CheckFailure {
    /// The version failed it.
    Version(String),
    /// The check could not run here.
    Device(String),
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::None => f.write_str("None"),
            Check::Load(_) => f.write_str("Load"),
            Check::Command(cmd) => write!(f, "Command({cmd:?})"),
        }
    }
}

/// What a manifest or a graph says against itself: the problem alone, in
/// words that fit both an update (the hub's answer) and `verify` (what a
/// device holds), each of which says whose it is.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum Inconsistent {
    #[error("{0}")]
    Manifest(String),
    #[error("{0}")]
    Graph(String),
    #[error("tensor '{name}': {problem}")]
    Tensor { name: String, problem: String },
}

impl From<Inconsistent> for UpdateError {
    fn from(e: Inconsistent) -> UpdateError {
        match e {
            Inconsistent::Manifest(problem) => UpdateError::Manifest { problem },
            Inconsistent::Graph(problem) => UpdateError::Graph { problem },
            Inconsistent::Tensor { name, problem } => UpdateError::Tensor { name, problem },
        }
    }
}

fn in_tensor(name: &str, problem: impl Into<String>) -> Inconsistent {
    Inconsistent::Tensor { name: name.to_string(), problem: problem.into() }
}

/// Checks a manifest's `version` against its graph digest and tensor list.
pub fn verify_manifest(m: &Manifest) -> Result<(), Inconsistent> {
    let problem = Inconsistent::Manifest;
    let graph = sha256_hex(&m.graph_sha256)
        .ok_or_else(|| problem("no valid graph_sha256 (is the hub older than this updater?)".into()))?;
    let mut rows = Vec::with_capacity(m.tensors.len());
    for t in &m.tensors {
        let dtype = DataType::from_onnx(t.dtype)
            .ok_or_else(|| problem(format!("tensor '{}' has unknown dtype {}", t.name, t.dtype)))?;
        let digest =
            sha256_hex(&t.sha256).ok_or_else(|| problem(format!("tensor '{}' has a malformed sha256", t.name)))?;
        rows.push((t.name.as_str(), dtype, t.dims.as_slice(), digest));
    }
    let version = wire::version(&graph, rows.iter().map(|(n, d, dims, h)| (*n, *d, *dims, h)));
    if version == m.version {
        Ok(())
    } else {
        Err(problem(format!("version {} does not match its graph and tensor list ({version})", m.version)))
    }
}

pub(super) fn sha256_hex(hex: &str) -> Option<[u8; 32]> {
    hex::decode(hex).ok()?.try_into().ok()
}

/// The graph is the one the manifest names (length and sha256); its inline
/// tensors are the manifest's, byte for byte; each external one lies at
/// exactly `wire::tensor_file(name)` (a hub must not make us write outside
/// the version's tensor folder, nor over another file). Returns those.
pub(crate) fn verify_graph(manifest: &Manifest, graph: &[u8]) -> Result<Vec<(String, String)>, Inconsistent> {
    if graph.len() as u64 != manifest.graph_bytes || hex::encode(Sha256::digest(graph)) != manifest.graph_sha256 {
        let (got, want) = (graph.len(), manifest.graph_bytes);
        let problem = format!("{got} bytes whose sha256 is not graph_sha256 ({want} bytes expected)");
        return Err(Inconsistent::Graph(problem));
    }
    let digests: HashMap<&str, &str> = manifest.tensors.iter().map(|t| (t.name.as_str(), t.sha256.as_str())).collect();
    let parts = crate::onnx::graph_parts(bytes::Bytes::copy_from_slice(graph))
        .map_err(|e| Inconsistent::Graph(e.to_string()))?;
    for t in &parts.inline {
        let want =
            digests.get(t.name.as_str()).ok_or_else(|| in_tensor(&t.name, "in the graph but not in the manifest"))?;
        if hex::encode(wire::digest(&t.data)) != *want {
            return Err(in_tensor(&t.name, "inline tensor in the graph whose sha256 is not the manifest's"));
        }
    }
    for (name, location) in &parts.external {
        if *location != wire::tensor_file(name) {
            let want = wire::tensor_file(name);
            return Err(in_tensor(name, format!("the graph puts it at '{location}', not at '{want}'")));
        }
    }
    Ok(parts.external)
}

/// Most bytes the protobuf records of tensor `t` may take: its data, its
/// name, up to 16 bytes per dim, a length per string element, and the
/// fixed fields.
pub(super) fn record_bound(t: &crate::wire::proto::TensorInfo) -> u64 {
    let elements: u64 = t.dims.iter().map(|&d| d.max(0) as u64).product();
    let strings = if t.dtype == DataType::String as i32 { elements.saturating_mul(10) } else { 0 };
    t.nbytes.saturating_add(strings).saturating_add(t.name.len() as u64 + 16 * t.dims.len() as u64 + 128)
}

pub(super) fn verify_tensor(digests: &HashMap<&str, &str>, name: &str, data: &[u8]) -> Result<(), UpdateError> {
    let want = digests.get(name).ok_or_else(|| tensor_error(name, "sent, but not in the manifest"))?;
    if hex::encode(Sha256::digest(data)) != *want {
        return Err(tensor_error(name, "its bytes' sha256 is not the manifest's"));
    }
    Ok(())
}

pub(super) async fn check(check: &Check, dir: &Path) -> Result<(), CheckFailure> {
    match check {
        Check::None => Ok(()),
        Check::Command(cmd) => run_command(cmd, dir, None).await.map_err(|e| match e {
            CommandError::CannotRun(why) => CheckFailure::Device(why),
            CommandError::Failed(why) => CheckFailure::Version(format!("'{cmd}': {why}")),
        }),
        Check::Load(load) => {
            let (load, model) = (load.clone(), dir.join(GRAPH_FILE));
            smol::unblock(move || load(&model)).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn graphs_are_verified_and_locations_outside_the_tensor_folder_refused() {
        use crate::onnx::proto::{GraphProto, ModelProto, StringStringEntryProto, TensorProto};
        let graph = |location: &str| {
            ModelProto {
                graph: Some(GraphProto {
                    initializer: vec![TensorProto {
                        name: Some("w".into()),
                        data_type: Some(1),
                        dims: vec![1024],
                        data_location: Some(1),
                        external_data: vec![StringStringEntryProto {
                            key: Some("location".into()),
                            value: Some(location.into()),
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let manifest = |g: &[u8]| Manifest {
            graph_sha256: hex::encode(Sha256::digest(g)),
            graph_bytes: g.len() as u64,
            ..Default::default()
        };
        let good = graph("tensors/w.bin");
        assert_eq!(
            verify_graph(&manifest(&good), &good).unwrap(),
            vec![("w".to_string(), "tensors/w.bin".to_string())]
        );
        for bad in ["w", "tensors/../w.bin", "../../etc/passwd", "/etc/passwd", "manifest.pb", "model.onnx"] {
            let g = graph(bad);
            assert!(verify_graph(&manifest(&g), &g).is_err(), "{bad}");
        }
        let mut other = manifest(&good);
        other.graph_sha256 = hex::encode([0u8; 32]);
        assert!(verify_graph(&other, &good).unwrap_err().to_string().contains("graph_sha256"));
    }
}
