//! External tensor data: files next to the model, memory-mapped once each.
//!
//! A `location` must be a relative path that stays inside the model's folder
//! (after resolving symlinks); anything else is refused, because a model file
//! must not be able to make the server read arbitrary files.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;

use super::proto::TensorProto;
use super::OnnxError;

pub(super) struct ExternalFiles {
    dir: PathBuf,
    maps: HashMap<PathBuf, Bytes>,
    /// Files given in memory, by location (the fuzz target's: no disk, so
    /// the reads of offsets and lengths are explored at thousands of inputs
    /// a second); `None`: read `dir`.
    given: Option<HashMap<String, Bytes>>,
}

impl ExternalFiles {
    /// The files read so far.
    pub(super) fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.maps.keys().cloned().collect();
        files.sort();
        files
    }

    pub(super) fn new(dir: &Path) -> ExternalFiles {
        ExternalFiles { dir: dir.to_path_buf(), maps: HashMap::new(), given: None }
    }

    /// External data from `files` (location → bytes), nothing from disk.
    pub(super) fn in_memory(files: HashMap<String, Bytes>) -> ExternalFiles {
        ExternalFiles { dir: PathBuf::new(), maps: HashMap::new(), given: Some(files) }
    }

    /// The bytes `t`'s `external_data` entries point at.
    pub(super) fn read(&mut self, t: &TensorProto, name: &str) -> Result<Bytes, OnnxError> {
        let bad = |p: String| OnnxError::tensor(name, p);
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for entry in &t.external_data {
            match entry.key() {
                "location" => location = Some(entry.value()),
                "offset" => {
                    offset = entry
                        .value()
                        .parse()
                        .map_err(|_| bad(format!("external data offset '{}' is not a number", entry.value())))?
                }
                "length" => {
                    length = Some(
                        entry
                            .value()
                            .parse::<u64>()
                            .map_err(|_| bad(format!("external data length '{}' is not a number", entry.value())))?,
                    )
                }
                _ => {} // "checksum" and future keys do not change where the bytes are.
            }
        }
        let location = location.ok_or_else(|| bad("external data without a location".into()))?;
        let file = self.map(location).map_err(bad)?;
        let end = match length {
            Some(len) => offset.checked_add(len),
            None => Some(file.len() as u64),
        };
        match end {
            Some(end) if offset <= end && end <= file.len() as u64 => Ok(file.slice(offset as usize..end as usize)),
            _ => Err(bad(format!(
                "external data [offset {offset}, length {}] is outside '{location}' ({} bytes)",
                length.map_or("to end".into(), |l| l.to_string()),
                file.len()
            ))),
        }
    }

    fn map(&mut self, location: &str) -> Result<Bytes, String> {
        if let Some(files) = &self.given {
            plain(location)?;
            let bytes = files.get(location).ok_or_else(|| format!("cannot open external data '{location}'"))?;
            self.maps.insert(PathBuf::from(location), bytes.clone());
            return Ok(bytes.clone());
        }
        let path = confined(&self.dir, location)?;
        if let Some(b) = self.maps.get(&path) {
            return Ok(b.clone());
        }
        let file =
            super::mmap::open_regular(&path).map_err(|e| format!("cannot open external data '{location}': {e}"))?;
        let private = super::mmap::snapshot(&file, &self.dir)
            .map_err(|e| format!("cannot snapshot external data '{location}': {e}"))?;
        // SAFETY: `private` is an unnamed file only this process holds.
        let bytes =
            unsafe { super::mmap::map(&private) }.map_err(|e| format!("cannot map external data '{location}': {e}"))?;
        self.maps.insert(path, bytes.clone());
        Ok(bytes)
    }
}

/// `location` joined to `dir`, if it names a file inside `dir`.
fn confined(dir: &Path, location: &str) -> Result<PathBuf, String> {
    plain(location)?;
    let rel = Path::new(location);
    let base = dir_or_cwd(dir).canonicalize().map_err(|e| format!("cannot resolve the model's folder: {e}"))?;
    let path = base.join(rel).canonicalize().map_err(|e| format!("cannot open external data '{location}': {e}"))?;
    if !path.starts_with(&base) {
        return Err(format!("external data location '{location}' leaves the model's folder (through a symlink)"));
    }
    Ok(path)
}

/// `location` is a relative path of plain names (no `..`, no root).
fn plain(location: &str) -> Result<(), String> {
    let plain = Path::new(location).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    match !location.is_empty() && plain {
        true => Ok(()),
        false => Err(format!("external data location '{location}' must be a relative path inside the model's folder")),
    }
}

fn dir_or_cwd(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_locations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), b"1234").unwrap();
        assert!(confined(dir.path(), "w.bin").is_ok());
        for bad in ["../w.bin", "/etc/passwd", "a/../../w.bin", ""] {
            let e = confined(dir.path(), bad).unwrap_err();
            assert!(e.contains("inside the model's folder"), "{bad}: {e}");
        }
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link")).unwrap();
        assert!(confined(dir.path(), "link").unwrap_err().contains("leaves the model's folder"));
    }
}
