//! A new version in a temporary folder: which tensors the device already
//! holds (each verified against its digest before reuse), room for the
//! rest, and the files written — an unchanged tensor is one read-only file
//! hard-linked into every version that holds it, so N versions cost one
//! model plus what changed. Hard links, not symlinks: ONNX Runtime 1.31
//! refuses external data that resolves outside the model's folder
//! ("External data path escapes model directory"), and opens hard-linked
//! files; the onnx Python package refuses them (it takes a second link for
//! an attack), so `onnx.load` needs `load_external_data=False` there.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use prost::Message;

use super::durable::write_synced;
use super::fetch::{hash_range, Fetched};
use super::layout::Dest;
use super::source::{Contents, Offer};
use super::{stfile, tensor_error, Options, Output, UpdateError};
use super::{ENGINE_CACHE_DIR, GRAPH_FILE, MANIFEST_FILE, SAFETENSORS_FILE};
use crate::wire::{self, proto::Manifest};

/// What the device already holds of a new version, verified.
#[derive(Default)]
pub(super) struct Reusable {
    /// ONNX output: a kept version's file holding each tensor's bytes.
    files: HashMap<String, PathBuf>,
    /// Safetensors output: the current file, and the tensors whose bytes
    /// in it match the manifest.
    safetensors: Option<(stfile::Current, HashSet<String>)>,
}

impl Reusable {
    fn holds(&self, name: &str) -> bool {
        self.files.contains_key(name) || self.safetensors.as_ref().is_some_and(|(_, names)| names.contains(name))
    }
}

/// Finds, for each held tensor, bytes a kept version already has (any
/// version, under any name, the current one first), hashing each candidate
/// before trusting it: a file that rotted on disk is fetched again, not
/// carried into the next version.
pub(super) async fn reusable(opts: &Options, dest: &Dest, manifest: &Manifest, held: &[(String, String)]) -> Reusable {
    let want: HashMap<String, (String, u64)> =
        manifest.tensors.iter().map(|t| (t.name.clone(), (t.sha256.clone(), t.nbytes))).collect();
    let held: Vec<String> = held.iter().map(|(n, _)| n.clone()).collect();
    let current = dest.current();
    if opts.output == Output::Safetensors {
        let Some(st) = current.and_then(|(_, dir)| stfile::Current::open(&dir.join(SAFETENSORS_FILE))) else {
            return Reusable::default();
        };
        return smol::unblock(move || {
            let names = held.into_iter().filter(|n| want.get(n).is_some_and(|w| st.matches(n, &w.0))).collect();
            Reusable { files: HashMap::new(), safetensors: Some((st, names)) }
        })
        .await;
    }
    let mut kept = dest.versions();
    let current = current.map(|c| c.0);
    kept.sort_by_key(|k| Some(&k.version) != current.as_ref());
    let mut by_digest: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for k in &kept {
        let Some(m) = fs::read(k.dir.join(MANIFEST_FILE)).ok().and_then(|b| Manifest::decode(b.as_slice()).ok()) else {
            continue;
        };
        for t in m.tensors {
            by_digest.entry(t.sha256).or_default().push(k.dir.join(wire::tensor_file(&t.name)));
        }
    }
    smol::unblock(move || {
        let mut checked: HashMap<PathBuf, bool> = HashMap::new();
        let mut files = HashMap::new();
        for name in held {
            let Some((digest, nbytes)) = want.get(&name) else { continue };
            let candidates = by_digest.get(digest).map(Vec::as_slice).unwrap_or_default();
            let found = candidates
                .iter()
                .find(|path| *checked.entry(path.to_path_buf()).or_insert_with(|| holds_bytes(path, digest, *nbytes)));
            if let Some(path) = found {
                files.insert(name, path.clone());
            }
        }
        Reusable { files, safetensors: None }
    })
    .await
}

/// Whether `path` is a regular file (not a link) of `nbytes` bytes whose
/// sha256 is `digest`.
fn holds_bytes(path: &Path, digest: &str, nbytes: u64) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else { return false };
    if !meta.is_file() || meta.len() != nbytes {
        return false;
    }
    use sha2::Digest;
    let same = hash_range(path, 0, None).is_ok_and(|h| hex::encode(h.finalize()) == digest);
    if !same {
        tracing::warn!(path = %path.display(), "a kept tensor file does not match its manifest's sha256 (changed on disk: bit rot, or an edit); fetching it again");
    }
    same
}

/// The held tensors to fetch (not held verified on the device), in
/// manifest order; the rest are reused.
pub(super) fn plan(
    manifest: &Manifest,
    held: &[(String, String)],
    reusable: &Reusable,
) -> Result<Vec<String>, UpdateError> {
    let listed: HashSet<&str> = manifest.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut needed = Vec::new();
    for (name, _) in held {
        if !listed.contains(name.as_str()) {
            return Err(tensor_error(name, "in the graph but not in the manifest"));
        }
        if !reusable.holds(name) {
            needed.push(name.clone());
        }
    }
    Ok(needed)
}

/// Refuses to start a version the disk cannot hold: the tensors fetched
/// (reused ones are links, free; a safetensors file is written whole), the
/// graph and the manifest.
pub(super) fn check_space(
    root: &Path,
    output: Output,
    offer: &Offer,
    contents: &Contents,
    needed: &[String],
) -> Result<(), UpdateError> {
    let new: HashSet<&str> = match output {
        Output::Onnx => needed.iter().map(String::as_str).collect(),
        Output::Safetensors => contents.held.iter().map(|(n, _)| n.as_str()).collect(),
    };
    let tensors: u64 = offer.manifest.tensors.iter().filter(|t| new.contains(t.name.as_str())).map(|t| t.nbytes).sum();
    let needed = tensors + offer.manifest.graph_bytes + offer.body.len() as u64;
    let stat = rustix::fs::statvfs(root).map_err(std::io::Error::from)?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    if free < needed {
        return Err(UpdateError::NoSpace { needed, free, dest: root.to_path_buf() });
    }
    Ok(())
}

/// The new version in a temporary folder beside the kept ones.
pub(super) fn write_version(
    dest: &Dest,
    offer: &Offer,
    contents: &Contents,
    fetched: &HashMap<String, Fetched>,
    reusable: &Reusable,
) -> Result<PathBuf, UpdateError> {
    let tmp = dest.temp_dir()?;
    let written = (|| -> std::io::Result<()> {
        match &contents.graph {
            Some(graph) => {
                write_synced(&tmp.join(GRAPH_FILE), graph)?;
                fs::create_dir(tmp.join(ENGINE_CACHE_DIR))?;
                if !contents.held.is_empty() {
                    fs::create_dir(tmp.join(wire::TENSOR_DIR))?;
                }
                for (name, location) in &contents.held {
                    let path = tmp.join(location);
                    match (fetched.get(name), reusable.files.get(name)) {
                        (Some(Fetched::Bytes(data)), _) => write_synced(&path, data)?,
                        (Some(Fetched::File(file)), _) => {
                            fs::rename(file, &path)?;
                            fs::File::open(&path)?.sync_all()?;
                        }
                        (None, Some(from)) if contents.linkable.contains(name) => link_or_copy(from, &path)?,
                        (None, Some(from)) => copy(from, &path)?,
                        (None, None) => {
                            return Err(std::io::Error::other(format!("tensor '{name}' neither fetched nor held")))
                        }
                    }
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o444))?;
                }
                if !contents.held.is_empty() {
                    fs::File::open(tmp.join(wire::TENSOR_DIR))?.sync_all()?;
                }
            }
            None => {
                let current = reusable.safetensors.as_ref().map(|(st, _)| st);
                stfile::write(&tmp.join(SAFETENSORS_FILE), &offer.manifest, &contents.held, fetched, current)?
            }
        }
        write_synced(&tmp.join(MANIFEST_FILE), &offer.body)
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e.into())
        }
    }
}

/// An unchanged tensor: a hard link of the verified file (no bytes written).
/// Where linking fails (a filesystem without hard links, or ext4's 65,000
/// links on one file), a copy, fsynced like a fetched file.
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    copy(from, to)
}

/// A copy of a verified file, fsynced like a fetched one.
fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::copy(from, to)?;
    fs::File::open(to)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_fetches_what_is_not_held_verified_and_reuses_the_rest() {
        let info = |name: &str| crate::wire::proto::TensorInfo { name: name.into(), ..Default::default() };
        let manifest = Manifest { tensors: vec![info("same"), info("changed"), info("new")], ..Default::default() };
        let held: Vec<(String, String)> =
            ["same", "changed", "new"].iter().map(|n| (n.to_string(), format!("tensors/{n}.bin"))).collect();
        let mut reusable = Reusable::default();
        reusable.files.insert("same".into(), PathBuf::from("/kept/tensors/same.bin"));
        assert_eq!(plan(&manifest, &held, &reusable).unwrap(), vec!["changed", "new"]);
        let stranger = vec![("stranger".to_string(), "tensors/stranger.bin".to_string())];
        assert!(plan(&manifest, &stranger, &reusable).is_err(), "a tensor the manifest does not list");
    }

    #[test]
    fn a_held_file_is_reused_only_if_its_bytes_match_the_digest() {
        use sha2::Digest;
        let dir = std::env::temp_dir().join(format!("wc-reuse-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (good, link) = (dir.join("good.bin"), dir.join("link.bin"));
        fs::write(&good, b"weights").unwrap();
        let digest = hex::encode(sha2::Sha256::digest(b"weights"));
        assert!(holds_bytes(&good, &digest, 7));
        assert!(!holds_bytes(&good, &digest, 8), "another length");
        fs::write(&good, b"weighty").unwrap();
        assert!(!holds_bytes(&good, &digest, 7), "a flipped byte");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(!holds_bytes(&link, &hex::encode(sha2::Sha256::digest(b"weighty")), 7), "a link is not followed");
        fs::remove_dir_all(&dir).unwrap();
    }
}
