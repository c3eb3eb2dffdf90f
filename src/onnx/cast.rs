//! Downcasting float tensors to fp16 or bf16 for thinner links.
//!
//! Round to nearest even, NaN stays NaN; finite values too large for the
//! target become ±inf and are counted, so a client can tell a lossy cast.
//! Data may sit at any alignment inside the model file, so elements are read
//! with `from_le_bytes`, a block at a time, and converted with `half`'s slice
//! routines (F16C / NEON where the CPU has them).

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use super::DataType;

/// What a tensor may be cast to (`?dtype=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// IEEE 754 half precision.
    F16,
    /// bfloat16 (float32's exponent, 7 bits of mantissa).
    Bf16,
}

/// A cast target that is not `f16` or `bf16`.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a cast target: f16 or bf16")]
pub struct UnknownTarget(pub String);

impl std::str::FromStr for Target {
    type Err = UnknownTarget;

    /// `f16` or `bf16`, as queries, config and the command line write them.
    fn from_str(s: &str) -> Result<Target, UnknownTarget> {
        match s {
            "f16" => Ok(Target::F16),
            "bf16" => Ok(Target::Bf16),
            other => Err(UnknownTarget(other.to_string())),
        }
    }
}

impl Target {
    /// The name `from_str` takes.
    pub fn name(self) -> &'static str {
        match self {
            Target::F16 => "f16",
            Target::Bf16 => "bf16",
        }
    }

    /// The ONNX dtype of the cast tensor.
    pub fn dtype(self) -> DataType {
        match self {
            Target::F16 => DataType::Float16,
            Target::Bf16 => DataType::Bfloat16,
        }
    }
}

/// A cast tensor's bytes and how many finite values overflowed to ±inf.
pub struct Cast {
    /// The cast tensor's little-endian bytes.
    pub bytes: Vec<u8>,
    /// Finite values that became ±inf.
    pub overflowed: u64,
}

/// Whether `dtype` changes under a cast (only FLOAT and DOUBLE do).
pub fn applies(dtype: DataType, target: Target) -> bool {
    // BFLOAT16 → f16: numpy and safetensors' numpy loader read f16, not bf16.
    matches!((dtype, target), (DataType::Float | DataType::Double, _) | (DataType::Bfloat16, Target::F16))
}

/// Casts little-endian FLOAT or DOUBLE bytes (and BFLOAT16 to f16); `None`
/// for other dtypes, which are served unchanged.
pub fn cast(dtype: DataType, data: &[u8], target: Target) -> Option<Cast> {
    let mut bytes = Vec::new();
    let overflowed = cast_into(dtype, data, target, &mut bytes)?;
    Some(Cast { bytes, overflowed })
}

/// [`cast`] into a buffer the caller owns (cleared first); returns the
/// overflow count, or `None` for dtypes that are not cast.
pub fn cast_into(dtype: DataType, data: &[u8], target: Target, out: &mut Vec<u8>) -> Option<u64> {
    out.clear();
    match (dtype, target) {
        (DataType::Float, Target::F16) => {
            Some(run::<f32, f16>(data, out, |s, d| d.convert_from_f32_slice(s), f32_finite, F16_INF))
        }
        (DataType::Float, Target::Bf16) => {
            Some(run::<f32, bf16>(data, out, |s, d| d.convert_from_f32_slice(s), f32_finite, BF16_INF))
        }
        (DataType::Double, Target::F16) => {
            Some(run::<f64, f16>(data, out, |s, d| d.convert_from_f64_slice(s), f64::is_finite, F16_INF))
        }
        (DataType::Double, Target::Bf16) => {
            Some(run::<f64, bf16>(data, out, |s, d| d.convert_from_f64_slice(s), f64::is_finite, BF16_INF))
        }
        (DataType::Bfloat16, Target::F16) => Some(run::<bf16, f16>(
            data,
            out,
            |s, d| d.iter_mut().zip(s).for_each(|(d, s)| *d = f16::from_f32(s.to_f32())),
            |x| x.is_finite(),
            F16_INF,
        )),
        _ => None,
    }
}

/// Bits of ±inf without the sign, in fp16 and bf16.
const F16_INF: u16 = 0x7c00;
const BF16_INF: u16 = 0x7f80;

fn f32_finite(x: f32) -> bool {
    x.is_finite()
}

/// Converts block by block: the input block is used in place when aligned
/// (else copied once into an aligned buffer — the model's bytes may sit at any
/// alignment), converted with `half`'s SIMD slice routine, scanned for
/// infinities while in cache, and appended.
fn run<S: bytemuck::Pod + Default, D: bytemuck::Pod + Default>(
    data: &[u8],
    bytes: &mut Vec<u8>,
    convert: impl Fn(&[S], &mut [D]),
    src_finite: impl Fn(S) -> bool,
    inf_bits: u16,
) -> u64 {
    const BLOCK: usize = 16 * 1024;
    let size = std::mem::size_of::<S>();
    let mut src_buf = [S::default(); BLOCK];
    let mut dst_buf = [D::default(); BLOCK];
    bytes.reserve(data.len() / size * std::mem::size_of::<D>());
    let mut overflowed = 0u64;
    for chunk in data.chunks(BLOCK * size) {
        let n = chunk.len() / size;
        let chunk = &chunk[..n * size];
        let src: &[S] = match bytemuck::try_cast_slice(chunk) {
            Ok(aligned) => aligned,
            Err(_) => {
                bytemuck::cast_slice_mut::<S, u8>(&mut src_buf[..n]).copy_from_slice(chunk);
                &src_buf[..n]
            }
        };
        let dst = &mut dst_buf[..n];
        convert(src, dst);
        // The largest magnitude (masked bits fit an i16: a vectorizable max);
        // the source is looked at only in a block holding an infinity or NaN.
        let bits: &[u16] = bytemuck::cast_slice(dst);
        let top = bits.iter().fold(0i16, |m, &b| m.max((b & 0x7fff) as i16));
        if top as u16 >= inf_bits {
            let is_inf = |b: &u16| b & 0x7fff == inf_bits;
            overflowed += src.iter().zip(bits).filter(|(s, b)| is_inf(b) && src_finite(**s)).count() as u64;
        }
        bytes.extend_from_slice(bytemuck::cast_slice(dst));
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
        assert!(cast(DataType::Bfloat16, &[0; 8], Target::Bf16).is_none(), "bf16 as bf16 is served as stored");
    }

    #[test]
    fn bf16_to_f16_rounds_and_counts_what_f16_cannot_hold() {
        let v = [bf16::from_f32(1.5), bf16::from_f32(-0.007812), bf16::from_f32(1e5), bf16::INFINITY, bf16::NAN];
        let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let c = cast(DataType::Bfloat16, &data, Target::F16).unwrap();
        let h: Vec<f16> = c.bytes.chunks(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect();
        assert_eq!(h[0], f16::from_f32(1.5));
        assert_eq!(h[1], f16::from_f32(v[1].to_f32()));
        assert!(h[2].is_infinite() && h[3].is_infinite() && h[4].is_nan());
        assert_eq!(c.overflowed, 1, "1e5 is finite in bf16 and beyond f16");
    }
}
