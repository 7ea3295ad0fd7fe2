//! How a recovery job decides a trace it re-read from the raw topic: kept
//! when it overlaps the job's time range and matches the job's condition,
//! with reason `recovered` and the job's id as the rule id. Nothing else
//! (force rules, policies, the decision cache) is consulted: whether the
//! trace is stored already is the writer's check, against the table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::matching::{CompiledMatch, TraceView};
use crate::model::{Decision, SamplingReason, SpanRecord};

/// A job's condition and range, with what it has decided so far.
pub struct RecoveryJudge {
    job_id: Arc<str>,
    condition: CompiledMatch,
    /// The range, in Unix nanoseconds, inclusive.
    from_nanos: u64,
    to_nanos: u64,
    /// Traces that overlap the range (scanned), and those that matched.
    traces_scanned: AtomicU64,
    traces_matched: AtomicU64,
    spans_matched: AtomicU64,
}

/// What a judge has decided so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JudgeTally {
    pub traces_scanned: u64,
    pub traces_matched: u64,
    pub spans_matched: u64,
}

impl RecoveryJudge {
    pub fn new(job_id: Arc<str>, condition: CompiledMatch, from_nanos: u64, to_nanos: u64) -> Self {
        Self {
            job_id,
            condition,
            from_nanos,
            to_nanos,
            traces_scanned: AtomicU64::new(0),
            traces_matched: AtomicU64::new(0),
            spans_matched: AtomicU64::new(0),
        }
    }

    /// Keeps a trace that overlaps the range and matches the condition. A
    /// trace read only because the read was widened (all of it before or
    /// after the range) is neither scanned nor kept.
    pub fn decide(&self, spans: &[SpanRecord]) -> Decision {
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
        self.traces_scanned.fetch_add(1, Ordering::Relaxed);
        if !self.condition.matches(&TraceView::new(spans)) {
            return Decision::Drop;
        }
        self.traces_matched.fetch_add(1, Ordering::Relaxed);
        self.spans_matched
            .fetch_add(spans.len() as u64, Ordering::Relaxed);
        Decision::keep(SamplingReason::Recovered, Some(self.job_id.clone()))
    }

    pub fn tally(&self) -> JudgeTally {
        JudgeTally {
            traces_scanned: self.traces_scanned.load(Ordering::Relaxed),
            traces_matched: self.traces_matched.load(Ordering::Relaxed),
            spans_matched: self.spans_matched.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::{Condition, MatchSpec, Op};
    use crate::model::Origin;

    fn span(start_s: u64, end_s: u64, service: &str) -> SpanRecord {
        SpanRecord {
            start_unix_nano: start_s * 1_000_000_000,
            end_unix_nano: end_s * 1_000_000_000,
            origin: Arc::new(Origin {
                service_name: service.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn judge(service: &str) -> RecoveryJudge {
        let spec = MatchSpec {
            resource: vec![Condition {
                key: "service.name".into(),
                op: Op::Eq,
                value: Some(serde_json::json!(service)),
            }],
            ..Default::default()
        };
        let condition = spec.compile("match").expect("valid");
        RecoveryJudge::new("job-1".into(), condition, 100_000_000_000, 200_000_000_000)
    }

    #[test]
    fn a_matching_trace_inside_the_range_is_recovered_under_the_job_id() {
        let j = judge("checkout");
        let d = j.decide(&[span(150, 151, "checkout"), span(150, 152, "db")]);
        assert_eq!(
            d,
            Decision::keep(SamplingReason::Recovered, Some("job-1".into()))
        );
        assert_eq!(
            j.tally(),
            JudgeTally {
                traces_scanned: 1,
                traces_matched: 1,
                spans_matched: 2
            }
        );
    }

    #[test]
    fn traces_crossing_an_edge_count_and_those_outside_do_not() {
        let j = judge("checkout");
        assert_ne!(j.decide(&[span(90, 101, "checkout")]), Decision::Drop);
        assert_ne!(j.decide(&[span(199, 230, "checkout")]), Decision::Drop);
        assert_eq!(j.decide(&[span(10, 99, "checkout")]), Decision::Drop);
        assert_eq!(j.decide(&[span(201, 230, "checkout")]), Decision::Drop);
        assert_eq!(j.decide(&[span(150, 151, "other")]), Decision::Drop);
        assert_eq!(j.tally().traces_scanned, 3);
        assert_eq!(j.tally().traces_matched, 2);
    }
}
