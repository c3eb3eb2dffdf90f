//! Signed manifests: what a hub signs, how a device checks it, and the key
//! files `weightcast keygen` writes.
//!
//! The signature is Ed25519 over canonical bytes ([`signed_bytes`]) that
//! name the model, the version, the publication time and the expiry. The
//! version is itself a sha256 commitment to the graph and to every tensor's
//! name, dtype, dims and digest (`wire::version`), which the device
//! recomputes from the manifest before it trusts any of it — so the
//! signature covers every byte a device applies, through the version.
//! `proto/README.md` ("Signed manifests") is the same in prose.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::proto::Manifest;

/// What a signature starts with, so it cannot be taken for one over
/// anything else.
const DOMAIN: &[u8] = b"weightcast.v1 manifest signature\0";

/// The bytes a manifest's signature covers: the domain, then the model name
/// and the version (each a u32 LE length and UTF-8), then `published_at_ms`
/// and `expires_at_ms` (u64 LE).
pub fn signed_bytes(model: &str, version: &str, published_at_ms: u64, expires_at_ms: u64) -> Vec<u8> {
    let mut out = DOMAIN.to_vec();
    for field in [model, version] {
        out.extend((field.len() as u32).to_le_bytes());
        out.extend(field.as_bytes());
    }
    out.extend(published_at_ms.to_le_bytes());
    out.extend(expires_at_ms.to_le_bytes());
    out
}

/// Signs `m` (model, version and its two times must be set): fills
/// `signature` and `signing_key`.
pub fn sign(m: &mut Manifest, key: &SigningKey) {
    let bytes = signed_bytes(&m.model, &m.version, m.published_at_ms, m.expires_at_ms);
    m.signature = key.sign(&bytes).to_bytes().to_vec().into();
    m.signing_key = key.verifying_key().to_bytes().to_vec().into();
}

/// Why a device refuses a manifest's signature.
#[derive(Debug, thiserror::Error, PartialEq)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum SignatureError {
    #[error("the manifest is not signed (does the hub have a signing_key in its config?)")]
    Unsigned,
    #[error("the manifest is signed by key {key}, which is not among the trusted keys (--trust)")]
    UnknownKey { key: String },
    #[error("the manifest's signature does not verify: it was altered after signing, or forged")]
    Invalid,
    #[error("the manifest's signature expired at {expired_at_ms} (Unix ms; now {now_ms}): the hub has not re-signed it (is it, or a mirror, frozen on an old version?)")]
    Expired { expired_at_ms: u64, now_ms: u64 },
    #[error("the manifest was published at {published_at_ms} (Unix ms), before the version this device holds ({held_ms}): a rollback")]
    Older { published_at_ms: u64, held_ms: u64 },
}

/// Checks `m`'s signature against `trusted` keys, its expiry against
/// `now_ms`, and its publication time against `held_ms` (that of the version
/// the device holds, if any).
pub fn check(m: &Manifest, trusted: &[VerifyingKey], now_ms: u64, held_ms: Option<u64>) -> Result<(), SignatureError> {
    if m.signature.is_empty() || m.signing_key.is_empty() {
        return Err(SignatureError::Unsigned);
    }
    let key = trusted
        .iter()
        .find(|k| k.as_bytes()[..] == m.signing_key[..])
        .ok_or_else(|| SignatureError::UnknownKey { key: hex::encode(&m.signing_key) })?;
    let signature = Signature::from_slice(&m.signature).map_err(|_| SignatureError::Invalid)?;
    let bytes = signed_bytes(&m.model, &m.version, m.published_at_ms, m.expires_at_ms);
    key.verify_strict(&bytes, &signature).map_err(|_| SignatureError::Invalid)?;
    if m.expires_at_ms <= now_ms {
        return Err(SignatureError::Expired { expired_at_ms: m.expires_at_ms, now_ms });
    }
    if let Some(held_ms) = held_ms.filter(|&h| m.published_at_ms < h) {
        return Err(SignatureError::Older { published_at_ms: m.published_at_ms, held_ms });
    }
    Ok(())
}

/// The text of a secret key file: the 32-byte seed in hex, one line.
pub fn secret_key_text(key: &SigningKey) -> String {
    format!("{}\n", hex::encode(key.to_bytes()))
}

/// The text of a public key file: the 32-byte key in hex, one line (what
/// `pull --trust` takes, as the file or as the text).
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!("{}\n", hex::encode(key.to_bytes()))
}

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum KeyError {
    #[error("{what}: not a key (expected 64 hex digits, as `weightcast keygen` writes)")]
    Malformed { what: String },
    #[error("{what}: not a valid Ed25519 public key")]
    Invalid { what: String },
    #[error("{path} is a public key (keygen's .pub); signing needs the secret key: {secret}")]
    PublicAsSecret { path: String, secret: String },
    #[error(
        "--trust {path} is a secret key (keygen's .key): it stays on the hub; devices trust the public key: {public}"
    )]
    SecretAsPublic { path: String, public: String },
    #[error("cannot read signing_key {path}: {source}")]
    Unreadable { path: String, source: std::io::Error },
    #[error("--trust {arg}: cannot read it as a file ({source}), and it is not 64 hex digits")]
    NeitherFileNorKey { arg: String, source: std::io::Error },
}

/// The hub's secret key, from the file the config names.
///
/// Both key files hold 64 hex digits, so the files `keygen` names tell them
/// apart: a `.pub` given as the secret key is refused (signing with it would
/// make every device refuse the manifests). A key file others may read is
/// warned about.
pub fn read_secret_key(path: &std::path::Path) -> Result<SigningKey, KeyError> {
    use std::os::unix::fs::PermissionsExt;
    if path.extension().is_some_and(|e| e == "pub") {
        let secret = path.with_extension("key").display().to_string();
        return Err(KeyError::PublicAsSecret { path: path.display().to_string(), secret });
    }
    let unreadable = |source| KeyError::Unreadable { path: path.display().to_string(), source };
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
        tracing::warn!(path = %path.display(), "the signing key is readable by other users; chmod 600 it");
    }
    parse_secret(&text, &path.display().to_string())
}

/// A trusted public key (`--trust`): a `.pub` file's contents, or the hex itself.
pub fn read_trusted_key(arg: &str) -> Result<VerifyingKey, KeyError> {
    if let Some(prefix) = arg.strip_suffix(".key") {
        return Err(KeyError::SecretAsPublic { path: arg.to_string(), public: format!("{prefix}.pub") });
    }
    let text = match std::fs::read_to_string(arg) {
        Ok(text) => text,
        Err(_) if arg.len() == 64 => arg.to_string(),
        Err(source) => return Err(KeyError::NeitherFileNorKey { arg: arg.to_string(), source }),
    };
    parse_public(&text, &format!("--trust {arg}"))
}

fn key_bytes(text: &str, what: &str) -> Result<[u8; 32], KeyError> {
    let malformed = || KeyError::Malformed { what: what.to_string() };
    hex::decode(text.trim()).map_err(|_| malformed())?.try_into().map_err(|_| malformed())
}

/// A secret key from a key file's text.
pub fn parse_secret(text: &str, what: &str) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&key_bytes(text, what)?))
}

/// A public key from its text (a `.pub` file's contents, or the hex itself).
pub fn parse_public(text: &str, what: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(&key_bytes(text, what)?).map_err(|_| KeyError::Invalid { what: what.to_string() })
}

/// A new secret key from the operating system's randomness.
pub fn generate() -> std::io::Result<SigningKey> {
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(key: &SigningKey) -> Manifest {
        let mut m = Manifest {
            model: "m".into(),
            version: "ab".repeat(32),
            published_at_ms: 1_000,
            expires_at_ms: 5_000,
            ..Default::default()
        };
        sign(&mut m, key);
        m
    }

    #[test]
    fn signatures_bind_every_signed_field_and_only_trusted_keys_pass() {
        let (a, b) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
        let trusted = [a.verifying_key()];
        let m = signed(&a);
        assert_eq!(check(&m, &trusted, 2_000, None), Ok(()));
        assert_eq!(check(&m, &[b.verifying_key(), a.verifying_key()], 2_000, Some(1_000)), Ok(()), "rotation");
        for alter in [
            |m: &mut Manifest| m.model = "n".into(),
            |m: &mut Manifest| m.version = "cd".repeat(32),
            |m: &mut Manifest| m.published_at_ms += 1,
            |m: &mut Manifest| m.expires_at_ms += 1,
        ] {
            let mut bad = m.clone();
            alter(&mut bad);
            assert_eq!(check(&bad, &trusted, 2_000, None), Err(SignatureError::Invalid));
        }
        assert!(matches!(check(&signed(&b), &trusted, 2_000, None), Err(SignatureError::UnknownKey { .. })));
        assert!(matches!(check(&m, &trusted, 5_000, None), Err(SignatureError::Expired { .. })));
        assert!(matches!(check(&m, &trusted, 2_000, Some(1_001)), Err(SignatureError::Older { .. })));
        let unsigned = Manifest { signature: Default::default(), ..m.clone() };
        assert_eq!(check(&unsigned, &trusted, 2_000, None), Err(SignatureError::Unsigned));
    }

    #[test]
    fn key_files_round_trip_and_bad_ones_say_so() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let again = parse_secret(&secret_key_text(&key), "k").unwrap();
        assert_eq!(again.to_bytes(), key.to_bytes());
        let public = parse_public(&public_key_text(&key.verifying_key()), "p").unwrap();
        assert_eq!(public, key.verifying_key());
        assert!(parse_public("zz", "p").unwrap_err().to_string().contains("64 hex digits"));
    }
}
