//! The manifest of a model and the listing of models, built once as
//! `weightcast.v1` messages and rendered as protobuf or JSON from them.

use prost::Message;
use serde_json::{json, Value};

use super::Format;
use crate::onnx::DataType;
use crate::store::{Entry, Model, View};
use crate::wire::proto;

/// The `?dtype=` name of a cast's dtype.
fn target_name(d: DataType) -> &'static str {
    match d {
        DataType::Bfloat16 => "bf16",
        _ => "f16",
    }
}

/// A model's manifest in a representation's view.
pub fn manifest(model: &Model, view: &View) -> proto::Manifest {
    let rt = &model.runtime;
    let info = &model.info;
    let stored = model.view(None);
    let locations = model.outside();
    let value_info = |v: &crate::onnx::ValueInfo| proto::ValueInfo {
        name: v.name.clone(),
        dtype: v.dtype.clone(),
        dims: v.dims.clone(),
    };
    proto::Manifest {
        model: model.name.clone(),
        version: view.version.clone(),
        runtime: Some(proto::Runtime {
            engine: rt.engine.to_string(),
            requested_providers: rt.requested.clone(),
            active_providers: rt.active.clone(),
            inputs: rt.inputs.iter().map(value_info).collect(),
            outputs: rt.outputs.iter().map(value_info).collect(),
            producer_name: info.producer_name.clone(),
            producer_version: info.producer_version.clone(),
            opset_imports: info
                .opset_imports
                .iter()
                .map(|(d, v)| proto::OpsetImport { domain: d.clone(), version: *v })
                .collect(),
            metadata: info.metadata.iter().cloned().collect(),
            ir_version: info.ir_version,
            warmed_up: rt.warmed_up,
        }),
        tensors: model
            .tensors
            .iter()
            .zip(&view.tensors)
            .enumerate()
            .map(|(i, (t, m))| proto::TensorInfo {
                name: t.name.clone(),
                dtype: m.dtype as i32,
                dims: t.dims.clone(),
                nbytes: m.nbytes,
                sha256: hex::encode(m.sha256),
                source_dtype: m.source_dtype.map_or(0, |d| d as i32),
                constant: t.constant,
                overflowed: m.overflowed,
                storage: t.storage.name().to_string(),
                blob: match (m.dtype, m.source_dtype) {
                    (DataType::String, _) => String::new(),
                    // A cast blob names the stored tensor it comes from: the hub
                    // finds it without casting every model it serves.
                    (_, Some(_)) => format!(
                        "/v1/blobs/sha256/{}?dtype={}&from={}",
                        hex::encode(m.sha256),
                        target_name(m.dtype),
                        hex::encode(stored.tensors[i].sha256)
                    ),
                    (_, None) => format!("/v1/blobs/sha256/{}", hex::encode(m.sha256)),
                },
                location: locations.get(&t.name).cloned().unwrap_or_default(),
            })
            .collect(),
        graph_sha256: hex::encode(model.graph_sha256()),
        graph_bytes: model.graph().len() as u64,
        published_at_ms: model.published_at_ms,
        ..Default::default()
    }
}

/// The listing of every model the server was given.
pub fn listing(entries: &[Entry]) -> proto::ModelList {
    proto::ModelList {
        models: entries
            .iter()
            .map(|e| match e {
                Entry::Loaded(m) => proto::ModelSummary {
                    name: m.name.clone(),
                    version: m.version().to_string(),
                    tensor_count: m.tensors.len() as u64,
                    total_bytes: m.total_bytes(),
                    error: String::new(),
                },
                Entry::Failed { name, error } => {
                    proto::ModelSummary { name: name.to_string(), error: error.to_string(), ..Default::default() }
                }
            })
            .collect(),
    }
}

/// The ONNX name of dtype number `n` as JSON (`"FLOAT"`), or the number
/// itself when this build does not know it.
pub fn dtype_name(n: i32) -> Value {
    DataType::from_onnx(n).map_or(Value::Null, |d| Value::from(d.name()))
}

fn manifest_json(m: &proto::Manifest) -> Value {
    let rt = m.runtime.clone().unwrap_or_default();
    let vi = |v: &proto::ValueInfo| json!({"name": v.name, "dtype": v.dtype, "dims": v.dims});
    let tensors: Vec<Value> = m
        .tensors
        .iter()
        .map(|t| {
            let mut o = json!({"name": t.name, "dtype": dtype_name(t.dtype), "dims": t.dims, "nbytes": t.nbytes,
                "sha256": t.sha256, "storage": t.storage, "constant": t.constant});
            if !t.blob.is_empty() {
                o["blob"] = t.blob.clone().into();
            }
            if !t.location.is_empty() {
                o["location"] = t.location.clone().into();
            }
            if t.source_dtype != 0 {
                o["source_dtype"] = dtype_name(t.source_dtype);
                o["overflowed"] = t.overflowed.into();
            }
            o
        })
        .collect();
    let metadata: serde_json::Map<String, Value> =
        rt.metadata.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
    json!({
        "model": m.model,
        "version": m.version,
        "runtime": {
            "engine": rt.engine,
            "requested_providers": rt.requested_providers,
            "active_providers": rt.active_providers,
            "inputs": rt.inputs.iter().map(vi).collect::<Vec<_>>(),
            "outputs": rt.outputs.iter().map(vi).collect::<Vec<_>>(),
            "producer_name": rt.producer_name,
            "producer_version": rt.producer_version,
            "opset_imports": rt.opset_imports.iter().map(|o| json!({"domain": o.domain, "version": o.version})).collect::<Vec<_>>(),
            "metadata": metadata,
            "ir_version": rt.ir_version,
            "warmed_up": rt.warmed_up,
        },
        "tensors": tensors,
        "graph_sha256": m.graph_sha256,
        "graph_bytes": m.graph_bytes,
        "published_at_ms": m.published_at_ms,
        "expires_at_ms": m.expires_at_ms,
        "signature": hex::encode(&m.signature),
        "signing_key": hex::encode(&m.signing_key),
    })
}

fn listing_json(l: &proto::ModelList) -> Value {
    let models: Vec<Value> = l
        .models
        .iter()
        .map(|m| {
            if m.error.is_empty() {
                json!({"name": m.name, "version": m.version, "tensor_count": m.tensor_count, "total_bytes": m.total_bytes})
            } else {
                json!({"name": m.name, "error": m.error})
            }
        })
        .collect();
    json!({ "models": models })
}

/// A manifest's body: protobuf, or JSON for any other format asked.
pub fn render_manifest(m: &proto::Manifest, format: Format) -> Vec<u8> {
    match format {
        Format::Protobuf => m.encode_to_vec(),
        _ => serde_json::to_vec_pretty(&manifest_json(m)).unwrap_or_default(),
    }
}

/// A listing's body: protobuf, or JSON for any other format asked.
pub fn render_listing(l: &proto::ModelList, format: Format) -> Vec<u8> {
    match format {
        Format::Protobuf => l.encode_to_vec(),
        _ => serde_json::to_vec_pretty(&listing_json(l)).unwrap_or_default(),
    }
}
