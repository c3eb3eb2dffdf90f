//! `weightcast.v1` protobuf records: a bundle is written as one `Bundle.tensors`
//! field per tensor (or per 1 GiB piece of a larger one), so the stream is a
//! valid `Bundle` and can also be read record by record.
//!
//! The record header (everything but the data payload) is encoded with prost;
//! the payload follows it as the last field, straight from the model's memory
//! map, so an identity response copies no tensor bytes.

use bytes::Bytes;
use prost::Message;

use super::{Piece, Selection};
use crate::onnx::TensorData;
use crate::store::TensorMeta;
use crate::wire::proto;

/// Largest `data` payload of one record.
pub const PIECE: usize = 1 << 30;

/// `Bundle.tensors` is field 1, length-delimited.
const BUNDLE_TENSORS_TAG: u8 = (1 << 3) | 2;
/// `Tensor.data` is field 2, length-delimited.
const TENSOR_DATA_TAG: u8 = (2 << 3) | 2;

/// The pieces of a `Bundle` holding the selection.
pub fn pieces(sel: &Selection) -> Vec<Piece> {
    let mut out = Vec::new();
    for &i in &sel.tensors {
        let meta = sel.meta(i);
        if meta.dtype == crate::onnx::DataType::String {
            let data = sel.data(i);
            out.push(Piece::Inline(records_in_pieces(sel.name(i), sel.dims(i), meta, &data, PIECE).concat().into()));
            continue;
        }
        for (header, range) in layout(sel.name(i), sel.dims(i), meta, sel.element_size(i), PIECE) {
            out.push(Piece::Inline(header));
            out.push(Piece::Data { tensor: i, range });
        }
    }
    out
}

/// Record headers of a numeric tensor and the data range each is followed by.
fn layout(
    name: &str,
    dims: &[i64],
    meta: &TensorMeta,
    bytegroup: Option<usize>,
    piece: usize,
) -> Vec<(Bytes, std::ops::Range<usize>)> {
    let base = proto::Tensor {
        name: name.to_string(),
        dtype: meta.dtype as i32,
        dims: dims.to_vec(),
        source_dtype: meta.source_dtype.map_or(0, |d| d as i32),
        total_bytes: meta.nbytes,
        codec: bytegroup.map_or_else(String::new, |_| super::bytegroup::NAME.to_string()),
        element_size: bytegroup.unwrap_or(0) as u32,
        ..Default::default()
    };
    let len = meta.nbytes as usize;
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let end = (offset + piece).min(len);
        let msg = proto::Tensor { offset: offset as u64, ..base.clone() };
        out.push((wrap(&msg, end - offset), offset..end));
        offset = end;
        if offset >= len {
            break;
        }
    }
    out
}

/// The whole records of a tensor (headers and payloads), for tests and
/// STRING tensors.
pub fn records_in_pieces(name: &str, dims: &[i64], meta: &TensorMeta, data: &TensorData, piece: usize) -> Vec<Bytes> {
    match data {
        TensorData::Strings(s) => {
            let msg = proto::Tensor {
                name: name.to_string(),
                dtype: meta.dtype as i32,
                dims: dims.to_vec(),
                total_bytes: meta.nbytes,
                strings: s.clone(),
                ..Default::default()
            };
            vec![wrap(&msg, 0)]
        }
        TensorData::Bytes(b) => {
            let mut out = Vec::new();
            for (header, range) in layout(name, dims, meta, None, piece) {
                out.push(header);
                out.push(b.slice(range));
            }
            out
        }
    }
}

/// The record header for `msg` followed by a `data` field of `payload_len`
/// bytes (the payload itself is not included).
fn wrap(msg: &proto::Tensor, payload_len: usize) -> Bytes {
    let fields = msg.encoded_len();
    let data_field = if payload_len == 0 { 0 } else { 1 + prost::length_delimiter_len(payload_len) + payload_len };
    let inner = fields + data_field;
    let mut out = Vec::with_capacity(1 + prost::length_delimiter_len(inner) + fields + 6);
    out.push(BUNDLE_TENSORS_TAG);
    prost::encode_length_delimiter(inner, &mut out).expect("Vec grows");
    msg.encode(&mut out).expect("Vec grows");
    if payload_len != 0 {
        out.push(TENSOR_DATA_TAG);
        prost::encode_length_delimiter(payload_len, &mut out).expect("Vec grows");
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::DataType;

    fn meta(dtype: DataType, nbytes: u64) -> TensorMeta {
        TensorMeta { dtype, source_dtype: None, nbytes, sha256: [0; 32], crc32: 0, overflowed: 0 }
    }

    #[test]
    fn records_decode_as_a_bundle() {
        let data = TensorData::Bytes(Bytes::from_static(&[1, 0, 128, 63, 0, 0, 0, 64]));
        let mut body: Vec<u8> = records_in_pieces("a/b", &[2], &meta(DataType::Float, 8), &data, PIECE).concat();
        body.extend(
            records_in_pieces("z", &[0], &meta(DataType::Float, 0), &TensorData::Bytes(Bytes::new()), PIECE).concat(),
        );
        let strings = TensorData::Strings(vec![Bytes::from_static(b"x"), Bytes::from_static(b"y")]);
        body.extend(records_in_pieces("s", &[2], &meta(DataType::String, 2), &strings, PIECE).concat());
        let bundle = proto::Bundle::decode(body.as_slice()).unwrap();
        assert_eq!(bundle.tensors.len(), 3);
        assert_eq!(bundle.tensors[0].name, "a/b");
        assert_eq!(&bundle.tensors[0].data[..], &[1, 0, 128, 63, 0, 0, 0, 64]);
        assert_eq!(bundle.tensors[0].dims, vec![2]);
        assert_eq!(bundle.tensors[0].total_bytes, 8);
        assert!(bundle.tensors[1].data.is_empty());
        assert_eq!(bundle.tensors[2].strings.len(), 2);
    }

    #[test]
    fn large_tensors_go_in_pieces_with_offsets() {
        let data = TensorData::Bytes(Bytes::from_static(b"abcdefg"));
        let body = records_in_pieces("t", &[7], &meta(DataType::Uint8, 7), &data, 3).concat();
        let bundle = proto::Bundle::decode(body.as_slice()).unwrap();
        let pieces: Vec<(u64, &[u8], u64)> =
            bundle.tensors.iter().map(|t| (t.offset, &t.data[..], t.total_bytes)).collect();
        assert_eq!(pieces, vec![(0, &b"abc"[..], 7), (3, &b"def"[..], 7), (6, &b"g"[..], 7)]);
    }
}
