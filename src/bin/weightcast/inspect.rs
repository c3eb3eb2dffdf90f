//! `weightcast inspect` and `weightcast diff`: a model's tensors, and what
//! changed between two versions.

use std::path::{Path, PathBuf};

use weightcast::onnx::OnnxModel;

/// A model file, or the `model.onnx` of a version folder (or of a pull
/// destination's `current`).
fn model_file(path: &Path) -> PathBuf {
    match (path.is_dir(), path.join("current").is_dir()) {
        (true, true) => path.join("current").join("model.onnx"),
        (true, false) => path.join("model.onnx"),
        _ => path.to_path_buf(),
    }
}

pub(crate) fn diff(a: &Path, b: &Path, json: bool) -> Result<(), String> {
    use weightcast::onnx::stats::{self, Change};
    let open = |p: &Path| {
        let file = model_file(p);
        OnnxModel::open(&file).map_err(|e| format!("{}: {e}", file.display()))
    };
    let (old, new) = (open(a)?, open(b)?);
    let diff = stats::diff(&old.tensors, &new.tensors);
    if json {
        say!("{}", weightcast::encode::inspect::diff(&diff));
        return Ok(());
    }
    for (name, c) in &diff.tensors {
        match c {
            Change::Values { max_abs, rel_l2 } => {
                say!("changed   {name}  max|Δ| {max_abs:.6e}  relative L2 {rel_l2:.6e}")
            }
            Change::Replaced => say!("replaced  {name}  (another dtype or shape)"),
            Change::Added => say!("added     {name}"),
            Change::Removed => say!("removed   {name}"),
        }
    }
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    say!("{}, {} unchanged", plural(diff.tensors.len(), "tensor differs", "tensors differ"), diff.unchanged);
    Ok(())
}

pub(crate) fn inspect(path: &Path) -> Result<(), String> {
    let path = &model_file(path);
    let model = OnnxModel::open(path).map_err(|e| match e {
        weightcast::onnx::OnnxError::Tensor { .. } => format!("{}: {e}", path.display()),
        other => other.to_string(),
    })?;
    print_tensors(&model);
    Ok(())
}

/// The table `inspect` prints; names with control characters are escaped,
/// so a hostile name cannot move the cursor or recolour the terminal.
fn print_tensors(model: &OnnxModel) {
    let printable = |name: &str| -> String {
        name.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
    };
    let names: Vec<String> = model.tensors.iter().map(|t| printable(&t.name)).collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(4).max(4);
    say!("{:<width$}  {:<14}  {:<20}  {:>12}  storage", "name", "dtype", "shape", "bytes");
    let mut total = 0;
    for (t, name) in model.tensors.iter().zip(&names) {
        let shape = format!("{:?}", t.dims);
        let storage =
            if t.constant { format!("{} (Constant)", t.storage.name()) } else { t.storage.name().to_string() };
        say!("{name:<width$}  {:<14}  {:<20}  {:>12}  {storage}", t.dtype.name(), shape, t.nbytes());
        total += t.nbytes();
    }
    say!("{} tensors, {total} bytes", model.tensors.len());
}
