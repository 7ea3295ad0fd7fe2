//! Kept spans back into OTLP `ExportTraceServiceRequest`s, without decoding
//! them: a span, its resource and its scope are still the bytes the
//! producer encoded, so a request is those bytes with the three levels of
//! framing put around them. What the sampled topic and the forwarders send
//! is thus exactly what the producer sent, span for span.

use std::sync::Arc;

use prost::encoding::{encode_varint, encoded_len_varint};

use super::fields::{request, resource_spans, scope_spans};
use super::wire::{Fields, Value, WireError};
use crate::model::{Origin, SpanRecord};

/// Framing of one length-delimited field: key and length.
fn framing(len: usize) -> usize {
    1 + encoded_len_varint(len as u64)
}

fn put_len(out: &mut Vec<u8>, field: u32, len: usize) {
    encode_varint((u64::from(field) << 3) | 2, out);
    encode_varint(len as u64, out);
}

/// The spans of one origin, in one `ResourceSpans` with one `ScopeSpans`.
struct Group<'a> {
    origin: &'a Arc<Origin>,
    spans: Vec<&'a [u8]>,
}

impl Group<'_> {
    fn scope_spans_len(&self) -> usize {
        let scope = &self.origin.scope;
        let head = if scope.is_empty() {
            0
        } else {
            framing(scope.len()) + scope.len()
        };
        head + self
            .spans
            .iter()
            .map(|s| framing(s.len()) + s.len())
            .sum::<usize>()
    }

    fn resource_spans_len(&self) -> usize {
        let resource = &self.origin.resource;
        let head = if resource.is_empty() {
            0
        } else {
            framing(resource.len()) + resource.len()
        };
        let scope_spans = self.scope_spans_len();
        head + framing(scope_spans) + scope_spans
    }

    fn encoded_len(&self) -> usize {
        let n = self.resource_spans_len();
        framing(n) + n
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_len(out, request::RESOURCE_SPANS, self.resource_spans_len());
        let resource = &self.origin.resource;
        if !resource.is_empty() {
            put_len(out, resource_spans::RESOURCE, resource.len());
            out.extend_from_slice(resource);
        }
        put_len(out, resource_spans::SCOPE_SPANS, self.scope_spans_len());
        let scope = &self.origin.scope;
        if !scope.is_empty() {
            put_len(out, scope_spans::SCOPE, scope.len());
            out.extend_from_slice(scope);
        }
        for span in &self.spans {
            put_len(out, scope_spans::SPANS, span.len());
            out.extend_from_slice(span);
        }
    }
}

/// The spans as `ExportTraceServiceRequest`s of at most `max_bytes` each
/// (a single span bigger than that goes alone). Consecutive spans of one
/// origin share a `ResourceSpans`.
pub fn export_requests(spans: &[SpanRecord], max_bytes: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut size = 0;
    for span in spans {
        let same_origin = groups
            .last()
            .is_some_and(|g| Arc::ptr_eq(g.origin, &span.origin));
        // What the span adds, with room for its group's framing to grow.
        let adds = framing(span.bytes.len()) + span.bytes.len() + 3 * 10;
        let new_group = if same_origin {
            0
        } else {
            span.origin.resource.len() + span.origin.scope.len() + 4 * 10
        };
        if size > 0 && size + adds + new_group > max_bytes {
            out.push(encode_groups(&groups));
            groups.clear();
            size = 0;
        }
        match groups.last_mut() {
            Some(g) if Arc::ptr_eq(g.origin, &span.origin) => g.spans.push(&span.bytes),
            _ => {
                size += span.origin.resource.len() + span.origin.scope.len() + 4 * 10;
                groups.push(Group {
                    origin: &span.origin,
                    spans: vec![&span.bytes],
                });
            }
        }
        size += adds;
    }
    if !groups.is_empty() {
        out.push(encode_groups(&groups));
    }
    out
}

fn encode_groups(groups: &[Group<'_>]) -> Vec<u8> {
    let len = groups.iter().map(Group::encoded_len).sum();
    let mut out = Vec::with_capacity(len);
    for g in groups {
        g.encode(&mut out);
    }
    out
}

/// How many spans an encoded `ExportTraceServiceRequest` holds, read from
/// its framing alone.
pub fn count_spans(request: &[u8]) -> Result<usize, WireError> {
    let mut n = 0;
    for rs in Fields::new(request) {
        let rs = rs?;
        let Value::Len(range) = rs.value else {
            continue;
        };
        if rs.number != request::RESOURCE_SPANS {
            continue;
        }
        for ss in Fields::range(request, range) {
            let ss = ss?;
            if ss.number != resource_spans::SCOPE_SPANS {
                continue;
            }
            let Value::Len(range) = ss.value else {
                continue;
            };
            for span in Fields::range(request, range) {
                if span?.number == scope_spans::SPANS {
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::decode::decode_message;
    use bytes::Bytes;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    /// Two services with three traces between them.
    fn sample() -> Vec<u8> {
        use crate::testkit::synth::{request, span, ResourceDef};
        let a = (0..6).map(|i| span(1 + i % 3, i, 0, 10, i == 2)).collect();
        let b = (6..12).map(|i| span(1 + i % 3, i, 0, 10, false)).collect();
        request(vec![ResourceDef::new("a", a), ResourceDef::new("b", b)]).encode_to_vec()
    }

    #[test]
    fn a_request_rebuilt_from_span_records_decodes_to_the_same_spans() {
        let original = sample();
        let decoded = decode_message(Bytes::from(original.clone()), usize::MAX).expect("decodes");
        let records: Vec<SpanRecord> = decoded.spans.into_iter().map(|(_, s)| s).collect();
        let rebuilt = export_requests(&records, usize::MAX);
        assert_eq!(rebuilt.len(), 1);
        let a = ExportTraceServiceRequest::decode(original.as_slice()).expect("original");
        let b = ExportTraceServiceRequest::decode(rebuilt[0].as_slice()).expect("rebuilt");
        let spans = |r: &ExportTraceServiceRequest| {
            r.resource_spans
                .iter()
                .flat_map(|rs| {
                    rs.scope_spans.iter().flat_map(move |ss| {
                        ss.spans
                            .iter()
                            .map(move |s| (rs.resource.clone(), ss.scope.clone(), s.clone()))
                    })
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(spans(&a), spans(&b));
        assert_eq!(count_spans(&rebuilt[0]).expect("counts"), records.len());
    }

    #[test]
    fn a_large_trace_is_split_into_requests_under_the_limit() {
        let original = sample();
        let decoded = decode_message(Bytes::from(original), usize::MAX).expect("decodes");
        let records: Vec<SpanRecord> = decoded.spans.into_iter().map(|(_, s)| s).collect();
        let limit = 600;
        let parts = export_requests(&records, limit);
        assert!(parts.len() > 1, "split into {} parts", parts.len());
        let mut total = 0;
        for p in &parts {
            ExportTraceServiceRequest::decode(p.as_slice()).expect("each part decodes");
            total += count_spans(p).expect("counts");
        }
        assert_eq!(total, records.len());
        let biggest_span = records.iter().map(|s| s.bytes.len()).max().unwrap_or(0);
        for p in &parts {
            assert!(
                p.len() <= limit.max(biggest_span + 200),
                "part of {} bytes",
                p.len()
            );
        }
    }
}
