//! Bearer tokens: who may read which models.
//!
//! The tokens file (`tokens_file` in the config) holds one grant per line,
//! `TOKEN MODELS`, where `MODELS` is `*` or model names separated by commas;
//! `#` starts a comment. Once a file is configured every route but
//! `/healthz` and `/readyz` needs a token: `401` without a valid one, `403`
//! for a model the token may not read. Only the sha256 of each token is kept,
//! and a presented token's digest is compared with every grant's in constant
//! time; tokens are never logged. The file is looked at again (by its inode,
//! size and modification time) at most once a second, so a change applies
//! without a restart; a file that no longer parses keeps the last good
//! grants, with an error in the log.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use http_types::StatusCode;

use super::error::ApiError;
use super::reloading::Reloading;

/// The models a token may read.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scope {
    All,
    Models(Vec<String>),
}

impl Scope {
    pub(super) fn may_read(&self, model: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Models(names) => names.iter().any(|n| n == model),
        }
    }
}

struct Grant {
    digest: [u8; 32],
    scope: Scope,
}

/// Why a request carries no usable token.
#[derive(Debug, PartialEq)]
pub(super) enum Refusal {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token no grant has.
    Invalid,
}

/// The grants of a tokens file, re-read when it changes.
pub struct Tokens(Reloading<Vec<Grant>>);

fn read(paths: &[PathBuf]) -> Result<Vec<Grant>, String> {
    let path = &paths[0];
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read tokens_file {}: {e}", path.display()))?;
    parse(&text, path)
}

fn parse(text: &str, path: &Path) -> Result<Vec<Grant>, String> {
    let mut grants = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (token, models) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{}:{}: expected `TOKEN MODELS` (MODELS: * or a,b,c)", path.display(), n + 1))?;
        if token.len() < 16 {
            return Err(format!("{}:{}: a token must have at least 16 characters", path.display(), n + 1));
        }
        let models = models.trim();
        let scope = match models {
            "*" => Scope::All,
            _ => Scope::Models(models.split(',').map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect()),
        };
        grants.push(Grant { digest: Sha256::digest(token.as_bytes()).into(), scope });
    }
    Ok(grants)
}

/// Equality of two digests in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The grants are digests, but nothing of them belongs in a log.
        f.debug_struct("Tokens").field("path", &self.0.paths()).finish_non_exhaustive()
    }
}

impl Tokens {
    /// Reads the grants at `path`; an unreadable or malformed file is an
    /// error at start.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        Reloading::load("tokens_file", vec![path.to_path_buf()], read).map(Tokens)
    }

    /// What the `Authorization` header's token may read.
    pub(super) fn scope(&self, authorization: Option<&str>) -> Result<Scope, Refusal> {
        let token = authorization
            .and_then(|h| h.trim().strip_prefix("Bearer ").or_else(|| h.trim().strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::Missing)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every grant is compared, whether or not an earlier one matched.
        let mut found = None;
        for grant in self.0.get().iter() {
            if same(&grant.digest, &digest) && found.is_none() {
                found = Some(grant.scope.clone());
            }
        }
        found.ok_or(Refusal::Invalid)
    }
}

/// What the request's token may read: everything where no tokens are
/// configured; else its grant, or the `401`.
pub(super) fn scope(state: &super::State, req: &http_types::Request) -> Result<Scope, ApiError> {
    match &state.tokens {
        None => Ok(Scope::All),
        Some(tokens) => tokens.scope(req.header("Authorization").map(|v| v.as_str())).map_err(unauthorized),
    }
}

/// The `403` unless `scope` may read `model`.
pub(super) fn may_read(scope: &Scope, model: &str) -> Result<(), ApiError> {
    match scope.may_read(model) {
        true => Ok(()),
        false => {
            Err(ApiError::new(StatusCode::Forbidden, "forbidden", format!("this token may not read model '{model}'")))
        }
    }
}

/// The `403` unless `scope` may read every model (`/metrics` names them all).
pub(super) fn may_read_all(scope: &Scope) -> Result<(), ApiError> {
    match scope {
        Scope::All => Ok(()),
        Scope::Models(_) => Err(ApiError::new(
            StatusCode::Forbidden,
            "forbidden",
            "/metrics names every model: it needs a token that may read them all (MODELS `*` in the tokens file)",
        )),
    }
}

/// The `401` of a request without a usable token, with its challenge.
fn unauthorized(refusal: Refusal) -> ApiError {
    let (detail, challenge) = match refusal {
        Refusal::Missing => {
            ("this server needs a token: send `Authorization: Bearer TOKEN`", r#"Bearer realm="weightcast""#)
        }
        Refusal::Invalid => (
            "the token is not valid here (expired, revoked or mistyped)",
            r#"Bearer realm="weightcast", error="invalid_token""#,
        ),
    };
    ApiError::new(StatusCode::Unauthorized, "unauthorized", detail).with_header("WWW-Authenticate", challenge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_scope_models_and_a_changed_file_applies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# fleet\nreader-token-0123456789 *\nedge-token-0123456789 detector, encoder\n").unwrap();
        let t = Tokens::load(&path).unwrap();
        assert_eq!(t.scope(Some("Bearer reader-token-0123456789")), Ok(Scope::All));
        let edge = t.scope(Some("Bearer edge-token-0123456789")).unwrap();
        assert!(edge.may_read("encoder") && !edge.may_read("other"));
        assert_eq!(t.scope(None), Err(Refusal::Missing));
        assert_eq!(t.scope(Some("Basic abc")), Err(Refusal::Missing));
        assert_eq!(t.scope(Some("Bearer wrong-token-0123456789")), Err(Refusal::Invalid));
        std::fs::write(&path, "new-token-0123456789xyz detector\n").unwrap();
        std::thread::sleep(super::super::reloading::LOOK_EVERY + std::time::Duration::from_millis(50));
        assert_eq!(t.scope(Some("Bearer reader-token-0123456789")), Err(Refusal::Invalid));
        assert!(t.scope(Some("Bearer new-token-0123456789xyz")).is_ok());
        std::fs::write(&path, "short *\n").unwrap();
        std::thread::sleep(super::super::reloading::LOOK_EVERY + std::time::Duration::from_millis(50));
        assert!(t.scope(Some("Bearer new-token-0123456789xyz")).is_ok(), "a bad file keeps the last good grants");
        assert!(Tokens::load(&path).unwrap_err().contains("at least 16"));
    }
}
