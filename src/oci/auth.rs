//! Registry authentication: what a `401`'s `WWW-Authenticate` asks for.
//! `Basic`: the user's credentials on every request. `Bearer realm=…`: the
//! token flow of the distribution spec — a GET of the realm with the
//! challenge's `service` and `scope` (with the credentials, when there are
//! any; anonymous otherwise), whose JSON `token` is then sent as a bearer.
//! A token that expires mid-pull is renewed on the next `401`.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Mutex;

use base64::Engine;
use http_types::{Method, Url};

use crate::net::{Authorizer, Client, FetchError};

/// A user and password for a registry.
#[derive(Clone)]
pub struct Credentials {
    user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, …)", self.user)
    }
}

/// Why a credentials file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct CredentialsError {
    path: String,
    problem: String,
}

impl Credentials {
    /// A file holding `USER:PASSWORD` (`--registry-credentials`).
    pub fn from_file(path: &Path) -> Result<Credentials, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|e| CredentialsError {
            path: path.display().to_string(),
            problem: format!("cannot read it: {e}"),
        })?;
        let line = text.lines().next().unwrap_or_default();
        let problem = "expected one line USER:PASSWORD".to_string();
        Credentials::from_pair(line).ok_or_else(|| CredentialsError { path: path.display().to_string(), problem })
    }

    fn from_pair(pair: &str) -> Option<Credentials> {
        let (user, password) = pair.split_once(':')?;
        (!user.is_empty()).then(|| Credentials { user: user.into(), password: password.into() })
    }

    /// The entry for `host` (`host:port`) in Docker's `config.json`
    /// (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`): its
    /// `auth` (base64 of `user:password`) or `username`/`password`.
    /// Credential helpers (`credsStore`, `credHelpers`) are not run.
    pub fn from_docker_config(host: &str) -> Option<Credentials> {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))?;
        let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).ok()?).ok()?;
        let auths = config["auths"].as_object()?;
        let entry = auths.iter().find(|(k, _)| {
            let k = k.trim_start_matches("https://").trim_start_matches("http://");
            k.split('/').next() == Some(host)
        })?;
        let entry = entry.1;
        if let Some(b64) = entry["auth"].as_str() {
            let decoded = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            return Credentials::from_pair(std::str::from_utf8(&decoded).ok()?);
        }
        let (user, password) = (entry["username"].as_str()?, entry["password"].as_str()?);
        Some(Credentials { user: user.into(), password: password.into() })
    }

    fn basic(&self) -> String {
        let pair = format!("{}:{}", self.user, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }
}

enum Granted {
    Nothing,
    Basic,
    Bearer(String),
}

/// The credentials of one registry origin, answering its challenges.
pub struct RegistryAuth {
    origin: String,
    credentials: Option<Credentials>,
    granted: Mutex<Granted>,
    /// Fetches tokens (it has no authorizer of its own).
    tokens: Client,
}

impl RegistryAuth {
    /// For the registry at `origin` (`scheme://host:port`); `tokens` is the
    /// client token requests go through.
    pub fn new(origin: &str, credentials: Option<Credentials>, tokens: Client) -> RegistryAuth {
        RegistryAuth { origin: origin.to_string(), credentials, granted: Mutex::new(Granted::Nothing), tokens }
    }

    async fn fetch_token(&self, url: &Url, params: &[(String, String)]) -> Result<String, FetchError> {
        let fail = |problem: String| FetchError::Auth { url: url.to_string(), problem };
        let realm = param(params, "realm").ok_or_else(|| fail("a Bearer challenge without a realm".into()))?;
        let mut token_url = Url::parse(realm).map_err(|e| fail(format!("bad token realm '{realm}': {e}")))?;
        for key in ["service", "scope"] {
            if let Some(v) = param(params, key) {
                token_url.query_pairs_mut().append_pair(key, v);
            }
        }
        // Credentials go to the realm only over TLS, or when the registry
        // itself is plain HTTP (a loopback test registry).
        let header = self.credentials.as_ref().filter(|_| token_url.scheme() == "https" || url.scheme() == "http");
        let basic = header.map(Credentials::basic);
        let mut headers = vec![("Accept", "application/json")];
        if let Some(b) = &basic {
            headers.push(("Authorization", b.as_str()));
        }
        let reply = self.tokens.request(Method::Get, &token_url, &headers, None, 1 << 20).await?;
        if reply.status != 200 {
            let who = if basic.is_some() { "with the given credentials" } else { "anonymously (no credentials found)" };
            return Err(fail(format!(
                "the token service {realm} answered {} {who}; give --registry-credentials or a docker config.json entry",
                reply.status
            )));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&reply.body).map_err(|e| fail(format!("token answer is not JSON: {e}")))?;
        let token = v["token"].as_str().or(v["access_token"].as_str()).filter(|t| !t.is_empty());
        token.map(str::to_string).ok_or_else(|| fail("the token answer holds no token".into()))
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.origin().ascii_serialization() == self.origin
    }
}

impl Authorizer for RegistryAuth {
    fn header(&self, url: &Url) -> Option<String> {
        if !self.same_origin(url) {
            return None; // a redirect to storage carries its own signature
        }
        match &*self.granted.lock().unwrap_or_else(|p| p.into_inner()) {
            Granted::Nothing => None,
            Granted::Basic => self.credentials.as_ref().map(Credentials::basic),
            Granted::Bearer(t) => Some(format!("Bearer {t}")),
        }
    }

    fn challenge<'a>(
        &'a self,
        url: &'a Url,
        challenge: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<bool, FetchError>> + Send + 'a>> {
        Box::pin(async move {
            if !self.same_origin(url) {
                return Ok(false);
            }
            let (scheme, params) = parse_challenge(challenge);
            let granted = if scheme.eq_ignore_ascii_case("basic") {
                if self.credentials.is_none() {
                    return Err(FetchError::Auth {
                        url: url.to_string(),
                        problem: "the registry asks for a user and password; give --registry-credentials FILE or log in with docker/oras".into(),
                    });
                }
                Granted::Basic
            } else if scheme.eq_ignore_ascii_case("bearer") {
                Granted::Bearer(self.fetch_token(url, &params).await?)
            } else {
                return Ok(false);
            };
            *self.granted.lock().unwrap_or_else(|p| p.into_inner()) = granted;
            Ok(true)
        })
    }
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
}

/// `Bearer realm="…",service="…",scope="a:b:pull,push"` → scheme and
/// parameters (quoted values may hold commas).
fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_string();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect::<String>().trim().to_string();
        }
        params.push((key, value));
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_commas_in_quotes() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(param(&p, "realm"), Some("https://auth.example/token"));
        assert_eq!(param(&p, "service"), Some("registry.example"));
        assert_eq!(param(&p, "scope"), Some("repository:a/b:pull,push"));
        let (scheme, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!((scheme.as_str(), param(&p, "realm")), ("Basic", Some("Registry Realm")));
        assert_eq!(parse_challenge("Bearer").1.len(), 0);
    }

    #[test]
    fn credentials_never_follow_a_redirect_to_another_origin() {
        let client = Client { auth: None, timeout: std::time::Duration::from_secs(1), tls: None, headers: Vec::new() };
        let auth = RegistryAuth::new("http://127.0.0.1:5000", Credentials::from_pair("u:p"), client);
        *auth.granted.lock().unwrap() = Granted::Bearer("tok".into());
        let here = Url::parse("http://127.0.0.1:5000/v2/m/blobs/sha256:00").unwrap();
        assert_eq!(auth.header(&here).as_deref(), Some("Bearer tok"));
        for elsewhere in ["http://localhost:5000/v2/m/blobs/x", "https://127.0.0.1:5000/x", "http://s3.example/x?sig=1"]
        {
            assert_eq!(auth.header(&Url::parse(elsewhere).unwrap()), None, "{elsewhere}");
        }
        *auth.granted.lock().unwrap() = Granted::Basic;
        assert!(auth.header(&here).unwrap().starts_with("Basic "));
        assert_eq!(auth.header(&Url::parse("http://localhost:5000/x").unwrap()), None);
    }

    #[test]
    fn credentials_come_from_a_pair_and_never_print() {
        let c = Credentials::from_pair("fleet:s3cr:et").unwrap();
        assert_eq!(c.basic(), format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("fleet:s3cr:et")));
        assert!(!format!("{c:?}").contains("s3cr"));
        assert!(Credentials::from_pair(":x").is_none());
        assert!(Credentials::from_pair("nocolon").is_none());
    }
}
