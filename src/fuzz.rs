//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz) and of their short
//! form in `cargo test` (`tests/fuzz_seeds.rs`): each takes arbitrary bytes
//! and must return — no panic, no hang, no allocation the input's size does
//! not justify. Not an API: they reach into crate internals on purpose.

use bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha256};

/// The name of the one external data file of a `model` input.
pub const EXTERNAL_DATA: &str = "data.bin";

/// A model file and its external data, all in memory: the input is a model's
/// length (4 bytes, little-endian), the model, then the bytes of the file
/// [`EXTERNAL_DATA`] its tensors may point into (see [`model_input`]). Read,
/// then rewritten for `/graph`, and read back as a client reads `/graph`.
/// No disk is touched, so the target runs at thousands of inputs a second.
/// Returns whether the model was read (the seeds' test wants them to be).
pub fn model(data: &[u8]) -> bool {
    let (head, rest) = data.split_at(data.len().min(4));
    let n = u32::from_le_bytes(<[u8; 4]>::try_from(head).unwrap_or_default()) as usize;
    let (onnx, external) = rest.split_at(n.min(rest.len()));
    let bytes = Bytes::copy_from_slice(onnx);
    let files = [(EXTERNAL_DATA.to_string(), Bytes::copy_from_slice(external))].into();
    let read = crate::onnx::OnnxModel::from_memory(bytes.clone(), files);
    let parsed = read.is_ok();
    // A client's read of the input as a `/graph` answer: a path of its own
    // where tensors are external (there it lists them, not reads them);
    // otherwise the same decoding as above, skipped (each decode of a 30 KB
    // seed costs the fuzzer a quarter of its rate).
    let external = read.as_ref().map_or(true, |m| !m.external_files.is_empty());
    if let Ok(m) = read {
        let tensors = m.tensors;
        let rewritten = crate::onnx::graph::externalize(&bytes, crate::wire::tensor_file, |name| {
            tensors.iter().find(|t| t.name == name).map(|t| t.data.clone().bytes())
        });
        if let Ok(graph) = rewritten {
            let _ = crate::onnx::graph_parts(Bytes::from(graph));
        }
    }
    if external {
        let _ = crate::onnx::graph_parts(bytes);
    }
    parsed
}

/// A `model` input of a model file and its external data.
pub fn model_input(onnx: &[u8], external: &[u8]) -> Vec<u8> {
    let mut input = (onnx.len() as u32).to_le_bytes().to_vec();
    input.extend_from_slice(onnx);
    input.extend_from_slice(external);
    input
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
