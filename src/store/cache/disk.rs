//! The cache's disk tier: derived blobs of [`DISK_FROM`] bytes or more (zstd
//! frames of large tensors, casts, byte planes) are written once per version
//! into the cache folder and read back a range at a time when sent. They cost
//! page cache the kernel can reclaim, not anonymous memory and not resident
//! pages of the process (they are read, not mapped), they survive a restart,
//! and a version's folder is removed once another version of the model
//! serves.
//!
//! Layout: `<dir>/<model digest>/<version>/<key digest>`, each file the blob
//! followed by its length (u64 LE) and CRC-32 (u32 LE), checked before a
//! file left by an earlier run is used. Files are written beside their name
//! and renamed into place. A file changed or removed by someone else while
//! served gives an error for that response (never a crash): the folder is
//! weightcast's own.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::CacheKey;

/// Blobs at least this long go to disk; smaller ones stay in memory (a file
/// and a map per blob cost more than they save).
pub const DISK_FROM: usize = 64 << 10;

const TRAILER: usize = 12;

/// Blobs on disk: the length of each one checked since start.
pub(super) struct Disk {
    dir: PathBuf,
    held: Mutex<HashMap<CacheKey, u64>>,
}

impl Disk {
    /// The tier in `dir` (created, private to this user).
    pub(super) fn open(dir: &Path) -> std::io::Result<Disk> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        Ok(Disk { dir: dir.to_path_buf(), held: Mutex::new(HashMap::new()) })
    }

    fn model_dir(&self, model: &str) -> PathBuf {
        self.dir.join(hex::encode(&Sha256::digest(model.as_bytes())[..8]))
    }

    fn path(&self, key: &CacheKey) -> PathBuf {
        let name = Sha256::digest(format!("{}\0{}", key.tensor, key.variant).as_bytes());
        // A version is a hex digest; anything else is hashed to keep it a plain name.
        let version = match key.version.bytes().all(|b| b.is_ascii_hexdigit()) && !key.version.is_empty() {
            true => key.version.clone(),
            false => hex::encode(Sha256::digest(key.version.as_bytes())),
        };
        self.model_dir(&key.model).join(version).join(hex::encode(&name[..16]))
    }

    /// The length of the blob under `key` if written or checked since start;
    /// touches no file.
    pub(super) fn known_len(&self, key: &CacheKey) -> Option<u64> {
        self.held.lock().ok()?.get(key).copied()
    }

    /// The length of the blob under `key`, if there is one: written since
    /// start, or left by an earlier run and checked against its trailer now
    /// (a file that fails is removed).
    pub(super) fn len(&self, key: &CacheKey) -> Option<u64> {
        if let Some(&n) = self.held.lock().ok()?.get(key) {
            return Some(n);
        }
        let path = self.path(key);
        let n = match checked_len(&path) {
            Ok(n) => n?,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cache file failed its check; removed: {e}");
                let _ = std::fs::remove_file(&path);
                return None;
            }
        };
        self.held.lock().ok()?.insert(key.clone(), n);
        Some(n)
    }

    /// Bytes `range` of the blob under `key` (read, not mapped).
    pub(super) fn read(&self, key: &CacheKey, range: std::ops::Range<u64>) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let len = self.len(key).ok_or_else(|| std::io::Error::other("no such cache file"))?;
        if range.start > range.end || range.end > len {
            return Err(std::io::Error::other(format!("range {range:?} of a {len}-byte cache file")));
        }
        let file = crate::onnx::mmap::open_regular(&self.path(key))?;
        let mut out = vec![0u8; (range.end - range.start) as usize];
        file.read_exact_at(&mut out, range.start)?;
        Ok(out)
    }

    /// Writes `bytes` under `key`; `false` where the disk refused (full,
    /// read-only: memory serves then).
    pub(super) fn put(&self, key: &CacheKey, bytes: &[u8]) -> bool {
        let path = self.path(key);
        match write(&path, bytes) {
            Ok(()) => {
                if let Ok(mut held) = self.held.lock() {
                    held.insert(key.clone(), bytes.len() as u64);
                }
                true
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot write to the cache folder; keeping the blob in memory: {e}");
                false
            }
        }
    }

    /// Forgets the blobs of `model` other than `version`'s, and removes their
    /// files (a response reading one then ends with an error: it belonged to
    /// a version no longer served).
    pub(super) fn retire(&self, model: &str, version: &str) {
        if let Ok(mut held) = self.held.lock() {
            held.retain(|k, _| k.model != model || k.version == version);
        }
        for entry in std::fs::read_dir(self.model_dir(model)).into_iter().flatten().flatten() {
            if entry.file_name().to_str() != Some(version) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Bytes of the blobs known now.
    pub(super) fn held_bytes(&self) -> u64 {
        self.held.lock().map_or(0, |h| h.values().sum())
    }
}

/// The blob, its length and its CRC-32, beside `path` then renamed to it.
fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let (tmp, mut file) = tempfile_in(dir)?;
    let written = (|| {
        file.write_all(bytes)?;
        file.write_all(&(bytes.len() as u64).to_le_bytes())?;
        file.write_all(&crc32fast::hash(bytes).to_le_bytes())?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A new file in `dir` under a name no other writer uses.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(".tmp-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
    Ok((path, file))
}

/// The blob length of the file at `path` if its trailer matches; `Ok(None)`
/// when there is no file.
fn checked_len(path: &Path) -> std::io::Result<Option<u64>> {
    use std::io::Read;
    let file = match crate::onnx::mmap::open_regular(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let total = file.metadata()?.len();
    let len = total.checked_sub(TRAILER as u64).ok_or_else(|| std::io::Error::other("shorter than its trailer"))?;
    let mut crc = crc32fast::Hasher::new();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file.take(len));
    loop {
        let buf = std::io::BufRead::fill_buf(&mut reader)?;
        if buf.is_empty() {
            break;
        }
        crc.update(buf);
        let n = buf.len();
        std::io::BufRead::consume(&mut reader, n);
    }
    let mut trailer = [0u8; TRAILER];
    reader.into_inner().into_inner().read_exact(&mut trailer)?;
    let (stored_len, stored_crc) = trailer.split_at(8);
    let ok = u64::from_le_bytes(stored_len.try_into().unwrap_or_default()) == len
        && u32::from_le_bytes(stored_crc.try_into().unwrap_or_default()) == crc.finalize();
    if !ok {
        return Err(std::io::Error::other("its length or CRC-32 does not match its contents"));
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(version: &str, tensor: usize) -> CacheKey {
        CacheKey { model: "m".into(), version: version.into(), tensor, variant: "zstd-3".into() }
    }

    #[test]
    fn blobs_survive_a_restart_are_checked_and_retired_with_their_version() {
        let dir = tempfile::tempdir().unwrap();
        let blob: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let disk = Disk::open(dir.path()).unwrap();
        assert!(disk.put(&key("aa", 1), &blob));
        assert_eq!(disk.read(&key("aa", 1), 10..5000).unwrap(), &blob[10..5000]);
        assert!(disk.read(&key("aa", 1), 10..300_000).is_err(), "past the blob");
        assert!(disk.put(&key("bb", 1), &blob));
        // A new process finds them.
        let again = Disk::open(dir.path()).unwrap();
        assert_eq!(again.len(&key("aa", 1)), Some(blob.len() as u64));
        assert_eq!(again.read(&key("aa", 1), 0..blob.len() as u64).unwrap(), blob);
        assert!(again.len(&key("aa", 2)).is_none());
        // A damaged file is refused and removed.
        let path = again.path(&key("bb", 1));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(again.len(&key("bb", 1)).is_none());
        assert!(!path.exists());
        // Retiring keeps only the named version.
        again.put(&key("bb", 1), &blob);
        again.retire("m", "bb");
        assert!(!again.path(&key("aa", 1)).exists() && again.path(&key("bb", 1)).exists());
        assert_eq!(again.held_bytes(), blob.len() as u64);
    }
}
