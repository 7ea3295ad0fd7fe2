//! A policy simulation: every trace of a range read again is decided by a
//! candidate policy list and by the live one, as the live path decides
//! (without force rules, which are temporary overrides), and what each
//! would keep is tallied per policy and per service. Nothing is stored:
//! every trace is dropped after it is counted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::policy::PolicySet;
use crate::model::{Decision, SamplingReason, SpanRecord, TraceId};
use crate::recovery::{KeptRow, KeptSummary, SimulationResult};

/// The two lists, the range, and what they kept so far.
pub struct Simulation {
    candidate: PolicySet,
    live: PolicySet,
    /// The range, in Unix nanoseconds, inclusive.
    from_nanos: u64,
    to_nanos: u64,
    /// A trace's own time as an `Instant`, for the samplers that count time:
    /// `anchor` stands for `anchor_nanos`.
    anchor: Instant,
    anchor_nanos: u64,
    tally: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    traces: u64,
    spans: u64,
    /// Traces and spans per service (the root's).
    services: BTreeMap<String, (u64, u64)>,
    candidate: BTreeMap<(String, String), Kept>,
    live: BTreeMap<(String, String), Kept>,
}

#[derive(Default, Clone, Copy)]
struct Kept {
    traces: u64,
    spans: u64,
    sum_sample_rate: f64,
    bytes: u64,
}

impl Simulation {
    pub fn new(candidate: PolicySet, live: PolicySet, from_nanos: u64, to_nanos: u64) -> Self {
        Self {
            candidate,
            live,
            from_nanos,
            to_nanos,
            anchor: Instant::now(),
            anchor_nanos: from_nanos,
            tally: Mutex::new(Tally::default()),
        }
    }

    /// Counts what each list would do with the trace, and drops it.
    pub fn decide(&self, trace_id: &TraceId, spans: &[SpanRecord]) -> Decision {
        let start = spans.iter().map(|s| s.start_unix_nano).min();
        let end = spans
            .iter()
            .map(|s| s.end_unix_nano.max(s.start_unix_nano))
            .max();
        let (Some(start), Some(end)) = (start, end) else {
            return Decision::Drop;
        };
        if end < self.from_nanos || start > self.to_nanos {
            return Decision::Drop;
        }
        let at = self.anchor + Duration::from_nanos(end.saturating_sub(self.anchor_nanos));
        let candidate = self.candidate.decide_at(trace_id, spans, at);
        let live = self.live.decide_at(trace_id, spans, at);
        let service = service_of(spans);
        let bytes: u64 = spans.iter().map(|s| s.bytes.len() as u64).sum();
        let mut t = self.tally.lock();
        t.traces += 1;
        t.spans += spans.len() as u64;
        let per = t.services.entry(service.clone()).or_default();
        per.0 += 1;
        per.1 += spans.len() as u64;
        count(&mut t.candidate, &candidate, &service, spans.len(), bytes);
        count(&mut t.live, &live, &service, spans.len(), bytes);
        Decision::Drop
    }

    /// What was counted so far, with byte rates scaled from `range_ms`.
    pub fn result(&self, range_ms: i64) -> SimulationResult {
        let t = self.tally.lock();
        let per_day = 86_400_000.0 / range_ms.max(1) as f64;
        SimulationResult {
            traces: t.traces,
            spans: t.spans,
            candidate: summary(&t.candidate, &t.services, t.traces, per_day),
            live: summary(&t.live, &t.services, t.traces, per_day),
        }
    }
}

/// The root span's service, else the first span's.
fn service_of(spans: &[SpanRecord]) -> String {
    spans
        .iter()
        .find(|s| s.is_root)
        .or(spans.first())
        .map(|s| s.origin.service_name.to_string())
        .unwrap_or_default()
}

/// The name a kept trace is counted under: the policy's, or the setting's.
fn kept_by(reason: SamplingReason, rule_id: Option<&str>) -> String {
    match (reason, rule_id) {
        (SamplingReason::Policy, Some(name)) => name.to_string(),
        (reason, _) => reason.as_str().to_string(),
    }
}

fn count(
    into: &mut BTreeMap<(String, String), Kept>,
    decision: &Decision,
    service: &str,
    spans: usize,
    bytes: u64,
) {
    let Decision::Keep {
        reason,
        rule_id,
        sample_rate,
    } = decision
    else {
        return;
    };
    let key = (kept_by(*reason, rule_id.as_deref()), service.to_string());
    let k = into.entry(key).or_default();
    k.traces += 1;
    k.spans += spans as u64;
    k.sum_sample_rate += sample_rate;
    k.bytes += bytes;
}

fn summary(
    kept: &BTreeMap<(String, String), Kept>,
    services: &BTreeMap<String, (u64, u64)>,
    traces: u64,
    per_day: f64,
) -> KeptSummary {
    let fraction = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let row = |policy: Option<String>, service: Option<String>, k: Kept, of: u64| KeptRow {
        policy,
        service,
        traces: k.traces,
        spans: k.spans,
        kept_fraction: fraction(k.traces, of),
        sum_sample_rate: k.sum_sample_rate,
        otlp_bytes_per_day: k.bytes as f64 * per_day,
    };
    let mut total = Kept::default();
    let rows = kept
        .iter()
        .map(|((policy, service), k)| {
            total.traces += k.traces;
            total.spans += k.spans;
            total.sum_sample_rate += k.sum_sample_rate;
            total.bytes += k.bytes;
            let of = services.get(service).map_or(0, |s| s.0);
            row(Some(policy.clone()), Some(service.clone()), *k, of)
        })
        .collect();
    KeptSummary {
        total: row(None, None, total, traces),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicySpec;
    use crate::model::Origin;
    use std::sync::Arc;

    fn trace(service: &str, error: bool) -> Vec<SpanRecord> {
        vec![SpanRecord {
            start_unix_nano: 150_000_000_000,
            end_unix_nano: 150_100_000_000,
            status_code: if error { 2 } else { 1 },
            is_root: true,
            bytes: bytes::Bytes::from_static(&[0; 100]),
            origin: Arc::new(Origin {
                service_name: service.into(),
                ..Default::default()
            }),
            ..Default::default()
        }]
    }

    fn keep_all(name: &str, service: &str) -> PolicySpec {
        serde_json::from_value(serde_json::json!({
            "name": name, "action": "keep",
            "match": {"resource": [{"key": "service.name", "op": "eq", "value": service}]}
        }))
        .expect("spec")
    }

    #[test]
    fn both_lists_are_counted_per_policy_and_service_and_nothing_is_kept() {
        let live = PolicySet::new(true, 5000.0, 0.0);
        let candidate = live
            .with_policies(&[keep_all("all-cart", "cart")], "policies")
            .expect("valid");
        let sim = Simulation::new(candidate, live, 100_000_000_000, 200_000_000_000);
        for (i, (service, error)) in [
            ("cart", false),
            ("cart", true),
            ("shop", true),
            ("shop", false),
        ]
        .into_iter()
        .enumerate()
        {
            let id = [i as u8 + 1; 16];
            assert_eq!(sim.decide(&id, &trace(service, error)), Decision::Drop);
        }
        let r = sim.result(86_400_000);
        assert_eq!((r.traces, r.spans), (4, 4));
        let rows = |s: &KeptSummary| {
            s.rows
                .iter()
                .map(|r| {
                    (
                        r.policy.clone().unwrap_or_default(),
                        r.service.clone().unwrap_or_default(),
                        r.traces,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rows(&r.candidate),
            vec![
                ("all-cart".into(), "cart".into(), 2),
                ("error".into(), "shop".into(), 1)
            ]
        );
        assert_eq!(
            rows(&r.live),
            vec![
                ("error".into(), "cart".into(), 1),
                ("error".into(), "shop".into(), 1)
            ]
        );
        assert_eq!(r.candidate.total.traces, 3);
        assert_eq!(r.candidate.total.kept_fraction, 0.75);
        assert_eq!(r.candidate.rows[0].kept_fraction, 1.0);
        // A day's range: the bytes are the bytes.
        assert_eq!(r.live.total.otlp_bytes_per_day, 200.0);
        assert_eq!(r.live.total.sum_sample_rate, 2.0);
    }

    #[test]
    fn an_invalid_candidate_names_its_field() {
        let live = PolicySet::new(true, 5000.0, 0.0);
        let bad: PolicySpec = serde_json::from_value(serde_json::json!(
            {"name": "s", "action": "sample", "rate": 2.0}
        ))
        .expect("spec");
        let e = live
            .with_policies(&[bad], "policies")
            .err()
            .expect("refused");
        assert_eq!(e.field, "policies[0].rate");
    }
}
