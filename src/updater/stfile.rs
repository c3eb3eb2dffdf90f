//! The safetensors form of a pulled version (`--output safetensors`): one
//! file written a tensor at a time from fetched bytes, fetched files and the
//! current version's file. Neither the old nor the new file is ever held
//! whole in memory: a device pulls models larger than its RAM.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;

use crate::onnx::DataType;
use crate::wire::{self, proto::Manifest};

use super::fetch::Fetched;

/// The safetensors crate's own bound on a header (`MAX_HEADER_SIZE`).
const HEADER_LIMIT: u64 = 100_000_000;

/// The current version's safetensors file, indexed from its header alone.
pub(super) struct Current {
    file: File,
    /// Where tensor data starts (after the length and the header).
    data_start: u64,
    /// Tensor name → its bytes' range within the data.
    index: HashMap<String, Range<u64>>,
}

impl Current {
    /// Opens and indexes `path`. The `safetensors` crate validates the header
    /// (JSON, dtypes, offsets contiguous from 0 and matching each shape) and
    /// the file must hold exactly the data it declares; a file that fails
    /// any of this is not reused: `None`, and every tensor is fetched again.
    pub(super) fn open(path: &Path) -> Option<Current> {
        let mut file = File::open(path).ok()?;
        let len = file.metadata().ok()?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n).ok()?;
        let n = u64::from_le_bytes(n);
        if n > HEADER_LIMIT || n.saturating_add(8) > len {
            return None;
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).ok()?;
        let meta: safetensors::tensor::Metadata = serde_json::from_slice(&header).ok()?;
        let data_start = 8 + n;
        if data_start + meta.data_len() as u64 != len {
            return None;
        }
        let index = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.data_offsets.0 as u64..info.data_offsets.1 as u64))
            .collect();
        Some(Current { file, data_start, index })
    }

    /// Whether it holds tensor `name`.
    #[cfg(test)]
    pub(super) fn holds(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Where tensor `name`'s bytes lie in the file: (offset, length).
    pub(super) fn range(&self, name: &str) -> Option<(u64, u64)> {
        self.index.get(name).map(|r| (self.data_start + r.start, r.end - r.start))
    }

    /// Whether tensor `name`'s bytes here have sha256 `digest` (read a MiB
    /// at a time): bytes that rotted on disk are fetched again, not copied.
    pub(super) fn matches(&self, name: &str, digest: &str) -> bool {
        use sha2::Digest;
        use std::os::unix::fs::FileExt;
        let Some((mut at, len)) = self.range(name) else { return false };
        let end = at + len;
        let (mut hasher, mut buf) = (sha2::Sha256::new(), vec![0u8; 1 << 20]);
        while at < end {
            let want = buf.len().min((end - at) as usize);
            match self.file.read_at(&mut buf[..want], at) {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    at += n as u64;
                }
            }
        }
        hex::encode(hasher.finalize()) == digest
    }

    fn len(&self, name: &str) -> Option<u64> {
        self.index.get(name).map(|r| r.end - r.start)
    }

    /// Copies tensor `name`'s bytes to `out`.
    fn copy(&self, name: &str, out: &mut impl Write) -> io::Result<u64> {
        let range = self.index.get(name).ok_or_else(|| missing(name))?;
        let mut file = &self.file;
        file.seek(SeekFrom::Start(self.data_start + range.start))?;
        let copied = io::copy(&mut file.take(range.end - range.start), out)?;
        if copied != range.end - range.start {
            return Err(io::Error::other(format!("the current version's file ended inside tensor '{name}'")));
        }
        Ok(copied)
    }
}

fn missing(name: &str) -> io::Error {
    io::Error::other(format!("tensor '{name}' neither fetched nor in the current version"))
}

/// Writes (and syncs) at `path` a safetensors file of the manifest's tensors
/// listed in `held`, in that order: fetched ones from `fetched`, the others
/// from `current`.
pub(super) fn write(
    path: &Path,
    manifest: &Manifest,
    held: &[(String, String)],
    fetched: &HashMap<String, Fetched>,
    current: Option<&Current>,
) -> io::Result<()> {
    let infos: HashMap<&str, &wire::proto::TensorInfo> =
        manifest.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "version": manifest.version, "model": manifest.model }));
    let mut offset = 0u64;
    for (name, _) in held {
        let len = match fetched.get(name) {
            Some(Fetched::Bytes(b)) => b.len() as u64,
            Some(Fetched::File(p)) => std::fs::metadata(p)?.len(),
            None => current.and_then(|c| c.len(name)).ok_or_else(|| missing(name))?,
        };
        let info = infos.get(name.as_str()).ok_or_else(|| missing(name))?;
        let dtype = DataType::from_onnx(info.dtype).and_then(wire::safetensors_dtype).unwrap_or("U8");
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": info.dims, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut text = serde_json::to_vec(&serde_json::Value::Object(header)).map_err(io::Error::other)?;
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    out.write_all(&(text.len() as u64).to_le_bytes())?;
    out.write_all(&text)?;
    for (name, _) in held {
        match fetched.get(name) {
            Some(Fetched::Bytes(b)) => out.write_all(b)?,
            Some(Fetched::File(p)) => {
                io::copy(&mut File::open(p)?, &mut out)?;
            }
            None => {
                current.ok_or_else(|| missing(name))?.copy(name, &mut out)?;
            }
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let info = |name: &str, dtype: i32, n: i64, nbytes: u64| wire::proto::TensorInfo {
            name: name.into(),
            dtype,
            dims: vec![n],
            nbytes,
            ..Default::default()
        };
        Manifest { tensors: vec![info("a", 1, 2, 8), info("b", 2, 3, 3)], ..Default::default() }
    }

    #[test]
    fn files_are_written_in_pieces_and_validated_before_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("a.raw");
        std::fs::write(&big, [1u8; 8]).unwrap();
        let held = vec![("a".to_string(), "a".to_string()), ("b".to_string(), "b".to_string())];
        let fetched: HashMap<String, Fetched> =
            [("a".to_string(), Fetched::File(big)), ("b".to_string(), Fetched::Bytes(vec![2u8; 3]))].into();
        let first = dir.path().join("first.safetensors");
        write(&first, &manifest(), &held, &fetched, None).unwrap();
        // The safetensors crate reads what was written.
        let bytes = std::fs::read(&first).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("a").unwrap().data(), &[1u8; 8]);
        assert_eq!(st.tensor("b").unwrap().data(), &[2u8; 3]);
        // A second version reuses "a" from the first file and takes a new "b".
        let current = Current::open(&first).unwrap();
        assert!(current.holds("a") && !current.holds("c"));
        let fetched: HashMap<String, Fetched> = [("b".to_string(), Fetched::Bytes(vec![7u8; 3]))].into();
        let second = dir.path().join("second.safetensors");
        write(&second, &manifest(), &held, &fetched, Some(&current)).unwrap();
        let bytes = std::fs::read(&second).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("a").unwrap().data(), &[1u8; 8]);
        assert_eq!(st.tensor("b").unwrap().data(), &[7u8; 3]);

        // Refused for reuse: a file one byte short, offsets with a gap, a header length past the file.
        let refused = |bytes: &[u8]| {
            let p = dir.path().join("bad.safetensors");
            std::fs::write(&p, bytes).unwrap();
            Current::open(&p).is_none()
        };
        assert!(refused(&bytes[..bytes.len() - 1]));
        let text = String::from_utf8_lossy(&bytes[8..]).replace("[8,11]", "[9,11]");
        assert!(refused(&[&bytes[..8], text.as_bytes()].concat()));
        assert!(refused(&u64::MAX.to_le_bytes()));
    }
}
