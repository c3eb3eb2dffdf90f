//! `weightcast.v1` protobuf records: a bundle is written as one `Bundle.tensors`
//! field per tensor (or per 1 GiB piece of a larger one), so the stream is a
//! valid `Bundle` and can also be read record by record.
//!
//! The record header (everything but the data payload) is encoded with prost;
//! the payload follows it as the last field, straight from the model's memory
//! map, so an identity response copies no tensor bytes.

use bytes::Bytes;
use prost::Message;

use super::proto;
use crate::onnx::TensorData;
use crate::store::TensorMeta;

/// Largest `data` payload of one record.
pub const PIECE: usize = 1 << 30;

/// `Bundle.tensors` is field 1, length-delimited.
const BUNDLE_TENSORS_TAG: u8 = (1 << 3) | 2;
/// `Tensor.data` is field 2, length-delimited.
const TENSOR_DATA_TAG: u8 = (2 << 3) | 2;

/// The chunks of one tensor's records, in order: header, payload, header, …
pub fn tensor_records(name: &str, dims: &[i64], meta: &TensorMeta, data: &TensorData) -> Vec<Bytes> {
    records_in_pieces(name, dims, meta, data, PIECE)
}

fn records_in_pieces(name: &str, dims: &[i64], meta: &TensorMeta, data: &TensorData, piece: usize) -> Vec<Bytes> {
    let base = proto::Tensor {
        name: name.to_string(),
        dtype: meta.dtype as i32,
        dims: dims.to_vec(),
        source_dtype: meta.source_dtype.map_or(0, |d| d as i32),
        total_bytes: meta.nbytes,
        ..Default::default()
    };
    match data {
        TensorData::Strings(s) => {
            let msg = proto::Tensor { strings: s.clone(), ..base };
            vec![wrap(&msg, &[])]
        }
        TensorData::Bytes(b) => {
            let mut out = Vec::new();
            let mut offset = 0;
            loop {
                let end = (offset + piece).min(b.len());
                let msg = proto::Tensor { offset: offset as u64, ..base.clone() };
                let payload = b.slice(offset..end);
                out.push(wrap(&msg, &payload));
                if !payload.is_empty() {
                    out.push(payload);
                }
                offset = end;
                if offset >= b.len() {
                    break;
                }
            }
            out
        }
    }
}

/// The record header for `msg` followed by a `data` field of `payload.len()`
/// bytes (the payload itself is not included).
fn wrap(msg: &proto::Tensor, payload: &[u8]) -> Bytes {
    let fields = msg.encoded_len();
    let data_field =
        if payload.is_empty() { 0 } else { 1 + prost::length_delimiter_len(payload.len()) + payload.len() };
    let inner = fields + data_field;
    let mut out = Vec::with_capacity(1 + prost::length_delimiter_len(inner) + fields + 6);
    out.push(BUNDLE_TENSORS_TAG);
    prost::encode_length_delimiter(inner, &mut out).expect("Vec grows");
    msg.encode(&mut out).expect("Vec grows");
    if !payload.is_empty() {
        out.push(TENSOR_DATA_TAG);
        prost::encode_length_delimiter(payload.len(), &mut out).expect("Vec grows");
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::DataType;

    #[test]
    fn records_decode_as_a_bundle() {
        let meta = TensorMeta { dtype: DataType::Float, source_dtype: None, nbytes: 8, sha256: [0; 32], overflowed: 0 };
        let data = TensorData::Bytes(Bytes::from_static(&[1, 0, 128, 63, 0, 0, 0, 64]));
        let mut body: Vec<u8> = tensor_records("a/b", &[2], &meta, &data).concat();
        let empty = TensorMeta { nbytes: 0, ..meta.clone() };
        body.extend(tensor_records("z", &[0], &empty, &TensorData::Bytes(Bytes::new())).concat());
        let strings = TensorMeta { dtype: DataType::String, nbytes: 2, ..meta };
        body.extend(
            tensor_records(
                "s",
                &[2],
                &strings,
                &TensorData::Strings(vec![Bytes::from_static(b"x"), Bytes::from_static(b"y")]),
            )
            .concat(),
        );
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
        let meta = TensorMeta { dtype: DataType::Uint8, source_dtype: None, nbytes: 7, sha256: [0; 32], overflowed: 0 };
        let data = TensorData::Bytes(Bytes::from_static(b"abcdefg"));
        let body = records_in_pieces("t", &[7], &meta, &data, 3).concat();
        let bundle = proto::Bundle::decode(body.as_slice()).unwrap();
        let pieces: Vec<(u64, &[u8], u64)> =
            bundle.tensors.iter().map(|t| (t.offset, &t.data[..], t.total_bytes)).collect();
        assert_eq!(pieces, vec![(0, &b"abc"[..], 7), (3, &b"def"[..], 7), (6, &b"g"[..], 7)]);
    }
}
