//! The admin API (health, SQL, trace search and lookup, force rules, the
//! pipeline overview), the web UI at `/`, and the Prometheus endpoint.

mod error;
pub mod guard;
pub mod jaeger;
pub mod overview;
pub mod recoveries;
pub mod rules;
pub mod sampling;
pub mod search;
mod state;
pub mod ui;

pub use error::{error, ApiError};
use state::engine;
pub use state::{AppState, RulesApi, SamplingApi, MAX_BODY_BYTES};

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::metrics::Metrics;

/// The admin router: `/health*` and the UI's assets open, `/admin/*` behind
/// the token when set.
pub fn admin_router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/admin/query", post(query))
        .route("/admin/traces", get(search::traces))
        .route("/admin/traces/{trace_id}", get(trace))
        .route("/admin/services", get(search::services))
        .route("/admin/overview", get(overview::get))
        .route("/admin/sampling/explain", post(sampling::explain))
        .route("/admin/sampling/policies", get(sampling::policies))
        .route(
            "/admin/recoveries",
            post(recoveries::create).get(recoveries::list),
        )
        .route(
            "/admin/recoveries/{id}",
            get(recoveries::get).delete(recoveries::cancel),
        )
        .route("/admin/sampling/simulate", post(recoveries::simulate))
        .route(
            "/admin/sampling/simulations",
            get(recoveries::list_simulations),
        )
        .route(
            "/admin/sampling/simulations/{id}",
            get(recoveries::get).delete(recoveries::cancel),
        )
        .route("/admin/force-rules", post(rules::create).get(rules::list))
        .route(
            "/admin/force-rules/{id}",
            get(rules::get).delete(rules::delete),
        )
        .merge(jaeger::router())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .merge(admin)
        .merge(ui::router())
        .layer(middleware::from_fn_with_state(
            state.hosts.clone(),
            guard::cross_site,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The metrics router: `GET /metrics` in the Prometheus text format.
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics.render(),
                )
            }
        }),
    )
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = &state.auth_token else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|p| constant_time_eq(p.as_bytes(), expected.as_bytes())) {
        next.run(req).await
    } else {
        error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token")
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(state): State<AppState>) -> Response {
    let report = state.health.report();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

/// The body of `/health/live` when the process is dead and of
/// `/health/ready`.
#[derive(Debug, Serialize)]
struct ProbeBody {
    status: &'static str,
    /// Why the process is dead or not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Ready, but still reading a backlog: how far behind it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    catching_up: Option<String>,
}

impl ProbeBody {
    fn failed(status: &'static str, reason: impl ToString) -> Self {
        Self {
            status,
            reason: Some(reason.to_string()),
            catching_up: None,
        }
    }
}

/// 200 while every pipeline stage runs; 503 once one died, so that an
/// orchestrator restarts the process even before it exits.
async fn live(State(state): State<AppState>) -> Response {
    match state.health.live() {
        Ok(()) => "ok".into_response(),
        Err(cause) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ProbeBody::failed("dead", cause)),
        )
            .into_response(),
    }
}

async fn ready(State(state): State<AppState>) -> Response {
    match state.health.ready() {
        Ok(()) => Json(ProbeBody {
            status: "ready",
            reason: None,
            catching_up: state.health.catching_up(),
        })
        .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ProbeBody::failed("not_ready", reason)),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct QueryRequest {
    sql: String,
}

async fn query(
    State(state): State<AppState>,
    body: Result<Json<QueryRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let result = engine(&state)?.query(&req.sql).await.inspect_err(|e| {
        tracing::info!(error = %e, "query rejected or failed");
    })?;
    Ok(Json(result).into_response())
}

async fn trace(
    State(state): State<AppState>,
    Path(trace_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = trace_id.to_ascii_lowercase();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "trace_id must be 32 hexadecimal characters",
        ));
    }
    let (result, scan) = engine(&state)?.find_trace(&id).await?;
    if let Some(m) = &state.metrics {
        m.api.trace_lookups_total.inc();
        m.api
            .trace_lookup_files_total
            .with_label_values(&["read"])
            .inc_by(scan.files_read as u64);
        m.api
            .trace_lookup_files_total
            .with_label_values(&["skipped_by_bloom"])
            .inc_by(scan.files_skipped_by_bloom as u64);
        m.api
            .trace_lookup_files_total
            .with_label_values(&["skipped_by_statistics"])
            .inc_by(scan.files_skipped_by_statistics as u64);
        m.api
            .trace_lookup_row_groups_total
            .with_label_values(&["planned"])
            .inc_by(scan.row_groups as u64);
        m.api
            .trace_lookup_row_groups_total
            .with_label_values(&["skipped_by_bloom"])
            .inc_by(scan.row_groups_skipped_by_bloom as u64);
        m.api
            .trace_lookup_row_groups_total
            .with_label_values(&["skipped_by_statistics"])
            .inc_by(scan.row_groups_skipped_by_statistics as u64);
    }
    if result.row_count == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no stored spans for trace {id}"),
        ));
    }
    let spans: Vec<Map<String, Value>> = result
        .rows
        .into_iter()
        .map(|row| result.columns.iter().cloned().zip(row).collect())
        .collect();
    Ok(Json(TraceAnswer {
        trace_id: id,
        span_count: spans.len(),
        truncated: result.truncated,
        elapsed_ms: result.elapsed_ms,
        scan,
        spans,
    })
    .into_response())
}

/// `GET /admin/traces/{trace_id}`: the stored spans of one trace, each a
/// row of the table by column name.
#[derive(Debug, Serialize)]
struct TraceAnswer {
    trace_id: String,
    span_count: usize,
    truncated: bool,
    elapsed_ms: u64,
    /// What the lookup read and skipped.
    scan: crate::query::lookup::LookupStats,
    spans: Vec<Map<String, Value>>,
}
