//! Hugging Face safetensors: an 8-byte little-endian header length, a JSON
//! header (dtype, shape, data offsets per tensor, `__metadata__`), then the
//! tensors' bytes back to back. Every size is known up front, so the body has
//! a Content-Length and the data streams straight from the memory map.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::{EncodeError, Format, Piece, Selection};
use crate::onnx::DataType;

/// The safetensors name of an ONNX dtype, where safetensors has one.
/// Sub-byte types are left out: safetensors' F4/F6 packing is not specified
/// to match ONNX's, and a wrong guess would corrupt weights silently.
pub fn dtype_name(d: DataType) -> Option<&'static str> {
    use DataType::*;
    Some(match d {
        Float => "F32",
        Double => "F64",
        Float16 => "F16",
        Bfloat16 => "BF16",
        Int8 => "I8",
        Int16 => "I16",
        Int32 => "I32",
        Int64 => "I64",
        Uint8 => "U8",
        Uint16 => "U16",
        Uint32 => "U32",
        Uint64 => "U64",
        Bool => "BOOL",
        Complex64 => "C64",
        Float8E4M3Fn => "F8_E4M3",
        Float8E5M2 => "F8_E5M2",
        Float8E4M3Fnuz => "F8_E4M3FNUZ",
        Float8E5M2Fnuz => "F8_E5M2FNUZ",
        Float8E8M0 => "F8_E8M0",
        String | Complex128 | Int4 | Uint4 | Int2 | Uint2 | Float4E2M1 | Float6E2M3 | Float6E3M2 => return None,
    })
}

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
