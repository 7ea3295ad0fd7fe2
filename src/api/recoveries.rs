//! `/admin/recoveries`: start, list, follow and cancel recovery jobs.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::error::ApiError;
use super::state::AppState;
use crate::recovery::{RecoveryError, RecoveryReport, RecoveryRequest, SharedRecoveries};

impl From<RecoveryError> for ApiError {
    fn from(e: RecoveryError) -> Self {
        match e {
            RecoveryError::Invalid(f) => ApiError::invalid(f.field, f.message),
            RecoveryError::Unavailable => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            RecoveryError::Busy { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        }
    }
}

fn runner(state: &AppState) -> Result<&SharedRecoveries, ApiError> {
    state.recoveries.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "recoveries are not available: storage is disabled",
        )
    })
}

/// Parses a request body; the error names the offending field.
fn parse(body: &[u8]) -> Result<RecoveryRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        ApiError::invalid(field, e.inner().to_string())
    })
}

/// `POST /admin/recoveries`: 202 with the new job.
pub async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let runner = runner(&state)?;
    let body = body.map_err(|e| ApiError::invalid("body", e.body_text()))?;
    let request = parse(&body)?;
    let report = runner.start(request)?;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

#[derive(Serialize)]
struct JobList {
    recoveries: Vec<RecoveryReport>,
}

/// `GET /admin/recoveries`: every job this instance knows, newest first.
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let recoveries = runner(&state)?.list();
    Ok(Json(JobList { recoveries }).into_response())
}

fn unknown(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no recovery job `{id}` on this instance"),
    )
}

/// `GET /admin/recoveries/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let report = runner(&state)?.get(&id).ok_or_else(|| unknown(&id))?;
    Ok(Json(report).into_response())
}

/// `DELETE /admin/recoveries/{id}`: cancels the job; 202 while it stops,
/// 200 for a job that had ended already.
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let report = runner(&state)?.cancel(&id).ok_or_else(|| unknown(&id))?;
    let status = if report.state.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(report)).into_response())
}
