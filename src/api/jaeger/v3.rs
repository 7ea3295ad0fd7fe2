//! Jaeger's api_v3 over HTTP, the one the current Jaeger UI calls
//! (jaegertracing/jaeger `apiv3/http_gateway.go`, its parameter names in
//! `apiv3/query_parser.go`, its answers in `apiv3/snapshots/`):
//! `/api/v3/services`, `/api/v3/operations`, `/api/v3/traces/{trace_id}`,
//! `/api/v3/traces` and `/api/v3/trace-summaries`. Traces are OTLP JSON
//! (`{"result": {"resourceSpans": …}}`: hex ids, times as decimal strings,
//! enums as numbers, defaults left out); an error is
//! `{"error": {"httpCode", "message"}}`.

use crate::table::columns as column;
use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode as OtlpStatus};
use serde_json::{json, Map, Value};

use super::model;
use super::model::text;
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
        let body = json!({"error": {"httpCode": self.status.as_u16(), "message": self.message}});
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
    Ok(Json(json!({ "services": names })).into_response())
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
    let mut list: Vec<Value> = Vec::new();
    for o in ops {
        let span_kind = model::span_kind(&o.kind).unwrap_or("internal");
        if kind.as_deref().is_some_and(|k| k != span_kind) {
            continue;
        }
        let op = json!({"name": o.name, "spanKind": span_kind});
        if !list.contains(&op) {
            list.push(op);
        }
    }
    Ok(Json(json!({ "operations": list })).into_response())
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
            resource_spans.extend(otlp_resource_spans(rows));
        }
    }
    if resource_spans.is_empty() {
        return Err(not_found());
    }
    Ok(Json(json!({"result": {"resourceSpans": resource_spans}})).into_response())
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
    let summaries: Vec<Value> = found
        .traces
        .into_iter()
        .map(|t| {
            let start_nanos = (t.start_unix_ms * 1e6).round() as i64;
            let end_nanos = start_nanos + (t.duration_ms * 1e6).round() as i64;
            let mut s = Map::new();
            s.insert("traceId".into(), json!(t.trace_id));
            if let Some(service) = t.root_service {
                s.insert("rootServiceName".into(), json!(service));
            }
            if let Some(name) = t.root_name {
                s.insert("rootOperationName".into(), json!(name));
            }
            s.insert(
                "minStartTimeUnixNano".into(),
                json!(start_nanos.to_string()),
            );
            s.insert("maxEndTimeUnixNano".into(), json!(end_nanos.to_string()));
            s.insert("spanCount".into(), json!(t.span_count));
            s.insert("errorSpanCount".into(), json!(t.error_count));
            s.insert(
                "services".into(),
                Value::Array(
                    t.service_counts
                        .into_iter()
                        .map(|c| {
                            json!({
                                "name": c.name,
                                "spanCount": c.span_count,
                                "errorSpanCount": c.error_count,
                            })
                        })
                        .collect(),
                ),
            );
            Value::Object(s)
        })
        .collect();
    Ok(Json(json!({ "summaries": summaries })).into_response())
}

/// A stored text attribute as an OTLP `AnyValue`, typed as the legacy API
/// types it ([`model::KeyValue::typed`]); int64 as a decimal string,
/// as OTLP JSON writes it.
fn any_value(text: &str) -> Value {
    let tag = model::KeyValue::typed("", text);
    match tag.kind {
        "bool" => json!({"boolValue": tag.value}),
        "int64" => json!({"intValue": text}),
        "float64" => json!({"doubleValue": tag.value}),
        _ => json!({"stringValue": text}),
    }
}

fn key_values(value: Option<&Value>) -> Vec<Value> {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    json!({"key": k, "value": any_value(&text)})
                })
                .collect()
        })
        .unwrap_or_default()
}

fn nanos(value: Option<&Value>) -> String {
    model::timestamp(value)
        .and_then(|t| t.timestamp_nanos_opt())
        .unwrap_or(0)
        .to_string()
}

/// OTLP's enum number for a name the table stores (`SERVER`, `ERROR`):
/// the stored names are the proto's without their prefix
/// ([`crate::otlp::format`]).
fn kind_number(stored: &str) -> i32 {
    SpanKind::from_str_name(&format!("SPAN_KIND_{stored}")).map_or(0, |k| k as i32)
}

fn status_number(stored: &str) -> i32 {
    OtlpStatus::from_str_name(&format!("STATUS_CODE_{stored}")).map_or(0, |c| c as i32)
}

/// The stored links of a span as OTLP JSON `Span.Link`s.
fn otlp_links(stored: Option<&Value>) -> Vec<Value> {
    let Some(links) = stored.and_then(Value::as_array) else {
        return Vec::new();
    };
    links
        .iter()
        .map(|l| {
            let mut link = Map::new();
            for (from, to) in [
                (column::link::TRACE_ID, "traceId"),
                (column::link::SPAN_ID, "spanId"),
            ] {
                link.insert(to.into(), l.get(from).cloned().unwrap_or(json!("")));
            }
            if let Some(state) = l.get(column::link::TRACE_STATE).and_then(Value::as_str) {
                link.insert("traceState".into(), json!(state));
            }
            let attrs = key_values(l.get(column::link::ATTRIBUTES));
            if !attrs.is_empty() {
                link.insert("attributes".into(), Value::Array(attrs));
            }
            Value::Object(link)
        })
        .collect()
}

/// One span in OTLP JSON, default fields left out.
fn otlp_span(row: &Map<String, Value>) -> Value {
    let mut span = Map::new();
    span.insert(
        "traceId".into(),
        json!(text(row, "trace_id").unwrap_or_default()),
    );
    span.insert(
        "spanId".into(),
        json!(text(row, "span_id").unwrap_or_default()),
    );
    if let Some(parent) = text(row, column::PARENT_SPAN_ID) {
        span.insert("parentSpanId".into(), json!(parent));
    }
    span.insert("name".into(), json!(text(row, "name").unwrap_or_default()));
    let kind = kind_number(text(row, column::KIND).unwrap_or_default());
    if kind != 0 {
        span.insert("kind".into(), json!(kind));
    }
    span.insert(
        "startTimeUnixNano".into(),
        json!(nanos(row.get("start_time"))),
    );
    span.insert("endTimeUnixNano".into(), json!(nanos(row.get("end_time"))));
    let mut attributes = key_values(row.get(column::SPAN_ATTRIBUTES));
    if let Some(reason) = text(row, column::SAMPLING_REASON) {
        attributes.push(json!({"key": "sampling.reason", "value": {"stringValue": reason}}));
    }
    if let Some(rate) = row.get(column::SAMPLE_RATE).and_then(Value::as_f64) {
        attributes.push(json!({"key": "sampling.rate", "value": {"doubleValue": rate}}));
    }
    if !attributes.is_empty() {
        span.insert("attributes".into(), Value::Array(attributes));
    }
    let events: Vec<Value> = row
        .get(column::EVENTS)
        .and_then(Value::as_array)
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    let mut event = Map::new();
                    event.insert("timeUnixNano".into(), json!(nanos(e.get("time"))));
                    event.insert("name".into(), e.get("name").cloned().unwrap_or(json!("")));
                    let attrs = key_values(e.get(column::event::ATTRIBUTES));
                    if !attrs.is_empty() {
                        event.insert("attributes".into(), Value::Array(attrs));
                    }
                    Value::Object(event)
                })
                .collect()
        })
        .unwrap_or_default();
    if !events.is_empty() {
        span.insert("events".into(), Value::Array(events));
    }
    let links = otlp_links(row.get(column::LINKS));
    if !links.is_empty() {
        span.insert("links".into(), Value::Array(links));
    }
    let mut status = Map::new();
    if let Some(message) = text(row, column::STATUS_MESSAGE) {
        status.insert("message".into(), json!(message));
    }
    let code = status_number(text(row, column::STATUS_CODE).unwrap_or_default());
    if code != 0 {
        status.insert("code".into(), json!(code));
    }
    span.insert("status".into(), Value::Object(status));
    Value::Object(span)
}

/// The rows of one trace as OTLP `ResourceSpans`: one per resource, one
/// `ScopeSpans` per scope within it, in the order first met.
fn otlp_resource_spans(rows: &[Map<String, Value>]) -> Vec<Value> {
    type Scope = (Option<String>, Option<String>);
    type Scopes = Vec<(Scope, Vec<Value>)>;
    let mut resources: Vec<(Value, Scopes)> = Vec::new();
    for row in rows {
        let resource = row
            .get(column::RESOURCE_ATTRIBUTES)
            .cloned()
            .unwrap_or(Value::Null);
        let scope: Scope = (
            text(row, column::SCOPE_NAME).map(str::to_string),
            text(row, column::SCOPE_VERSION).map(str::to_string),
        );
        let i = match resources.iter().position(|(r, _)| *r == resource) {
            Some(i) => i,
            None => {
                resources.push((resource, Vec::new()));
                resources.len() - 1
            }
        };
        let scopes = &mut resources[i].1;
        let j = match scopes.iter().position(|(s, _)| *s == scope) {
            Some(j) => j,
            None => {
                scopes.push((scope, Vec::new()));
                scopes.len() - 1
            }
        };
        scopes[j].1.push(otlp_span(row));
    }
    resources
        .into_iter()
        .map(|(resource, scopes)| {
            let attrs = key_values(Some(&resource));
            let resource = if attrs.is_empty() {
                json!({})
            } else {
                json!({ "attributes": attrs })
            };
            let scope_spans: Vec<Value> = scopes
                .into_iter()
                .map(|((name, version), spans)| {
                    let mut scope = Map::new();
                    if let Some(name) = name {
                        scope.insert("name".into(), json!(name));
                    }
                    if let Some(version) = version {
                        scope.insert("version".into(), json!(version));
                    }
                    json!({"scope": scope, "spans": spans})
                })
                .collect();
            json!({"resource": resource, "scopeSpans": scope_spans})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_becomes_otlp_json_with_defaults_left_out() {
        let row = json!({
            "trace_id": "00000000000000000000000000000001", "span_id": "0000000000000002",
            "parent_span_id": null, "name": "foobar", "kind": "SERVER",
            "start_time": "2026-12-05T03:00:00.000001+00:00",
            "end_time": "2026-12-05T03:00:00.000002+00:00",
            "status_code": "ERROR", "status_message": null,
            "resource_attributes": {}, "span_attributes": {"n": "5", "ok": "true", "s": "x"},
            "events": [], "scope_name": null, "scope_version": null,
        });
        let rows = vec![row.as_object().cloned().expect("object")];
        let out = otlp_resource_spans(&rows);
        assert_eq!(
            out,
            vec![
                json!({"resource": {}, "scopeSpans": [{"scope": {}, "spans": [{
                "traceId": "00000000000000000000000000000001", "spanId": "0000000000000002",
                "name": "foobar", "kind": 2,
                "startTimeUnixNano": "1796439600000001000", "endTimeUnixNano": "1796439600000002000",
                "attributes": [
                    {"key": "n", "value": {"intValue": "5"}},
                    {"key": "ok", "value": {"boolValue": true}},
                    {"key": "s", "value": {"stringValue": "x"}}],
                "status": {"code": 2}}]}]})
            ]
        );
    }

    #[test]
    fn links_become_otlp_json_links() {
        let stored = json!([
            {"trace_id": "ab".repeat(16), "span_id": "cd".repeat(8), "trace_state": "v=1",
             "attributes": {"count": "3"}},
            {"trace_id": "01".repeat(16), "span_id": "02".repeat(8), "trace_state": null,
             "attributes": {}},
        ]);
        assert_eq!(
            otlp_links(Some(&stored)),
            vec![
                json!({"traceId": "ab".repeat(16), "spanId": "cd".repeat(8), "traceState": "v=1",
                       "attributes": [{"key": "count", "value": {"intValue": "3"}}]}),
                json!({"traceId": "01".repeat(16), "spanId": "02".repeat(8)}),
            ]
        );
        assert!(otlp_links(None).is_empty());
    }

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
