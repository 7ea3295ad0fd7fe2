//! The condition language that force rules and sampling policies share:
//! resource, span and trace-level conditions, their validation, and a view
//! of one trace that answers them while decoding as little as it can.
//!
//! Part of the shared core: `rules` (force rules) and `decide` (policies)
//! both compile their `match` with it, so the two can never drift apart.
//!
//! What each condition list sees:
//! - `resource`: resource attributes (`service.name` is read without
//!   decoding the resource);
//! - `span`: span attributes and the span's own fields `name`, `kind`,
//!   `status_code` and `duration_ms` (the fields without decoding the span);
//! - `trace`: `trace.duration_ms` (earliest start to latest end),
//!   `trace.span_count`, `trace.has_error` and `trace.root.name` (the root
//!   span's name; empty when the root has not arrived).
//!
//! A match holds when the trace conditions hold and one span satisfies every
//! span condition while its resource satisfies every resource condition.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::model::{SpanRecord, TraceId};
use crate::otlp::format::{find_attribute, kind_name, status_name};

/// A field's value as conditions see it: borrowed where it can be, and a
/// number where it is one, so that matching allocates and formats nothing
/// on the hot path.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    /// Text as it lies in the span's bytes, not checked for UTF-8 (the
    /// comparisons work on bytes).
    Raw(&'a [u8]),
    Text(Cow<'a, str>),
    Number(f64),
    Bool(bool),
}

impl FieldValue<'_> {
    /// As the table stores it.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            FieldValue::Raw(b) => String::from_utf8_lossy(b),
            FieldValue::Text(t) => Cow::Borrowed(t.as_ref()),
            FieldValue::Number(n) => Cow::Owned(n.to_string()),
            FieldValue::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        }
    }

    /// The bytes the text comparisons and regexes run on.
    fn bytes(&self) -> Cow<'_, [u8]> {
        match self {
            FieldValue::Raw(b) => Cow::Borrowed(b),
            FieldValue::Text(t) => Cow::Borrowed(t.as_bytes()),
            other => Cow::Owned(other.text().into_owned().into_bytes()),
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            FieldValue::Number(n) => Some(*n),
            FieldValue::Raw(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
            FieldValue::Text(t) => t.trim().parse().ok(),
            FieldValue::Bool(_) => None,
        }
    }
}

/// `Span.attributes` and `Resource.attributes`.
const SPAN_ATTRIBUTES: u32 = crate::otlp::fields::span::ATTRIBUTES;
const RESOURCE_ATTRIBUTES: u32 = crate::otlp::fields::resource::ATTRIBUTES;

/// A condition operator. The last four compare numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Ne,
    Contains,
    StartsWith,
    EndsWith,
    Regex,
    Exists,
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

/// The `match` of a force rule or a policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub span: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<Condition>,
}

/// A rejected condition or setting; `field` is the path of the offending
/// field (`match.span[0].value`, `sampling.policies[2].rate`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

pub fn reject(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// The trace-level fields a `trace` condition or a sampler key may name.
pub const TRACE_FIELDS: [&str; 4] = [
    "trace.duration_ms",
    "trace.span_count",
    "trace.has_error",
    "trace.root.name",
];

enum Matcher {
    Text(Op, String),
    /// On bytes: a value need not be checked for UTF-8 to be matched.
    Regex(regex::bytes::Regex),
    Exists,
    Number(Op, f64),
}

struct CompiledCondition {
    key: String,
    matcher: Matcher,
}

/// Names one compiled match for as long as the process runs: a trace
/// sketch records the matches some span satisfied by id.
pub type MatchId = u64;

/// A validated `match`, compiled once (regexes included).
#[derive(Default)]
pub struct CompiledMatch {
    /// Unique per compilation; 0 for the empty default.
    id: MatchId,
    resource: Vec<CompiledCondition>,
    span: Vec<CompiledCondition>,
    trace: Vec<CompiledCondition>,
}

impl MatchSpec {
    pub fn is_empty(&self) -> bool {
        self.resource.is_empty() && self.span.is_empty() && self.trace.is_empty()
    }

    /// Validates and compiles; `path` prefixes the field of any error
    /// (`match`, or `sampling.policies[0].match`).
    pub fn compile(&self, path: &str) -> Result<CompiledMatch, FieldError> {
        let all = |conds: &[Condition], list: &str| {
            conds
                .iter()
                .enumerate()
                .map(|(i, c)| compile_condition(c, &format!("{path}.{list}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        for (i, c) in self.trace.iter().enumerate() {
            if !TRACE_FIELDS.contains(&c.key.as_str()) {
                return Err(reject(
                    format!("{path}.trace[{i}].key"),
                    format!(
                        "`{}` is not a trace field; use one of {}",
                        c.key,
                        TRACE_FIELDS.join(", ")
                    ),
                ));
            }
        }
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(CompiledMatch {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            resource: all(&self.resource, "resource")?,
            span: all(&self.span, "span")?,
            trace: all(&self.trace, "trace")?,
        })
    }
}

fn compile_condition(c: &Condition, path: &str) -> Result<CompiledCondition, FieldError> {
    if c.key.trim().is_empty() {
        return Err(reject(format!("{path}.key"), "must not be empty"));
    }
    let value_field = format!("{path}.value");
    let text = || -> Result<String, FieldError> {
        match &c.value {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
            Some(_) => Err(reject(&value_field, "must be a string, number or boolean")),
            None => Err(reject(
                &value_field,
                format!("is required for op `{:?}`", c.op).to_lowercase(),
            )),
        }
    };
    let matcher = match c.op {
        Op::Exists => Matcher::Exists,
        Op::Regex => Matcher::Regex(
            regex::bytes::Regex::new(&text()?)
                .map_err(|e| reject(&value_field, format!("invalid regex: {e}")))?,
        ),
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
            let n = text()?
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .ok_or_else(|| reject(&value_field, "must be numeric for gt, gte, lt and lte"))?;
            Matcher::Number(c.op, n)
        }
        op => Matcher::Text(op, text()?),
    };
    Ok(CompiledCondition {
        key: c.key.clone(),
        matcher,
    })
}

impl CompiledCondition {
    fn matches(&self, value: Option<FieldValue<'_>>) -> bool {
        let Some(v) = value else {
            // Only `ne` holds for an absent attribute.
            return matches!(self.matcher, Matcher::Text(Op::Ne, _));
        };
        match &self.matcher {
            Matcher::Exists => true,
            Matcher::Number(op, n) => v.number().is_some_and(|x| match op {
                Op::Gt => x > *n,
                Op::Gte => x >= *n,
                Op::Lt => x < *n,
                _ => x <= *n,
            }),
            Matcher::Regex(r) => r.is_match(&v.bytes()),
            Matcher::Text(op, t) => {
                let (v, t) = (v.bytes(), t.as_bytes());
                match op {
                    Op::Eq => *v == *t,
                    Op::Ne => *v != *t,
                    Op::Contains => memchr::memmem::find(&v, t).is_some(),
                    Op::StartsWith => v.starts_with(t),
                    _ => v.ends_with(t),
                }
            }
        }
    }
}

impl CompiledMatch {
    pub fn id(&self) -> MatchId {
        self.id
    }

    /// Whether a trace condition reads the trace field `key`.
    pub fn reads_trace_field(&self, key: &str) -> bool {
        self.trace.iter().any(|c| c.key == key)
    }

    /// Whether the match has span or resource conditions, which one span
    /// must satisfy together.
    pub fn has_span_part(&self) -> bool {
        !(self.resource.is_empty() && self.span.is_empty())
    }

    /// True when the trace conditions hold and one span satisfies every span
    /// condition while its resource satisfies every resource condition. An
    /// empty match holds for every trace.
    pub fn matches(&self, trace: &dyn TraceFacts) -> bool {
        self.trace
            .iter()
            .all(|c| c.matches(trace.trace_value(&c.key)))
            && (!self.has_span_part() || trace.some_span_matches(self))
    }

    /// Whether this one span, with its resource, satisfies the span and
    /// resource conditions.
    pub fn matches_span(&self, span: &SpanRecord) -> bool {
        let view = TraceView::new(std::slice::from_ref(span));
        self.span_part_holds(&view, 0, &mut None)
    }

    /// The span and resource conditions on span `i`; `resource` remembers
    /// the last origin's answer, since the spans of one resource share it.
    fn span_part_holds(
        &self,
        view: &TraceView<'_>,
        i: usize,
        resource: &mut Option<(*const crate::model::Origin, bool)>,
    ) -> bool {
        let origin = std::sync::Arc::as_ptr(&view.spans[i].origin);
        let resource_ok = match *resource {
            Some((o, ok)) if o == origin => ok,
            _ => {
                let ok = self
                    .resource
                    .iter()
                    .all(|c| c.matches(view.resource_value(i, &c.key)));
                *resource = Some((origin, ok));
                ok
            }
        };
        resource_ok
            && self
                .span
                .iter()
                .all(|c| c.matches(view.span_value(i, &c.key)))
    }
}

/// What conditions and policies read of a trace. Answered from its spans
/// ([`TraceView`]), or from the facts kept while it was open (the compact
/// buffer's sketch), with the same answers.
pub trait TraceFacts {
    fn span_count(&self) -> usize;

    /// From the earliest span start to the latest span end; 0 for an empty
    /// or inverted trace.
    fn duration_nanos(&self) -> u64;

    fn has_error(&self) -> bool;

    /// The first root span's name; empty when no root has arrived.
    fn root_name(&self) -> &[u8];

    /// Whether one span satisfies the span and resource conditions of `m`.
    fn some_span_matches(&self, m: &CompiledMatch) -> bool;

    /// A field or attribute of the root span (the earliest span while no
    /// root has arrived), or else an attribute of its resource, as text.
    fn root_value(&self, key: &str) -> Option<String>;

    /// A sampler key field: a trace field, or else [`TraceFacts::root_value`].
    /// Empty when absent.
    fn key_value(&self, key: &str) -> String {
        let value = if key.starts_with("trace.") {
            self.trace_value(key).map(|v| v.text().into_owned())
        } else {
            self.root_value(key)
        };
        value.unwrap_or_default()
    }

    /// A trace field (`trace.duration_ms`, …).
    fn trace_value(&self, key: &str) -> Option<FieldValue<'_>> {
        match key {
            "trace.duration_ms" => Some(FieldValue::Number(self.duration_nanos() as f64 / 1e6)),
            "trace.span_count" => Some(FieldValue::Number(self.span_count() as f64)),
            "trace.has_error" => Some(FieldValue::Bool(self.has_error())),
            "trace.root.name" => Some(FieldValue::Raw(self.root_name())),
            _ => None,
        }
    }
}

/// What a force rule said about a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForceVerdict {
    Keep { rule_id: Arc<str> },
    Drop { rule_id: Arc<str> },
}

/// The slot for force rules: the first policy, consulted before the others.
/// Implementations must answer from local state; evaluation never waits on I/O.
pub trait ForceRules: Send + Sync {
    fn evaluate(&self, trace_id: &TraceId, trace: &dyn TraceFacts) -> Option<ForceVerdict>;

    /// The same answer, without counting a match: for explaining a decision
    /// that is not being made.
    fn peek(&self, trace_id: &TraceId, trace: &dyn TraceFacts) -> Option<ForceVerdict> {
        self.evaluate(trace_id, trace)
    }

    /// The rules' conditions, for a buffer that keeps traces as facts and
    /// must test them on each span as it arrives.
    fn conditions(&self) -> Vec<Arc<CompiledMatch>> {
        Vec::new()
    }

    /// A number that changes whenever the rules do, so that such a buffer
    /// knows to watch for the new conditions.
    fn generation(&self) -> u64 {
        0
    }
}

/// No force rules: every trace falls through to the other policies.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoForceRules;

impl ForceRules for NoForceRules {
    fn evaluate(&self, _: &TraceId, _: &dyn TraceFacts) -> Option<ForceVerdict> {
        None
    }
}

/// One trace as conditions see it. Nothing is decoded: `service.name`, the
/// span fields and the trace fields come from what the ingest scan read, and
/// an attribute is found by a walk over the span's (or resource's) bytes
/// that decodes only the value asked for.
pub struct TraceView<'a> {
    spans: &'a [SpanRecord],
}

impl<'a> TraceView<'a> {
    pub fn new(spans: &'a [SpanRecord]) -> Self {
        Self { spans }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn spans(&self) -> &'a [SpanRecord] {
        self.spans
    }

    /// The root span (no parent), or the earliest span when the root has not
    /// arrived.
    pub fn root_index(&self) -> Option<usize> {
        self.spans
            .iter()
            .position(|s| s.is_root)
            .or_else(|| (0..self.spans.len()).min_by_key(|&i| self.spans[i].start_unix_nano))
    }

    /// A span field or attribute of span `i`.
    pub fn span_value(&self, i: usize, key: &str) -> Option<FieldValue<'a>> {
        let s = &self.spans[i];
        let text = |t: &'static str| Some(FieldValue::Text(Cow::Borrowed(t)));
        match key {
            "name" => Some(FieldValue::Raw(s.name_bytes())),
            "kind" => text(kind_name(s.kind as i32)),
            "status_code" => text(status_name(s.status_code as i32)),
            "duration_ms" => Some(FieldValue::Number(s.duration_nanos() as f64 / 1e6)),
            _ => find_attribute(&s.bytes, SPAN_ATTRIBUTES, key).map(attribute_value),
        }
    }

    /// A resource attribute of span `i`'s resource.
    pub fn resource_value(&self, i: usize, key: &str) -> Option<FieldValue<'a>> {
        let s = &self.spans[i];
        if key == "service.name" && !s.origin.service_name.is_empty() {
            return Some(FieldValue::Text(Cow::Borrowed(&s.origin.service_name)));
        }
        find_attribute(&s.origin.resource, RESOURCE_ATTRIBUTES, key).map(attribute_value)
    }
}

impl TraceFacts for TraceView<'_> {
    fn span_count(&self) -> usize {
        self.spans.len()
    }

    fn duration_nanos(&self) -> u64 {
        trace_duration_nanos(self.spans)
    }

    fn has_error(&self) -> bool {
        self.spans.iter().any(SpanRecord::is_error)
    }

    fn root_name(&self) -> &[u8] {
        self.spans
            .iter()
            .find(|s| s.is_root)
            .map_or(&[][..], SpanRecord::name_bytes)
    }

    fn some_span_matches(&self, m: &CompiledMatch) -> bool {
        let mut resource = None;
        (0..self.spans.len()).any(|i| m.span_part_holds(self, i, &mut resource))
    }

    fn root_value(&self, key: &str) -> Option<String> {
        let root = self.root_index()?;
        self.span_value(root, key)
            .or_else(|| self.resource_value(root, key))
            .map(|v| v.text().into_owned())
    }
}

fn attribute_value(found: Result<&[u8], String>) -> FieldValue<'_> {
    match found {
        Ok(raw) => FieldValue::Raw(raw),
        Err(formatted) => FieldValue::Text(Cow::Owned(formatted)),
    }
}

/// From the earliest span start to the latest span end; 0 for an empty or
/// inverted trace.
pub fn trace_duration_nanos(spans: &[SpanRecord]) -> u64 {
    let start = spans.iter().map(|s| s.start_unix_nano).min();
    let end = spans.iter().map(|s| s.end_unix_nano).max();
    match (start, end) {
        (Some(s), Some(e)) => e.saturating_sub(s),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::synth::{records, TraceSpec};
    use prost::Message;

    fn spans(service: &str, error: bool, n: usize, duration_ms: u64) -> Vec<SpanRecord> {
        let t = TraceSpec {
            trace_id: [9; 16],
            service: service.into(),
            spans: n,
            error,
            start_unix_nano: 1_700_000_000_000_000_000,
            duration_ms,
        };
        records(&t, ("tenant", "acme-prod"))
    }

    fn compiled(json: &str) -> CompiledMatch {
        serde_json::from_str::<MatchSpec>(json)
            .expect("match json")
            .compile("match")
            .expect("valid")
    }

    #[test]
    fn trace_fields_read_the_whole_trace() {
        let data = spans("svc", true, 4, 1200);
        let view = TraceView::new(&data);
        let text = |v: Option<FieldValue<'_>>| v.map(|v| v.text().into_owned());
        assert_eq!(
            text(view.trace_value("trace.span_count")).as_deref(),
            Some("4")
        );
        assert_eq!(
            text(view.trace_value("trace.has_error")).as_deref(),
            Some("true")
        );
        let root = text(view.trace_value("trace.root.name")).expect("root name");
        assert!(!root.is_empty());
        assert_eq!(
            view.key_value("name"),
            root,
            "a key field reads the root span"
        );
        assert_eq!(
            view.key_value("service.name"),
            "svc",
            "then the root's resource"
        );
        let cases = [
            (
                r#"{"trace":[{"key":"trace.duration_ms","op":"gte","value":1200}]}"#,
                true,
            ),
            (
                r#"{"trace":[{"key":"trace.duration_ms","op":"gt","value":1200}]}"#,
                false,
            ),
            (
                r#"{"trace":[{"key":"trace.span_count","op":"gt","value":3}]}"#,
                true,
            ),
            (
                r#"{"trace":[{"key":"trace.span_count","op":"lt","value":4}]}"#,
                false,
            ),
            (
                r#"{"trace":[{"key":"trace.has_error","op":"eq","value":true}]}"#,
                true,
            ),
            (
                r#"{"trace":[{"key":"trace.has_error","op":"eq","value":"false"}]}"#,
                false,
            ),
            (
                &format!(r#"{{"trace":[{{"key":"trace.root.name","op":"eq","value":"{root}"}}]}}"#),
                true,
            ),
            (
                r#"{"trace":[{"key":"trace.root.name","op":"eq","value":"nope"}]}"#,
                false,
            ),
            (
                r#"{"trace":[{"key":"trace.span_count","op":"eq","value":4}],
                "resource":[{"key":"service.name","op":"eq","value":"svc"}]}"#,
                true,
            ),
            (
                r#"{"trace":[{"key":"trace.span_count","op":"eq","value":4}],
                "resource":[{"key":"service.name","op":"eq","value":"other"}]}"#,
                false,
            ),
            ("{}", true),
        ];
        for (json, expected) in cases {
            assert_eq!(compiled(json).matches(&view), expected, "{json}");
        }
    }

    #[test]
    fn a_trace_without_its_root_has_an_empty_root_name() {
        let data: Vec<_> = spans("svc", false, 3, 10)
            .into_iter()
            .filter(|s| !s.is_root)
            .collect();
        assert_eq!(data.len(), 2);
        let view = TraceView::new(&data);
        assert_eq!(
            view.trace_value("trace.root.name"),
            Some(FieldValue::Raw(b""))
        );
        assert!(
            view.root_index().is_some(),
            "keys fall back to the earliest span"
        );
    }

    #[test]
    fn attributes_read_off_the_wire_match_what_prost_decodes() {
        use crate::otlp::format::any_value_string;
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use opentelemetry_proto::tonic::trace::v1::Span;
        let data = spans("svc", false, 3, 10);
        let view = TraceView::new(&data);
        for (i, s) in data.iter().enumerate() {
            let span = Span::decode(s.bytes.clone()).expect("span");
            for kv in &span.attributes {
                let expected = kv.value.clone().map(any_value_string).unwrap_or_default();
                assert_eq!(
                    view.span_value(i, &kv.key).map(|v| v.text().into_owned()),
                    Some(expected),
                    "{}",
                    kv.key
                );
            }
            let resource = Resource::decode(s.origin.resource.clone()).expect("resource");
            for kv in &resource.attributes {
                let expected = kv.value.clone().map(any_value_string).unwrap_or_default();
                assert_eq!(
                    view.resource_value(i, &kv.key)
                        .map(|v| v.text().into_owned()),
                    Some(expected),
                    "{}",
                    kv.key
                );
            }
            assert_eq!(view.span_value(i, "no.such.key"), None);
        }
        assert!(
            compiled(r#"{"span":[{"key":"tenant","op":"eq","value":"acme-prod"}]}"#).matches(&view)
        );
        assert!(compiled(r#"{"span":[{"key":"kind","op":"eq","value":"SERVER"}]}"#).matches(&view));
    }

    #[test]
    fn unknown_trace_fields_are_refused_by_path() {
        let spec: MatchSpec =
            serde_json::from_str(r#"{"trace":[{"key":"trace.bogus","op":"exists"}]}"#)
                .expect("json");
        let err = spec
            .compile("sampling.policies[1].match")
            .err()
            .expect("refused");
        assert_eq!(err.field, "sampling.policies[1].match.trace[0].key");
        assert!(
            serde_json::from_str::<MatchSpec>(r#"{"spans":[]}"#).is_err(),
            "unknown list"
        );
    }
}
