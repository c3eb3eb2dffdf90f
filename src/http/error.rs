//! Error answers: a status, a short message, what to do about it, and the
//! extra headers some statuses carry (`Allow`, `WWW-Authenticate`,
//! `Content-Range`, `Retry-After`) — in one list, set where the error is made.

use http_types::{Response, StatusCode};

use crate::encode::EncodeError;

/// An error answer, as JSON `{"error", "detail"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    detail: String,
    headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, error: impl Into<String>, detail: impl Into<String>) -> ApiError {
        ApiError { status, error: error.into(), detail: detail.into(), headers: Vec::new() }
    }

    /// The same answer with one more header.
    pub(super) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }

    pub(super) fn into_response(self) -> Response {
        let mut r = Response::new(self.status);
        let body = serde_json::json!({ "error": self.error, "detail": self.detail });
        r.set_body(serde_json::to_vec(&body).unwrap_or_default());
        r.insert_header("Content-Type", "application/json");
        r.insert_header("Cache-Control", "no-store");
        for (name, value) in self.headers {
            r.insert_header(name, value);
        }
        r
    }
}

/// A method other than GET and HEAD.
pub(super) fn method_not_allowed(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::MethodNotAllowed, "method not allowed", detail).with_header("Allow", "GET, HEAD")
}

pub(super) fn bad_request(detail: impl ToString) -> ApiError {
    ApiError::new(StatusCode::BadRequest, "bad request", detail.to_string())
}

pub(super) fn not_found(error: &str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NotFound, error, detail)
}

/// A bug or an I/O failure on the server's side; logged.
pub(super) fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!("internal error: {e}");
    ApiError::new(StatusCode::InternalServerError, "internal error", e.to_string())
}

/// A body a format cannot carry.
pub(super) fn encode_error(e: EncodeError) -> ApiError {
    match e {
        EncodeError::TooLarge { .. } => ApiError::new(StatusCode::PayloadTooLarge, "too large for JSON", e.to_string()),
        EncodeError::CodecNeedsProtobuf(_) => bad_request(e.to_string()),
        EncodeError::Unexpressible { .. } | EncodeError::SingleOnly(_) => {
            ApiError::new(StatusCode::UnprocessableEntity, "cannot express in this format", e.to_string())
        }
    }
}
