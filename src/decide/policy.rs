//! Sampling policies, evaluated in the order docs/configuration.md gives; the first that
//! decides wins: force rules, then `[[sampling.policies]]` in order, then the
//! error, latency and baseline settings, then drop.
//!
//! A policy that matches always decides: `sample`, `rate_limit` and
//! `dynamic` keep or drop the trace themselves rather than passing it on, so
//! that each trace is sampled by exactly one probability and
//! `sum(sample_rate)` stays an unbiased count.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::samplers::{bound, DynamicSampler, Mode, RateLimiter, Verdict};
use crate::config::{ActionSpec, PolicySpec, SamplingConfig};
use crate::matching::{CompiledMatch, FieldError, ForceRules, ForceVerdict, TraceFacts, TraceView};
use crate::model::{salted_trace_hash, trace_hash, Decision, SamplingReason, SpanRecord, TraceId};

/// The policies every worker reads, swapped whole when the config reloads.
pub type SharedPolicies = Arc<ArcSwap<PolicySet>>;

/// The settings after the policy list: `always_sample_errors`,
/// `latency_threshold_ms` and `baseline_sample_rate`.
#[derive(Debug, Clone, Copy)]
struct Fallback {
    always_sample_errors: bool,
    latency_threshold_nanos: u64,
    /// Traces whose hash is below this are kept by the baseline policy.
    baseline_bound: u64,
    baseline_rate: f64,
}

/// What a matching policy does, with its sampler's state.
enum Action {
    Keep,
    Drop,
    Sample {
        bound: u64,
        sample_rate: f64,
    },
    RateLimit {
        limiter: Arc<RateLimiter>,
        key_fields: Vec<String>,
    },
    Dynamic {
        sampler: Arc<DynamicSampler>,
        key_fields: Vec<String>,
    },
}

/// One compiled `[[sampling.policies]]` entry.
struct Policy {
    name: Arc<str>,
    /// The entry as written, to carry a sampler's state over a reload that
    /// leaves the entry unchanged.
    spec: PolicySpec,
    salt: u64,
    match_: Arc<CompiledMatch>,
    action: Action,
}

/// The whole decision after force rules: the policies, then the fallback.
pub struct PolicySet {
    policies: Vec<Policy>,
    fallback: Fallback,
}

/// One step of an explanation: what was consulted and what it said.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Step {
    /// `force_rules`, `policy`, `error`, `latency`, `baseline` or `default`.
    pub stage: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    pub matched: bool,
    /// `keep`, `drop`, or absent when the step passed the trace on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    pub detail: String,
}

impl Step {
    fn new(stage: &'static str, matched: bool, detail: String) -> Self {
        Self {
            stage,
            name: None,
            action: None,
            matched,
            outcome: None,
            detail,
        }
    }

    fn decided(mut self, d: &Decision) -> Self {
        self.outcome = Some(if matches!(d, Decision::Drop) {
            "drop"
        } else {
            "keep"
        });
        self
    }
}

/// Where explanation steps go; nowhere on the hot path.
type Steps<'a> = Option<&'a mut Vec<Step>>;

fn note(steps: &mut Steps<'_>, step: impl FnOnce() -> Step) {
    if let Some(s) = steps.as_deref_mut() {
        s.push(step());
    }
}

impl PolicySet {
    /// No policies: the fallback settings alone.
    pub fn new(always_sample_errors: bool, latency_threshold_ms: f64, baseline_rate: f64) -> Self {
        Self {
            policies: Vec::new(),
            fallback: Fallback {
                always_sample_errors,
                latency_threshold_nanos: (latency_threshold_ms * 1_000_000.0) as u64,
                baseline_bound: bound(baseline_rate),
                baseline_rate,
            },
        }
    }

    /// Compiles `[sampling]`. A policy whose entry is unchanged from
    /// `previous` keeps its sampler's state (rates learnt, tokens left).
    pub fn build(cfg: &SamplingConfig, previous: Option<&PolicySet>) -> Result<Self, FieldError> {
        let mut set = Self::new(
            cfg.always_sample_errors,
            cfg.latency_threshold_ms.get(),
            cfg.baseline_sample_rate,
        );
        for (i, spec) in cfg.policies.iter().enumerate() {
            let path = format!("sampling.policies[{i}]");
            let action_spec = spec.action_spec(&path)?;
            let carried = previous
                .and_then(|p| p.policies.iter().find(|q| q.spec == *spec))
                .map(|q| q.action.share());
            let action = match carried {
                Some(a) => a,
                None => Action::from_spec(action_spec),
            };
            set.policies.push(Policy {
                name: Arc::from(spec.name.as_str()),
                salt: name_salt(&spec.name),
                match_: Arc::new(spec.match_.compile(&format!("{path}.match"))?),
                spec: spec.clone(),
                action,
            });
        }
        Ok(set)
    }

    /// The same fallback settings with `specs` as the policy list, every
    /// sampler fresh; an error's field starts with `prefix` (`policies`).
    /// What a simulation decides with: nothing it does moves the state of
    /// the live samplers.
    pub fn with_policies(&self, specs: &[PolicySpec], prefix: &str) -> Result<Self, FieldError> {
        let mut set = PolicySet {
            policies: Vec::new(),
            fallback: self.fallback,
        };
        for (i, spec) in specs.iter().enumerate() {
            let path = format!("{prefix}[{i}]");
            let action_spec = spec.action_spec(&path)?;
            set.policies.push(Policy {
                name: Arc::from(spec.name.as_str()),
                salt: name_salt(&spec.name),
                match_: Arc::new(spec.match_.compile(&format!("{path}.match"))?),
                spec: spec.clone(),
                action: Action::from_spec(action_spec),
            });
        }
        Ok(set)
    }

    /// The settings after the list: `always_sample_errors`,
    /// `latency_threshold_ms` and `baseline_sample_rate`.
    pub fn fallback_settings(&self) -> (bool, f64, f64) {
        let f = &self.fallback;
        (
            f.always_sample_errors,
            f.latency_threshold_nanos as f64 / 1_000_000.0,
            f.baseline_rate,
        )
    }

    /// The policy list as it was written.
    pub fn specs(&self) -> Vec<PolicySpec> {
        self.policies.iter().map(|p| p.spec.clone()).collect()
    }

    /// [`PolicySet::decide`] at a given moment, for the samplers that count
    /// time (`rate_limit`, `dynamic`): a simulation gives each trace its own
    /// time, so that a range read faster than it was produced spends their
    /// budgets as live traffic did.
    pub fn decide_at(&self, trace_id: &TraceId, spans: &[SpanRecord], at: Instant) -> Decision {
        self.evaluate(
            trace_id,
            &TraceView::new(spans),
            &crate::matching::NoForceRules,
            at,
            Mode::Decide,
            &mut None,
        )
    }

    /// [`PolicySet::build`] for start-up, ready to share with the workers.
    pub fn shared(cfg: &SamplingConfig) -> Result<SharedPolicies, FieldError> {
        Ok(Arc::new(ArcSwap::from_pointee(Self::build(cfg, None)?)))
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policies' conditions and their samplers' key fields: what a
    /// buffer that keeps traces as facts must look for in each span.
    pub fn watched(&self) -> (Vec<Arc<CompiledMatch>>, Vec<Box<str>>) {
        let matches = self.policies.iter().map(|p| p.match_.clone()).collect();
        let keys = self
            .policies
            .iter()
            .flat_map(|p| match &p.action {
                Action::RateLimit { key_fields, .. } | Action::Dynamic { key_fields, .. } => {
                    key_fields.as_slice()
                }
                _ => &[],
            })
            .map(|k| k.as_str().into())
            .collect();
        (matches, keys)
    }

    /// The policies' names, in order.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.policies.iter().map(|p| p.name.clone()).collect()
    }

    /// Decides one complete trace.
    pub fn decide(
        &self,
        trace_id: &TraceId,
        spans: &[SpanRecord],
        force: &dyn ForceRules,
    ) -> Decision {
        self.decide_facts(trace_id, &TraceView::new(spans), force)
    }

    /// [`PolicySet::decide`] over what a decision reads of the trace: its
    /// spans, or the sketch a compact buffer kept.
    pub fn decide_facts(
        &self,
        trace_id: &TraceId,
        trace: &dyn TraceFacts,
        force: &dyn ForceRules,
    ) -> Decision {
        self.evaluate(
            trace_id,
            trace,
            force,
            Instant::now(),
            Mode::Decide,
            &mut None,
        )
    }

    /// What [`PolicySet::decide`] would say, step by step, changing nothing:
    /// no force-rule match is counted and no sampler state moves.
    pub fn explain(
        &self,
        trace_id: &TraceId,
        spans: &[SpanRecord],
        force: &dyn ForceRules,
    ) -> (Decision, Vec<Step>) {
        let mut steps = Vec::new();
        let d = self.evaluate(
            trace_id,
            &TraceView::new(spans),
            force,
            Instant::now(),
            Mode::Peek,
            &mut Some(&mut steps),
        );
        (d, steps)
    }

    /// The decision at `now`, over the trace's spans or its sketch; `Peek`
    /// leaves every state as it was.
    pub fn evaluate(
        &self,
        trace_id: &TraceId,
        trace: &dyn TraceFacts,
        force: &dyn ForceRules,
        now: Instant,
        mode: Mode,
        steps: &mut Steps<'_>,
    ) -> Decision {
        let verdict = match mode {
            Mode::Decide => force.evaluate(trace_id, trace),
            Mode::Peek => force.peek(trace_id, trace),
        };
        if let Some(v) = verdict {
            let d = match v {
                ForceVerdict::Keep { rule_id } => {
                    Decision::keep(SamplingReason::ForceRule, Some(rule_id))
                }
                ForceVerdict::Drop { .. } => Decision::Drop,
            };
            note(steps, || {
                let detail = match &d {
                    Decision::Keep {
                        rule_id: Some(id), ..
                    } => format!("force rule {id} keeps the trace"),
                    _ => "a force_drop rule drops the trace".to_string(),
                };
                Step::new("force_rules", true, detail).decided(&d)
            });
            return d;
        }
        note(steps, || {
            Step::new("force_rules", false, "no force rule matches".into())
        });
        for p in &self.policies {
            if let Some(d) = p.decide(trace_id, trace, now, mode, steps) {
                return d;
            }
        }
        self.fallback.decide(trace_id, trace, steps)
    }
}

impl Fallback {
    fn decide(
        &self,
        trace_id: &TraceId,
        trace: &dyn TraceFacts,
        steps: &mut Steps<'_>,
    ) -> Decision {
        if self.always_sample_errors && trace.has_error() {
            let d = Decision::keep(SamplingReason::Error, None);
            note(steps, || {
                Step::new("error", true, "a span has status ERROR".into()).decided(&d)
            });
            return d;
        }
        note(steps, || {
            let why = if self.always_sample_errors {
                "no span has status ERROR"
            } else {
                "always_sample_errors is off"
            };
            Step::new("error", false, why.into())
        });
        let duration = trace.duration_nanos();
        if duration >= self.latency_threshold_nanos {
            let d = Decision::keep(SamplingReason::Latency, None);
            note(steps, || {
                let detail = format!(
                    "the trace lasts {} ms, at least latency_threshold_ms = {}",
                    duration as f64 / 1e6,
                    self.latency_threshold_nanos as f64 / 1e6
                );
                Step::new("latency", true, detail).decided(&d)
            });
            return d;
        }
        note(steps, || {
            let detail = format!(
                "the trace lasts {} ms, under latency_threshold_ms = {}",
                duration as f64 / 1e6,
                self.latency_threshold_nanos as f64 / 1e6
            );
            Step::new("latency", false, detail)
        });
        if trace_hash(trace_id) < self.baseline_bound {
            let d = Decision::Keep {
                reason: SamplingReason::Baseline,
                rule_id: None,
                sample_rate: 1.0 / self.baseline_rate.min(1.0),
            };
            note(steps, || {
                let detail = format!(
                    "the trace id falls in the kept {} (baseline_sample_rate)",
                    self.baseline_rate
                );
                Step::new("baseline", true, detail).decided(&d)
            });
            return d;
        }
        note(steps, || {
            let detail = format!(
                "the trace id falls outside the kept {} (baseline_sample_rate)",
                self.baseline_rate
            );
            Step::new("baseline", false, detail)
        });
        note(steps, || {
            Step::new("default", true, "nothing kept the trace".into()).decided(&Decision::Drop)
        });
        Decision::Drop
    }
}

impl Action {
    fn from_spec(spec: ActionSpec) -> Self {
        match spec {
            ActionSpec::Keep => Action::Keep,
            ActionSpec::Drop => Action::Drop,
            ActionSpec::Sample { rate } => Action::Sample {
                bound: bound(rate),
                sample_rate: 1.0 / rate,
            },
            ActionSpec::RateLimit {
                traces_per_sec,
                key_fields,
                max_keys,
            } => Action::RateLimit {
                limiter: Arc::new(RateLimiter::new(traces_per_sec, max_keys)),
                key_fields,
            },
            ActionSpec::Dynamic {
                goal_rate,
                key_fields,
                adjustment_interval,
                max_keys,
            } => Action::Dynamic {
                sampler: Arc::new(DynamicSampler::new(
                    goal_rate,
                    adjustment_interval,
                    max_keys,
                )),
                key_fields,
            },
        }
    }

    /// The same action, sharing the sampler's state.
    fn share(&self) -> Self {
        match self {
            Action::Keep => Action::Keep,
            Action::Drop => Action::Drop,
            Action::Sample { bound, sample_rate } => Action::Sample {
                bound: *bound,
                sample_rate: *sample_rate,
            },
            Action::RateLimit {
                limiter,
                key_fields,
            } => Action::RateLimit {
                limiter: limiter.clone(),
                key_fields: key_fields.clone(),
            },
            Action::Dynamic {
                sampler,
                key_fields,
            } => Action::Dynamic {
                sampler: sampler.clone(),
                key_fields: key_fields.clone(),
            },
        }
    }
}

impl Policy {
    /// `None` when the policy does not match; a matching policy decides.
    fn decide(
        &self,
        trace_id: &TraceId,
        view: &dyn TraceFacts,
        now: Instant,
        mode: Mode,
        steps: &mut Steps<'_>,
    ) -> Option<Decision> {
        let step = |matched: bool, detail: String| Step {
            name: Some(self.name.to_string()),
            action: Some(self.spec.action.as_str()),
            ..Step::new("policy", matched, detail)
        };
        if !self.match_.matches(view) {
            note(steps, || step(false, "the match does not hold".into()));
            return None;
        }
        let hash = salted_trace_hash(trace_id, self.salt);
        let keep = |sample_rate: f64| Decision::Keep {
            reason: SamplingReason::Policy,
            rule_id: Some(self.name.clone()),
            sample_rate,
        };
        let sampled = |v: Verdict| {
            if v.keep {
                keep(v.sample_rate)
            } else {
                Decision::Drop
            }
        };
        let (d, detail) = match &self.action {
            Action::Keep => (keep(1.0), "keeps every matching trace".to_string()),
            Action::Drop => (Decision::Drop, "drops every matching trace".to_string()),
            Action::Sample { bound, sample_rate } => (
                sampled(Verdict {
                    keep: hash < *bound,
                    sample_rate: *sample_rate,
                }),
                format!("keeps 1 in {sample_rate} by trace id"),
            ),
            Action::RateLimit {
                limiter,
                key_fields,
            } => {
                let key = key_of(view, key_fields);
                let v = limiter.decide(&key, hash, now, mode);
                (
                    sampled(v),
                    format!(
                        "key {key:?}: kept at 1 in {:.3} under the limit",
                        v.sample_rate
                    ),
                )
            }
            Action::Dynamic {
                sampler,
                key_fields,
            } => {
                let key = key_of(view, key_fields);
                let v = sampler.decide(&key, hash, now, mode);
                (
                    sampled(v),
                    format!("key {key:?}: sample rate 1 in {}", v.sample_rate),
                )
            }
        };
        note(steps, || step(true, detail).decided(&d));
        Some(d)
    }
}

/// The values of the key fields, joined by a unit separator.
fn key_of(view: &dyn TraceFacts, fields: &[String]) -> String {
    let mut key = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            key.push('\u{1f}');
        }
        key.push_str(&view.key_value(f));
    }
    key
}

/// A per-policy salt, so that two sampling policies flip independent coins.
fn name_salt(name: &str) -> u64 {
    // FNV-1a: stable across versions and platforms.
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether the baseline policy alone would keep this trace at `rate`.
pub fn baseline_keeps(trace_id: &TraceId, rate: f64) -> bool {
    trace_hash(trace_id) < bound(rate)
}

/// The `[sampling]` section of a config file's text, as the service loads
/// it: for tests.
#[cfg(test)]
pub(crate) fn sampling_from_toml(toml: &str) -> SamplingConfig {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).expect("write");
    crate::config::Settings::load_with_env(Some(&path), std::iter::empty())
        .expect("config")
        .sampling
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::trace_duration_nanos;
    use crate::matching::NoForceRules;
    use crate::model::Origin;
    use bytes::Bytes;
    use std::sync::Arc;

    fn rec(start_ms: u64, end_ms: u64, err: bool) -> SpanRecord {
        SpanRecord {
            bytes: Bytes::new(),
            origin: Arc::new(Origin::default()),
            start_unix_nano: start_ms * 1_000_000,
            end_unix_nano: end_ms * 1_000_000,
            status_code: if err { 2 } else { 0 },
            ..Default::default()
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
        fn evaluate(&self, _: &TraceId, _: &dyn TraceFacts) -> Option<ForceVerdict> {
            Some(self.0.clone())
        }
    }

    fn sample_rate(d: &Decision) -> f64 {
        match d {
            Decision::Keep { sample_rate, .. } => *sample_rate,
            Decision::Drop => 0.0,
        }
    }

    #[test]
    fn a_kept_trace_stands_for_one_over_the_rate_that_kept_it() {
        let p = PolicySet::new(true, 5000.0, 0.25);
        let kept: Vec<_> = (0..400)
            .map(|n| p.decide(&id(n), &[rec(0, 1, false)], &NoForceRules))
            .filter(|d| *d != Decision::Drop)
            .collect();
        assert!(!kept.is_empty());
        assert!(kept.iter().all(|d| sample_rate(d) == 4.0));
        for whole in [rec(0, 1, true), rec(0, 6000, false)] {
            assert_eq!(sample_rate(&p.decide(&id(1), &[whole], &NoForceRules)), 1.0);
        }
        let all = PolicySet::new(true, 5000.0, 1.0);
        assert_eq!(
            sample_rate(&all.decide(&id(1), &[rec(0, 1, false)], &NoForceRules)),
            1.0
        );
    }

    #[test]
    fn error_policy_keeps_any_error_span_and_can_be_disabled() {
        let spans = [rec(0, 10, false), rec(1, 2, true)];
        let p = PolicySet::new(true, 5000.0, 0.0);
        assert_eq!(
            p.decide(&id(1), &spans, &NoForceRules),
            Decision::keep(SamplingReason::Error, None)
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
        let drop = Always(ForceVerdict::Drop {
            rule_id: "r1".into(),
        });
        assert_eq!(p.decide(&id(4), &spans, &drop), Decision::Drop);
        let keep = Always(ForceVerdict::Keep {
            rule_id: "r2".into(),
        });
        assert_eq!(
            p.decide(&id(4), &[rec(0, 1, false)], &keep),
            Decision::keep(SamplingReason::ForceRule, Some("r2".into()))
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
            assert_eq!(
                baseline_keeps(&id(n), 0.5),
                trace_hash(&id(n)) < u64::MAX / 2 + 1
            );
        }
        let none = PolicySet::new(true, 5000.0, 0.0);
        let all = PolicySet::new(true, 5000.0, 1.0);
        assert!((0..1000).all(|n| none.decide(&id(n), &spans, &NoForceRules) == Decision::Drop));
        assert!((0..1000).all(|n| all.decide(&id(n), &spans, &NoForceRules) != Decision::Drop));
    }

    mod policies {
        use super::*;
        use crate::config::Settings;
        use crate::testkit::synth::{records, TraceSpec};

        /// A trace of `n` spans from `service`, 1.2 s long; `http.route` on its root.
        fn spans(service: &str, n: usize, error: bool, trace_id: TraceId) -> Vec<SpanRecord> {
            let t = TraceSpec {
                trace_id,
                service: service.into(),
                spans: n,
                error,
                start_unix_nano: 1_700_000_000_000_000_000,
                duration_ms: 1200,
            };
            records(&t, ("http.route", "/checkout"))
        }

        fn sampling(toml: &str) -> SamplingConfig {
            super::super::sampling_from_toml(toml)
        }

        fn set(toml: &str) -> PolicySet {
            PolicySet::build(&sampling(toml), None).expect("policies")
        }

        fn decided_by(d: &Decision) -> Option<&str> {
            match d {
                Decision::Keep {
                    reason: SamplingReason::Policy,
                    rule_id,
                    ..
                } => rule_id.as_deref(),
                _ => None,
            }
        }

        const ORDERED: &str = r#"
            [sampling]
            baseline_sample_rate = 0.0
            [[sampling.policies]]
            name = "drop-health"
            match = { span = [{ key = "name", op = "eq", value = "health" }] }
            action = "drop"
            [[sampling.policies]]
            name = "big-traces"
            match = { trace = [{ key = "trace.span_count", op = "gte", value = 5 }] }
            action = "keep"
            [[sampling.policies]]
            name = "checkout-tenth"
            match = { resource = [{ key = "service.name", op = "eq", value = "checkout" }] }
            action = "sample"
            rate = 0.1
        "#;

        #[test]
        fn the_first_policy_that_matches_decides_and_the_fallback_comes_last() {
            let p = set(ORDERED);
            assert_eq!(p.names().len(), 3);
            // Five spans: `big-traces` keeps it whole, before `checkout-tenth`.
            let big = p.decide(&id(1), &spans("checkout", 5, false, id(1)), &NoForceRules);
            assert_eq!(decided_by(&big), Some("big-traces"));
            assert_eq!(sample_rate(&big), 1.0);
            // An error in checkout: the sample policy decides before the error fallback.
            let decided: Vec<Decision> = (0..2000)
                .map(|n| p.decide(&id(n), &spans("checkout", 2, true, id(n)), &NoForceRules))
                .collect();
            let kept = decided
                .iter()
                .filter(|d| decided_by(d) == Some("checkout-tenth"))
                .count();
            assert!((140..=260).contains(&kept), "kept {kept} of 2000 at 0.1");
            assert!(decided
                .iter()
                .all(|d| *d == Decision::Drop || sample_rate(d) == 10.0));
            // Nothing matches another service's error: the fallback keeps it.
            let other = p.decide(&id(3), &spans("billing", 2, true, id(3)), &NoForceRules);
            assert_eq!(other, Decision::keep(SamplingReason::Error, None));
            // Force rules still come first.
            let keep = Always(ForceVerdict::Keep {
                rule_id: "r".into(),
            });
            let forced = p.decide(&id(4), &spans("checkout", 5, false, id(4)), &keep);
            assert_eq!(
                forced,
                Decision::keep(SamplingReason::ForceRule, Some("r".into()))
            );
        }

        #[test]
        fn drop_wins_when_it_comes_first() {
            let p = set(r#"
                [[sampling.policies]]
                name = "no-checkout"
                match = { span = [{ key = "http.route", op = "starts_with", value = "/check" }] }
                action = "drop"
            "#);
            let d = p.decide(&id(1), &spans("checkout", 2, true, id(1)), &NoForceRules);
            assert_eq!(
                d,
                Decision::Drop,
                "the drop policy decides before the error fallback"
            );
        }

        #[test]
        fn sample_is_deterministic_and_independent_of_the_baseline() {
            let p = set(r#"
                [sampling]
                baseline_sample_rate = 0.5
                [[sampling.policies]]
                name = "half"
                action = "sample"
                rate = 0.5
            "#);
            let data = spans("a", 1, false, id(0));
            let kept: Vec<bool> = (0..4000)
                .map(|n| p.decide(&id(n), &data, &NoForceRules) != Decision::Drop)
                .collect();
            let again: Vec<bool> = (0..4000)
                .map(|n| p.decide(&id(n), &data, &NoForceRules) != Decision::Drop)
                .collect();
            assert_eq!(kept, again);
            let both = (0..4000)
                .filter(|&n| kept[n as usize] && baseline_keeps(&id(n), 0.5))
                .count();
            // Independent coins agree on about a quarter; one coin on half.
            assert!((850..=1150).contains(&both), "{both} of 4000 kept by both");
        }

        #[test]
        fn rate_limit_and_dynamic_use_their_keys() {
            let p = set(r#"
                [[sampling.policies]]
                name = "limit"
                match = { resource = [{ key = "service.name", op = "eq", value = "a" }] }
                action = "rate_limit"
                traces_per_sec = 5
                key_fields = ["service.name"]
                [[sampling.policies]]
                name = "dyn"
                action = "dynamic"
                goal_rate = 0.5
                key_fields = ["trace.root.name", "service.name"]
            "#);
            let data = spans("a", 1, false, id(0));
            let kept = (0..100)
                .filter(|&n| p.decide(&id(n), &data, &NoForceRules) != Decision::Drop)
                .count();
            assert!(
                (1..=10).contains(&kept),
                "rate limit kept {kept} of a burst of 100 at 5/s"
            );
            let b = spans("b", 1, false, id(0));
            let first = p.decide(&id(7), &b, &NoForceRules);
            assert_eq!(decided_by(&first), Some("dyn"), "a new key is kept whole");
            assert_eq!(sample_rate(&first), 1.0);
        }

        #[test]
        fn explain_names_the_deciding_step_and_changes_nothing() {
            let p = set(r#"
                [[sampling.policies]]
                name = "limit"
                action = "rate_limit"
                traces_per_sec = 1
            "#);
            let data = spans("a", 1, false, id(0));
            for _ in 0..5 {
                let (d, steps) = p.explain(&id(1), &data, &NoForceRules);
                assert_eq!(decided_by(&d), Some("limit"), "peeking spends no token");
                assert_eq!(steps.len(), 2);
                assert_eq!(steps[0].stage, "force_rules");
                assert_eq!((steps[1].stage, steps[1].outcome), ("policy", Some("keep")));
            }
            let (d, steps) =
                PolicySet::new(true, 5000.0, 0.0).explain(&id(1), &data, &NoForceRules);
            assert_eq!(d, Decision::Drop);
            let stages: Vec<_> = steps.iter().map(|s| s.stage).collect();
            assert_eq!(
                stages,
                ["force_rules", "error", "latency", "baseline", "default"]
            );
        }

        #[test]
        fn an_unchanged_policy_keeps_its_state_over_a_reload() {
            let toml = r#"
                [[sampling.policies]]
                name = "limit"
                action = "rate_limit"
                traces_per_sec = 2
            "#;
            let cfg = sampling(toml);
            let first = PolicySet::build(&cfg, None).expect("first");
            let data = spans("a", 1, false, id(0));
            let spent = (0..50)
                .filter(|&n| first.decide(&id(n), &data, &NoForceRules) != Decision::Drop)
                .count();
            assert!(spent >= 1);
            let carried = PolicySet::build(&cfg, Some(&first)).expect("reload");
            let after = (50..100)
                .filter(|&n| carried.decide(&id(n), &data, &NoForceRules) != Decision::Drop)
                .count();
            assert!(
                after < 2,
                "the bucket stays spent across the reload: {after}"
            );
            let fresh = PolicySet::build(&cfg, None).expect("fresh");
            assert!((0..50).any(|n| fresh.decide(&id(n), &data, &NoForceRules) != Decision::Drop));
        }

        #[test]
        fn bad_policies_name_their_field() {
            let cases = [
                ("name = \"\"\naction = \"keep\"", "sampling.policies[0].name"),
                ("name = \"a b\"\naction = \"keep\"", "sampling.policies[0].name"),
                ("name = \"s\"\naction = \"sample\"", "sampling.policies[0].rate"),
                ("name = \"s\"\naction = \"sample\"\nrate = 1.5", "sampling.policies[0].rate"),
                ("name = \"k\"\naction = \"keep\"\nrate = 0.5", "sampling.policies[0].rate"),
                ("name = \"r\"\naction = \"rate_limit\"", "sampling.policies[0].traces_per_sec"),
                ("name = \"d\"\naction = \"dynamic\"\ngoal_rate = 0.1", "sampling.policies[0].key_fields"),
                ("name = \"d\"\naction = \"dynamic\"\ngoal_rate = 0.1\nkey_fields = [\"\"]", "sampling.policies[0].key_fields[0]"),
                ("name = \"m\"\naction = \"keep\"\nmatch = { span = [{ key = \"a\", op = \"regex\", value = \"(\" }] }", "sampling.policies[0].match.span[0].value"),
                ("name = \"m\"\naction = \"keep\"\nmatch = { trace = [{ key = \"trace.nope\", op = \"exists\" }] }", "sampling.policies[0].match.trace[0].key"),
            ];
            for (body, field) in cases {
                let toml = format!("[[sampling.policies]]\n{body}\n");
                let dir = tempfile::tempdir().expect("dir");
                let path = dir.path().join("c.toml");
                std::fs::write(&path, &toml).expect("write");
                let err =
                    Settings::load_with_env(Some(&path), std::iter::empty()).expect_err(&toml);
                assert!(err.to_string().contains(field), "{toml}: {err}");
            }
            // Twice the same name; an unknown action; an unknown key.
            for (body, what) in [
                ("[[sampling.policies]]\nname = \"a\"\naction = \"keep\"\n[[sampling.policies]]\nname = \"a\"\naction = \"drop\"", "sampling.policies[1].name"),
                ("[[sampling.policies]]\nname = \"a\"\naction = \"maybe\"", "sampling.policies[0].action"),
                ("[[sampling.policies]]\nname = \"a\"\naction = \"keep\"\nrat = 1", "rat"),
            ] {
                let dir = tempfile::tempdir().expect("dir");
                let path = dir.path().join("c.toml");
                std::fs::write(&path, body).expect("write");
                let err = Settings::load_with_env(Some(&path), std::iter::empty()).expect_err(body);
                assert!(err.to_string().contains(what), "{body}: {err}");
            }
        }
    }
}
