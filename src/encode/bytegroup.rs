//! The float-aware lossless "bytegroup" transform (`?codec=bytegroup`).
//!
//! Each element (each component of a complex number) of `k` bytes is read as
//! a little-endian unsigned integer; for floating-point dtypes it is rotated
//! left by one bit, which moves the sign bit to the bottom so that the top
//! byte holds the exponent alone (as ZipNN does); then its bytes are split
//! into planes: byte 0 of every element, then byte 1 of every element, … .
//! zstd then sees the low-entropy exponent bytes side by side instead of
//! interleaved with noisy mantissa bytes. Undoing it (numpy):
//!
//! ```python
//! u = np.frombuffer(data, np.uint8).reshape(k, -1).T.copy().view(f"<u{k}").ravel()
//! if rotated: u = (u >> 1) | (u << (8 * k - 1))
//! ```

use std::ops::Range;

use bytes::Bytes;

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

/// Whether elements are rotated before grouping: IEEE-style floats, whose
/// sign bit sits above the exponent.
pub fn rotated(d: DataType) -> bool {
    use DataType::*;
    matches!(d, Float | Double | Float16 | Bfloat16 | Complex64 | Complex128)
}

trait Word: Copy {
    const SIZE: usize;
    fn read(b: &[u8]) -> Self;
    fn rotl1(self) -> Self;
    fn rotr1(self) -> Self;
    fn le(self) -> [u8; 8];
    fn from_le(b: [u8; 8]) -> Self;
}

macro_rules! word {
    ($t:ty, $n:expr) => {
        impl Word for $t {
            const SIZE: usize = $n;
            fn read(b: &[u8]) -> Self {
                let mut a = [0u8; $n];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
            fn rotl1(self) -> Self {
                self.rotate_left(1)
            }
            fn rotr1(self) -> Self {
                self.rotate_right(1)
            }
            fn le(self) -> [u8; 8] {
                let mut a = [0u8; 8];
                a[..$n].copy_from_slice(&self.to_le_bytes());
                a
            }
            fn from_le(b: [u8; 8]) -> Self {
                let mut a = [0u8; $n];
                a.copy_from_slice(&b[..$n]);
                <$t>::from_le_bytes(a)
            }
        }
    };
}
word!(u16, 2);
word!(u32, 4);
word!(u64, 8);

/// Element bytes → planes.
pub fn split(data: &[u8], k: usize, rotate: bool) -> Vec<u8> {
    match k {
        2 => split_words::<u16>(data, rotate),
        4 => split_words::<u32>(data, rotate),
        8 => split_words::<u64>(data, rotate),
        _ => data.to_vec(),
    }
}

/// Planes → element bytes.
pub fn join(planes: &[u8], k: usize, rotate: bool) -> Vec<u8> {
    match k {
        2 => join_words::<u16>(planes, rotate),
        4 => join_words::<u32>(planes, rotate),
        8 => join_words::<u64>(planes, rotate),
        _ => planes.to_vec(),
    }
}

/// Bytes `range` of `split(data, k, rotate)` without making the rest: the
/// planes' bytes in `range` come from the elements they were taken from,
/// which `elements(bytes)` gives (a window of the tensor's data, read or
/// cast on demand). Reads at most [`STRIDE`] elements at a time, so a window
/// costs that much memory whatever the tensor's size.
pub fn split_range(
    len: usize,
    k: usize,
    rotate: bool,
    range: Range<usize>,
    elements: impl Fn(Range<usize>) -> Bytes,
) -> Vec<u8> {
    let n = len / k;
    let mut out = Vec::with_capacity(range.len());
    let mut at = range.start;
    while at < range.end {
        let (plane, first) = (at / n.max(1), at % n.max(1));
        if n == 0 || plane >= k {
            // The tail past whole elements is kept as is (see `split`).
            out.extend_from_slice(&elements(at..range.end));
            break;
        }
        let last = (first + (range.end - at)).min(n).min(first + STRIDE);
        let src = elements(first * k..last * k);
        let shift = 8 * k as u32 - 1;
        let mask = if k == 8 { u64::MAX } else { (1u64 << (8 * k)) - 1 };
        out.extend(src.chunks_exact(k).map(|e| {
            let mut word = [0u8; 8];
            word[..k].copy_from_slice(e);
            let w = u64::from_le_bytes(word);
            let w = if rotate { ((w << 1) | (w >> shift)) & mask } else { w };
            (w >> (8 * plane)) as u8
        }));
        at += last - first;
    }
    out
}

/// Elements [`split_range`] reads at a time (1 MiB of 4-byte elements).
pub const STRIDE: usize = 1 << 18;

fn split_words<W: Word>(data: &[u8], rotate: bool) -> Vec<u8> {
    let k = W::SIZE;
    let n = data.len() / k;
    let mut out = vec![0u8; data.len()];
    for (i, element) in data.chunks_exact(k).enumerate() {
        let w = W::read(element);
        let bytes = if rotate { w.rotl1() } else { w }.le();
        for (j, &b) in bytes[..k].iter().enumerate() {
            out[j * n + i] = b;
        }
    }
    // A length that is not a multiple of k cannot come from a valid tensor;
    // keep any tail as is rather than lose it.
    out[n * k..].copy_from_slice(&data[n * k..]);
    out
}

fn join_words<W: Word>(planes: &[u8], rotate: bool) -> Vec<u8> {
    let k = W::SIZE;
    let n = planes.len() / k;
    let mut out = vec![0u8; planes.len()];
    for (i, element) in out.chunks_exact_mut(k).enumerate() {
        let mut bytes = [0u8; 8];
        for (j, b) in bytes[..k].iter_mut().enumerate() {
            *b = planes[j * n + i];
        }
        let w = W::from_le(bytes);
        let w = if rotate { w.rotr1() } else { w };
        element.copy_from_slice(&w.le()[..k]);
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
        let p = split(&data, 4, false);
        assert_eq!(p, vec![0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
        assert_eq!(join(&p, 4, false), data);
        for k in [2, 4, 8] {
            let bytes: Vec<u8> = (0..64u32).map(|x| (x * 37 + 11) as u8).collect();
            assert_eq!(join(&split(&bytes, k, true), k, true), bytes, "k={k}");
        }
        assert_eq!(element_size(DataType::Float), Some(4));
        assert_eq!(element_size(DataType::Uint8), None);
        assert_eq!(element_size(DataType::Int4), None);
        assert_eq!(element_size(DataType::Complex128), Some(8));
    }

    #[test]
    fn any_range_of_the_planes_is_made_from_its_elements_alone() {
        let mut s = 7u64;
        for (len, k) in [(4000, 4), (4002, 4), (6000, 2), (8008, 8), (3, 4), (STRIDE * 4 + 12, 4)] {
            let data: Bytes = (0..len)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (s >> 56) as u8
                })
                .collect();
            for rotate in [false, true] {
                let whole = split(&data, k, rotate);
                for range in [0..len, 0..1, len / 3..len / 2, len - 1..len, len / k..len / k + 5, 7..len - 3] {
                    let range = range.start.min(len)..range.end.min(len).max(range.start.min(len));
                    let reads = std::cell::Cell::new(0);
                    let part = split_range(len, k, rotate, range.clone(), |r| {
                        reads.set(reads.get().max(r.len()));
                        data.slice(r)
                    });
                    assert_eq!(part, &whole[range.clone()], "len={len} k={k} rotate={rotate} {range:?}");
                    assert!(reads.get() <= STRIDE * k, "read {} bytes at once", reads.get());
                }
            }
        }
    }

    #[test]
    fn rotation_puts_the_exponent_in_the_top_plane() {
        // -1.0f32 = 0xBF800000: rotated 0x7F000001, exponent 0x7F on top.
        let p = split(&(-1.0f32).to_le_bytes(), 4, true);
        assert_eq!(p, vec![0x01, 0x00, 0x00, 0x7F]);
    }

    #[test]
    fn grouping_helps_zstd_on_floats() {
        let mut s = 1u64;
        let floats: Vec<u8> = (0..65536)
            .flat_map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1).to_le_bytes()
            })
            .collect();
        let plain = zstd::bulk::compress(&floats, 3).unwrap().len();
        let grouped = zstd::bulk::compress(&split(&floats, 4, true), 3).unwrap().len();
        assert!(grouped < plain, "bytegroup {grouped} vs plain {plain}");
    }
}
