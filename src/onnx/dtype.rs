//! ONNX element types: their numbers, names and sizes on disk.

use std::fmt;

/// An ONNX `TensorProto.DataType`. The discriminants are ONNX's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
#[allow(missing_docs)] // the variants are ONNX's names, in ONNX's order
pub enum DataType {
    Float = 1,
    Uint8 = 2,
    Int8 = 3,
    Uint16 = 4,
    Int16 = 5,
    Int32 = 6,
    Int64 = 7,
    String = 8,
    Bool = 9,
    Float16 = 10,
    Double = 11,
    Uint32 = 12,
    Uint64 = 13,
    Complex64 = 14,
    Complex128 = 15,
    Bfloat16 = 16,
    Float8E4M3Fn = 17,
    Float8E4M3Fnuz = 18,
    Float8E5M2 = 19,
    Float8E5M2Fnuz = 20,
    Uint4 = 21,
    Int4 = 22,
    Float4E2M1 = 23,
    Float8E8M0 = 24,
    Uint2 = 25,
    Int2 = 26,
    Float6E2M3 = 27,
    Float6E3M2 = 28,
}

use DataType::*;

const ALL: [DataType; 28] = [
    Float,
    Uint8,
    Int8,
    Uint16,
    Int16,
    Int32,
    Int64,
    String,
    Bool,
    Float16,
    Double,
    Uint32,
    Uint64,
    Complex64,
    Complex128,
    Bfloat16,
    Float8E4M3Fn,
    Float8E4M3Fnuz,
    Float8E5M2,
    Float8E5M2Fnuz,
    Uint4,
    Int4,
    Float4E2M1,
    Float8E8M0,
    Uint2,
    Int2,
    Float6E2M3,
    Float6E3M2,
];

impl DataType {
    /// The type with ONNX number `n`, or `None` for 0 (UNDEFINED) and numbers
    /// this build does not know (a newer ONNX release).
    pub fn from_onnx(n: i32) -> Option<DataType> {
        ALL.iter().copied().find(|t| *t as i32 == n)
    }

    /// Every type weightcast knows, in ONNX order.
    pub fn all() -> &'static [DataType] {
        &ALL
    }

    /// The name ONNX gives it (`TensorProto.DataType.Name`), e.g. `FLOAT`.
    pub fn name(self) -> &'static str {
        match self {
            Float => "FLOAT",
            Uint8 => "UINT8",
            Int8 => "INT8",
            Uint16 => "UINT16",
            Int16 => "INT16",
            Int32 => "INT32",
            Int64 => "INT64",
            String => "STRING",
            Bool => "BOOL",
            Float16 => "FLOAT16",
            Double => "DOUBLE",
            Uint32 => "UINT32",
            Uint64 => "UINT64",
            Complex64 => "COMPLEX64",
            Complex128 => "COMPLEX128",
            Bfloat16 => "BFLOAT16",
            Float8E4M3Fn => "FLOAT8E4M3FN",
            Float8E4M3Fnuz => "FLOAT8E4M3FNUZ",
            Float8E5M2 => "FLOAT8E5M2",
            Float8E5M2Fnuz => "FLOAT8E5M2FNUZ",
            Uint4 => "UINT4",
            Int4 => "INT4",
            Float4E2M1 => "FLOAT4E2M1",
            Float8E8M0 => "FLOAT8E8M0",
            Uint2 => "UINT2",
            Int2 => "INT2",
            Float6E2M3 => "FLOAT6E2M3",
            Float6E3M2 => "FLOAT6E3M2",
        }
    }

    /// Bits one element takes when packed as ONNX stores it; `None` for STRING.
    pub fn bits(self) -> Option<u64> {
        Some(match self {
            String => return None,
            Uint2 | Int2 => 2,
            Uint4 | Int4 | Float4E2M1 => 4,
            Float6E2M3 | Float6E3M2 => 6,
            Uint8 | Int8 | Bool | Float8E4M3Fn | Float8E4M3Fnuz | Float8E5M2 | Float8E5M2Fnuz | Float8E8M0 => 8,
            Uint16 | Int16 | Float16 | Bfloat16 => 16,
            Float | Int32 | Uint32 => 32,
            Double | Int64 | Uint64 | Complex64 => 64,
            Complex128 => 128,
        })
    }

    /// Bytes that `count` elements take, packed (sub-byte types round up).
    pub fn byte_len(self, count: u64) -> Option<u64> {
        let bits = self.bits()?;
        count.checked_mul(bits).map(|b| b.div_ceil(8))
    }

    /// Whether elements are smaller than a byte and packed several to a byte.
    pub fn is_sub_byte(self) -> bool {
        matches!(self.bits(), Some(b) if b < 8)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_unknown_is_none() {
        for t in DataType::all() {
            assert_eq!(DataType::from_onnx(*t as i32), Some(*t));
        }
        assert_eq!(DataType::from_onnx(0), None);
        assert_eq!(DataType::from_onnx(29), None);
        assert_eq!(DataType::from_onnx(-1), None);
    }

    #[test]
    fn packed_lengths() {
        assert_eq!(Int4.byte_len(5), Some(3));
        assert_eq!(Uint2.byte_len(5), Some(2));
        assert_eq!(Float6E2M3.byte_len(5), Some(4));
        assert_eq!(Float6E2M3.byte_len(4), Some(3));
        assert_eq!(Complex128.byte_len(2), Some(32));
        assert_eq!(String.byte_len(2), None);
        assert_eq!(Float.byte_len(u64::MAX), None);
    }
}
