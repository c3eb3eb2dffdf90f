//! Finding libonnxruntime: the explicit choices (flag, `ORT_DYLIB_PATH`,
//! config), the project's `.ort/`, the system's library folders, then an
//! installed Python `onnxruntime`.

use std::path::{Path, PathBuf};

use super::RuntimeError;

/// Where to look for the library, besides the built-in places.
#[derive(Debug, Clone, Default)]
pub struct LibrarySearch {
    /// `--ort-lib`
    pub flag: Option<PathBuf>,
    /// `[runtime] ort_lib`
    pub config: Option<PathBuf>,
}

/// Finds libonnxruntime: the flag, `ORT_DYLIB_PATH`, the config, the
/// project-local `.ort/<arch>/` (next to the binary or in the working
/// directory or its parents), the system's library folders, then an
/// installed Python `onnxruntime`.
pub fn find_library(search: &LibrarySearch) -> Result<PathBuf, RuntimeError> {
    let mut searched = Vec::new();
    let mut candidates: Vec<(String, PathBuf)> = Vec::new();
    if let Some(p) = &search.flag {
        candidates.push(("--ort-lib".into(), p.clone()));
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        candidates.push(("ORT_DYLIB_PATH".into(), PathBuf::from(p)));
    }
    if let Some(p) = &search.config {
        candidates.push(("config ort_lib".into(), p.clone()));
    }
    // The first explicit choice wins; a wrong one is an error, not a reason to guess.
    if let Some((what, path)) = candidates.first() {
        if path.is_file() {
            return Ok(path.clone());
        }
        return Err(RuntimeError::Load {
            path: path.clone(),
            message: format!("{what} names a file that does not exist"),
        });
    }
    let local = Path::new(".ort").join(std::env::consts::ARCH).join("libonnxruntime.so");
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        roots.push(exe_dir.join("lib"));
        roots.extend(exe_dir.ancestors().map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    for root in &roots {
        for path in [root.join(&local), root.join("libonnxruntime.so")] {
            if path.is_file() {
                return Ok(path);
            }
        }
    }
    searched.push("--ort-lib, ORT_DYLIB_PATH, [runtime] ort_lib (none set)".to_string());
    searched.push(format!("{} next to the binary and in the working directory and its parents", local.display()));
    // Where system packages put it: a distribution's or JetPack's multiarch
    // folder, /usr/local (a source build), /opt/onnxruntime (NVIDIA's and
    // Microsoft's release archives, unpacked).
    let multiarch = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    for dir in [multiarch.as_str(), "/usr/local/lib", "/opt/onnxruntime/lib"] {
        let path = Path::new(dir).join("libonnxruntime.so");
        if path.is_file() {
            return Ok(path);
        }
    }
    searched.push(format!("{multiarch}, /usr/local/lib, /opt/onnxruntime/lib"));
    if let Some(p) = python_onnxruntime() {
        return Ok(p);
    }
    searched.push("python3's onnxruntime package".to_string());
    Err(RuntimeError::NotFound { searched })
}

fn python_onnxruntime() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    let mut libs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .collect();
    libs.sort();
    libs.pop()
}
