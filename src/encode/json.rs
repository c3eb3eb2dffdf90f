//! Tensors as JSON: exact, because the data travels as base64 of the bytes,
//! not as decimal text. Meant for small models and debugging; the tensor
//! payload of one response is capped (`json_max_bytes`) and the binary
//! formats are the way past it.

use base64::Engine as _;
use serde_json::{json, Value};

use super::manifest::dtype_name;
use super::{EncodeError, Piece, Selection};
use crate::onnx::TensorData;
use crate::store::TensorMeta;

/// One tensor as a JSON object.
pub fn tensor(name: &str, dims: &[i64], meta: &TensorMeta, data: &TensorData) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut o = json!({
        "name": name,
        "dtype": dtype_name(meta.dtype as i32),
        "dims": dims,
        "nbytes": meta.nbytes,
        "sha256": hex::encode(meta.sha256),
    });
    match data {
        TensorData::Bytes(b) => o["data_b64"] = b64.encode(b).into(),
        TensorData::Strings(s) => {
            o["data_b64"] = "".into();
            o["strings_b64"] = s.iter().map(|e| Value::from(b64.encode(e))).collect::<Vec<_>>().into();
        }
    }
    if let Some(src) = meta.source_dtype {
        o["source_dtype"] = dtype_name(src as i32);
    }
    o
}

/// The JSON body, the same bundle for the tensor route (one tensor) and
/// `/weights`: `{"model", "version", "tensors": [...]}`; built when the
/// reader gets to it.
pub fn pieces(sel: &Selection, limit: u64) -> Result<Vec<Piece>, EncodeError> {
    let total: u64 = sel.tensors.iter().map(|&i| sel.meta(i).nbytes).sum();
    if total > limit {
        return Err(EncodeError::TooLarge { total, limit });
    }
    let sel = sel.clone();
    Ok(vec![Piece::Deferred(Box::new(move || {
        let items = sel.tensors.iter().map(|&i| tensor(sel.name(i), sel.dims(i), sel.meta(i), &sel.data(i)));
        let doc = json!({ "model": sel.model.name, "version": sel.view.version, "tensors": items.collect::<Vec<_>>() });
        serde_json::to_vec(&doc).map(Into::into).map_err(std::io::Error::other)
    }))])
}
