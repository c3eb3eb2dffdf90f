//! The cache's disk tier: derived blobs of [`DISK_FROM`] bytes or more (zstd
//! frames of large tensors, casts, byte planes) are written once per version
//! into the cache folder and served from a map of that file. They cost page
//! cache the kernel can reclaim instead of anonymous memory, they survive a
//! restart, and a version's folder is removed once another version of the
//! model serves.
//!
//! Layout: `<dir>/<model digest>/<version>/<key digest>`, each file the blob
//! followed by its length (u64 LE) and CRC-32 (u32 LE), checked before a
//! file left by an earlier run is used. Files are written beside their name
//! and renamed into place, never changed in place: weightcast maps them, and
//! a file truncated under its map would crash the process (see
//! `onnx::mmap::map`). The folder is weightcast's own; nothing else may
//! write there.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::CacheKey;

/// Blobs at least this long go to disk; smaller ones stay in memory (a file
/// and a map per blob cost more than they save).
pub const DISK_FROM: usize = 64 << 10;

const TRAILER: usize = 12;

/// Blobs on disk, and the maps of those in use.
pub(super) struct Disk {
    dir: PathBuf,
    held: Mutex<HashMap<CacheKey, Bytes>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Disk {
    /// The tier in `dir` (created, private to this user).
    pub(super) fn open(dir: &Path) -> std::io::Result<Disk> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        Ok(Disk { dir: dir.to_path_buf(), held: Mutex::new(HashMap::new()) })
    }

    fn model_dir(&self, model: &str) -> PathBuf {
        self.dir.join(hex(&Sha256::digest(model.as_bytes())[..8]))
    }

    fn path(&self, key: &CacheKey) -> PathBuf {
        let name = Sha256::digest(format!("{}\0{}", key.tensor, key.variant).as_bytes());
        // A version is a hex digest; anything else is hashed to keep it a plain name.
        let version = match key.version.bytes().all(|b| b.is_ascii_hexdigit()) && !key.version.is_empty() {
            true => key.version.clone(),
            false => hex(&Sha256::digest(key.version.as_bytes())),
        };
        self.model_dir(&key.model).join(version).join(hex(&name[..16]))
    }

    /// The blob under `key`: mapped already, or left by an earlier run
    /// (checked against its trailer; a file that fails is removed).
    pub(super) fn get(&self, key: &CacheKey) -> Option<Bytes> {
        if let Some(b) = self.held.lock().ok()?.get(key) {
            return Some(b.clone());
        }
        let path = self.path(key);
        let blob = map_checked(&path);
        if blob.is_none() && path.exists() {
            tracing::warn!(path = %path.display(), "cache file failed its check; removed");
            let _ = std::fs::remove_file(&path);
        }
        let blob = blob?;
        self.held.lock().ok()?.insert(key.clone(), blob.clone());
        Some(blob)
    }

    /// Writes `bytes` under `key` and returns them mapped from the file, or
    /// `None` where the disk refused (full, read-only: memory serves then).
    pub(super) fn put(&self, key: &CacheKey, bytes: &[u8]) -> Option<Bytes> {
        let path = self.path(key);
        match write(&path, bytes).and_then(|()| map_checked(&path).ok_or_else(|| std::io::Error::other("unreadable"))) {
            Ok(blob) => {
                self.held.lock().ok()?.insert(key.clone(), blob.clone());
                Some(blob)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot write to the cache folder; keeping the blob in memory: {e}");
                None
            }
        }
    }

    /// Forgets the blobs of `model` other than `version`'s, and removes their
    /// files (a response still sending one keeps its map: unlinking a mapped
    /// file frees it only when the map goes).
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

    /// Bytes of blobs mapped now.
    pub(super) fn held_bytes(&self) -> u64 {
        self.held.lock().map_or(0, |h| h.values().map(|b| b.len() as u64).sum())
    }
}

/// The blob, its length and its CRC-32, beside `path` then renamed to it.
fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(bytes)?;
    tmp.1.write_all(&(bytes.len() as u64).to_le_bytes())?;
    tmp.1.write_all(&crc32fast::hash(bytes).to_le_bytes())?;
    std::fs::rename(&tmp.0, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp.0);
    })
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

/// The blob in the file at `path`, if its trailer matches.
fn map_checked(path: &Path) -> Option<Bytes> {
    let file = crate::onnx::mmap::open_regular(path).ok()?;
    // SAFETY: cache files are written beside their name and renamed into
    // place, never changed in place, in a folder only weightcast writes
    // (this module's contract, documented for operators in the README).
    let map = unsafe { crate::onnx::mmap::map(&file) }.ok()?;
    let len = map.len().checked_sub(TRAILER)?;
    let (stored_len, stored_crc) = map[len..].split_at(8);
    let ok = u64::from_le_bytes(stored_len.try_into().ok()?) == len as u64
        && u32::from_le_bytes(stored_crc.try_into().ok()?) == crc32fast::hash(&map[..len]);
    ok.then(|| map.slice(..len))
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
        let mapped = disk.put(&key("aa", 1), &blob).unwrap();
        assert_eq!(&mapped[..], &blob[..]);
        disk.put(&key("bb", 1), &blob).unwrap();
        // A new process finds them.
        let again = Disk::open(dir.path()).unwrap();
        assert_eq!(&again.get(&key("aa", 1)).unwrap()[..], &blob[..]);
        assert!(again.get(&key("aa", 2)).is_none());
        // A damaged file is refused and removed.
        let path = again.path(&key("bb", 1));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(again.get(&key("bb", 1)).is_none());
        assert!(!path.exists());
        // Retiring keeps only the named version.
        again.put(&key("bb", 1), &blob).unwrap();
        again.retire("m", "bb");
        assert!(!again.path(&key("aa", 1)).exists() && again.path(&key("bb", 1)).exists());
        assert_eq!(again.held_bytes(), blob.len() as u64);
    }
}
