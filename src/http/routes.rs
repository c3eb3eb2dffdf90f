//! The route table: every route the API serves, parsed once from a path —
//! with its `/metrics` label, the query keys it takes and whether it is
//! open without a token — and the dispatch of a request to its handler.

use std::sync::Arc;

use http_types::{Method, Request, Response, StatusCode};

use super::auth::{self, Scope};
use super::conditional::Ask;
use super::error::{bad_request, method_not_allowed, not_found, ApiError};
use super::{documents, hf, negotiate, tensors, State};
use crate::store::Model;

/// A route, its path's names percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    /// `/`: the page.
    Page,
    Healthz,
    Readyz,
    Metrics,
    /// `/v1/models`.
    Models,
    /// `/v1/fleet`: devices and rollouts.
    Fleet,
    /// `/v1/models/{model}`.
    Manifest {
        model: String,
    },
    Weights {
        model: String,
    },
    Graph {
        model: String,
    },
    Stats {
        model: String,
    },
    Changes {
        model: String,
    },
    /// `/v1/models/{model}/tensors/{name}` (the name may hold `/`).
    Tensor {
        model: String,
        name: String,
    },
    /// `/v1/blobs/sha256/{digest}`.
    Blob {
        digest: String,
    },
    /// Hugging Face's `/api/models/{repo}[/revision/{rev}]` (`hf`).
    HfInfo {
        model: String,
        revision: String,
    },
    /// Hugging Face's `/api/models/{repo}/tree/{rev}[/{path}]`.
    HfTree {
        model: String,
        revision: String,
        path: String,
    },
    /// Hugging Face's `/{repo}/resolve/{rev}/{file}`.
    HfFile {
        model: String,
        revision: String,
        file: String,
    },
}

/// Every route, for the 404 of an unknown one.
pub(super) const ROUTES: &str =
    "/ (the page), /healthz, /readyz, /metrics, /v1/fleet, /v1/models, /v1/models/{model}, \
    /v1/models/{model}/weights, /v1/models/{model}/tensors/{name}, /v1/models/{model}/graph, \
    /v1/models/{model}/stats, /v1/models/{model}/changes, /v1/blobs/sha256/{digest}; for Hugging Face's clients: \
    /api/models/{model}/revision/{rev}, /api/models/{model}/tree/{rev}, /{model}/resolve/{rev}/{file}";

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

impl Route {
    /// The route of a (percent-encoded) path, if any.
    pub(super) fn parse(path: &str) -> Option<Route> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let model = |m: &str| decode(m);
        Some(match segments.as_slice() {
            [""] => Route::Page,
            ["healthz"] => Route::Healthz,
            ["readyz"] => Route::Readyz,
            ["metrics"] => Route::Metrics,
            ["v1", "models"] => Route::Models,
            ["v1", "fleet"] => Route::Fleet,
            ["v1", "models", m] => Route::Manifest { model: model(m) },
            ["v1", "models", m, "weights"] => Route::Weights { model: model(m) },
            ["v1", "models", m, "graph"] => Route::Graph { model: model(m) },
            ["v1", "models", m, "stats"] => Route::Stats { model: model(m) },
            ["v1", "models", m, "changes"] => Route::Changes { model: model(m) },
            ["v1", "models", m, "tensors", name @ ..] if !name.is_empty() => {
                Route::Tensor { model: model(m), name: decode(&name.join("/")) }
            }
            ["v1", "blobs", "sha256", digest] => Route::Blob { digest: digest.to_string() },
            ["api", "models", m] => Route::HfInfo { model: model(m), revision: "main".into() },
            ["api", "models", m, "revision", rev] => Route::HfInfo { model: model(m), revision: decode(rev) },
            ["api", "models", m, "tree", rev, path @ ..] => {
                Route::HfTree { model: model(m), revision: decode(rev), path: decode(&path.join("/")) }
            }
            [m, "resolve", rev, file @ ..] if !file.is_empty() && *m != "v1" => {
                Route::HfFile { model: model(m), revision: decode(rev), file: decode(&file.join("/")) }
            }
            _ => return None,
        })
    }

    /// Its label in `/metrics` (a fixed set: a client's paths must not grow
    /// the label space; an unknown path is "other").
    pub(super) fn label(route: Option<&Route>) -> &'static str {
        match route {
            Some(Route::Page) => "page",
            Some(Route::Healthz) => "healthz",
            Some(Route::Readyz) => "readyz",
            Some(Route::Metrics) => "metrics",
            Some(Route::Models) => "models",
            Some(Route::Fleet) => "fleet",
            Some(Route::Manifest { .. }) => "manifest",
            Some(Route::Weights { .. }) => "weights",
            Some(Route::Graph { .. }) => "graph",
            Some(Route::Stats { .. }) => "stats",
            Some(Route::Changes { .. }) => "changes",
            Some(Route::Tensor { .. }) => "tensor",
            Some(Route::Blob { .. }) => "blob",
            Some(Route::HfInfo { .. } | Route::HfTree { .. } | Route::HfFile { .. }) => "hf",
            None => "other",
        }
    }

    /// The query keys it takes (any other is a `400` naming these).
    pub(super) fn query_keys(&self) -> &'static [&'static str] {
        match self {
            Route::Models => &["format"],
            Route::Manifest { .. } => &["format", "dtype"],
            Route::Weights { .. } => &["format", "dtype", "names", "compress", "codec"],
            Route::Tensor { .. } => &["format", "dtype", "compress", "codec"],
            Route::Blob { .. } => &["dtype", "from"],
            Route::HfTree { .. } => &["recursive", "expand", "cursor"],
            _ => &[],
        }
    }

    /// Open without a token: probes' health and readiness, and the page
    /// (it holds no data, and asks for a token when the API wants one).
    pub(super) fn is_open(&self) -> bool {
        matches!(self, Route::Page | Route::Healthz | Route::Readyz)
    }

    /// The model the route is about.
    pub(super) fn model(&self) -> Option<&str> {
        match self {
            Route::Manifest { model }
            | Route::Weights { model }
            | Route::Graph { model }
            | Route::Stats { model }
            | Route::Changes { model }
            | Route::Tensor { model, .. }
            | Route::HfInfo { model, .. }
            | Route::HfTree { model, .. }
            | Route::HfFile { model, .. } => Some(model),
            _ => None,
        }
    }
}

/// Answers a request by its route: the method, the token, the query, then
/// the handler.
pub(super) async fn dispatch(state: Arc<State>, req: Request, route: Option<Route>) -> Result<Response, ApiError> {
    if !matches!(req.method(), Method::Get | Method::Head) {
        return Err(method_not_allowed(format!("{} is not served; use GET or HEAD", req.method())));
    }
    let ask = Ask::of(&req);
    // A browser opening a model's API URL (it asks for text/html first)
    // gets the page at that model, not protobuf to download; programs ask
    // for */*, protobuf or JSON.
    if let Some(model) = route.as_ref().and_then(Route::model) {
        if ask.browser() && !req.url().query_pairs().any(|(k, _)| k == "format") {
            return Ok(documents::to_page(model));
        }
    }
    let scope = match route.as_ref().is_some_and(Route::is_open) {
        true => Scope::All,
        false => auth::scope(&state, &req)?,
    };
    let path = req.url().path();
    let route = route.ok_or_else(|| not_found("not found", format!("no route for {path}; routes: {ROUTES}")))?;
    if let Some(model) = route.model() {
        auth::may_read(&scope, model)?;
    }
    let pairs: Vec<(String, String)> = req.url().query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let q = negotiate::query(pairs, route.query_keys()).map_err(bad_request)?;
    let state = &*state;
    let header = |name: &str| req.header(name).map(|v| v.as_str());
    let device = header(crate::wire::report::DEVICE).filter(|d| crate::wire::report::valid_device_id(d));
    let find_model = |name: &str| find_model(state, name, device);
    match route {
        Route::Page => Ok(documents::page(&ask)),
        Route::Healthz => Ok(documents::healthz()),
        Route::Readyz => {
            // Open to probes; what failed is told only to a token that may read it.
            let seen = match &state.tokens {
                None => Some(Scope::All),
                Some(_) => auth::scope(state, &req).ok(),
            };
            Ok(documents::readyz(state, seen.as_ref()))
        }
        Route::Metrics => {
            auth::may_read_all(&scope)?;
            Ok(documents::metrics(state))
        }
        // A browser opening the listing gets the page that shows it.
        Route::Models if q.format.is_none() && ask.wants_html() => Ok(documents::page(&ask)),
        Route::Models => documents::listing(state, &ask, &q, &scope).await,
        Route::Fleet => Ok(documents::fleet(state, &scope)),
        Route::Manifest { model } => {
            // A device's report rides on its poll (here, or on `poll`'s path).
            if let Some(report) = crate::wire::report::DeviceReport::from_headers(header) {
                if state.store.get(&model).is_some() {
                    state.fleet.report(&model, &report);
                }
            }
            documents::manifest(state, &ask, &q, find_model(&model)?).await
        }
        Route::Stats { model } => documents::stats(state, &ask, find_model(&model)?).await,
        Route::Changes { model } => documents::changes(state, &ask, find_model(&model)?).await,
        Route::Graph { model } => documents::graph(state, &ask, find_model(&model)?).await,
        Route::Weights { model } => {
            let model = find_model(&model)?;
            let selection = tensors::select(&model, q.names.as_deref())?;
            tensors::tensors(state, &ask, &q, model, selection, false).await
        }
        Route::Tensor { model, name } => {
            let model = find_model(&model)?;
            let index = model.position(&name).ok_or_else(|| tensors::unknown_tensor(&model, &name))?;
            tensors::tensors(state, &ask, &q, model, vec![index], true).await
        }
        Route::Blob { digest } => tensors::blob(state, &ask, &q, &digest, &scope).await,
        Route::HfInfo { model, revision } => Ok(hf::info(&*hf::revision(state, &model, &revision)?)),
        Route::HfTree { model, revision, path } => match path.is_empty() {
            true => hf::tree(state, &ask, hf::revision(state, &model, &revision)?).await,
            false => Ok(documents::empty_list()),
        },
        Route::HfFile { model, revision, file } => {
            hf::file(state, &ask, hf::revision(state, &model, &revision)?, &file).await
        }
    }
}

/// The loaded model of that name in the version `device` is offered, or
/// why there is none.
fn find_model(state: &State, name: &str, device: Option<&str>) -> Result<Arc<Model>, ApiError> {
    if let Some(m) = state.model_for(name, device) {
        return Ok(m);
    }
    Err(match state.store.failure(name) {
        Some(error) => ApiError::new(StatusCode::NotFound, "model failed to load", error.to_string()),
        None => not_found("unknown model", format!("no model '{name}'; GET /v1/models lists them")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_to_routes_with_names_decoded() {
        assert_eq!(Route::parse("/"), Some(Route::Page));
        assert_eq!(Route::parse("/v1/models"), Some(Route::Models));
        assert_eq!(Route::parse("/v1/models/det%2Dx"), Some(Route::Manifest { model: "det-x".into() }));
        assert_eq!(
            Route::parse("/v1/models/m/tensors/a/b%2Fc%20d"),
            Some(Route::Tensor { model: "m".into(), name: "a/b/c d".into() })
        );
        assert_eq!(Route::parse("/v1/blobs/sha256/ab12"), Some(Route::Blob { digest: "ab12".into() }));
        for unknown in ["/v1/models/m/tensors", "/v1/models/m/other", "/v2/models", "/healthz/x", "/v1/blobs/md5/x"] {
            assert_eq!(Route::parse(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn labels_are_a_fixed_set_and_only_probes_and_the_page_are_open() {
        let label = |p: &str| Route::label(Route::parse(p).as_ref());
        assert_eq!(label("/v1/models/m/tensors/x/y"), "tensor");
        assert_eq!(label("/whatever/a/client/sends"), "other");
        let open: Vec<&str> =
            ["/", "/healthz", "/readyz", "/metrics", "/v1/models", "/v1/models/m", "/v1/blobs/sha256/a"]
                .into_iter()
                .filter(|p| Route::parse(p).is_some_and(|r| r.is_open()))
                .collect();
        assert_eq!(open, ["/", "/healthz", "/readyz"]);
    }

    #[test]
    fn each_route_takes_its_own_query_keys() {
        assert_eq!(Route::parse("/healthz").unwrap().query_keys(), &[] as &[&str]);
        assert!(Route::parse("/v1/models/m/weights").unwrap().query_keys().contains(&"names"));
        assert!(!Route::parse("/v1/models/m/tensors/t").unwrap().query_keys().contains(&"names"));
        assert_eq!(Route::parse("/v1/models/m/stats").unwrap().model(), Some("m"));
    }
}
