//! The cache's disk tier: derived blobs of [`DISK_FROM`] bytes or more (zstd
//! frames of large tensors, casts, byte planes) are written once per version
//! into the cache folder and read back a range at a time when sent. They cost
//! page cache the kernel can reclaim, not anonymous memory and not resident
//! pages of the process (they are read, not mapped), they survive a restart,
//! and a version's folder is removed once another version of the model
//! serves.
//!
//! The folder holds at most its budget (`cache_dir_bytes`) at every moment:
//! space is reserved before a file is written, least recently used files are
//! removed to make it, and a blob larger than the budget is not written (it
//! is kept in memory, within the memory budget, or computed again). Before,
//! distinct `names=` selections from 8 clients grew the folder by 849 MiB in
//! 3.3 s. Files an earlier run left are counted at start (and the folder
//! brought within its budget), so a restart cannot lift the bound.
//!
//! Layout: `<dir>/<model digest>/<version>/<key digest>`, each file the blob
//! followed by its length (u64 LE) and CRC-32 (u32 LE), checked before a
//! file left by an earlier run is used. Files are written beside their name
//! and renamed into place. A file changed or removed by someone else while
//! served gives an error for that response (never a crash): the folder is
//! weightcast's own.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::CacheKey;

/// Blobs at least this long go to disk; smaller ones stay in memory (a file
/// and a map per blob cost more than they save).
pub const DISK_FROM: usize = 64 << 10;

const TRAILER: usize = 12;

/// The default budget of a cache folder: a tenth of its filesystem, at most
/// 16 GiB (a Jetson's 32 GB eMMC gets 3.2 GB; a hub's 1 TB disk 16 GiB).
pub fn default_budget(dir: &Path) -> u64 {
    let probe = dir.ancestors().find(|d| d.exists()).unwrap_or(Path::new("/"));
    let size = rustix::fs::statvfs(probe).map_or(0, |s| s.f_blocks.saturating_mul(s.f_frsize));
    (size / 10).clamp(256 << 20, 16 << 30)
}

/// One file of the folder: its size, when it was last used (the tier's own
/// clock, not the wall's), and the blob it holds once known (so an eviction
/// forgets it without hashing every known key's path).
#[derive(Clone)]
struct Usage {
    size: u64,
    used: u64,
    key: Option<CacheKey>,
}

/// What the folder holds, counted.
#[derive(Default)]
struct Tier {
    /// Blob lengths known (written or checked since start).
    held: HashMap<CacheKey, u64>,
    /// Every file, written, reserved or found at start.
    files: HashMap<PathBuf, Usage>,
    /// The same files by last use, oldest first.
    order: BTreeMap<u64, PathBuf>,
    /// Their sizes' sum.
    bytes: u64,
    clock: u64,
}

impl Tier {
    fn touch(&mut self, path: &Path) {
        self.clock += 1;
        let now = self.clock;
        if let Some(u) = self.files.get_mut(path) {
            self.order.remove(&u.used);
            u.used = now;
            self.order.insert(now, path.to_path_buf());
        }
    }

    fn add(&mut self, path: PathBuf, size: u64) {
        self.forget(&path);
        self.clock += 1;
        self.files.insert(path.clone(), Usage { size, used: self.clock, key: None });
        self.order.insert(self.clock, path);
        self.bytes += size;
    }

    fn forget(&mut self, path: &Path) -> Option<Usage> {
        let u = self.files.remove(path)?;
        self.order.remove(&u.used);
        self.bytes -= u.size;
        if let Some(key) = &u.key {
            self.held.remove(key);
        }
        Some(u)
    }

    /// Knows `key`'s blob, `len` bytes, in the file at `path`.
    fn hold(&mut self, key: &CacheKey, path: &Path, len: u64) {
        self.held.insert(key.clone(), len);
        if let Some(u) = self.files.get_mut(path) {
            u.key = Some(key.clone());
        }
    }
}

/// Blobs on disk, within a byte budget.
pub(super) struct Disk {
    dir: PathBuf,
    budget: u64,
    tier: Mutex<Tier>,
    evictions: AtomicU64,
    /// When a failed write was last logged, and how many since (one line a
    /// minute: on a full disk every response would warn).
    warned: Mutex<(Option<Instant>, u64)>,
}

impl Disk {
    /// The tier in `dir` (created, private to this user), holding at most
    /// `budget` bytes; files an earlier run left are counted (the least
    /// recently modified removed beyond the budget), its unfinished ones removed.
    pub(super) fn open(dir: &Path, budget: u64) -> std::io::Result<Disk> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let disk = Disk {
            dir: dir.to_path_buf(),
            budget,
            tier: Mutex::new(Tier::default()),
            evictions: AtomicU64::new(0),
            warned: Mutex::new((None, 0)),
        };
        let mut found = Vec::new();
        collect(dir, 0, &mut found);
        found.sort_by_key(|(_, _, modified)| *modified);
        if let Ok(mut tier) = disk.tier.lock() {
            for (path, size, _) in found {
                tier.add(path, size);
            }
            disk.make_room(&mut tier, 0);
        }
        Ok(disk)
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

    /// Removes the least recently used files until `more` bytes fit.
    fn make_room(&self, tier: &mut Tier, more: u64) {
        while tier.bytes + more > self.budget {
            let Some((_, oldest)) = tier.order.first_key_value().map(|(u, p)| (*u, p.clone())) else { break };
            tier.forget(&oldest);
            let _ = std::fs::remove_file(&oldest);
            self.evictions.fetch_add(1, Relaxed);
        }
    }

    /// The length of the blob under `key` if written or checked since start;
    /// touches no file.
    pub(super) fn known_len(&self, key: &CacheKey) -> Option<u64> {
        self.tier.lock().ok()?.held.get(key).copied()
    }

    /// The length of the blob under `key`, if there is one: written since
    /// start, or left by an earlier run and checked against its trailer now
    /// (a file that fails is removed). Marks it used.
    pub(super) fn len(&self, key: &CacheKey) -> Option<u64> {
        let path = self.path(key);
        {
            let mut tier = self.tier.lock().ok()?;
            if let Some(&n) = tier.held.get(key) {
                tier.touch(&path);
                return Some(n);
            }
        }
        let n = match checked_len(&path) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cache file failed its check; removed: {e}");
                let _ = std::fs::remove_file(&path);
                if let Ok(mut tier) = self.tier.lock() {
                    tier.forget(&path);
                }
                return None;
            }
        };
        let mut tier = self.tier.lock().ok()?;
        match n {
            // Counted at start (or evicted since: then it is gone).
            Some(n) if tier.files.contains_key(&path) => {
                tier.hold(key, &path, n);
                tier.touch(&path);
                Some(n)
            }
            _ => None,
        }
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

    /// Writes `bytes` under `key` within the budget; `false` where it does
    /// not fit the budget or the disk refused (full, read-only: memory
    /// serves then, within its own budget).
    pub(super) fn put(&self, key: &CacheKey, bytes: &[u8]) -> bool {
        let path = self.path(key);
        let size = (bytes.len() + TRAILER) as u64;
        if size > self.budget {
            return false;
        }
        {
            let Ok(mut tier) = self.tier.lock() else { return false };
            tier.forget(&path);
            tier.held.remove(key);
            self.make_room(&mut tier, size);
            // Reserved before the write: writers at once cannot pass the budget.
            tier.add(path.clone(), size);
        }
        let written = write(&path, bytes);
        let Ok(mut tier) = self.tier.lock() else { return false };
        match written {
            Ok(()) => {
                tier.hold(key, &path, bytes.len() as u64);
                true
            }
            Err(e) => {
                tier.forget(&path);
                drop(tier);
                self.warn(&path, &e);
                false
            }
        }
    }

    fn warn(&self, path: &Path, e: &std::io::Error) {
        let Ok(mut warned) = self.warned.lock() else { return };
        warned.1 += 1;
        if warned.0.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
            return;
        }
        let failures = std::mem::take(&mut warned.1);
        warned.0 = Some(Instant::now());
        tracing::warn!(path = %path.display(), failures, "cannot write to the cache folder (logged once a minute); keeping blobs in memory: {e}");
    }

    /// Forgets the blobs of `model` other than `version`'s, and removes their
    /// files (a response reading one then ends with an error: it belonged to
    /// a version no longer served).
    pub(super) fn retire(&self, model: &str, version: &str) {
        let model_dir = self.model_dir(model);
        let keep = model_dir.join(version);
        if let Ok(mut tier) = self.tier.lock() {
            tier.held.retain(|k, _| k.model != model || k.version == version);
            let gone: Vec<PathBuf> =
                tier.files.keys().filter(|p| p.starts_with(&model_dir) && !p.starts_with(&keep)).cloned().collect();
            for path in gone {
                tier.forget(&path);
            }
        }
        for entry in std::fs::read_dir(&model_dir).into_iter().flatten().flatten() {
            if entry.file_name().to_str() != Some(version) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Bytes of the folder's files now (written, being written, or left by
    /// an earlier run).
    pub(super) fn held_bytes(&self) -> u64 {
        self.tier.lock().map_or(0, |t| t.bytes)
    }

    /// Files removed to keep the budget, since start.
    pub(super) fn evictions(&self) -> u64 {
        self.evictions.load(Relaxed)
    }
}

/// The cache files under `dir` (`<model>/<version>/<blob>`), with their
/// sizes and modification times; unfinished ones (`.tmp-*`, a crash's) are
/// removed.
fn collect(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, u64, std::time::SystemTime)>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let path = entry.path();
        if meta.is_dir() && depth < 2 {
            collect(&path, depth + 1, out);
        } else if meta.is_file() && entry.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_file(&path);
        } else if meta.is_file() {
            out.push((path, meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH)));
        }
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
        let disk = Disk::open(dir.path(), u64::MAX).unwrap();
        assert!(disk.put(&key("aa", 1), &blob));
        assert_eq!(disk.read(&key("aa", 1), 10..5000).unwrap(), &blob[10..5000]);
        assert!(disk.read(&key("aa", 1), 10..300_000).is_err(), "past the blob");
        assert!(disk.put(&key("bb", 1), &blob));
        // A new process finds them.
        let again = Disk::open(dir.path(), u64::MAX).unwrap();
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
        assert_eq!(again.held_bytes(), (blob.len() + TRAILER) as u64, "files are counted with their trailers");
    }

    #[test]
    fn the_folder_never_holds_more_than_its_budget_and_the_least_recently_used_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let blob = vec![3u8; 100_000];
        let size = (blob.len() + TRAILER) as u64;
        let disk = Disk::open(dir.path(), 3 * size).unwrap();
        for i in 0..3 {
            assert!(disk.put(&key("aa", i), &blob));
        }
        assert!(disk.len(&key("aa", 0)).is_some(), "used: now the most recent");
        assert!(disk.put(&key("aa", 3), &blob));
        assert!(disk.held_bytes() <= 3 * size && disk.evictions() == 1);
        assert!(disk.len(&key("aa", 1)).is_none(), "the least recently used went");
        assert!(disk.len(&key("aa", 0)).is_some() && disk.len(&key("aa", 3)).is_some());
        assert!(!disk.put(&key("aa", 9), &vec![0u8; 4 * size as usize]), "larger than the budget: not written");
        let on_disk: u64 = walk(dir.path());
        assert!(on_disk <= 3 * size, "{on_disk} bytes in the folder");
        // A restart with a smaller budget brings the folder within it.
        let again = Disk::open(dir.path(), size).unwrap();
        assert!(again.held_bytes() <= size && walk(dir.path()) <= size);
    }

    fn walk(dir: &Path) -> u64 {
        let mut found = Vec::new();
        collect(dir, 0, &mut found);
        found.iter().map(|(_, n, _)| n).sum()
    }
}
