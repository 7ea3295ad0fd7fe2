//! `/admin/recoveries` and `/admin/sampling/simulate`: start, list, follow
//! and cancel jobs over the raw topic, recoveries and policy simulations.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::error::ApiError;
use super::state::AppState;
use crate::recovery::{
    JobKind, JobReport, RecoveryError, RecoveryRequest, SharedRecoveries, SimulationRequest,
};

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
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
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
    let request: RecoveryRequest = parse(&body)?;
    let report = runner.start(request)?;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

/// `POST /admin/sampling/simulate`: 202 with the new simulation job.
pub async fn simulate(
    State(state): State<AppState>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let runner = runner(&state)?;
    let body = body.map_err(|e| ApiError::invalid("body", e.body_text()))?;
    let request: SimulationRequest = parse(&body)?;
    let report = runner.simulate(request)?;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

#[derive(Serialize)]
struct RecoveryList {
    recoveries: Vec<JobReport>,
}

#[derive(Serialize)]
struct SimulationList {
    simulations: Vec<JobReport>,
}

fn of_kind(state: &AppState, kind: JobKind) -> Result<Vec<JobReport>, ApiError> {
    Ok(runner(state)?
        .list()
        .into_iter()
        .filter(|j| j.kind == kind)
        .collect())
}

/// `GET /admin/recoveries`: this instance's recoveries, newest first.
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let recoveries = of_kind(&state, JobKind::Recovery)?;
    Ok(Json(RecoveryList { recoveries }).into_response())
}

/// `GET /admin/sampling/simulations`: this instance's simulations, newest first.
pub async fn list_simulations(State(state): State<AppState>) -> Result<Response, ApiError> {
    let simulations = of_kind(&state, JobKind::Simulation)?;
    Ok(Json(SimulationList { simulations }).into_response())
}

fn unknown(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no job `{id}` on this instance"),
    )
}

/// `GET /admin/recoveries/{id}` and `GET /admin/sampling/simulations/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let report = runner(&state)?.get(&id).ok_or_else(|| unknown(&id))?;
    Ok(Json(report).into_response())
}

/// `DELETE` of a job: cancels it; 202 while it stops, 200 for a job that
/// had ended already.
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
