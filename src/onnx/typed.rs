//! The typed repeated fields of `TensorProto` (`float_data`, `int32_data`, …)
//! turned into the little-endian bytes that `raw_data` would have held.
//!
//! The rules are ONNX's (see `onnx.proto`, field comments, and
//! `numpy_helper.to_array`): 8- and 16-bit types keep their bits in the low
//! bits of each `int32_data` entry; 4- and 2-bit types store one packed byte per
//! entry; 6-bit floats store one element per entry, which we pack.

use bytes::Bytes;

use super::dtype::DataType::{self, *};
use super::proto::TensorProto;

/// Bytes of a tensor stored in typed fields, or what is wrong with them.
// Longer than most functions here: one match arm per ONNX dtype, each naming
// the field ONNX keeps it in and how it packs — a table best read whole.
pub(super) fn to_bytes(t: &TensorProto, dtype: DataType, count: u64) -> Result<Bytes, std::string::String> {
    let check = |field: &str, have: usize, want: u64| -> Result<(), std::string::String> {
        if have as u64 == want {
            Ok(())
        } else {
            Err(format!("{dtype} dims {:?} need {want} values in {field}, found {have}", t.dims))
        }
    };
    let out: Vec<u8> = match dtype {
        Float => {
            check("float_data", t.float_data.len(), count)?;
            t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        Complex64 => {
            check("float_data", t.float_data.len(), count * 2)?;
            t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        Double => {
            check("double_data", t.double_data.len(), count)?;
            t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        Complex128 => {
            check("double_data", t.double_data.len(), count * 2)?;
            t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        Int64 => {
            check("int64_data", t.int64_data.len(), count)?;
            t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        Uint64 => {
            check("uint64_data", t.uint64_data.len(), count)?;
            t.uint64_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        Uint32 => {
            check("uint64_data", t.uint64_data.len(), count)?;
            t.uint64_data.iter().flat_map(|v| (*v as u32).to_le_bytes()).collect()
        }
        Int32 => {
            check("int32_data", t.int32_data.len(), count)?;
            t.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        Uint16 | Int16 | Float16 | Bfloat16 => {
            check("int32_data", t.int32_data.len(), count)?;
            t.int32_data.iter().flat_map(|v| (*v as u16).to_le_bytes()).collect()
        }
        Uint8 | Int8 | Bool | Float8E4M3Fn | Float8E4M3Fnuz | Float8E5M2 | Float8E5M2Fnuz | Float8E8M0 => {
            check("int32_data", t.int32_data.len(), count)?;
            t.int32_data.iter().map(|v| *v as u8).collect()
        }
        Uint4 | Int4 | Float4E2M1 | Uint2 | Int2 => {
            let packed = dtype.byte_len(count).unwrap_or(0);
            check("int32_data (packed bytes)", t.int32_data.len(), packed)?;
            t.int32_data.iter().map(|v| *v as u8).collect()
        }
        Float6E2M3 | Float6E3M2 => {
            check("int32_data", t.int32_data.len(), count)?;
            pack_bits(t.int32_data.iter().map(|v| (*v as u8) & 0x3f), 6, count)
        }
        DataType::String => return Err("STRING tensors keep their data in string_data".into()),
    };
    Ok(Bytes::from(out))
}

/// Packs `width`-bit codes into a little-endian bit stream: element i takes
/// bits [i*width, (i+1)*width), as ONNX packs sub-byte types.
pub(super) fn pack_bits(codes: impl Iterator<Item = u8>, width: u32, count: u64) -> Vec<u8> {
    let mut out = vec![0u8; (count * width as u64).div_ceil(8) as usize];
    for (i, code) in codes.enumerate() {
        let bit = i * width as usize;
        let value = (code as u16) << (bit % 8);
        out[bit / 8] |= value as u8;
        if bit % 8 + width as usize > 8 {
            out[bit / 8 + 1] |= (value >> 8) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_bit_packing_matches_onnx() {
        // onnx.numpy_helper._pack_6bit([8, 16, 4, 8, 24]) == [0x08, 0x44, 0x20, 0x18]
        assert_eq!(pack_bits([8u8, 16, 4, 8, 24].into_iter(), 6, 5), vec![0x08, 0x44, 0x20, 0x18]);
    }

    #[test]
    fn four_bit_packing_is_low_nibble_first() {
        assert_eq!(pack_bits([1u8, 2, 3].into_iter(), 4, 3), vec![0x21, 0x03]);
    }

    #[test]
    fn wrong_count_is_an_error_not_a_panic() {
        let t = TensorProto { dims: vec![3], float_data: vec![1.0, 2.0], ..Default::default() };
        let e = to_bytes(&t, Float, 3).unwrap_err();
        assert!(e.contains("need 3 values in float_data, found 2"), "{e}");
    }
}
