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
    const BLOCK: usize = 4096;
    let mut bytes = Vec::with_capacity(data.len() / if dtype == DataType::Double { 4 } else { 2 });
    let mut overflowed = 0u64;
    match dtype {
        DataType::Float => {
            let mut src = [0f32; BLOCK];
            for chunk in data.chunks(BLOCK * 4) {
                let n = chunk.len() / 4;
                for (d, s) in src[..n].iter_mut().zip(chunk.chunks_exact(4)) {
                    *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                }
                overflowed += match target {
                    Target::F16 => emit(
                        &src[..n],
                        &mut bytes,
                        |s, d: &mut [f16]| d.convert_from_f32_slice(s),
                        |x| x.is_finite(),
                        f16::is_infinite,
                        f16::to_le_bytes,
                    ),
                    Target::Bf16 => emit(
                        &src[..n],
                        &mut bytes,
                        |s, d: &mut [bf16]| d.convert_from_f32_slice(s),
                        |x| x.is_finite(),
                        bf16::is_infinite,
                        bf16::to_le_bytes,
                    ),
                };
            }
        }
        DataType::Double => {
            let mut src = [0f64; BLOCK];
            for chunk in data.chunks(BLOCK * 8) {
                let n = chunk.len() / 8;
                for (d, s) in src[..n].iter_mut().zip(chunk.chunks_exact(8)) {
                    *d = f64::from_le_bytes(s.try_into().unwrap_or_default());
                }
                overflowed += match target {
                    Target::F16 => emit(
                        &src[..n],
                        &mut bytes,
                        |s, d: &mut [f16]| d.convert_from_f64_slice(s),
                        |x| x.is_finite(),
                        f16::is_infinite,
                        f16::to_le_bytes,
                    ),
                    Target::Bf16 => emit(
                        &src[..n],
                        &mut bytes,
                        |s, d: &mut [bf16]| d.convert_from_f64_slice(s),
                        |x| x.is_finite(),
                        bf16::is_infinite,
                        bf16::to_le_bytes,
                    ),
                };
            }
        }
        _ => return None,
    }
    Some(Cast { bytes, overflowed })
}

/// Converts one block, appends its bytes, returns how many values overflowed.
fn emit<S: Copy, D: Copy + Default>(
    src: &[S],
    out: &mut Vec<u8>,
    convert: impl Fn(&[S], &mut [D]),
    src_finite: impl Fn(S) -> bool,
    dst_inf: impl Fn(D) -> bool,
    le: impl Fn(D) -> [u8; 2],
) -> u64 {
    let mut dst = [D::default(); 4096];
    let dst = &mut dst[..src.len()];
    convert(src, dst);
    let mut overflowed = 0;
    for (s, d) in src.iter().zip(dst.iter()) {
        overflowed += (src_finite(*s) && dst_inf(*d)) as u64;
        out.extend_from_slice(&le(*d));
    }
    overflowed
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
