//! Builds synthetic OTLP requests: the seed traces of `simple_producer` and the
//! fixtures of the unit tests. Shapes follow the OpenTelemetry semantic
//! conventions for HTTP and database spans.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};

/// A string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// An integer attribute.
pub fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// The time origin of [`span`]: 2024-01-01T00:00:00Z, in milliseconds.
pub const SPAN_EPOCH_MS: u64 = 1_704_067_200_000;

/// A minimal span for unit tests: ids from small numbers, times in
/// milliseconds after [`SPAN_EPOCH_MS`].
pub fn span(trace: u8, span_id: u8, start_ms: u64, end_ms: u64, error: bool) -> Span {
    let mut trace_id = vec![0u8; 16];
    trace_id[15] = trace;
    let mut sid = vec![0u8; 8];
    sid[7] = span_id;
    Span {
        trace_id,
        span_id: sid,
        name: format!("op-{span_id}"),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: (SPAN_EPOCH_MS + start_ms) * 1_000_000,
        end_time_unix_nano: (SPAN_EPOCH_MS + end_ms) * 1_000_000,
        status: error.then(|| Status {
            message: "boom".into(),
            code: status::StatusCode::Error as i32,
        }),
        ..Default::default()
    }
}

/// The spans of one service (one `ResourceSpans`).
pub struct ResourceDef {
    pub service: String,
    pub spans: Vec<Span>,
}

impl ResourceDef {
    pub fn new(service: &str, spans: Vec<Span>) -> Self {
        Self {
            service: service.to_string(),
            spans,
        }
    }
}

/// Wraps spans into an `ExportTraceServiceRequest`, one `ResourceSpans` per service.
pub fn request(resources: Vec<ResourceDef>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: resources
            .into_iter()
            .map(|r| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", &r.service),
                        kv("deployment.environment", "local"),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "tail-sampling-selector.synth".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: r.spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

/// What a synthetic trace looks like.
#[derive(Debug, Clone)]
pub struct TraceSpec {
    pub trace_id: [u8; 16],
    pub service: String,
    pub spans: usize,
    pub error: bool,
    /// Start of the root span, Unix nanoseconds.
    pub start_unix_nano: u64,
    pub duration_ms: u64,
}

/// Builds one trace of an HTTP service: a server root span with client and
/// database children. The error, if any, is on the last child and the root.
pub fn trace(spec: &TraceSpec) -> Vec<Span> {
    let n = spec.spans.max(1);
    let total = spec.duration_ms.max(1) * 1_000_000;
    let root_id = span_id_for(&spec.trace_id, 0);
    (0..n)
        .map(|i| {
            let is_root = i == 0;
            // Children share the root's window, each a slice of it.
            let (start, end) = if is_root {
                (spec.start_unix_nano, spec.start_unix_nano + total)
            } else {
                let slot = total / n as u64;
                let s = spec.start_unix_nano + slot * i as u64;
                (s, s + slot.max(1))
            };
            let failing = spec.error && (is_root || i == n - 1);
            let mut attributes = if is_root {
                vec![
                    kv("http.request.method", "POST"),
                    kv("http.route", "/checkout"),
                    kv("url.path", "/checkout"),
                    kv_int("http.response.status_code", if failing { 500 } else { 200 }),
                ]
            } else if i % 2 == 1 {
                vec![
                    kv("db.system", "postgresql"),
                    kv("db.operation.name", "SELECT"),
                    kv("db.collection.name", "orders"),
                ]
            } else {
                vec![
                    kv("http.request.method", "GET"),
                    kv("server.address", "inventory"),
                    kv_int("http.response.status_code", if failing { 503 } else { 200 }),
                ]
            };
            attributes.push(kv_int("span.index", i as i64));
            Span {
                trace_id: spec.trace_id.to_vec(),
                span_id: span_id_for(&spec.trace_id, i).to_vec(),
                parent_span_id: if is_root { vec![] } else { root_id.to_vec() },
                name: if is_root {
                    "POST /checkout".into()
                } else if i % 2 == 1 {
                    "SELECT orders".into()
                } else {
                    "GET /inventory".into()
                },
                kind: if is_root {
                    span::SpanKind::Server as i32
                } else {
                    span::SpanKind::Client as i32
                },
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                status: Some(Status {
                    message: if failing {
                        "internal error".into()
                    } else {
                        String::new()
                    },
                    code: if failing {
                        status::StatusCode::Error as i32
                    } else {
                        status::StatusCode::Ok as i32
                    },
                }),
                ..Default::default()
            }
        })
        .collect()
}

/// A span id derived from the trace id and the span's index: unique and non-zero.
pub fn span_id_for(trace_id: &[u8; 16], index: usize) -> [u8; 8] {
    let mut id = [0u8; 8];
    id.copy_from_slice(&trace_id[8..]);
    id[0] ^= (index as u8).wrapping_add(1);
    id[1] ^= ((index >> 8) as u8) | 0x80;
    id
}

/// The span records the ingest scan makes of one synthetic trace, with one
/// more attribute on the root span: the fixture of rule and policy tests.
pub fn records(spec: &TraceSpec, root_attribute: (&str, &str)) -> Vec<crate::model::SpanRecord> {
    use prost::Message;
    let mut spans = trace(spec);
    spans[0]
        .attributes
        .push(kv(root_attribute.0, root_attribute.1));
    let req = request(vec![ResourceDef::new(&spec.service, spans)]);
    crate::otlp::decode::decode_message(bytes::Bytes::from(req.encode_to_vec()), 1 << 20)
        .map(|d| d.spans.into_iter().map(|(_, r)| r).collect())
        .unwrap_or_default()
}
