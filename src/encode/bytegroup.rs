//! The float-aware lossless "bytegroup" transform (`?codec=bytegroup`): the
//! bytes of a tensor's elements are regrouped into planes — byte 0 of every
//! element, then byte 1 of every element, … — so that zstd sees the exponent
//! bytes of floats side by side, where they repeat, instead of interleaved
//! with noisy mantissa bytes. Undoing it is a transpose:
//! `np.frombuffer(data, np.uint8).reshape(k, -1).T.tobytes()`.

use crate::onnx::DataType;

/// The name a `Tensor` record carries in `codec`.
pub const NAME: &str = "bytegroup";

/// Bytes per component the transform groups by, for dtypes where it can
/// help: multi-byte numbers (a complex number's components separately).
pub fn element_size(d: DataType) -> Option<usize> {
    match d {
        DataType::Complex64 => Some(4),
        DataType::Complex128 => Some(8),
        DataType::String => None,
        _ => d.bits().filter(|b| b % 8 == 0 && *b >= 16).map(|b| (b / 8) as usize),
    }
}

/// Element bytes → planes.
pub fn split(data: &[u8], k: usize) -> Vec<u8> {
    let n = data.len() / k;
    let mut out = vec![0u8; data.len()];
    let (planes, _) = out.split_at_mut(n * k);
    for (i, element) in data.chunks_exact(k).enumerate() {
        for (j, &b) in element.iter().enumerate() {
            planes[j * n + i] = b;
        }
    }
    // A length that is not a multiple of k cannot come from a valid tensor;
    // keep any tail as is rather than lose it.
    out[n * k..].copy_from_slice(&data[n * k..]);
    out
}

/// Planes → element bytes.
pub fn join(planes: &[u8], k: usize) -> Vec<u8> {
    let n = planes.len() / k;
    let mut out = vec![0u8; planes.len()];
    for (i, element) in out.chunks_exact_mut(k).enumerate() {
        for (j, b) in element.iter_mut().enumerate() {
            *b = planes[j * n + i];
        }
    }
    out[n * k..].copy_from_slice(&planes[n * k..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_round_trip() {
        let data: Vec<u8> = (0u8..12).collect();
        let p = split(&data, 4);
        assert_eq!(p, vec![0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
        assert_eq!(join(&p, 4), data);
        assert_eq!(element_size(DataType::Float), Some(4));
        assert_eq!(element_size(DataType::Uint8), None);
        assert_eq!(element_size(DataType::Int4), None);
        assert_eq!(element_size(DataType::Complex128), Some(8));
    }

    #[test]
    fn grouping_helps_zstd_on_floats() {
        // Smooth-ish weights: similar exponents, noisy mantissas.
        let mut s = 1u64;
        let floats: Vec<u8> = (0..65536)
            .flat_map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1).to_le_bytes()
            })
            .collect();
        let plain = zstd::bulk::compress(&floats, 3).unwrap().len();
        let grouped = zstd::bulk::compress(&split(&floats, 4), 3).unwrap().len();
        assert!(grouped < plain, "bytegroup {grouped} vs plain {plain}");
    }
}
