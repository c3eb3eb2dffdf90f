//! The versions a rollout needs, kept in the state folder: while a new file
//! is rolled out the version before it is still offered, and the file
//! holding it is gone. Each is kept as a device keeps it — the hub's
//! `/graph` as `model.onnx`, each external tensor in its own file under
//! `tensors/`, and `published.json` — written to a temporary folder and
//! renamed into place, so a restart finds whole versions only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::{Cache, Model, ModelSpec};

/// `STATE_DIR/versions/<model>/<version>/`.
pub(crate) fn folder(state_dir: &Path, model: &str, version: &str) -> PathBuf {
    state_dir.join("versions").join(model).join(version)
}

/// Writes `model`'s version to the state folder (once: a version already
/// there is left as it is).
pub(crate) fn keep(state_dir: &Path, model: &Model) -> std::io::Result<()> {
    let dir = folder(state_dir, &model.name, model.version());
    if dir.join("published.json").exists() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(state_dir);
    std::fs::create_dir_all(parent)?;
    // A leftover of a write cut short (a power cut) is thrown away first.
    let tmp = parent.join(format!(".tmp-{}", model.version()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp)?;
    std::fs::write(tmp.join("model.onnx"), model.graph())?;
    let parts = crate::onnx::graph_parts(model.graph().clone())
        .map_err(|e| std::io::Error::other(format!("its /graph does not read back: {e}")))?;
    for (name, location) in parts.external {
        let index = model.position(&name).ok_or_else(|| std::io::Error::other(format!("no tensor '{name}'")))?;
        let path = tmp.join(&location);
        std::fs::create_dir_all(path.parent().unwrap_or(&tmp))?;
        std::fs::write(&path, model.data(index, None).bytes())?;
    }
    let published = serde_json::json!({"version": model.version(), "published_at_ms": model.published_at_ms});
    std::fs::write(tmp.join("published.json"), published.to_string())?;
    for entry in walk(&tmp)? {
        std::fs::File::open(entry)?.sync_all()?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    std::fs::File::open(parent)?.sync_all()
}

fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        }
        out.push(path);
    }
    Ok(out)
}

/// Loads a kept version (without an ONNX Runtime session: it is only
/// served), with the publication time it first had. Refused unless it
/// reads back as the same version.
pub(crate) fn load(state_dir: &Path, name: &str, version: &str, cache: Arc<Cache>) -> Result<Model, String> {
    let dir = folder(state_dir, name, version);
    let published: serde_json::Value = std::fs::read(dir.join("published.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("{} holds no whole version", dir.display()))?;
    let spec = ModelSpec { name: name.to_string(), path: dir.join("model.onnx") };
    let mut model = crate::store::load(&spec, None, cache).map_err(|e| e.to_string())?;
    if model.version() != version {
        return Err(format!("{} reads back as version {}, not {version}", dir.display(), model.version()));
    }
    model.published_at_ms = published["published_at_ms"].as_u64().unwrap_or(model.published_at_ms);
    Ok(model)
}

/// Removes the kept versions of `name` other than `keep`.
pub(crate) fn prune(state_dir: &Path, name: &str, keep: &[&str]) {
    let Ok(entries) = std::fs::read_dir(state_dir.join("versions").join(name)) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let version = file_name.to_string_lossy();
        if !keep.contains(&version.as_ref()) || version.starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
