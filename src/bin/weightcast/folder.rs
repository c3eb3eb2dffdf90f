//! Commands on the folder `pull --dest` keeps: `status` and `verify` (reading
//! it) and `rollback` and `retry` (a person's say over its versions).

use std::path::Path;

use weightcast::wire::signature::read_trusted_key;

/// `weightcast rollback --dest DIR [--exec CMD]`.
pub(crate) fn rollback(dest: &Path, exec: Option<&str>) -> Result<(), String> {
    let to = weightcast::updater::rollback(dest, exec).map_err(|e| e.to_string())?;
    say!("current is now {to}");
    Ok(())
}

/// `weightcast retry --dest DIR VERSION`.
pub(crate) fn retry(dest: &Path, version: &str) -> Result<(), String> {
    weightcast::updater::retry(dest, version).map_err(|e| e.to_string())?;
    say!("{version} may be installed again at the next round");
    Ok(())
}

/// `weightcast status --dest DIR [--json]`.
pub(crate) fn status(dest: &Path, json: bool) -> Result<(), String> {
    let status = weightcast::updater::status(dest).map_err(|e| e.to_string())?;
    match json {
        true => say!("{}", serde_json::to_string(&status).map_err(|e| e.to_string())?),
        false => say!("{}", status.to_string().trim_end()),
    }
    Ok(())
}

/// `weightcast verify --dest DIR [--trust KEY]`.
pub(crate) fn verify(dest: &Path, trust: &[String]) -> Result<(), String> {
    let keys = trust.iter().map(|t| read_trusted_key(t)).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    let v = weightcast::updater::verify(dest, &keys).map_err(|e| format!("{}: not verified: {e}", dest.display()))?;
    let signed = match &v.signed_by {
        Some(key) => {
            let expired = v.expires_at_ms <= weightcast::store::unix_ms();
            format!(
                "; signed by {key}{}",
                if expired { " (signature expired since: pull would refuse it now)" } else { "" }
            )
        }
        None => String::new(),
    };
    say!("verified: model {} version {}, {} tensors match{signed}", v.model, v.version, v.tensors);
    Ok(())
}
