//! The HTTP client a command line asks for: TLS for `https://` (and for
//! `oci://` without `--plain-http`), a hub's bearer token, a registry's
//! credentials. (Here, not in `net`: `net` sits below `oci`, whose
//! credentials it would need.)

use crate::cli::ClientArgs;

/// The client for a hub or registry URL: TLS for https (and for oci://
/// unless the host is loopback), credentials for a registry.
pub(crate) fn client_for(
    url: &str,
    token: Option<String>,
    args: &ClientArgs,
) -> Result<weightcast::net::Client, String> {
    use weightcast::net::{self, Client};
    use weightcast::oci;
    let ca = args.ca.as_deref();
    let origin = match url.starts_with("oci://") {
        true => oci::Reference::parse(url, args.plain_http).map_err(|e| e.to_string())?.origin,
        false => url.to_string(),
    };
    let tls = match origin.split("://").next() {
        Some("http") if ca.is_some() => {
            return Err(format!("--ca is for https:// hubs and TLS registries; {url} is plain HTTP"))
        }
        Some("http") => None,
        Some("https") => Some(net::tls_config(ca)?),
        _ => return Err(format!("'{url}': give http://, https:// or oci://")),
    };
    let plain = Client { auth: None, timeout: args.timeout, tls, headers: Vec::new() };
    if !url.starts_with("oci://") {
        if args.registry_credentials.is_some() || args.plain_http {
            return Err("--registry-credentials and --plain-http are for oci:// registries".into());
        }
        let auth = token.map(|t| std::sync::Arc::new(net::Bearer(t)) as std::sync::Arc<dyn net::Authorizer>);
        return Ok(Client { auth, ..plain });
    }
    if token.is_some() {
        return Err("--token-file is for hubs; a registry takes --registry-credentials or Docker's config.json".into());
    }
    let host = origin.split("://").nth(1).unwrap_or_default().to_string();
    let credentials = match &args.registry_credentials {
        Some(path) => Some(oci::Credentials::from_file(path).map_err(|e| e.to_string())?),
        None => oci::Credentials::from_docker_config(&host),
    };
    let auth = oci::RegistryAuth::new(&origin, credentials, plain.clone());
    Ok(Client { auth: Some(std::sync::Arc::new(auth)), ..plain })
}

/// The client for reports to a hub (`pull --report`) beside a registry's:
/// the hub's token and TLS; the registry's flags are not its.
pub(crate) fn report_client(
    url: &str,
    token: Option<String>,
    args: &ClientArgs,
) -> Result<weightcast::net::Client, String> {
    use weightcast::net::{self, Client};
    let tls = match url.starts_with("https://") {
        true => Some(net::tls_config(args.ca.as_deref())?),
        false => None,
    };
    let auth = token.map(|t| std::sync::Arc::new(net::Bearer(t)) as std::sync::Arc<dyn net::Authorizer>);
    Ok(Client { auth, timeout: args.timeout, tls, headers: Vec::new() })
}
