//! Hugging Face safetensors: an 8-byte little-endian header length, a JSON
//! header (dtype, shape, data offsets per tensor, `__metadata__`), then the
//! tensors' bytes back to back. Every size is known up front, so the body has
//! a Content-Length and the data streams straight from the memory map.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::{EncodeError, Format, Piece, Selection};
use crate::wire::safetensors_dtype as dtype_name;

/// The pieces of a safetensors file holding the selection (`422` for a dtype
/// safetensors cannot name).
pub fn pieces(sel: &Selection) -> Result<Vec<Piece>, EncodeError> {
    sel.expressible(Format::Safetensors, |d| dtype_name(d).is_some())?;
    let mut header = Map::new();
    header.insert(
        "__metadata__".into(),
        json!({ "model": sel.model.name, "version": sel.view.version, "producer": "weightcast" }),
    );
    let mut offset = 0u64;
    for &i in &sel.tensors {
        let m = sel.meta(i);
        let entry = json!({
            "dtype": dtype_name(m.dtype),
            "shape": sel.dims(i),
            "data_offsets": [offset, offset + m.nbytes],
        });
        header.insert(sel.name(i).to_string(), entry);
        offset += m.nbytes;
    }
    let mut text = serde_json::to_vec(&Value::Object(header)).unwrap_or_default();
    // The data section starts 8-byte aligned, as the reference writer does.
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut head = (text.len() as u64).to_le_bytes().to_vec();
    head.extend(text);
    let mut out = vec![Piece::Inline(Bytes::from(head))];
    out.extend(sel.tensors.iter().map(|&i| Piece::Data { tensor: i, range: 0..sel.meta(i).nbytes as usize }));
    Ok(out)
}
