//! What a person looks at when a model misbehaves: per-tensor statistics
//! (range, mean, spread, zeros, NaN and Inf counts, a histogram) and what
//! changed between two versions of a model (which tensors, by how much).
//!
//! Values are read as f64 from the stored little-endian bytes of the
//! numeric dtypes people train and quantize with (float32/64, float16,
//! bfloat16, the integers, bool); other dtypes (strings, complex, sub-byte
//! and float8 types) get no figures.

use half::{bf16, f16};

use super::{DataType, Tensor, TensorData};

/// Histogram bins, over [min, max] of the finite values.
pub const BINS: usize = 32;

/// Statistics of one tensor's values.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Elements.
    pub count: u64,
    /// Smallest finite value (0 when none).
    pub min: f64,
    /// Largest finite value (0 when none).
    pub max: f64,
    /// Mean of the finite values.
    pub mean: f64,
    /// Population standard deviation of the finite values.
    pub std: f64,
    /// Elements equal to zero.
    pub zeros: u64,
    /// NaN elements.
    pub nan: u64,
    /// ±Inf elements.
    pub inf: u64,
    /// Finite values per bin, [`BINS`] equal bins from `min` to `max`.
    pub histogram: Vec<u64>,
}

/// Calls `f` with each value; `false` when the dtype has no figures.
fn for_each(dtype: DataType, bytes: &[u8], mut f: impl FnMut(f64)) -> bool {
    macro_rules! each {
        ($n:literal, $conv:expr) => {{
            for c in bytes.chunks_exact($n) {
                let b: [u8; $n] = c.try_into().unwrap_or([0; $n]);
                f($conv(b));
            }
            true
        }};
    }
    match dtype {
        DataType::Float => each!(4, |b| f32::from_le_bytes(b) as f64),
        DataType::Double => each!(8, f64::from_le_bytes),
        DataType::Float16 => each!(2, |b| f16::from_le_bytes(b).to_f64()),
        DataType::Bfloat16 => each!(2, |b| bf16::from_le_bytes(b).to_f64()),
        DataType::Int8 => each!(1, |b: [u8; 1]| b[0] as i8 as f64),
        DataType::Uint8 | DataType::Bool => each!(1, |b: [u8; 1]| b[0] as f64),
        DataType::Int16 => each!(2, |b| i16::from_le_bytes(b) as f64),
        DataType::Uint16 => each!(2, |b| u16::from_le_bytes(b) as f64),
        DataType::Int32 => each!(4, |b| i32::from_le_bytes(b) as f64),
        DataType::Uint32 => each!(4, |b| u32::from_le_bytes(b) as f64),
        DataType::Int64 => each!(8, |b| i64::from_le_bytes(b) as f64),
        DataType::Uint64 => each!(8, |b| u64::from_le_bytes(b) as f64),
        _ => false,
    }
}

/// The statistics of a tensor; `None` for dtypes without figures.
pub fn stats(tensor: &Tensor) -> Option<Stats> {
    let TensorData::Bytes(bytes) = &tensor.data else { return None };
    let mut s = Stats {
        count: 0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        mean: 0.0,
        std: 0.0,
        zeros: 0,
        nan: 0,
        inf: 0,
        histogram: vec![0; BINS],
    };
    // Welford's running mean and variance: one pass, no cancellation.
    let (mut finite, mut m2) = (0u64, 0.0f64);
    let known = for_each(tensor.dtype, bytes, |v| {
        s.count += 1;
        if v.is_nan() {
            s.nan += 1;
        } else if v.is_infinite() {
            s.inf += 1;
        } else {
            s.zeros += (v == 0.0) as u64;
            s.min = s.min.min(v);
            s.max = s.max.max(v);
            finite += 1;
            let delta = v - s.mean;
            s.mean += delta / finite as f64;
            m2 += delta * (v - s.mean);
        }
    });
    if !known {
        return None;
    }
    if finite == 0 {
        (s.min, s.max) = (0.0, 0.0);
        return Some(s);
    }
    s.std = (m2 / finite as f64).sqrt();
    let width = (s.max - s.min) / BINS as f64;
    for_each(tensor.dtype, bytes, |v| {
        if v.is_finite() {
            let bin = if width > 0.0 { ((v - s.min) / width) as usize } else { 0 };
            s.histogram[bin.min(BINS - 1)] += 1;
        }
    });
    Some(s)
}

/// How one tensor differs between two versions.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Same dtype and shape, other values: the largest absolute difference
    /// and the L2 norm of the difference relative to the old values' (NaN
    /// where a value is NaN; infinite where the old norm is 0).
    Values {
        /// max |new − old|.
        max_abs: f64,
        /// ‖new − old‖₂ / ‖old‖₂.
        rel_l2: f64,
    },
    /// Another dtype or shape (or a dtype without figures): no figures.
    Replaced,
    /// Only in the new version.
    Added,
    /// Only in the old version.
    Removed,
}

/// What differs between two versions of a model's tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    /// Each tensor that differs (by name), in the new version's order, then
    /// the removed ones.
    pub tensors: Vec<(String, Change)>,
    /// Tensors of the new version with the same dtype, shape and bytes.
    pub unchanged: usize,
}

/// What differs between `old` and `new`, tensors matched by name.
pub fn diff(old: &[Tensor], new: &[Tensor]) -> Diff {
    let before: std::collections::HashMap<&str, &Tensor> = old.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut out = Vec::new();
    for t in new {
        match before.get(t.name.as_str()) {
            None => out.push((t.name.clone(), Change::Added)),
            Some(o) if o.data == t.data && o.dtype == t.dtype && o.dims == t.dims => {}
            Some(o) => out.push((t.name.clone(), change(o, t))),
        }
    }
    let after: std::collections::HashSet<&str> = new.iter().map(|t| t.name.as_str()).collect();
    let unchanged = new.len() - out.len();
    out.extend(old.iter().filter(|t| !after.contains(t.name.as_str())).map(|t| (t.name.clone(), Change::Removed)));
    Diff { tensors: out, unchanged }
}

fn change(old: &Tensor, new: &Tensor) -> Change {
    let (TensorData::Bytes(a), TensorData::Bytes(b)) = (&old.data, &new.data) else { return Change::Replaced };
    if old.dtype != new.dtype || old.dims != new.dims || a.len() != b.len() {
        return Change::Replaced;
    }
    let mut olds = Vec::with_capacity(a.len().min(1 << 16));
    let (mut max_abs, mut diff2, mut norm2, mut nan) = (0.0f64, 0.0f64, 0.0f64, false);
    // A window at a time: the old values of a window, then the new ones.
    let window = 1 << 16;
    let size = old.dtype.bits().map_or(0, |b| b as usize / 8).max(1);
    for (wa, wb) in a.chunks(window * size).zip(b.chunks(window * size)) {
        olds.clear();
        if !for_each(old.dtype, wa, |v| olds.push(v)) {
            return Change::Replaced;
        }
        let mut i = 0;
        for_each(new.dtype, wb, |v| {
            let d = v - olds[i];
            nan |= d.is_nan();
            max_abs = max_abs.max(d.abs());
            diff2 += d * d;
            norm2 += olds[i] * olds[i];
            i += 1;
        });
    }
    // f64::max skips NaN: a NaN on either side is told here.
    let max_abs = if nan { f64::NAN } else { max_abs };
    let rel_l2 = if norm2 > 0.0 {
        (diff2 / norm2).sqrt()
    } else if diff2 > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    Change::Values { max_abs, rel_l2 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, values: &[f32]) -> Tensor {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor {
            name: name.into(),
            dtype: DataType::Float,
            dims: vec![values.len() as i64],
            data: TensorData::Bytes(bytes::Bytes::from(bytes)),
            storage: super::super::Storage::Raw,
            constant: false,
        }
    }

    #[test]
    fn stats_match_a_direct_computation() {
        let s = stats(&tensor("t", &[1.0, 2.0, 0.0, f32::NAN, f32::INFINITY, 5.0])).unwrap();
        assert_eq!((s.count, s.zeros, s.nan, s.inf), (6, 1, 1, 1));
        assert_eq!((s.min, s.max, s.mean), (0.0, 5.0, 2.0));
        assert!((s.std - 3.5f64.sqrt()).abs() < 1e-12, "{}", s.std); // finite 1, 2, 0, 5: variance 14 / 4
        assert_eq!(s.histogram.iter().sum::<u64>(), 4);
        assert_eq!((s.histogram[0], s.histogram[BINS - 1]), (1, 1), "min in the first bin, max in the last");
        let flat = stats(&tensor("c", &[3.0, 3.0])).unwrap();
        assert_eq!((flat.std, flat.histogram[0]), (0.0, 2));
    }

    #[test]
    fn diffs_name_changed_added_and_removed_tensors() {
        let old = [tensor("same", &[1.0]), tensor("w", &[3.0, 4.0]), tensor("gone", &[1.0])];
        let new = [tensor("same", &[1.0]), tensor("w", &[3.0, 4.5]), tensor("new", &[1.0]), tensor("gone2", &[1.0])];
        let d = diff(&old, &new);
        assert_eq!(d.unchanged, 1);
        let d = d.tensors;
        assert_eq!(d.len(), 4, "{d:?}");
        assert_eq!(d[0], ("w".to_string(), Change::Values { max_abs: 0.5, rel_l2: 0.1 }));
        assert_eq!(d[1], ("new".to_string(), Change::Added));
        assert_eq!(d[3], ("gone".to_string(), Change::Removed));
        assert_eq!(diff(&old, &[tensor("w", &[1.0, 2.0, 3.0])]).tensors[0].1, Change::Replaced);
    }
}
