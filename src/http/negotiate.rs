//! Content negotiation and query parsing: which format, which encoding,
//! which representation a request asks for.

use crate::encode::{Encoding, Format};
use crate::onnx::cast::Target;

/// Weight of `media` in an `Accept` header (0 = not acceptable). Exact type
/// beats `type/*` beats `*/*`; no header accepts everything.
fn quality(accept: &str, media: &str) -> f32 {
    let (ty, _) = media.split_once('/').unwrap_or((media, ""));
    let mut best: Option<(u8, f32)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let r = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").and_then(|v| v.trim().parse::<f32>().ok()))
            .next()
            .unwrap_or(1.0);
        let specificity = if r == media {
            3
        } else if r.strip_suffix("/*") == Some(ty) {
            2
        } else if r == "*/*" {
            1
        } else {
            continue;
        };
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, q));
        }
    }
    best.map_or(0.0, |(_, q)| q)
}

/// The format to answer in, among those a route `offers`: `?format=` wins,
/// then the best `Accept` match (earlier offers first on ties); `None` when
/// nothing offered is acceptable.
pub(super) fn format(offers: &[Format], query_format: Option<Format>, accept: Option<&str>) -> Option<Format> {
    if let Some(f) = query_format {
        return offers.contains(&f).then_some(f);
    }
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else { return offers.first().copied() };
    let mut best: Option<(Format, f32)> = None;
    for &f in offers {
        let q = quality(accept, f.media_type());
        if q > 0.0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((f, q));
        }
    }
    best.map(|(f, _)| f)
}

/// zstd if `Accept-Encoding` allows it, else identity.
pub(super) fn encoding(accept_encoding: Option<&str>) -> Encoding {
    let Some(header) = accept_encoding else { return Encoding::Identity };
    for coding in header.split(',') {
        let mut parts = coding.split(';');
        if parts.next().unwrap_or("").trim().eq_ignore_ascii_case("zstd") {
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").and_then(|v| v.trim().parse::<f32>().ok()))
                .next()
                .unwrap_or(1.0);
            if q > 0.0 {
                return Encoding::Zstd;
            }
        }
    }
    Encoding::Identity
}

/// The query parameters weightcast understands.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Query {
    pub(super) format: Option<Format>,
    /// `None` = as stored.
    pub(super) dtype: Option<Target>,
    pub(super) names: Option<Vec<String>>,
    /// `compress=1`: npz members deflated.
    pub(super) compress: bool,
    /// `codec=bytegroup`: protobuf tensor data in byte planes.
    pub(super) bytegroup: bool,
    /// `from=`: a cast blob's stored digest (the tensor it was cast from).
    pub(super) from: Option<String>,
}

/// Why a query string was refused (a `400`).
#[derive(Debug, thiserror::Error, PartialEq)]
pub(super) enum QueryError {
    #[error("unknown query parameter '{key}': this route takes none")]
    NoneTaken { key: String },
    #[error("unknown query parameter '{key}' (this route takes: {})", .allowed.join(", "))]
    Unknown { key: String, allowed: Vec<String> },
    #[error("{key} '{value}' is not one of: {choices}")]
    BadValue { key: &'static str, value: String, choices: &'static str },
}

/// Parses a query string, allowing only `allowed` parameters.
pub(super) fn query(pairs: Vec<(String, String)>, allowed: &[&str]) -> Result<Query, QueryError> {
    let mut q = Query::default();
    for (key, value) in pairs {
        if !allowed.contains(&key.as_str()) {
            return Err(match allowed.is_empty() {
                true => QueryError::NoneTaken { key },
                false => QueryError::Unknown { key, allowed: allowed.iter().map(|a| a.to_string()).collect() },
            });
        }
        let bad = |key, choices| QueryError::BadValue { key, value: value.clone(), choices };
        match key.as_str() {
            "format" => {
                q.format = Some(
                    Format::from_name(&value).ok_or_else(|| bad("format", "protobuf, json, npz, npy, safetensors"))?,
                )
            }
            "dtype" => {
                q.dtype = match value.as_str() {
                    "f32" | "" => None,
                    v => Some(v.parse::<Target>().map_err(|_| bad("dtype", "f16, bf16, f32 (f32 = as stored)"))?),
                }
            }
            "compress" => {
                q.compress = match value.as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(bad("compress", "0, 1")),
                }
            }
            "codec" => {
                q.bytegroup = match value.as_str() {
                    "bytegroup" => true,
                    "" | "none" => false,
                    _ => return Err(bad("codec", "bytegroup, none")),
                }
            }
            // Split by the route, which knows the names.
            "names" => q.names.get_or_insert_with(Vec::new).push(value),
            "from" => q.from = Some(value),
            // Hugging Face's tree listing: every file is at the top, so a
            // listing is the same recursive or not, expanded or not.
            "recursive" | "expand" | "cursor" => {}
            // `allowed` names only the parameters above.
            _ => return Err(QueryError::NoneTaken { key }),
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let all = Format::BUNDLES;
        assert_eq!(format(all, None, None), Some(Format::Protobuf));
        assert_eq!(format(all, None, Some("*/*")), Some(Format::Protobuf));
        assert_eq!(format(all, None, Some("application/json")), Some(Format::Json));
        assert_eq!(format(all, None, Some("application/x-protobuf;q=0.5, application/json")), Some(Format::Json));
        assert_eq!(format(all, None, Some("application/*;q=0.2, application/json;q=0")), Some(Format::Protobuf));
        assert_eq!(format(all, None, Some("application/x-npz")), Some(Format::Npz));
        assert_eq!(format(all, None, Some("text/html")), None);
        assert_eq!(format(all, Some(Format::Json), Some("text/html")), Some(Format::Json));
        assert_eq!(format(Format::DOCUMENTS, None, Some("application/x-safetensors")), None);
        assert_eq!(format(Format::DOCUMENTS, Some(Format::Npz), None), None);
    }

    #[test]
    fn accept_encoding() {
        assert_eq!(encoding(Some("gzip, zstd")), Encoding::Zstd);
        assert_eq!(encoding(Some("zstd;q=0")), Encoding::Identity);
        assert_eq!(encoding(Some("gzip")), Encoding::Identity);
        assert_eq!(encoding(None), Encoding::Identity);
    }

    #[test]
    fn query_rules() {
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        let q = query(vec![p("names", "a,b"), p("names", "c/d"), p("dtype", "f16")], &["names", "dtype"]).unwrap();
        assert_eq!(q.names.unwrap(), vec!["a,b", "c/d"]);
        assert_eq!(q.dtype, Some(Target::F16));
        assert!(query(vec![p("x", "1")], &["names"]).unwrap_err().to_string().contains("unknown query parameter 'x'"));
        assert!(query(vec![p("dtype", "f8")], &["dtype"]).unwrap_err().to_string().contains("dtype 'f8'"));
    }
}
