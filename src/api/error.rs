//! How the admin API answers an error: a status and a JSON body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::query::QueryError;

/// A JSON error body: `{"error": "..."}` with the given status.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// Every error an admin handler answers with: a status and a JSON body
/// `{"error": "…"}`, plus `"field"` for a request body that names what is
/// wrong. Handlers return `Result<Response, ApiError>` and use `?`.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) message: String,
    field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }

    /// 400 for a request body, naming the field at fault.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

/// The body of every error answer: `{"error"}`, or `{"error","field"}`
/// naming the request field at fault (docs/api.md).
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
    /// The request field at fault, for a 400 about a request body.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            field: self.field,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let status = match &e {
            QueryError::BadRequest(_) | QueryError::Invalid(_) | QueryError::TooLarge { .. } => {
                StatusCode::BAD_REQUEST
            }
            QueryError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            QueryError::Execution(_) => StatusCode::INTERNAL_SERVER_ERROR,
            QueryError::Unavailable(_)
            | QueryError::Catalog(_)
            | QueryError::OutOfMemory { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}
