//! Consul-shaped error answers. What the cluster refuses is mapped in `execute`.

use atoll_agent::AgentError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answer: status code plus a message (and the offending field, when known).
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
    /// Answer with the message alone, as plain text: Consul's body for errors its clients
    /// match on by prefix (`Invalid Session TTL`, `invalid session`).
    pub plain: bool,
}

impl ApiError {
    /// 400 naming a field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field.to_string()),
            plain: false,
        }
    }

    /// 400 without a field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::with_status(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::with_status(StatusCode::NOT_FOUND, message)
    }

    /// Any status.
    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
            plain: false,
        }
    }

    /// Any status, with the message as a plain-text body (Consul's own error body).
    pub fn plain(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            plain: true,
            ..Self::with_status(status, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.plain {
            return (
                self.status,
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; charset=utf-8",
                )],
                self.message,
            )
                .into_response();
        }
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(field) = self.field {
            body["field"] = serde_json::Value::String(field);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::UnknownCheck(_) => ApiError::not_found(e.to_string()),
            AgentError::NotTtl(_) => ApiError::bad_request(e.to_string()),
            AgentError::Cluster(inner) => inner.into(),
            AgentError::Rejected(inner) => inner.into(),
        }
    }
}

/// Whether a path belongs to the Marathon API, whose errors are shaped `{"message": ...}`.
pub fn is_marathon_path(path: &str) -> bool {
    path == "/ping" || path == "/v2" || path.starts_with("/v2/")
}

/// An error answer shaped for the API `path` belongs to: Marathon's `{"message": ...}`
/// under `/v2`, Consul's `{"error": ..., "field": ...}` elsewhere. For failures found
/// before a handler runs (the path, the body, the route), where the shape is not yet known.
pub fn error_for_path(
    path: &str,
    status: StatusCode,
    message: impl Into<String>,
    field: Option<&str>,
) -> Response {
    let message = message.into();
    if is_marathon_path(path) {
        return (status, Json(serde_json::json!({ "message": message }))).into_response();
    }
    ApiError {
        status,
        message,
        field: field.map(str::to_string),
        plain: false,
    }
    .into_response()
}
