//! Jaeger's api_v3 over HTTP, the one the current Jaeger UI calls
//! (jaegertracing/jaeger `apiv3/http_gateway.go`, its parameter names in
//! `apiv3/query_parser.go`, its answers in `apiv3/snapshots/`):
//! `/api/v3/services`, `/api/v3/operations`, `/api/v3/traces/{trace_id}`,
//! `/api/v3/traces` and `/api/v3/trace-summaries`. Traces are OTLP JSON
//! (`{"result": {"resourceSpans": …}}`: hex ids, times as decimal strings,
//! enums as numbers, defaults left out); an error is
//! `{"error": {"httpCode", "message"}}`.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::model;
use super::otlp_json;
use super::params::{self, Params};
use super::read::{now_micros, rows_by_trace, SERVICES_LOOKBACK_MICROS};
use crate::api::error::ApiError;
use crate::api::state::{engine, AppState};
use crate::query::search::TraceSearch;
use crate::query::QueryError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v3/services", get(services))
        .route("/api/v3/operations", get(operations))
        .route("/api/v3/traces", get(find_traces))
        .route("/api/v3/traces/{trace_id}", get(get_trace))
        .route("/api/v3/trace-summaries", get(trace_summaries))
}

/// `{"error": {"httpCode": …, "message": …}}`, as the gateway writes it.
pub struct V3Error {
    status: StatusCode,
    message: String,
}

impl V3Error {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for V3Error {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                http_code: self.status.as_u16(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<QueryError> for V3Error {
    fn from(e: QueryError) -> Self {
        tracing::info!(error = %e, "Jaeger api_v3 query failed");
        ApiError::from(e).into()
    }
}

impl From<ApiError> for V3Error {
    fn from(e: ApiError) -> Self {
        Self {
            status: e.status,
            message: e.message,
        }
    }
}

/// The canonical parameter's value, or else the deprecated one's, with the
/// name it was read under.
fn param<'a>(
    p: &'a Params,
    canonical: &'static str,
    deprecated: &'static str,
) -> Option<(&'a str, &'static str)> {
    p.get(canonical)
        .map(|v| (v, canonical))
        .or_else(|| p.get(deprecated).map(|v| (v, deprecated)))
}

fn rfc3339_micros(value: &str, name: &str) -> Result<i64, V3Error> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_micros())
        .map_err(|e| V3Error::bad(format!("malformed parameter {name}: {e}")))
}

/// The search of `/api/v3/traces` and `/api/v3/trace-summaries`.
fn find_query(raw: Option<&str>) -> Result<TraceSearch, V3Error> {
    let p = Params::parse(raw);
    let mut q = TraceSearch {
        service: param(&p, "query.serviceName", "query.service_name").map(|(v, _)| v.to_string()),
        name: param(&p, "query.operationName", "query.operation_name").map(|(v, _)| v.to_string()),
        limit: params::DEFAULT_LIMIT,
        ..Default::default()
    };
    if let Some(attrs) = p.get("query.attributes") {
        let map: BTreeMap<String, String> = serde_json::from_str(attrs)
            .map_err(|e| V3Error::bad(format!("malformed parameter query.attributes: {e}")))?;
        params::search_tags(&mut q, map);
    }
    let min = param(&p, "query.startTimeMin", "query.start_time_min");
    let max = param(&p, "query.startTimeMax", "query.start_time_max");
    let (Some((min, min_name)), Some((max, max_name))) = (min, max) else {
        return Err(V3Error::bad(
            "query.startTimeMin and query.startTimeMax are required",
        ));
    };
    q.from_micros = rfc3339_micros(min, min_name)?;
    q.to_micros = rfc3339_micros(max, max_name)?;
    if q.from_micros >= q.to_micros {
        return Err(V3Error::bad(
            "query.startTimeMin must be before query.startTimeMax",
        ));
    }
    let depth = param(&p, "query.searchDepth", "query.search_depth")
        .or_else(|| p.get("query.num_traces").map(|v| (v, "query.num_traces")));
    if let Some((n, name)) = depth {
        let n: i64 = n
            .parse()
            .map_err(|e| V3Error::bad(format!("malformed parameter {name}: {e}")))?;
        q.limit = usize::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .map_or(params::DEFAULT_LIMIT, |n| n.min(params::MAX_LIMIT));
    }
    for (canonical, deprecated, slot) in [
        (
            "query.durationMin",
            "query.duration_min",
            &mut q.min_duration_ms,
        ),
        (
            "query.durationMax",
            "query.duration_max",
            &mut q.max_duration_ms,
        ),
    ] {
        if let Some((d, name)) = param(&p, canonical, deprecated) {
            let micros = params::go_duration_micros(d)
                .map_err(|e| V3Error::bad(format!("malformed parameter {name}: {e}")))?;
            *slot = Some(micros / 1_000.0);
        }
    }
    Ok(q)
}

async fn services(State(state): State<AppState>) -> Result<Response, V3Error> {
    let now = now_micros();
    let list = engine(&state)?
        .services(now - SERVICES_LOOKBACK_MICROS, now + 1)
        .await?;
    let names: Vec<String> = list.into_iter().map(|s| s.service).collect();
    Ok(Json(Services { services: names }).into_response())
}

/// Every operation with its `spanKind` (`internal` when unspecified, as
/// the gateway answers), filtered by `spanKind` when given.
async fn operations(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, V3Error> {
    let p = Params::parse(raw.as_deref());
    let service = p.get("service");
    let kind = param(&p, "spanKind", "span_kind").map(|(k, _)| k.to_ascii_lowercase());
    let now = now_micros();
    let ops = engine(&state)?
        .operations(service, now - SERVICES_LOOKBACK_MICROS, now + 1)
        .await?;
    let mut list: Vec<Operation> = Vec::new();
    for o in ops {
        let span_kind = model::span_kind(&o.kind).unwrap_or("internal");
        if kind.as_deref().is_some_and(|k| k != span_kind) {
            continue;
        }
        let op = Operation {
            name: o.name,
            span_kind,
        };
        if !list.contains(&op) {
            list.push(op);
        }
    }
    Ok(Json(Operations { operations: list }).into_response())
}

fn not_found() -> V3Error {
    V3Error {
        status: StatusCode::NOT_FOUND,
        message: "No traces found".into(),
    }
}

/// The traces of `ids` as one OTLP `TracesData`, or 404 when none is stored.
async fn traces_result(state: &AppState, ids: &[String]) -> Result<Response, V3Error> {
    if ids.is_empty() {
        return Err(not_found());
    }
    let rows = rows_by_trace(state, ids).await?;
    let mut resource_spans = Vec::new();
    for id in ids {
        if let Some(rows) = rows.get(id) {
            resource_spans.extend(otlp_json::resource_spans(rows));
        }
    }
    if resource_spans.is_empty() {
        return Err(not_found());
    }
    Ok(Json(otlp_json::TracesResult::new(resource_spans)).into_response())
}

async fn get_trace(
    State(state): State<AppState>,
    Path(trace_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, V3Error> {
    let p = Params::parse(raw.as_deref());
    for (canonical, deprecated) in [("startTime", "start_time"), ("endTime", "end_time")] {
        if let Some((v, name)) = param(&p, canonical, deprecated) {
            rfc3339_micros(v, name)?;
        }
    }
    let id = params::trace_id(&trace_id)
        .map_err(|e| V3Error::bad(format!("malformed parameter trace_id: {}", e.reason)))?;
    traces_result(&state, std::slice::from_ref(&id)).await
}

async fn find_traces(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, V3Error> {
    let q = find_query(raw.as_deref())?;
    let ids = engine(&state)?.search_ids(&q).await?;
    traces_result(&state, &ids).await
}

/// One summary per trace, as `FindTraceSummariesResponse`.
async fn trace_summaries(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, V3Error> {
    let q = find_query(raw.as_deref())?;
    let found = engine(&state)?.search(&q).await?;
    let summaries: Vec<Summary> = found
        .traces
        .into_iter()
        .map(|t| {
            let start_nanos = (t.start_unix_ms * 1e6).round() as i64;
            let end_nanos = start_nanos + (t.duration_ms * 1e6).round() as i64;
            Summary {
                trace_id: t.trace_id,
                root_service_name: t.root_service,
                root_operation_name: t.root_name,
                min_start_time_unix_nano: start_nanos.to_string(),
                max_end_time_unix_nano: end_nanos.to_string(),
                span_count: t.span_count,
                error_span_count: t.error_count,
                services: t
                    .service_counts
                    .into_iter()
                    .map(|c| ServiceSummary {
                        name: c.name,
                        span_count: c.span_count,
                        error_span_count: c.error_count,
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(Json(Summaries { summaries }).into_response())
}

/// `{"error": {"httpCode", "message"}}`.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorDetail {
    http_code: u16,
    message: String,
}

/// `GET /api/v3/services`.
#[derive(Debug, Serialize)]
struct Services {
    services: Vec<String>,
}

/// `GET /api/v3/operations`: every operation with its `spanKind`, which
/// jaeger-ui's schema requires.
#[derive(Debug, Serialize)]
struct Operations {
    operations: Vec<Operation>,
}

#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct Operation {
    name: String,
    span_kind: &'static str,
}

/// `GET /api/v3/trace-summaries`, as `FindTraceSummariesResponse`.
#[derive(Debug, Serialize)]
struct Summaries {
    summaries: Vec<Summary>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    trace_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    root_service_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    root_operation_name: Option<String>,
    min_start_time_unix_nano: String,
    max_end_time_unix_nano: String,
    span_count: u64,
    error_span_count: u64,
    services: Vec<ServiceSummary>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceSummary {
    name: String,
    span_count: u64,
    error_span_count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_find_query_reads_upstream_names_and_their_deprecated_forms() {
        let q = find_query(Some(
            "query.service_name=shop&query.operationName=op&query.startTimeMin=2026-12-05T00:00:00Z\
             &query.start_time_max=2026-12-05T01:00:00.5Z&query.num_traces=5&query.durationMin=1.5s\
             &query.attributes=%7B%22k%22%3A%22v%22%7D",
        ))
        .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(q.service.as_deref(), Some("shop"));
        assert_eq!(q.name.as_deref(), Some("op"));
        assert_eq!(q.to_micros - q.from_micros, 3_600_500_000);
        assert_eq!(q.limit, 5);
        assert_eq!(q.min_duration_ms, Some(1_500.0));
        assert_eq!(q.attributes, vec![("k".to_string(), "v".to_string())]);
        for (raw, says) in [
            ("query.startTimeMin=2026-12-05T00:00:00Z", "are required"),
            (
                "query.startTimeMin=yesterday&query.startTimeMax=2026-12-05T00:00:00Z",
                "malformed parameter query.startTimeMin",
            ),
            (
                "query.startTimeMin=2026-12-05T01:00:00Z&query.startTimeMax=2026-12-05T00:00:00Z",
                "must be before",
            ),
            (
                "query.startTimeMin=2026-12-05T00:00:00Z&query.startTimeMax=2026-12-05T01:00:00Z&query.search_depth=x",
                "malformed parameter query.search_depth",
            ),
        ] {
            let e = find_query(Some(raw)).err().unwrap_or_else(|| panic!("{raw}"));
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(says), "{raw}: {}", e.message);
        }
    }
}
