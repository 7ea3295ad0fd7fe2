//! Jaeger's UI model (`internal/uimodel` in jaegertracing/jaeger), field for
//! field, and the mapping from the table's rows to it, as Jaeger's OTLP
//! translation does: one process per resource, the parent as a `CHILD_OF`
//! reference, times in microseconds, events as logs, and the tags that
//! translation adds (`span.kind`, `otel.status_code`, `error`,
//! `otel.scope.*`), plus why the trace was kept (`sampling.*`).

use crate::table::columns as column;
use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

/// `{"data", "total", "limit", "offset", "errors"}`: every answer of the
/// legacy API.
#[derive(Debug, Serialize)]
pub struct Structured<T: Serialize> {
    pub data: T,
    pub total: usize,
    pub limit: usize,
    pub offset: usize,
    pub errors: Option<Vec<StructuredError>>,
}

impl<T: Serialize> Structured<T> {
    pub fn new(data: T, total: usize) -> Self {
        Self {
            data,
            total,
            limit: 0,
            offset: 0,
            errors: None,
        }
    }
}

/// Upstream also has `traceID`, set only when a lookup of several ids
/// misses one; this API looks up one id per call.
#[derive(Debug, Serialize)]
pub struct StructuredError {
    #[serde(skip_serializing_if = "is_zero")]
    pub code: u16,
    pub msg: String,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Trace {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    pub spans: Vec<Span>,
    pub processes: BTreeMap<String, Process>,
    pub warnings: Option<Vec<String>>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Span {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
    #[serde(rename = "operationName")]
    pub operation_name: String,
    pub references: Vec<Reference>,
    /// Unix microseconds.
    #[serde(rename = "startTime")]
    pub start_time: i64,
    /// Microseconds.
    pub duration: i64,
    pub tags: Vec<KeyValue>,
    pub logs: Vec<Log>,
    #[serde(rename = "processID")]
    pub process_id: String,
    pub warnings: Option<Vec<String>>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Reference {
    #[serde(rename = "refType")]
    pub ref_type: &'static str,
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Process {
    #[serde(rename = "serviceName")]
    pub service_name: String,
    pub tags: Vec<KeyValue>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Log {
    pub timestamp: i64,
    pub fields: Vec<KeyValue>,
}

#[derive(Debug, Serialize, PartialEq, Clone)]
pub struct KeyValue {
    pub key: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: Value,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct DependencyLink {
    pub parent: String,
    pub child: String,
    #[serde(rename = "callCount")]
    pub call_count: u64,
}

impl KeyValue {
    pub fn string(key: &str, value: &str) -> Self {
        Self {
            key: key.to_string(),
            kind: "string",
            value: Value::String(value.to_string()),
        }
    }

    /// A stored attribute as a typed tag. The table keeps attribute values
    /// as text, so the type is read back from it: `true`/`false` as bool, a
    /// whole number as int64, a decimal as float64, the rest as string.
    pub fn typed(key: &str, text: &str) -> Self {
        let (kind, value) = match text {
            "true" => ("bool", Value::Bool(true)),
            "false" => ("bool", Value::Bool(false)),
            _ => typed_number(text).unwrap_or(("string", Value::String(text.to_string()))),
        };
        Self {
            key: key.to_string(),
            kind,
            value,
        }
    }
}

/// A number as OTLP's JSON would have written it: no sign but `-`, no
/// leading zeros, and a float only when it reads back to the same text.
fn typed_number(text: &str) -> Option<(&'static str, Value)> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let first = digits.bytes().next()?;
    if !first.is_ascii_digit()
        || (first == b'0' && digits.len() > 1 && digits.as_bytes()[1] != b'.')
    {
        return None;
    }
    if digits.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<i64>().ok().map(|n| ("int64", Value::from(n)));
    }
    let f = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
    (f.to_string() == text).then(|| ("float64", Value::from(f)))
}

/// A span as the table row (column → value) that holds it.
type Row = Map<String, Value>;

/// A text column of a row; none when null or empty.
pub(super) fn text<'a>(row: &'a Row, column: &str) -> Option<&'a str> {
    row.get(column)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A stored timestamp (RFC 3339, as the lookup writes it).
pub(super) fn timestamp(value: Option<&Value>) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    value
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
}

/// A stored timestamp in Unix microseconds.
fn micros(value: Option<&Value>) -> i64 {
    timestamp(value).map_or(0, |t| t.timestamp_micros())
}

fn attributes(value: Option<&Value>) -> Vec<KeyValue> {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => KeyValue::typed(k, s),
                    other => KeyValue::typed(k, &other.to_string()),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// OTLP's span kind in Jaeger's words; none for an unspecified kind.
pub fn span_kind(stored: &str) -> Option<&'static str> {
    match stored {
        "SERVER" => Some("server"),
        "CLIENT" => Some("client"),
        "PRODUCER" => Some("producer"),
        "CONSUMER" => Some("consumer"),
        "INTERNAL" => Some("internal"),
        _ => None,
    }
}

/// The tags of a span: its scope, its attributes, then the ones Jaeger's
/// OTLP translation derives, then why the trace was kept.
fn span_tags(row: &Row) -> Vec<KeyValue> {
    let mut tags = Vec::new();
    if let Some(name) = text(row, column::SCOPE_NAME) {
        tags.push(KeyValue::string("otel.scope.name", name));
    }
    if let Some(version) = text(row, column::SCOPE_VERSION) {
        tags.push(KeyValue::string("otel.scope.version", version));
    }
    tags.extend(attributes(row.get(column::SPAN_ATTRIBUTES)));
    if let Some(kind) = text(row, column::KIND).and_then(span_kind) {
        tags.push(KeyValue::string("span.kind", kind));
    }
    match text(row, column::STATUS_CODE) {
        Some("ERROR") => {
            tags.push(KeyValue::string("otel.status_code", "ERROR"));
            tags.push(KeyValue {
                key: "error".into(),
                kind: "bool",
                value: Value::Bool(true),
            });
        }
        Some("OK") => tags.push(KeyValue::string("otel.status_code", "OK")),
        _ => {}
    }
    if let Some(message) = text(row, column::STATUS_MESSAGE) {
        tags.push(KeyValue::string("otel.status_description", message));
    }
    if let Some(reason) = text(row, column::SAMPLING_REASON) {
        tags.push(KeyValue::string("sampling.reason", reason));
    }
    if let Some(rate) = row.get(column::SAMPLE_RATE).and_then(Value::as_f64) {
        tags.push(KeyValue {
            key: "sampling.rate".into(),
            kind: "float64",
            value: Value::from(rate),
        });
    }
    if let Some(rule) = text(row, column::SAMPLING_RULE_ID) {
        tags.push(KeyValue::string("sampling.rule_id", rule));
    }
    tags
}

const CHILD_OF: &str = "CHILD_OF";
const FOLLOWS_FROM: &str = "FOLLOWS_FROM";

/// The parent as a `CHILD_OF` reference, then each link as a
/// `FOLLOWS_FROM` one, as Jaeger's OTLP translation makes them.
fn references(trace_id: &str, row: &Row) -> Vec<Reference> {
    let parent = text(row, column::PARENT_SPAN_ID).map(|parent| Reference {
        ref_type: CHILD_OF,
        trace_id: trace_id.to_string(),
        span_id: parent.to_string(),
    });
    let links = row
        .get(column::LINKS)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|link| {
            Some(Reference {
                ref_type: FOLLOWS_FROM,
                trace_id: link.get(column::link::TRACE_ID)?.as_str()?.to_string(),
                span_id: link.get(column::link::SPAN_ID)?.as_str()?.to_string(),
            })
        });
    parent.into_iter().chain(links).collect()
}

/// Events as logs: `event` = the event's name, then its attributes.
fn logs(row: &Row) -> Vec<Log> {
    let Some(events) = row.get(column::EVENTS).and_then(Value::as_array) else {
        return Vec::new();
    };
    events
        .iter()
        .filter_map(Value::as_object)
        .map(|e| {
            let mut fields = vec![KeyValue::string(
                "event",
                e.get(column::event::NAME)
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            )];
            fields.extend(attributes(e.get(column::event::ATTRIBUTES)));
            Log {
                timestamp: micros(e.get(column::event::TIME)),
                fields,
            }
        })
        .collect()
}

/// The process of a row: its service and the other resource attributes.
fn process(row: &Row) -> Process {
    let mut tags = attributes(row.get(column::RESOURCE_ATTRIBUTES));
    tags.retain(|t| t.key != "service.name");
    Process {
        service_name: text(row, column::SERVICE_NAME)
            .unwrap_or("unknown_service")
            .to_string(),
        tags,
    }
}

/// The rows of one trace as a Jaeger trace: the root span first (a span
/// with no parent, or else the earliest), the others by start time.
pub fn trace(trace_id: &str, rows: &[Row]) -> Trace {
    // Processes in the order first met: the `n`th is `p{n}`.
    let mut order: Vec<Process> = Vec::new();
    let mut spans: Vec<Span> = rows
        .iter()
        .map(|row| {
            let p = process(row);
            let index = order
                .iter()
                .position(|known| *known == p)
                .unwrap_or_else(|| {
                    order.push(p);
                    order.len() - 1
                });
            let process_id = process_id(index);
            let start = micros(row.get(column::START_TIME));
            let end = micros(row.get(column::END_TIME));
            let references = references(trace_id, row);
            Span {
                trace_id: trace_id.to_string(),
                span_id: text(row, column::SPAN_ID).unwrap_or_default().to_string(),
                operation_name: text(row, column::NAME).unwrap_or_default().to_string(),
                references,
                start_time: start,
                duration: (end - start).max(0),
                tags: span_tags(row),
                logs: logs(row),
                process_id,
                warnings: None,
            }
        })
        .collect();
    let has_parent = |s: &Span| s.references.iter().any(|r| r.ref_type == CHILD_OF);
    spans.sort_by(|a, b| {
        (has_parent(a), a.start_time, &a.span_id).cmp(&(has_parent(b), b.start_time, &b.span_id))
    });
    Trace {
        trace_id: trace_id.to_string(),
        spans,
        processes: order
            .into_iter()
            .enumerate()
            .map(|(i, p)| (process_id(i), p))
            .collect(),
        warnings: None,
    }
}

fn process_id(index: usize) -> String {
    format!("p{}", index + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Row {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn a_row_maps_as_jaegers_otlp_translation_does() {
        let id = "0123456789abcdef0123456789abcdef";
        let root = row(json!({
            "trace_id": id, "span_id": "00000000000000aa", "parent_span_id": null,
            "name": "GET /checkout", "kind": "SERVER", "service_name": "shop",
            "start_time": "2026-12-05T03:00:00.000100+00:00",
            "end_time": "2026-12-05T03:00:00.020100+00:00",
            "status_code": "ERROR", "status_message": "boom",
            "resource_attributes": {"service.name": "shop", "host.name": "h1"},
            "span_attributes": {"http.status_code": "500", "retry": "true", "ratio": "0.5", "zip": "007", "note": "x"},
            "events": [{"name": "exception", "time": "2026-12-05T03:00:00.010000+00:00",
                        "attributes": {"exception.type": "Boom"}}],
            "scope_name": "lib", "scope_version": "1.2",
            "sampling_reason": "error", "sampling_rule_id": null, "sample_rate": 1.0,
            "links": [{"trace_id": "ff".repeat(16), "span_id": "00000000000000cc",
                       "trace_state": null, "attributes": {}}],
        }));
        let child = row(json!({
            "trace_id": id, "span_id": "00000000000000bb", "parent_span_id": "00000000000000aa",
            "name": "SELECT", "kind": "CLIENT", "service_name": "db",
            "start_time": "2026-12-05T03:00:00.001000+00:00",
            "end_time": "2026-12-05T03:00:00.002000+00:00",
            "status_code": "UNSET", "resource_attributes": {"service.name": "db"},
            "sampling_reason": "error",
        }));
        // The child first: the root, with a link but no parent, still comes
        // out first.
        let t = trace(id, &[child, root]);
        let out = serde_json::to_value(&t).expect("json");
        let first = &out["spans"][0];
        assert_eq!(first["spanID"], "00000000000000aa");
        assert_eq!(
            first["references"],
            json!([{"refType": "FOLLOWS_FROM", "traceID": "ff".repeat(16), "spanID": "00000000000000cc"}])
        );
        assert_eq!(first["startTime"], 1_796_439_600_000_100_i64);
        assert_eq!(first["duration"], 20_000);
        assert_eq!(first["warnings"], Value::Null);
        let tags: BTreeMap<String, (String, Value)> = first["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .map(|t| {
                (
                    t["key"].as_str().unwrap_or_default().to_string(),
                    (
                        t["type"].as_str().unwrap_or_default().to_string(),
                        t["value"].clone(),
                    ),
                )
            })
            .collect();
        let tag = |k: &str| tags.get(k).cloned().unwrap_or_else(|| panic!("tag {k}"));
        assert_eq!(tag("http.status_code"), ("int64".into(), json!(500)));
        assert_eq!(tag("retry"), ("bool".into(), json!(true)));
        assert_eq!(tag("ratio"), ("float64".into(), json!(0.5)));
        assert_eq!(tag("zip"), ("string".into(), json!("007")));
        assert_eq!(tag("span.kind"), ("string".into(), json!("server")));
        assert_eq!(tag("otel.status_code"), ("string".into(), json!("ERROR")));
        assert_eq!(tag("error"), ("bool".into(), json!(true)));
        assert_eq!(
            tag("otel.status_description"),
            ("string".into(), json!("boom"))
        );
        assert_eq!(tag("otel.scope.name"), ("string".into(), json!("lib")));
        assert_eq!(tag("otel.scope.version"), ("string".into(), json!("1.2")));
        assert_eq!(tag("sampling.reason"), ("string".into(), json!("error")));
        assert_eq!(tag("sampling.rate"), ("float64".into(), json!(1.0)));
        assert_eq!(
            first["logs"],
            json!([{"timestamp": 1_796_439_600_010_000_i64, "fields": [
                {"key": "event", "type": "string", "value": "exception"},
                {"key": "exception.type", "type": "string", "value": "Boom"}]}])
        );
        let second = &out["spans"][1];
        assert_eq!(
            second["references"],
            json!([{"refType": "CHILD_OF", "traceID": id, "spanID": "00000000000000aa"}])
        );
        assert!(!second["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .any(|t| t["key"] == "otel.status_code" || t["key"] == "error"));
        let pid = |s: &Value| s["processID"].as_str().unwrap_or_default().to_string();
        assert_ne!(pid(first), pid(second), "one process per resource");
        assert_eq!(
            out["processes"][pid(first)],
            json!({"serviceName": "shop", "tags": [{"key": "host.name", "type": "string", "value": "h1"}]})
        );
        assert_eq!(out["processes"][pid(second)]["tags"], json!([]));
    }

    #[test]
    fn numbers_are_typed_only_when_they_read_back_the_same() {
        for (text, kind) in [
            ("0", "int64"),
            ("-12", "int64"),
            ("1.5", "float64"),
            ("0.25", "float64"),
            ("007", "string"),
            ("+1", "string"),
            ("1e3", "string"),
            ("99999999999999999999", "string"),
            ("1.50", "string"),
            ("", "string"),
            ("NaN", "string"),
            ("True", "string"),
        ] {
            assert_eq!(KeyValue::typed("k", text).kind, kind, "{text}");
        }
    }
}
