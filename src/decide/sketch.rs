//! A trace held as the facts its decision reads instead of as its spans:
//! the unit of the compact buffer.
//!
//! Each span is looked at once, when it arrives: the conditions the judge
//! may ask about (the policies' matches, the force rules, a recovery's
//! condition) are tested on it, and only whether some span satisfied each
//! is kept. With the trace-level aggregates (span count, error, earliest
//! start and latest end, the first root span's name) and the sampler key
//! values of the root span, or of the earliest span while no root has come,
//! that is everything a decision reads. Decided over a sketch, a trace gets
//! the decision it would get over its spans, as long as the conditions did
//! not change while it was open: a condition added later sees only the
//! spans that arrive after it.
//!
//! A sketch is one partition lease's share of a trace: a revoked lease's
//! share is dropped whole, as its spans would be, and the shares left are
//! merged when the trace is decided. Arrival sequence numbers make "the
//! first root" and "the earliest span" come out as over the spans.

use std::sync::Arc;

use crate::matching::{CompiledMatch, MatchId, TraceFacts, TraceView};
use crate::model::{SpanRecord, STATUS_ERROR};

/// What sketches watch for: the conditions to test on each span and the
/// fields to keep of the root span, from the policies
/// ([`super::policy::PolicySet::watched`]) and, when the worker builds
/// compact buffers, the force rules in force.
#[derive(Default)]
pub struct Watch {
    matches: Vec<Arc<CompiledMatch>>,
    key_fields: Arc<[Box<str>]>,
    /// Whether a condition reads `trace.root.name`: without it, and
    /// without key fields, no span's name or fields are kept.
    root_name: bool,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("matches", &self.matches.len())
            .field("key_fields", &self.key_fields)
            .field("root_name", &self.root_name)
            .finish()
    }
}

impl Watch {
    pub fn new(matches: Vec<Arc<CompiledMatch>>, mut key_fields: Vec<Box<str>>) -> Self {
        key_fields.sort();
        key_fields.dedup();
        let root_name = matches
            .iter()
            .any(|m| m.reads_trace_field("trace.root.name"));
        let matches = matches.into_iter().filter(|m| m.has_span_part()).collect();
        Self {
            matches,
            key_fields: key_fields.into(),
            root_name,
        }
    }
}

/// The span a sampler key is read from, as `TraceView::root_index` picks
/// it, with the values of the watched key fields.
#[derive(Debug, Clone)]
struct KeySource {
    /// Arrival order: the first root wins, and the first of equally early
    /// spans.
    seq: u64,
    start_unix_nano: u64,
    /// The span's name; read as `trace.root.name` when it is the root.
    name: Box<[u8]>,
    fields: Arc<[Box<str>]>,
    values: Box<[Box<str>]>,
}

impl KeySource {
    fn of(span: &SpanRecord, seq: u64, watch: &Watch) -> Box<Self> {
        let one = std::slice::from_ref(span);
        let view = TraceView::new(one);
        let values = watch
            .key_fields
            .iter()
            .map(|f| view.key_value(f).into_boxed_str())
            .collect();
        Box::new(Self {
            seq,
            start_unix_nano: span.start_unix_nano,
            name: span.name_bytes().into(),
            fields: watch.key_fields.clone(),
            values,
        })
    }

    fn value(&self, key: &str) -> Option<&str> {
        let i = self.fields.iter().position(|f| &**f == key)?;
        self.values.get(i).map(|v| &**v)
    }
}

/// One lease's share of an open trace, as facts.
#[derive(Debug, Clone)]
pub struct TraceSketch {
    spans: u32,
    has_error: bool,
    start_min: u64,
    end_max: u64,
    /// The first root span to arrive.
    root: Option<Box<KeySource>>,
    /// The earliest-starting span, kept while no root has arrived.
    earliest: Option<Box<KeySource>>,
    /// The watched conditions some span satisfied, by id.
    matched: Vec<MatchId>,
}

impl Default for TraceSketch {
    fn default() -> Self {
        Self {
            spans: 0,
            has_error: false,
            start_min: u64::MAX,
            end_max: 0,
            root: None,
            earliest: None,
            matched: Vec::new(),
        }
    }
}

impl TraceSketch {
    /// Takes in one span; `seq` is its place in the order of arrival.
    pub fn add(&mut self, span: &SpanRecord, seq: u64, watch: &Watch) {
        self.spans += 1;
        self.has_error |= span.status_code == STATUS_ERROR;
        self.start_min = self.start_min.min(span.start_unix_nano);
        self.end_max = self.end_max.max(span.end_unix_nano);
        // The root span is kept when a key or `trace.root.name` reads it;
        // the earliest span, while no root has come, only for keys.
        let keys = !watch.key_fields.is_empty();
        if span.is_root && self.root.is_none() && (keys || watch.root_name) {
            self.root = Some(KeySource::of(span, seq, watch));
            self.earliest = None;
        } else if keys
            && self.root.is_none()
            && self
                .earliest
                .as_ref()
                .is_none_or(|e| span.start_unix_nano < e.start_unix_nano)
        {
            self.earliest = Some(KeySource::of(span, seq, watch));
        }
        for m in &watch.matches {
            if !self.matched.contains(&m.id()) && m.matches_span(span) {
                self.matched.push(m.id());
            }
        }
    }

    /// Folds another share of the same trace into this one.
    pub fn merge(&mut self, other: TraceSketch) {
        self.spans += other.spans;
        self.has_error |= other.has_error;
        self.start_min = self.start_min.min(other.start_min);
        self.end_max = self.end_max.max(other.end_max);
        self.root = pick(self.root.take(), other.root, |k| (k.seq, 0));
        self.earliest = pick(self.earliest.take(), other.earliest, |k| {
            (k.start_unix_nano, k.seq)
        });
        if self.root.is_some() {
            self.earliest = None;
        }
        for id in other.matched {
            if !self.matched.contains(&id) {
                self.matched.push(id);
            }
        }
    }

    fn key_source(&self) -> Option<&KeySource> {
        self.root.as_deref().or(self.earliest.as_deref())
    }
}

fn pick(
    a: Option<Box<KeySource>>,
    b: Option<Box<KeySource>>,
    order: impl Fn(&KeySource) -> (u64, u64),
) -> Option<Box<KeySource>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if order(&b) < order(&a) { b } else { a }),
        (a, b) => a.or(b),
    }
}

impl TraceFacts for TraceSketch {
    fn span_count(&self) -> usize {
        self.spans as usize
    }

    fn duration_nanos(&self) -> u64 {
        if self.spans == 0 {
            return 0;
        }
        self.end_max.saturating_sub(self.start_min)
    }

    fn has_error(&self) -> bool {
        self.has_error
    }

    fn root_name(&self) -> &[u8] {
        self.root.as_ref().map_or(&[], |r| &r.name)
    }

    fn some_span_matches(&self, m: &CompiledMatch) -> bool {
        self.matched.contains(&m.id())
    }

    fn root_value(&self, key: &str) -> Option<String> {
        // A field not watched when the span came (a policy added since)
        // reads as absent.
        self.key_source()
            .and_then(|k| k.value(key))
            .map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Instant;

    use bytes::Bytes;
    use prost::Message;
    use rustc_hash::FxHashMap;

    use super::*;
    use crate::decide::policy::{sampling_from_toml, PolicySet};
    use crate::decide::samplers::Mode;
    use crate::matching::{ForceRules, ForceVerdict, MatchSpec};
    use crate::model::{Decision, TraceId};
    use crate::otlp::decode::decode_message;
    use crate::testkit::loadgen::{Scenario, TraceGenerator};

    /// Every kind of condition and key a decision can read: root name,
    /// error, duration and span count; resource and span attributes
    /// together on one span; span fields; samplers keyed on the root's
    /// fields and resource.
    const POLICIES: &str = r#"
        [sampling]
        baseline_sample_rate = 0.05
        latency_threshold_ms = 1500
        [[sampling.policies]]
        name = "drop-health"
        match = { trace = [{ key = "trace.root.name", op = "eq", value = "GET /healthz" }] }
        action = "drop"
        [[sampling.policies]]
        name = "big"
        match = { trace = [{ key = "trace.span_count", op = "gte", value = 9 }, { key = "trace.duration_ms", op = "gte", value = 250 }] }
        action = "keep"
        [[sampling.policies]]
        name = "checkout-client-errors"
        match = { resource = [{ key = "service.name", op = "eq", value = "checkout" }], span = [{ key = "status_code", op = "eq", value = "ERROR" }] }
        action = "keep"
        [[sampling.policies]]
        name = "per-root"
        match = { trace = [{ key = "trace.has_error", op = "eq", value = false }, { key = "trace.duration_ms", op = "lt", value = 150 }] }
        action = "dynamic"
        goal_rate = 0.1
        key_fields = ["trace.root.name", "name", "trace.has_error"]
        adjustment_interval_secs = 0.1
        [[sampling.policies]]
        name = "db-slow-spans"
        match = { span = [{ key = "kind", op = "eq", value = "CLIENT" }, { key = "duration_ms", op = "gte", value = 150 }] }
        action = "sample"
        rate = 0.5
        [[sampling.policies]]
        name = "per-route"
        match = { resource = [{ key = "service.name", op = "eq", value = "mobile-api" }], span = [{ key = "http.route", op = "exists" }] }
        action = "rate_limit"
        traces_per_sec = 3
        key_fields = ["http.route", "service.name"]
    "#;

    fn policies() -> PolicySet {
        PolicySet::build(&sampling_from_toml(POLICIES), None).expect("policies")
    }

    /// Force rules as the rules module compiles them, highest priority
    /// first: a force drop of quick mobile traces, a force keep of slow
    /// payments.
    struct Rules(Vec<(Arc<CompiledMatch>, ForceVerdict)>);

    impl ForceRules for Rules {
        fn evaluate(&self, _: &TraceId, trace: &dyn TraceFacts) -> Option<ForceVerdict> {
            self.0
                .iter()
                .find(|(m, _)| m.matches(trace))
                .map(|(_, v)| v.clone())
        }
    }

    impl Rules {
        fn matches(&self) -> Vec<Arc<CompiledMatch>> {
            self.0.iter().map(|(m, _)| m.clone()).collect()
        }
    }

    fn rules() -> Rules {
        let rule = |json: &str| {
            let spec: MatchSpec = serde_json::from_str(json).expect("match");
            Arc::new(spec.compile("match").expect("compiles"))
        };
        Rules(vec![
            (
                rule(
                    r#"{"span":[{"key":"name","op":"regex","value":"^GET /v1/products"}],"trace":[{"key":"trace.duration_ms","op":"lt","value":45}]}"#,
                ),
                ForceVerdict::Drop {
                    rule_id: "r2".into(),
                },
            ),
            (
                rule(
                    r#"{"resource":[{"key":"service.name","op":"eq","value":"payments"}],"trace":[{"key":"trace.duration_ms","op":"gte","value":300}]}"#,
                ),
                ForceVerdict::Keep {
                    rule_id: "r1".into(),
                },
            ),
        ])
    }

    fn watch(p: &PolicySet, r: &Rules) -> Watch {
        let (mut matches, keys) = p.watched();
        matches.extend(r.matches());
        Watch::new(matches, keys)
    }

    /// Load-generator traffic in messages of 25 traces each, decoded as the
    /// consumer decodes it: (message, trace id, span) in arrival order.
    fn traffic(traces: usize) -> Vec<(usize, TraceId, SpanRecord)> {
        let mut g = TraceGenerator::new(Scenario::demo(), 7);
        let end = 1_700_000_000_000_000_000u64;
        let mut out = Vec::new();
        for m in 0..traces / 25 {
            let batch = (0..25)
                .map(|i| {
                    let root = g.pick_root();
                    g.trace(root, end + (m * 25 + i) as u64 * 1_000_000, 1.0)
                })
                .collect();
            let bytes = g.request(batch).encode_to_vec();
            let decoded = decode_message(Bytes::from(bytes), usize::MAX).expect("decodes");
            out.extend(decoded.spans.into_iter().map(|(id, s)| (m, id, s)));
        }
        out
    }

    #[test]
    fn decisions_over_a_sketch_are_those_over_the_spans() {
        let traffic = traffic(4000);
        let (by_spans, by_sketch) = (policies(), policies());
        let force = rules();
        let watch = watch(&by_sketch, &force);
        let mut spans: FxHashMap<TraceId, Vec<SpanRecord>> = FxHashMap::default();
        let mut sketches: FxHashMap<TraceId, TraceSketch> = FxHashMap::default();
        let mut order = Vec::new();
        for (seq, (_, id, span)) in traffic.into_iter().enumerate() {
            sketches
                .entry(id)
                .or_default()
                .add(&span, seq as u64, &watch);
            spans.entry(id).or_insert_with(|| {
                order.push(id);
                Vec::new()
            });
            spans.get_mut(&id).expect("opened").push(span);
        }
        let now = Instant::now();
        let mut kept: HashMap<String, usize> = HashMap::new();
        for id in &order {
            let view = TraceView::new(&spans[id]);
            let a = by_spans.evaluate(id, &view, &force, now, Mode::Decide, &mut None);
            let b = by_sketch.evaluate(id, &sketches[id], &force, now, Mode::Decide, &mut None);
            assert_eq!(a, b, "trace {}", hex::encode(id));
            if matches!(force.peek(id, &view), Some(ForceVerdict::Drop { .. })) {
                *kept.entry("force_rule:r2".into()).or_default() += 1;
            }
            let why = match a {
                Decision::Drop => "dropped".to_string(),
                Decision::Keep {
                    reason, rule_id, ..
                } => format!("{}:{}", reason.as_str(), rule_id.as_deref().unwrap_or("")),
            };
            *kept.entry(why).or_default() += 1;
        }
        // The traffic reaches every step, so the comparison covers each.
        for step in [
            "dropped",
            "force_rule:r1",
            "force_rule:r2",
            "policy:big",
            "policy:per-route",
            "policy:per-root",
            "policy:checkout-client-errors",
            "policy:db-slow-spans",
        ] {
            assert!(kept.contains_key(step), "{step} decided nothing: {kept:?}");
        }
    }

    #[test]
    fn shares_merged_in_any_order_give_the_whole_trace() {
        let traffic = traffic(500);
        let p = policies();
        let force = rules();
        let watch = watch(&p, &force);
        let mut spans: FxHashMap<TraceId, Vec<SpanRecord>> = FxHashMap::default();
        // Odd messages as if read from another partition.
        let mut shares: FxHashMap<TraceId, [TraceSketch; 2]> = FxHashMap::default();
        for (seq, (m, id, span)) in traffic.into_iter().enumerate() {
            shares.entry(id).or_default()[m % 2].add(&span, seq as u64, &watch);
            spans.entry(id).or_default().push(span);
        }
        for (id, [even, odd]) in shares {
            let whole = TraceView::new(&spans[&id]);
            for merged in [(even.clone(), odd.clone()), (odd, even)].map(|(mut a, b)| {
                a.merge(b);
                a
            }) {
                assert_eq!(merged.span_count(), whole.len());
                assert_eq!(merged.duration_nanos(), whole.duration_nanos());
                assert_eq!(merged.has_error(), whole.has_error());
                assert_eq!(merged.root_name(), whole.root_name());
                for key in ["name", "service.name", "http.route", "trace.root.name"] {
                    assert_eq!(merged.key_value(key), whole.key_value(key), "{key}");
                }
            }
        }
    }

    #[test]
    fn without_a_root_keys_come_from_the_earliest_span() {
        let w = Watch::new(Vec::new(), vec!["name".into()]);
        let span = |start: u64| SpanRecord {
            start_unix_nano: start,
            end_unix_nano: start + 1,
            ..SpanRecord::default()
        };
        let mut t = TraceSketch::default();
        t.add(&span(50), 0, &w);
        t.add(&span(10), 1, &w);
        t.add(&span(10), 2, &w);
        let source = t.key_source().expect("a source");
        assert_eq!((source.seq, source.start_unix_nano), (1, 10));
        assert_eq!(t.root_name(), b"");
    }
}
