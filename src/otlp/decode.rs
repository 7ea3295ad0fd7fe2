//! Turns one Kafka message (an OTLP `ExportTraceServiceRequest`) into span records.
//!
//! The hot path never builds the full prost object tree. A single pass over the
//! protobuf wire format finds each span, reads only what the policies need
//! (trace id, timestamps, status) and keeps the span as a zero-copy slice of the
//! message. Spans are decoded fully only when their trace is kept, which is the
//! minority. OTLP JSON is converted to protobuf once and then takes the same path.

use std::sync::Arc;

use bytes::Bytes;

use super::fields::{request, resource, resource_spans, scope_spans, span};
use super::format::find_attribute;
use super::wire::{read_status, Fields, Value, WireError};
use crate::model::{Lease, Origin, SpanRecord, TraceId};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

/// A decoded message: every span with its trace id, in message order.
#[derive(Debug, Default)]
pub struct DecodedMessage {
    pub spans: Vec<(TraceId, SpanRecord)>,
    /// Spans skipped because their trace id was missing, zero or not 16 bytes.
    pub invalid_trace_id_spans: usize,
    /// Spans skipped because their times are absurd (see [`timestamps_are_sane`]).
    pub invalid_timestamp_spans: usize,
}

/// Earliest start time accepted: 2000-01-01T00:00:00Z.
pub const MIN_START_UNIX_NANO: u64 = 946_684_800_000_000_000;
/// Latest start time accepted: 2100-01-01T00:00:00Z.
pub const MAX_START_UNIX_NANO: u64 = 4_102_444_800_000_000_000;

/// A span must start between 2000 and 2100 and must not end before it starts.
/// Anything else (a zero start, an end of 0, times in seconds instead of
/// nanoseconds) would land in a nonsense day partition and corrupt latency.
pub fn timestamps_are_sane(start_unix_nano: u64, end_unix_nano: u64) -> bool {
    (MIN_START_UNIX_NANO..MAX_START_UNIX_NANO).contains(&start_unix_nano)
        && end_unix_nano >= start_unix_nano
}

/// What the scan made of one span.
enum Scanned {
    Span(TraceId, SpanRecord),
    InvalidTraceId,
    InvalidTimestamp,
}

/// Why a message could not be decoded. `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid OTLP protobuf: {0}")]
    Protobuf(WireError),
    #[error("invalid OTLP JSON: {0}")]
    Json(serde_json::Error),
    /// Valid JSON whose protobuf re-encoding the scan still refused.
    #[error("invalid OTLP JSON: the re-encoded request is invalid: {0}")]
    JsonReencoded(WireError),
}

impl DecodeError {
    /// The `reason` label of `tail_sampling_messages_invalid_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Protobuf(_) => "protobuf",
            DecodeError::Json(_) | DecodeError::JsonReencoded(_) => "json",
        }
    }
}

/// Decodes one message, in protobuf or OTLP JSON.
///
/// JSON is recognised by its first non-blank byte, `{`. That byte can never start
/// a valid `ExportTraceServiceRequest` in protobuf (it would be field 15 with the
/// deprecated group wire type), so the check is unambiguous.
pub fn decode_message(payload: Bytes, max_bytes: usize) -> Result<DecodedMessage, DecodeError> {
    if payload.is_empty() {
        return Err(DecodeError::Empty);
    }
    if payload.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit: max_bytes,
        });
    }
    let first = payload.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first == Some(b'{') {
        let request: ExportTraceServiceRequest = serde_json::from_slice(&payload)?;
        return scan_request(Bytes::from(request.encode_to_vec())).map_err(|e| match e {
            DecodeError::Protobuf(wire) => DecodeError::JsonReencoded(wire),
            other => other,
        });
    }
    scan_request(payload)
}

/// Walks `ExportTraceServiceRequest` → `ResourceSpans` → `ScopeSpans` → `Span`.
fn scan_request(msg: Bytes) -> Result<DecodedMessage, DecodeError> {
    let mut out = DecodedMessage::default();
    for field in Fields::new(&msg) {
        let field = field?;
        if field.number == request::RESOURCE_SPANS {
            if let Value::Len(range) = field.value {
                scan_resource_spans(&msg, range, &mut out)?;
            }
        }
    }
    Ok(out)
}

fn scan_resource_spans(
    msg: &Bytes,
    range: (usize, usize),
    out: &mut DecodedMessage,
) -> Result<(), DecodeError> {
    let mut resource = Bytes::new();
    let mut scopes = Vec::new();
    for field in Fields::range(msg, range) {
        let field = field?;
        match (field.number, field.value) {
            (resource_spans::RESOURCE, Value::Len(r)) => resource = msg.slice(r.0..r.1),
            (resource_spans::SCOPE_SPANS, Value::Len(r)) => scopes.push(r),
            _ => {}
        }
    }
    // Once per resource, for every scope under it. A resource that does not
    // parse has no service name; the spans are still read, as before.
    let service_name: Box<str> =
        match find_attribute(&resource, resource::ATTRIBUTES, "service.name") {
            Some(Ok(raw)) => String::from_utf8_lossy(raw).into(),
            Some(Err(formatted)) => formatted.into(),
            None => "".into(),
        };
    for scope_range in scopes {
        scan_scope_spans(msg, scope_range, &resource, &service_name, out)?;
    }
    Ok(())
}

fn scan_scope_spans(
    msg: &Bytes,
    range: (usize, usize),
    resource: &Bytes,
    service_name: &str,
    out: &mut DecodedMessage,
) -> Result<(), DecodeError> {
    let mut scope = Bytes::new();
    let mut spans = Vec::new();
    for field in Fields::range(msg, range) {
        let field = field?;
        match (field.number, field.value) {
            (scope_spans::SCOPE, Value::Len(r)) => scope = msg.slice(r.0..r.1),
            (scope_spans::SPANS, Value::Len(r)) => spans.push(r),
            _ => {}
        }
    }
    if spans.is_empty() {
        return Ok(());
    }
    let origin = Arc::new(Origin {
        service_name: service_name.into(),
        resource: resource.clone(),
        scope,
    });
    out.spans.reserve(spans.len());
    for span_range in spans {
        match scan_span(msg, span_range, &origin)? {
            Scanned::Span(id, record) => out.spans.push((id, record)),
            Scanned::InvalidTraceId => out.invalid_trace_id_spans += 1,
            Scanned::InvalidTimestamp => out.invalid_timestamp_spans += 1,
        }
    }
    Ok(())
}

/// Reads the policy fields of one span and checks its trace id and times.
fn scan_span(
    msg: &Bytes,
    range: (usize, usize),
    origin: &Arc<Origin>,
) -> Result<Scanned, DecodeError> {
    let mut trace_id: Option<TraceId> = None;
    let mut start = 0u64;
    let mut end = 0u64;
    let mut status_code = 0u8;
    let mut kind = 0u8;
    let mut name_range = (0u32, 0u32);
    let mut is_root = true;
    // Offsets into the span's own slice.
    let local = |r: (usize, usize)| ((r.0 - range.0) as u32, (r.1 - range.0) as u32);
    for field in Fields::range(msg, range) {
        let field = field?;
        match (field.number, field.value) {
            (span::TRACE_ID, Value::Len(r)) => trace_id = msg[r.0..r.1].try_into().ok(),
            (span::PARENT_SPAN_ID, Value::Len(r)) => is_root = r.0 == r.1,
            (span::NAME, Value::Len(r)) => name_range = local(r),
            (span::KIND, Value::Varint(v)) => kind = v.min(u8::MAX as u64) as u8,
            (span::START_TIME_UNIX_NANO, Value::Fixed64(v)) => start = v,
            (span::END_TIME_UNIX_NANO, Value::Fixed64(v)) => end = v,
            (span::STATUS, Value::Len(r)) => status_code = read_status(msg, r)?.code,
            _ => {}
        }
    }
    let Some(trace_id) = trace_id.filter(|id| id.iter().any(|b| *b != 0)) else {
        return Ok(Scanned::InvalidTraceId);
    };
    if !timestamps_are_sane(start, end) {
        return Ok(Scanned::InvalidTimestamp);
    }
    let name_hash = crate::model::name_hash(
        &msg[range.0 + name_range.0 as usize..range.0 + name_range.1 as usize],
    );
    let record = SpanRecord {
        bytes: msg.slice(range.0..range.1),
        origin: Arc::clone(origin),
        start_unix_nano: start,
        end_unix_nano: end,
        name_range,
        name_hash,
        kind,
        status_code,
        is_root,
        lease: Lease::default(),
    };
    Ok(Scanned::Span(trace_id, record))
}

impl From<WireError> for DecodeError {
    fn from(e: WireError) -> Self {
        DecodeError::Protobuf(e)
    }
}

impl From<serde_json::Error> for DecodeError {
    fn from(e: serde_json::Error) -> Self {
        DecodeError::Json(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::synth::{request, span, ResourceDef};

    const LIMIT: usize = 1 << 20;

    #[test]
    fn protobuf_with_many_traces_and_services() {
        let req = request(vec![
            ResourceDef::new("a", vec![span(1, 1, 0, 10, false), span(2, 2, 5, 7, true)]),
            ResourceDef::new("b", vec![span(1, 3, 3, 30, false)]),
        ]);
        let decoded = decode_message(Bytes::from(req.encode_to_vec()), LIMIT).expect("decode");
        assert_eq!(decoded.spans.len(), 3);
        let ids: Vec<u8> = decoded.spans.iter().map(|(t, _)| t[15]).collect();
        assert_eq!(ids, vec![1, 2, 1]);
        let (_, second) = &decoded.spans[1];
        assert!(second.is_error());
        assert_eq!(second.origin.service_name.as_ref(), "a");
        assert_eq!(decoded.spans[2].1.origin.service_name.as_ref(), "b");
        let epoch_ns = crate::testkit::synth::SPAN_EPOCH_MS * 1_000_000;
        assert_eq!(second.start_unix_nano, epoch_ns + 5_000_000);
        assert_eq!(second.end_unix_nano, epoch_ns + 7_000_000);
        // The kept bytes are a complete span that prost decodes on its own.
        let full = opentelemetry_proto::tonic::trace::v1::Span::decode(second.bytes.clone())
            .expect("span bytes decode");
        assert_eq!(full.span_id[7], 2);
        let resource = opentelemetry_proto::tonic::resource::v1::Resource::decode(
            decoded.spans[2].1.origin.resource.clone(),
        )
        .expect("resource decodes");
        assert_eq!(resource.attributes[0].key, "service.name");
    }

    #[test]
    fn otlp_json_with_hex_ids_and_string_integers() {
        let json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"json-svc"}}]},
          "scopeSpans":[{"scope":{"name":"s"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
          "name":"GET /","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
          "status":{"code":2}}]}]}]}"#;
        let decoded = decode_message(Bytes::from(json), LIMIT).expect("json decodes");
        assert_eq!(decoded.spans.len(), 1);
        let (trace_id, rec) = &decoded.spans[0];
        assert_eq!(hex::encode(trace_id), "5b8efff798038103d269b633813fc60c");
        assert_eq!(rec.start_unix_nano, 1_544_712_660_000_000_000);
        assert!(rec.is_error());
        assert_eq!(rec.name(), "GET /");
        assert_eq!(rec.kind, 2);
        assert!(rec.is_root);
        assert_eq!(rec.origin.service_name.as_ref(), "json-svc");
    }

    #[test]
    fn garbage_and_truncation_are_errors_with_reasons() {
        let err = decode_message(Bytes::from_static(b"\xff\xff\xff garbage"), LIMIT).unwrap_err();
        assert_eq!(err.reason(), "protobuf");
        let err = decode_message(Bytes::from_static(b"{ not json"), LIMIT).unwrap_err();
        assert_eq!(err.reason(), "json");
        let err = decode_message(Bytes::new(), LIMIT).unwrap_err();
        assert_eq!(err.reason(), "empty");
        let err = decode_message(Bytes::from(vec![0u8; 2048]), 1024).unwrap_err();
        assert_eq!(err.reason(), "too_large");

        let req = request(vec![ResourceDef::new("a", vec![span(1, 1, 0, 10, false)])]);
        let bytes = req.encode_to_vec();
        let truncated = Bytes::copy_from_slice(&bytes[..bytes.len() - 3]);
        assert_eq!(
            decode_message(truncated, LIMIT).unwrap_err().reason(),
            "protobuf"
        );
    }

    #[test]
    fn spans_without_a_usable_trace_id_are_counted_not_kept() {
        let mut bad = span(1, 1, 0, 10, false);
        bad.trace_id = vec![0; 16];
        let mut short = span(1, 2, 0, 10, false);
        short.trace_id = vec![1, 2, 3];
        let req = request(vec![ResourceDef::new(
            "a",
            vec![bad, short, span(3, 3, 0, 1, false)],
        )]);
        let decoded = decode_message(Bytes::from(req.encode_to_vec()), LIMIT).expect("decode");
        assert_eq!(decoded.spans.len(), 1);
        assert_eq!(decoded.invalid_trace_id_spans, 2);
    }

    #[test]
    fn spans_with_absurd_times_are_counted_not_kept() {
        let mut zero = span(1, 1, 0, 10, false);
        zero.start_time_unix_nano = 0;
        let mut backwards = span(1, 2, 0, 10, false);
        backwards.end_time_unix_nano = backwards.start_time_unix_nano - 1;
        let mut seconds = span(1, 3, 0, 10, false);
        seconds.start_time_unix_nano /= 1_000_000_000;
        seconds.end_time_unix_nano /= 1_000_000_000;
        let mut far_future = span(1, 4, 0, 10, false);
        far_future.start_time_unix_nano = MAX_START_UNIX_NANO;
        far_future.end_time_unix_nano = MAX_START_UNIX_NANO + 1;
        let req = request(vec![ResourceDef::new(
            "a",
            vec![
                zero,
                backwards,
                seconds,
                far_future,
                span(1, 5, 0, 0, false),
            ],
        )]);
        let decoded = decode_message(Bytes::from(req.encode_to_vec()), LIMIT).expect("decode");
        assert_eq!(decoded.invalid_timestamp_spans, 4);
        assert_eq!(decoded.spans.len(), 1, "a zero-length span is fine");
    }
}

#[cfg(test)]
mod sdk_fixture_tests {
    use super::*;

    /// Bytes the OpenTelemetry Python SDK encoded (tests/python/make_otlp_fixture.py).
    const SDK_BYTES: &[u8] = include_bytes!("../../tests/fixtures/python_sdk_trace.bin");
    const SDK_EXPECTED: &str = include_str!("../../tests/fixtures/python_sdk_trace.json");

    #[test]
    fn decodes_what_the_python_sdk_encoded() {
        let expected: serde_json::Value = serde_json::from_str(SDK_EXPECTED).expect("json");
        let decoded = decode_message(Bytes::from_static(SDK_BYTES), 1 << 20).expect("decodes");
        assert_eq!(
            decoded.spans.len() as u64,
            expected["span_count"].as_u64().expect("n")
        );
        assert_eq!(decoded.invalid_trace_id_spans, 0);
        let of = |id: &str| -> Vec<&SpanRecord> {
            decoded
                .spans
                .iter()
                .filter(|(t, _)| hex::encode(t) == id)
                .map(|(_, s)| s)
                .collect()
        };
        let err = of(expected["error_trace_id"].as_str().expect("id"));
        let ok = of(expected["ok_trace_id"].as_str().expect("id"));
        assert_eq!(
            err.len() as u64,
            expected["error_trace_spans"].as_u64().expect("n")
        );
        assert_eq!(
            ok.len() as u64,
            expected["ok_trace_spans"].as_u64().expect("n")
        );
        assert!(err.iter().any(|s| s.is_error()));
        assert!(ok.iter().all(|s| !s.is_error()));
        assert!(err.iter().all(|s| !s.name().is_empty()));
        assert_eq!(
            err.iter().filter(|s| s.is_root).count(),
            1,
            "one root per trace"
        );
        assert!(err
            .iter()
            .all(|s| s.end_unix_nano >= s.start_unix_nano && s.start_unix_nano > 0));
    }
}
