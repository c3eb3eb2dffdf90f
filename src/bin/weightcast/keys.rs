//! `weightcast keygen`: a new signing key pair.

use std::path::Path;

/// `weightcast keygen PREFIX`: PREFIX.key (0600, created new: an existing
/// key is never overwritten) and PREFIX.pub.
pub(crate) fn keygen(prefix: &Path) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use weightcast::wire::signature;
    if prefix.is_dir() || prefix.as_os_str().to_string_lossy().ends_with('/') {
        let dir = prefix.display().to_string();
        let dir = dir.trim_end_matches('/');
        return Err(format!(
            "{dir}/ is a folder; give the two files' path prefix, e.g. {dir}/hub (writes {dir}/hub.key and {dir}/hub.pub)"
        ));
    }
    let key = signature::generate().map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let with = |ext: &str| std::path::PathBuf::from(format!("{}.{ext}", prefix.display()));
    let (secret, public) = (with("key"), with("pub"));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .and_then(|mut f| f.write_all(signature::secret_key_text(&key).as_bytes()))
        .map_err(|e| format!("cannot create {}: {e} (an existing key is not overwritten)", secret.display()))?;
    std::fs::write(&public, signature::public_key_text(&key.verifying_key()))
        .map_err(|e| format!("cannot write {}: {e}", public.display()))?;
    say!("secret key: {} (the hub's signing_key; keep it private)", secret.display());
    say!("public key: {} (weightcast pull --trust {})", public.display(), public.display());
    Ok(())
}
