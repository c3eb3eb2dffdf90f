//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz) and of their short
//! form in `cargo test` (`tests/fuzz_seeds.rs`): each takes arbitrary bytes
//! and must return — no panic, no hang, no allocation the input's size does
//! not justify. Not an API: they reach into crate internals on purpose.

use std::path::Path;

use bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha256};

/// A model file: read (external data looked up where none exists), then
/// rewritten for `/graph`, and read back as a client reads `/graph`.
pub fn model(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(m) = crate::onnx::OnnxModel::from_bytes(Path::new("fuzz.onnx"), bytes.clone(), Path::new("/nonexistent"))
    {
        let tensors = m.tensors;
        let rewritten = crate::onnx::graph::externalize(&bytes, crate::wire::tensor_file, |name| {
            tensors.iter().find(|t| t.name == name).map(|t| t.data.clone().bytes())
        });
        if let Ok(graph) = rewritten {
            let _ = crate::onnx::graph_parts(Bytes::from(graph));
        }
    }
    let _ = crate::onnx::graph_parts(bytes);
}

/// A request head, as the server parses it.
pub fn request_head(data: &[u8]) {
    let _ = crate::http::conn::request(data, None);
}

/// A `Bundle` body, as `weightcast pull` joins its records.
pub fn bundle(data: &[u8]) {
    let _ = crate::updater::assemble(data);
}

/// A manifest and a graph, as `weightcast pull` checks them: the first byte
/// splits the input; the graph is checked against a manifest naming it.
pub fn manifest(data: &[u8]) {
    let split = data.first().map_or(0, |&b| b as usize * data.len() / 256).min(data.len());
    let (manifest, graph) = data.split_at(split);
    if let Ok(m) = crate::wire::proto::Manifest::decode(manifest) {
        let _ = crate::updater::verify_manifest(&m);
        let named = crate::wire::proto::Manifest {
            graph_sha256: hex::encode(Sha256::digest(graph)),
            graph_bytes: graph.len() as u64,
            ..m
        };
        let _ = crate::updater::verify_graph(&named, graph);
    }
}
