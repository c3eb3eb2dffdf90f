//! Rewriting a model file so that its main graph's initializers are external
//! data, each in a file named after the tensor: the graph without its weights,
//! for a client that fetches (or already has) the weights separately.
//!
//! The rewrite works on the protobuf wire format, not on decoded messages, so
//! every field of the model — including ones our schema subset does not
//! declare (functions, training info, future fields) — is kept byte for byte.
//! Only `ModelProto.graph` → `GraphProto.initializer` entries change: their
//! data fields are dropped and `external_data` + `data_location` added.

use std::fmt::Write as _;

/// Field numbers we touch.
const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_DATA_TYPE: u64 = 2;
const TENSOR_NAME: u64 = 8;
const TENSOR_EXTERNAL_DATA: u64 = 13;
const TENSOR_DATA_LOCATION: u64 = 14;
/// float_data, int32_data, int64_data, raw_data, double_data, uint64_data,
/// external_data, data_location: replaced by the new external reference.
const TENSOR_DATA_FIELDS: [u64; 8] = [4, 5, 7, 9, 10, 11, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION];
const STRING: u64 = 8;

/// One field as it lies in a message.
struct Field<'a> {
    number: u64,
    wire: u8,
    /// The whole field, tag included.
    raw: &'a [u8],
    /// A length-delimited field's payload, or a varint's value bytes.
    payload: &'a [u8],
    varint: u64,
}

fn varint(buf: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at).ok_or("truncated varint")?;
        *at += 1;
        value |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let start = at;
        let tag = varint(buf, &mut at)?;
        let (number, wire) = (tag >> 3, (tag & 7) as u8);
        let (payload, value) = match wire {
            0 => {
                let from = at;
                let v = varint(buf, &mut at)?;
                (&buf[from..at], v)
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                let p = buf.get(at..at + n).ok_or("truncated fixed field")?;
                at += n;
                (p, 0)
            }
            2 => {
                let len = varint(buf, &mut at)? as usize;
                let p = buf.get(at..at.checked_add(len).ok_or("length overflow")?).ok_or("truncated field")?;
                at += len;
                (p, 0)
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        out.push(Field { number, wire, raw: &buf[start..at], payload, varint: value });
    }
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_varint(out, (number << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn string_entry(key: &str, value: &str) -> Vec<u8> {
    let mut e = Vec::new();
    put_bytes(&mut e, 1, key.as_bytes());
    put_bytes(&mut e, 2, value.as_bytes());
    e
}

/// The model with each main-graph initializer's data replaced by an external
/// reference: `location` = `locate(name)`, `length` = its byte length.
/// `length_of` gives a tensor's byte length by name.
pub fn externalize(
    model: &[u8],
    locate: impl Fn(&str) -> String,
    length_of: impl Fn(&str) -> Option<u64>,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(model.len().min(1 << 20));
    for f in fields(model)? {
        if f.number == MODEL_GRAPH && f.wire == 2 {
            let mut graph = Vec::new();
            for g in fields(f.payload)? {
                if g.number == GRAPH_INITIALIZER && g.wire == 2 {
                    put_bytes(&mut graph, GRAPH_INITIALIZER, &tensor(g.payload, &locate, &length_of)?);
                } else {
                    graph.extend_from_slice(g.raw);
                }
            }
            put_bytes(&mut out, MODEL_GRAPH, &graph);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    Ok(out)
}

fn tensor(
    t: &[u8],
    locate: &impl Fn(&str) -> String,
    length_of: &impl Fn(&str) -> Option<u64>,
) -> Result<Vec<u8>, String> {
    let fs = fields(t)?;
    let name = fs
        .iter()
        .rfind(|f| f.number == TENSOR_NAME && f.wire == 2)
        .map(|f| String::from_utf8_lossy(f.payload).into_owned())
        .unwrap_or_default();
    let data_type = fs.iter().rfind(|f| f.number == TENSOR_DATA_TYPE && f.wire == 0).map_or(0, |f| f.varint);
    if data_type == STRING {
        return Ok(t.to_vec()); // strings cannot be external data
    }
    let length = length_of(&name).ok_or_else(|| format!("initializer '{name}' is not among the model's tensors"))?;
    let mut out = Vec::with_capacity(t.len().min(4096));
    for f in &fs {
        if !TENSOR_DATA_FIELDS.contains(&f.number) {
            out.extend_from_slice(f.raw);
        }
    }
    let mut len = String::new();
    let _ = write!(len, "{length}");
    put_bytes(&mut out, TENSOR_EXTERNAL_DATA, &string_entry("location", &locate(&name)));
    put_bytes(&mut out, TENSOR_EXTERNAL_DATA, &string_entry("length", &len));
    put_varint(&mut out, TENSOR_DATA_LOCATION << 3);
    put_varint(&mut out, 1); // EXTERNAL
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{tensor_proto::DataLocation, ModelProto};
    use prost::Message;

    #[test]
    fn initializers_become_external_and_the_rest_is_kept() {
        let bytes = crate::demo::model_bytes();
        let out = externalize(&bytes, |n| format!("{n}.bin"), |_| Some(4)).unwrap();
        let before = ModelProto::decode(bytes.as_slice()).unwrap();
        let after = ModelProto::decode(out.as_slice()).unwrap();
        let (g0, g1) = (before.graph.unwrap(), after.graph.unwrap());
        assert_eq!(g0.node, g1.node, "nodes untouched (the Constant keeps its value)");
        assert_eq!(before.opset_import, after.opset_import);
        assert_eq!(before.metadata_props, after.metadata_props);
        for (a, b) in g0.initializer.iter().zip(&g1.initializer) {
            assert_eq!((a.name(), &a.dims, a.data_type()), (b.name(), &b.dims, b.data_type()));
            if a.data_type() == 8 {
                assert_eq!(a, b, "STRING stays inline");
                continue;
            }
            assert!(b.raw_data.is_none() && b.int64_data.is_empty());
            assert_eq!(b.data_location(), DataLocation::External);
            assert_eq!(b.external_data[0].value(), format!("{}.bin", a.name()));
        }
        assert!(out.len() < 10_000, "weights are gone: {} bytes", out.len());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(externalize(&[0x3a, 0xff], |n| n.into(), |_| Some(0)).is_err());
    }
}
