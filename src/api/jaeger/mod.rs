//! Jaeger's legacy HTTP query API over the spans table, the one Grafana's
//! Jaeger data source calls: `/api/services`, `/api/services/{s}/operations`,
//! `/api/operations`, `/api/traces` (search), `/api/traces/{id}` and
//! `/api/dependencies`. Shapes are Jaeger's (`internal/uimodel`, the
//! structured response of its HTTP handler); a parameter that does not parse
//! is a 400 with Jaeger's `errors` body.

pub mod model;
mod otlp_json;
pub mod params;
mod read;
pub mod v3;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

use super::error::ApiError;
use super::state::{engine, AppState};
use crate::query::QueryError;
use model::{DependencyLink, Structured, StructuredError};
use params::{ParamError, Params};
pub use read::SERVICES_LOOKBACK_MICROS;
use read::{now_micros, rows_by_trace};

/// The routes, to be merged under the admin token.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/services", get(services))
        .route(
            "/api/services/{service}/operations",
            get(service_operations),
        )
        .route("/api/operations", get(operations))
        .route("/api/traces", get(search))
        .route("/api/traces/{trace_id}", get(trace))
        .route("/api/dependencies", get(dependencies))
        .merge(v3::router())
}

/// An error in Jaeger's shape: `{"data": null, …, "errors": [{"code", "msg"}]}`.
pub struct JaegerError {
    status: StatusCode,
    msg: String,
}

impl IntoResponse for JaegerError {
    fn into_response(self) -> Response {
        let body = Structured {
            data: Value::Null,
            total: 0,
            limit: 0,
            offset: 0,
            errors: Some(vec![StructuredError {
                code: self.status.as_u16(),
                msg: self.msg,
            }]),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<ParamError> for JaegerError {
    fn from(e: ParamError) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            msg: e.to_string(),
        }
    }
}

impl From<QueryError> for JaegerError {
    fn from(e: QueryError) -> Self {
        tracing::info!(error = %e, "Jaeger API query failed");
        ApiError::from(e).into()
    }
}

impl From<ApiError> for JaegerError {
    fn from(e: ApiError) -> Self {
        Self {
            status: e.status,
            msg: e.message,
        }
    }
}

fn ok<T: Serialize>(data: T, total: usize) -> Response {
    Json(Structured::new(data, total)).into_response()
}

/// `GET /api/services`: the services with spans in the last week.
async fn services(State(state): State<AppState>) -> Result<Response, JaegerError> {
    let now = now_micros();
    let list = engine(&state)?
        .services(now - SERVICES_LOOKBACK_MICROS, now + 1)
        .await?;
    let names: Vec<String> = list.into_iter().map(|s| s.service).collect();
    let total = names.len();
    Ok(ok(names, total))
}

/// `GET /api/services/{service}/operations`: its span names.
async fn service_operations(
    State(state): State<AppState>,
    Path(service): Path<String>,
) -> Result<Response, JaegerError> {
    let now = now_micros();
    let ops = engine(&state)?
        .operations(Some(&service), now - SERVICES_LOOKBACK_MICROS, now + 1)
        .await?;
    let mut names: Vec<String> = ops.into_iter().map(|o| o.name).collect();
    names.dedup();
    let total = names.len();
    Ok(ok(names, total))
}

#[derive(Serialize)]
struct OperationKind {
    name: String,
    #[serde(rename = "spanKind")]
    span_kind: String,
}

/// `GET /api/operations?service=&spanKind=`: span names with their kinds.
async fn operations(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, JaegerError> {
    let params = Params::parse(raw.as_deref());
    let service = params.get("service").ok_or_else(|| ParamError {
        param: "service",
        reason: "parameter 'service' is required".into(),
    })?;
    let kind = params.get("spanKind").map(str::to_ascii_lowercase);
    let now = now_micros();
    let ops = engine(&state)?
        .operations(Some(service), now - SERVICES_LOOKBACK_MICROS, now + 1)
        .await?;
    let list: Vec<OperationKind> = ops
        .into_iter()
        .map(|o| OperationKind {
            name: o.name,
            span_kind: model::span_kind(&o.kind).unwrap_or_default().to_string(),
        })
        .filter(|o| kind.as_deref().is_none_or(|k| k == o.span_kind))
        .collect();
    let total = list.len();
    Ok(ok(list, total))
}

/// The spans of `ids` as Jaeger traces, in `ids`' order.
async fn traces_of(state: &AppState, ids: &[String]) -> Result<Vec<model::Trace>, JaegerError> {
    let by_trace = rows_by_trace(state, ids).await?;
    Ok(ids
        .iter()
        .filter_map(|id| by_trace.get(id).map(|rows| model::trace(id, rows)))
        .collect())
}

/// `GET /api/traces`: the traces a search finds, whole, newest first.
async fn search(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, JaegerError> {
    let params = Params::parse(raw.as_deref());
    let q = params::trace_search(&params, now_micros())?;
    let ids = engine(&state)?.search_ids(&q).await?;
    let traces = traces_of(&state, &ids).await?;
    let total = traces.len();
    Ok(ok(traces, total))
}

/// `GET /api/traces/{id}`: one trace. `start` and `end` are hints Jaeger's
/// clients send (Grafana sometimes in milliseconds); the lookup finds the
/// trace by its id alone, so they are read and otherwise unused.
async fn trace(
    State(state): State<AppState>,
    Path(trace_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, JaegerError> {
    let params = Params::parse(raw.as_deref());
    params.integer("start")?;
    params.integer("end")?;
    let id = params::trace_id(&trace_id)?;
    let traces = traces_of(&state, std::slice::from_ref(&id)).await?;
    if traces.is_empty() {
        return Err(JaegerError {
            status: StatusCode::NOT_FOUND,
            msg: "trace not found".into(),
        });
    }
    Ok(ok(traces, 0))
}

/// `GET /api/dependencies?endTs=&lookback=` (milliseconds): calls between
/// services, from parent/child spans.
async fn dependencies(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, JaegerError> {
    let params = Params::parse(raw.as_deref());
    let (from, to) = params::dependency_range(&params, now_micros())?;
    let service = params.get("service");
    let links: Vec<DependencyLink> = engine(&state)?
        .dependencies(from, to)
        .await?
        .into_iter()
        .filter(|d| service.is_none_or(|s| d.parent == s || d.child == s))
        .map(|d| DependencyLink {
            parent: d.parent,
            child: d.child,
            call_count: d.call_count,
        })
        .collect();
    Ok(ok(links, 0))
}
