//! Sampling policies, evaluated in the order DESIGN.md fixes; the first that
//! decides wins: force rules, error, latency, baseline, then drop.

use crate::config::SamplingConfig;
use crate::model::{trace_hash, Decision, ForceRules, ForceVerdict, SamplingReason, SpanRecord, TraceId};

/// The policy thresholds, taken from `[sampling]`.
#[derive(Debug, Clone, Copy)]
pub struct PolicySet {
    pub always_sample_errors: bool,
    pub latency_threshold_nanos: u64,
    /// Traces whose hash is below this are kept by the baseline policy.
    baseline_bound: u64,
    baseline_rate: f64,
}

impl PolicySet {
    pub fn new(always_sample_errors: bool, latency_threshold_ms: f64, baseline_rate: f64) -> Self {
        Self {
            always_sample_errors,
            latency_threshold_nanos: (latency_threshold_ms * 1_000_000.0) as u64,
            baseline_bound: baseline_bound(baseline_rate),
            baseline_rate,
        }
    }

    /// How many traces a trace kept for `reason` stands for: 1/rate for the
    /// baseline sample, 1 for everything kept whole (force rules, errors,
    /// latency).
    pub fn sample_rate(&self, reason: SamplingReason) -> f64 {
        match reason {
            SamplingReason::Baseline if self.baseline_rate > 0.0 => 1.0 / self.baseline_rate.min(1.0),
            _ => 1.0,
        }
    }

    pub fn from_config(cfg: &SamplingConfig) -> Self {
        Self::new(
            cfg.always_sample_errors,
            cfg.latency_threshold_ms.get(),
            cfg.baseline_sample_rate,
        )
    }

    /// Decides one complete trace.
    pub fn decide(
        &self,
        trace_id: &TraceId,
        spans: &[SpanRecord],
        force: &dyn ForceRules,
    ) -> Decision {
        match force.evaluate(trace_id, spans) {
            Some(ForceVerdict::Keep { rule_id }) => {
                return Decision::Keep {
                    reason: SamplingReason::ForceRule,
                    rule_id: Some(rule_id),
                }
            }
            Some(ForceVerdict::Drop { .. }) => return Decision::Drop,
            None => {}
        }
        let keep = |reason| Decision::Keep {
            reason,
            rule_id: None,
        };
        if self.always_sample_errors && spans.iter().any(|s| s.is_error) {
            return keep(SamplingReason::Error);
        }
        if trace_duration_nanos(spans) >= self.latency_threshold_nanos {
            return keep(SamplingReason::Latency);
        }
        if trace_hash(trace_id) < self.baseline_bound {
            return keep(SamplingReason::Baseline);
        }
        Decision::Drop
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

/// The hash bound for a keep fraction; rate 1.0 keeps everything.
fn baseline_bound(rate: f64) -> u64 {
    if rate >= 1.0 {
        u64::MAX
    } else if rate <= 0.0 {
        0
    } else {
        (rate * u64::MAX as f64) as u64
    }
}

/// Whether the baseline policy alone would keep this trace at `rate`.
pub fn baseline_keeps(trace_id: &TraceId, rate: f64) -> bool {
    trace_hash(trace_id) < baseline_bound(rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NoForceRules, Origin};
    use std::sync::Arc;
    use bytes::Bytes;

    fn rec(start_ms: u64, end_ms: u64, err: bool) -> SpanRecord {
        SpanRecord {
            bytes: Bytes::new(),
            origin: Arc::new(Origin::default()),
            start_unix_nano: start_ms * 1_000_000,
            end_unix_nano: end_ms * 1_000_000,
            is_error: err,
            lease: Default::default(),
        }
    }

    fn id(n: u64) -> TraceId {
        let mut t = [0u8; 16];
        t[8..].copy_from_slice(&n.to_be_bytes());
        t[0] = 1;
        t
    }

    struct Always(ForceVerdict);
    impl ForceRules for Always {
        fn evaluate(&self, _: &TraceId, _: &[SpanRecord]) -> Option<ForceVerdict> {
            Some(self.0.clone())
        }
    }

    #[test]
    fn a_kept_trace_stands_for_one_over_the_rate_that_kept_it() {
        let p = PolicySet::new(true, 5000.0, 0.25);
        assert_eq!(p.sample_rate(SamplingReason::Baseline), 4.0);
        for whole in [SamplingReason::Error, SamplingReason::Latency, SamplingReason::ForceRule] {
            assert_eq!(p.sample_rate(whole), 1.0, "{whole}");
        }
        assert_eq!(PolicySet::new(true, 5000.0, 1.0).sample_rate(SamplingReason::Baseline), 1.0);
    }

    #[test]
    fn error_policy_keeps_any_error_span_and_can_be_disabled() {
        let spans = [rec(0, 10, false), rec(1, 2, true)];
        let p = PolicySet::new(true, 5000.0, 0.0);
        assert_eq!(
            p.decide(&id(1), &spans, &NoForceRules),
            Decision::Keep {
                reason: SamplingReason::Error,
                rule_id: None
            }
        );
        let off = PolicySet::new(false, 5000.0, 0.0);
        assert_eq!(off.decide(&id(1), &spans, &NoForceRules), Decision::Drop);
    }

    #[test]
    fn latency_spans_earliest_start_to_latest_end() {
        let p = PolicySet::new(true, 5000.0, 0.0);
        // No single span is long, but the trace covers 5 s.
        let slow = [rec(1_000, 2_000, false), rec(5_000, 6_000, false)];
        assert_eq!(trace_duration_nanos(&slow), 5_000_000_000);
        assert!(matches!(
            p.decide(&id(2), &slow, &NoForceRules),
            Decision::Keep {
                reason: SamplingReason::Latency,
                ..
            }
        ));
        let fast = [rec(1_000, 1_200, false)];
        assert_eq!(p.decide(&id(2), &fast, &NoForceRules), Decision::Drop);
    }

    #[test]
    fn error_wins_over_latency() {
        let p = PolicySet::new(true, 10.0, 0.0);
        let spans = [rec(0, 1000, true)];
        assert!(matches!(
            p.decide(&id(3), &spans, &NoForceRules),
            Decision::Keep {
                reason: SamplingReason::Error,
                ..
            }
        ));
    }

    #[test]
    fn force_rules_come_first_both_ways() {
        let p = PolicySet::new(true, 10.0, 1.0);
        let spans = [rec(0, 1000, true)];
        let drop = Always(ForceVerdict::Drop { rule_id: "r1".into() });
        assert_eq!(p.decide(&id(4), &spans, &drop), Decision::Drop);
        let keep = Always(ForceVerdict::Keep { rule_id: "r2".into() });
        assert_eq!(
            p.decide(&id(4), &[rec(0, 1, false)], &keep),
            Decision::Keep {
                reason: SamplingReason::ForceRule,
                rule_id: Some("r2".into())
            }
        );
    }

    #[test]
    fn baseline_is_deterministic_and_close_to_its_rate() {
        let p = PolicySet::new(true, 5000.0, 0.5);
        let spans = [rec(0, 1, false)];
        let kept = (0..10_000u64)
            .filter(|n| p.decide(&id(*n), &spans, &NoForceRules) != Decision::Drop)
            .count();
        // 4 standard deviations of a fair coin over 10,000 draws is 200.
        assert!((4_800..=5_200).contains(&kept), "kept {kept}");
        for n in 0..1000 {
            assert_eq!(
                p.decide(&id(n), &spans, &NoForceRules),
                p.decide(&id(n), &spans, &NoForceRules)
            );
            assert_eq!(baseline_keeps(&id(n), 0.5), trace_hash(&id(n)) < u64::MAX / 2 + 1);
        }
        let none = PolicySet::new(true, 5000.0, 0.0);
        let all = PolicySet::new(true, 5000.0, 1.0);
        assert!((0..1000).all(|n| none.decide(&id(n), &spans, &NoForceRules) == Decision::Drop));
        assert!((0..1000).all(|n| all.decide(&id(n), &spans, &NoForceRules) != Decision::Drop));
    }
}
