//! Which other origins' pages may call the API from a browser (CORS): the
//! preflight answer, and the headers an allowed origin's answers carry.

use http_types::{Request, Response, StatusCode};

/// The origins allowed (`cors_origins`).
#[derive(Debug, Clone, Default)]
pub struct Cors {
    /// Allowed origins (`https://app.example:8443`), or `*` for any. Empty:
    /// none (the default: browsers keep pages of other origins out).
    pub origins: Vec<String>,
}

/// Response headers a page of another origin may read.
const EXPOSED: &str =
    "ETag, X-Weightcast-Model-Version, X-Weightcast-Version, Content-Range, Content-Length, Accept-Ranges, Content-Disposition";

impl Cors {
    /// The `Access-Control-Allow-Origin` value for a request from `origin`.
    pub(super) fn allows(&self, origin: &str) -> Option<String> {
        if self.origins.iter().any(|o| o == "*") {
            return Some("*".into());
        }
        self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)).then(|| origin.to_string())
    }

    /// The headers of an answer to a request from `allowed` (if allowed),
    /// and `Vary: Origin` wherever CORS is configured (a cache must not
    /// give one origin's answer to another).
    pub(super) fn decorate(&self, response: &mut Response, allowed: Option<&str>) {
        if let Some(allowed) = allowed {
            response.insert_header("Access-Control-Allow-Origin", allowed);
            response.insert_header("Access-Control-Expose-Headers", EXPOSED);
        }
        if !self.origins.is_empty() {
            response.append_header("Vary", "Origin");
        }
    }
}

/// The answer to a CORS preflight from an allowed origin: GET and HEAD, with
/// the headers clients send for conditional, ranged and authorized requests.
pub(super) fn preflight(allowed: &str, req: &Request) -> Response {
    let asked = req.header("Access-Control-Request-Method").map(|v| v.as_str().to_ascii_uppercase());
    if asked.as_deref().is_some_and(|m| m != "GET" && m != "HEAD") {
        return super::error::method_not_allowed("only GET and HEAD are served").into_response();
    }
    let mut r = Response::new(StatusCode::NoContent);
    r.insert_header("Access-Control-Allow-Origin", allowed);
    r.insert_header("Access-Control-Allow-Methods", "GET, HEAD");
    r.insert_header(
        "Access-Control-Allow-Headers",
        "Authorization, If-None-Match, If-Modified-Since, If-Range, Range, Accept, Accept-Encoding",
    );
    r.insert_header("Access-Control-Max-Age", "600");
    r.insert_header("Vary", "Origin");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_are_allowed_and_a_star_allows_any() {
        let none = Cors::default();
        assert_eq!(none.allows("https://a.example"), None);
        let some = Cors { origins: vec!["https://a.example".into(), "null".into()] };
        assert_eq!(some.allows("https://A.example").as_deref(), Some("https://A.example"));
        assert_eq!(some.allows("null").as_deref(), Some("null"), "file:// pages send Origin: null");
        assert_eq!(some.allows("https://b.example"), None);
        let any = Cors { origins: vec!["*".into()] };
        assert_eq!(any.allows("https://b.example").as_deref(), Some("*"));
    }

    #[test]
    fn a_preflight_for_another_method_is_refused() {
        let mut req = Request::new(http_types::Method::Options, "http://h/v1/models");
        req.insert_header("Access-Control-Request-Method", "POST");
        assert_eq!(preflight("https://a.example", &req).status(), StatusCode::MethodNotAllowed);
        req.insert_header("Access-Control-Request-Method", "GET");
        let ok = preflight("https://a.example", &req);
        assert_eq!(ok.status(), StatusCode::NoContent);
        assert_eq!(ok.header("Access-Control-Allow-Origin").map(|v| v.as_str()), Some("https://a.example"));
    }
}
