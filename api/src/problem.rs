//! `application/problem+json` (RFC 9457): every error the API answers.
//!
//! `type` is a stable URI per `code`, `title` a short summary, `status` the
//! HTTP status, `detail` the precise reason for this request, and `code` a
//! machine-usable token clients switch on. Some problems carry extra members
//! (`items` for out-of-stock lines, `current_total` for a price change).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

pub const CONTENT_TYPE: &str = "application/problem+json";

/// One problem answer.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub extra: Map<String, Value>,
    pub retry_after_secs: Option<u64>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
            extra: Map::new(),
            retry_after_secs: None,
        }
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_secs = Some(seconds);
        self
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "Bad request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            detail,
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed", detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, "Not found", detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            code,
            "Conflict with the current state",
            detail,
        )
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            "Unprocessable request",
            detail,
        )
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            detail,
        )
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            "Service unavailable",
            detail,
        )
        .retry_after(1)
    }

    fn body(&self) -> Value {
        let mut body = json!({
            "type": format!("https://lunchrush.dev/problems/{}", self.code.replace('_', "-")),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        if let Value::Object(map) = &mut body {
            map.extend(self.extra.clone());
        }
        body
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).expect("problems serialize");
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(seconds) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<engine::EngineError> for Problem {
    fn from(error: engine::EngineError) -> Self {
        if let Some(refusal) = error.refused_write() {
            tracing::warn!(%error, "Redis refused a write.");
            return refused(refusal);
        }
        tracing::error!(%error, "Engine failure.");
        Problem::unavailable(
            "store_unavailable",
            "the order store did not answer in time; retry",
        )
    }
}

/// The answer while Redis takes no new work: `capacity_exhausted` at its
/// memory budget, `store_unwritable` while it refuses writes (it cannot
/// persist them, or it became a replica). Nothing was changed.
pub fn refused(refusal: engine::budget::Refusal) -> Problem {
    match refusal {
        engine::budget::Refusal::Memory => Problem::unavailable(
            "capacity_exhausted",
            "the order store is at its memory budget: orders in flight are finishing and \
             new ones are refused until memory is freed; retry later",
        )
        .retry_after(CAPACITY_RETRY_AFTER_SECS),
        engine::budget::Refusal::Unwritable => Problem::unavailable(
            "store_unwritable",
            "the order store refuses writes now (it cannot persist them, or it is failing \
             over); nothing was changed; retry later",
        )
        .retry_after(CAPACITY_RETRY_AFTER_SECS),
    }
}

/// `Retry-After` of a refusal for memory or writes: the budget frees
/// memory as the archive drains, in seconds to minutes.
pub const CAPACITY_RETRY_AFTER_SECS: u64 = 5;

impl From<engine::domain::Invalid> for Problem {
    fn from(invalid: engine::domain::Invalid) -> Self {
        Problem::unprocessable("invalid_field", invalid.to_string())
            .with("field", json!(invalid.field))
    }
}
