//! Downcasting float tensors to fp16 or bf16 for thinner links.
//!
//! Round to nearest even, NaN stays NaN; finite values too large for the
//! target become ±inf and are counted, so a client can tell a lossy cast.
//! Data may sit at any alignment inside the model file, so elements are read
//! with `from_le_bytes`, a block at a time, and converted with `half`'s slice
//! routines (F16C / NEON where the CPU has them).

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::onnx::DataType;

/// What a tensor may be cast to (`?dtype=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    F16,
    Bf16,
}

impl Target {
    pub fn dtype(self) -> DataType {
        match self {
            Target::F16 => DataType::Float16,
            Target::Bf16 => DataType::Bfloat16,
        }
    }
}

/// A cast tensor's bytes and how many finite values overflowed to ±inf.
pub struct Cast {
    pub bytes: Vec<u8>,
    pub overflowed: u64,
}

/// Whether `dtype` changes under a cast (only FLOAT and DOUBLE do).
pub fn applies(dtype: DataType) -> bool {
    matches!(dtype, DataType::Float | DataType::Double)
}

/// Casts little-endian FLOAT or DOUBLE bytes; `None` for other dtypes, which
/// are served unchanged.
pub fn cast(dtype: DataType, data: &[u8], target: Target) -> Option<Cast> {
    match (dtype, target) {
        (DataType::Float, Target::F16) => {
            Some(run::<f32, f16>(data, |s, d| d.convert_from_f32_slice(s), f32_finite, |h| h.is_infinite()))
        }
        (DataType::Float, Target::Bf16) => {
            Some(run::<f32, bf16>(data, |s, d| d.convert_from_f32_slice(s), f32_finite, |h| h.is_infinite()))
        }
        (DataType::Double, Target::F16) => {
            Some(run::<f64, f16>(data, |s, d| d.convert_from_f64_slice(s), f64::is_finite, |h| h.is_infinite()))
        }
        (DataType::Double, Target::Bf16) => {
            Some(run::<f64, bf16>(data, |s, d| d.convert_from_f64_slice(s), f64::is_finite, |h| h.is_infinite()))
        }
        _ => None,
    }
}

fn f32_finite(x: f32) -> bool {
    x.is_finite()
}

/// Converts block by block: the input block is copied into an aligned buffer
/// (one memcpy; the model's bytes may sit at any alignment), converted with
/// `half`'s SIMD slice routine, and appended as bytes.
fn run<S: bytemuck::Pod + Default, D: bytemuck::Pod + Default>(
    data: &[u8],
    convert: impl Fn(&[S], &mut [D]),
    src_finite: impl Fn(S) -> bool,
    dst_inf: impl Fn(D) -> bool,
) -> Cast {
    const BLOCK: usize = 16 * 1024;
    let size = std::mem::size_of::<S>();
    let mut src = [S::default(); BLOCK];
    let mut dst = [D::default(); BLOCK];
    let mut bytes = Vec::with_capacity(data.len() / size * std::mem::size_of::<D>());
    let mut overflowed = 0u64;
    for chunk in data.chunks(BLOCK * size) {
        let n = chunk.len() / size;
        let (src, dst) = (&mut src[..n], &mut dst[..n]);
        bytemuck::cast_slice_mut::<S, u8>(src).copy_from_slice(&chunk[..n * size]);
        convert(src, dst);
        overflowed += src.iter().zip(dst.iter()).filter(|(s, d)| dst_inf(**d) && src_finite(**s)).count() as u64;
        bytes.extend_from_slice(bytemuck::cast_slice(dst));
    }
    Cast { bytes, overflowed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn f16_rounds_to_nearest_even_and_counts_overflow() {
        // 1 + 2^-11 is halfway between two f16 values: ties to even (1.0).
        let c = cast(DataType::Float, &f32s(&[1.0 + 2f32.powi(-11), 70000.0, f32::INFINITY, f32::NAN]), Target::F16)
            .unwrap();
        let h: Vec<f16> = c.bytes.chunks(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect();
        assert_eq!(h[0], f16::ONE);
        assert!(h[1].is_infinite() && h[2].is_infinite() && h[3].is_nan());
        assert_eq!(c.overflowed, 1, "only the finite 70000 overflowed; inf was inf already");
    }

    #[test]
    fn unaligned_input_and_other_dtypes() {
        let mut data = vec![0u8];
        data.extend(f32s(&[2.5; 5000]));
        let c = cast(DataType::Float, &data[1..], Target::Bf16).unwrap();
        assert_eq!(c.bytes.len(), 10000);
        assert!(c.bytes.chunks(2).all(|b| bf16::from_le_bytes([b[0], b[1]]) == bf16::from_f32(2.5)));
        assert!(cast(DataType::Int64, &[0; 8], Target::F16).is_none());
    }
}
