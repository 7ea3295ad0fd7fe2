//! Stored rows as OTLP JSON (`opentelemetry/proto/trace/v1/trace.proto`
//! in its JSON mapping: hex ids, times as decimal strings, enums as
//! numbers, default fields left out), as api_v3 answers traces.

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode as OtlpStatus};
use serde::Serialize;
use serde_json::Value;

use super::model::{self, text};
use super::read::Row;
use crate::table::columns as column;

/// `{"result": {"resourceSpans": …}}`, the gateway's answer for traces.
#[derive(Debug, Serialize)]
pub struct TracesResult {
    result: TracesData,
}

impl TracesResult {
    pub fn new(resource_spans: Vec<ResourceSpans>) -> Self {
        Self {
            result: TracesData { resource_spans },
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TracesData {
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSpans {
    resource: Resource,
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Debug, Serialize)]
struct Resource {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attributes: Vec<KeyValue>,
}

#[derive(Debug, Serialize)]
struct ScopeSpans {
    scope: Scope,
    spans: Vec<Span>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Scope {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Span {
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<String>,
    name: String,
    #[serde(skip_serializing_if = "is_zero")]
    kind: i32,
    start_time_unix_nano: String,
    end_time_unix_nano: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attributes: Vec<KeyValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    events: Vec<Event>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    links: Vec<Link>,
    status: Status,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    time_unix_nano: String,
    name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attributes: Vec<KeyValue>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_state: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attributes: Vec<KeyValue>,
}

#[derive(Debug, Serialize)]
struct Status {
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    code: i32,
}

#[derive(Debug, Serialize)]
struct KeyValue {
    key: String,
    value: AnyValue,
}

/// One member of OTLP's `AnyValue`; int64 as a decimal string, as OTLP JSON
/// writes it.
#[derive(Debug, Serialize)]
enum AnyValue {
    #[serde(rename = "stringValue")]
    String(String),
    #[serde(rename = "boolValue")]
    Bool(Value),
    #[serde(rename = "intValue")]
    Int(String),
    #[serde(rename = "doubleValue")]
    Double(Value),
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// A stored text attribute as an OTLP `AnyValue`, typed as the legacy API
/// types it ([`model::KeyValue::typed`]).
fn any_value(text: &str) -> AnyValue {
    let tag = model::KeyValue::typed("", text);
    match tag.kind {
        "bool" => AnyValue::Bool(tag.value),
        "int64" => AnyValue::Int(text.to_string()),
        "float64" => AnyValue::Double(tag.value),
        _ => AnyValue::String(text.to_string()),
    }
}

fn key_values(value: Option<&Value>) -> Vec<KeyValue> {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    KeyValue {
                        key: k.clone(),
                        value: any_value(&text),
                    }
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

fn string_at(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The stored links of a span as OTLP `Span.Link`s.
pub fn links(stored: Option<&Value>) -> Vec<Link> {
    let Some(links) = stored.and_then(Value::as_array) else {
        return Vec::new();
    };
    links
        .iter()
        .map(|l| Link {
            trace_id: string_at(l, column::link::TRACE_ID),
            span_id: string_at(l, column::link::SPAN_ID),
            trace_state: l
                .get(column::link::TRACE_STATE)
                .and_then(Value::as_str)
                .map(str::to_string),
            attributes: key_values(l.get(column::link::ATTRIBUTES)),
        })
        .collect()
}

fn events(stored: Option<&Value>) -> Vec<Event> {
    let Some(events) = stored.and_then(Value::as_array) else {
        return Vec::new();
    };
    events
        .iter()
        .map(|e| Event {
            time_unix_nano: nanos(e.get(column::event::TIME)),
            name: string_at(e, column::event::NAME),
            attributes: key_values(e.get(column::event::ATTRIBUTES)),
        })
        .collect()
}

/// One span, with `sampling.reason` and `sampling.rate` among its
/// attributes so that a viewer shows why it was kept.
fn span(row: &Row) -> Span {
    let owned = |c: &str| text(row, c).map(str::to_string);
    let mut attributes = key_values(row.get(column::SPAN_ATTRIBUTES));
    if let Some(reason) = owned(column::SAMPLING_REASON) {
        attributes.push(KeyValue {
            key: "sampling.reason".into(),
            value: AnyValue::String(reason),
        });
    }
    if let Some(rate) = row.get(column::SAMPLE_RATE).and_then(Value::as_f64) {
        attributes.push(KeyValue {
            key: "sampling.rate".into(),
            value: AnyValue::Double(Value::from(rate)),
        });
    }
    Span {
        trace_id: owned(column::TRACE_ID).unwrap_or_default(),
        span_id: owned(column::SPAN_ID).unwrap_or_default(),
        parent_span_id: owned(column::PARENT_SPAN_ID),
        name: owned(column::NAME).unwrap_or_default(),
        kind: kind_number(text(row, column::KIND).unwrap_or_default()),
        start_time_unix_nano: nanos(row.get(column::START_TIME)),
        end_time_unix_nano: nanos(row.get(column::END_TIME)),
        attributes,
        events: events(row.get(column::EVENTS)),
        links: links(row.get(column::LINKS)),
        status: Status {
            message: owned(column::STATUS_MESSAGE),
            code: status_number(text(row, column::STATUS_CODE).unwrap_or_default()),
        },
    }
}

/// The rows of one trace as OTLP `ResourceSpans`: one per resource, one
/// `ScopeSpans` per scope within it, in the order first met.
pub fn resource_spans(rows: &[Row]) -> Vec<ResourceSpans> {
    let mut resources: Vec<(Value, Vec<ScopeSpans>)> = Vec::new();
    for row in rows {
        let resource = row
            .get(column::RESOURCE_ATTRIBUTES)
            .cloned()
            .unwrap_or(Value::Null);
        let scope = Scope {
            name: text(row, column::SCOPE_NAME).map(str::to_string),
            version: text(row, column::SCOPE_VERSION).map(str::to_string),
        };
        let i = match resources.iter().position(|(r, _)| *r == resource) {
            Some(i) => i,
            None => {
                resources.push((resource, Vec::new()));
                resources.len() - 1
            }
        };
        let scopes = &mut resources[i].1;
        let j = match scopes.iter().position(|s| s.scope == scope) {
            Some(j) => j,
            None => {
                scopes.push(ScopeSpans {
                    scope,
                    spans: Vec::new(),
                });
                scopes.len() - 1
            }
        };
        scopes[j].spans.push(span(row));
    }
    resources
        .into_iter()
        .map(|(resource, scope_spans)| ResourceSpans {
            resource: Resource {
                attributes: key_values(Some(&resource)),
            },
            scope_spans,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let out = serde_json::to_value(resource_spans(&rows)).expect("serializes");
        assert_eq!(
            out,
            json!(vec![
                json!({"resource": {}, "scopeSpans": [{"scope": {}, "spans": [{
                "traceId": "00000000000000000000000000000001", "spanId": "0000000000000002",
                "name": "foobar", "kind": 2,
                "startTimeUnixNano": "1796439600000001000", "endTimeUnixNano": "1796439600000002000",
                "attributes": [
                    {"key": "n", "value": {"intValue": "5"}},
                    {"key": "ok", "value": {"boolValue": true}},
                    {"key": "s", "value": {"stringValue": "x"}}],
                "status": {"code": 2}}]}]})
            ])
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
            serde_json::to_value(links(Some(&stored))).expect("serializes"),
            json!([
                json!({"traceId": "ab".repeat(16), "spanId": "cd".repeat(8), "traceState": "v=1",
                       "attributes": [{"key": "count", "value": {"intValue": "3"}}]}),
                json!({"traceId": "01".repeat(16), "spanId": "02".repeat(8)}),
            ])
        );
        assert!(links(None).is_empty());
    }
}
