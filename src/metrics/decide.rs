//! What the decide stage records: traces opened, kept and dropped, the
//! buffer, decision latency, late spans, policy reloads and the RED series
//! of every span.

use std::sync::Arc;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

use super::red;
use super::registrar::Registrar;
use crate::model::SamplingReason;

#[derive(Clone)]
pub struct DecideMetrics {
    pub traces_ingested_total: IntCounter,
    pub spans_ingested_total: IntCounter,
    /// Traces kept, by reason; every reason's series exists from the start.
    pub traces_sampled_total: IntCounterVec,
    pub traces_dropped_total: IntCounter,
    pub traces_force_sampled_total: IntCounter,
    pub late_spans_total: IntCounterVec,
    pub buffered_traces: IntGauge,
    pub buffered_spans: IntGauge,
    pub decision_latency_seconds: Histogram,
    pub decision_cache_short_replies_total: IntCounter,
    pub policy_reloads_total: IntCounterVec,
    pub policies_loaded: IntGauge,
    /// The RED metrics of every span; workers record into it.
    pub red: Arc<red::RedSeries>,
}

impl DecideMetrics {
    /// `max_series` caps the RED series' label sets.
    pub fn register(r: &Registrar, max_series: usize) -> Result<Self, prometheus::Error> {
        let m = Self {
            traces_ingested_total: r.counter(
                "traces_ingested_total",
                "Traces opened in the buffer (a trace whose spans arrive after its decision counts again)",
            )?,
            spans_ingested_total: r.counter("spans_ingested_total", "Spans read from Kafka")?,
            traces_sampled_total: r.counter_vec(
                "traces_sampled_total",
                "Traces kept, by sampling reason",
                &["reason"],
            )?,
            traces_dropped_total: r.counter("traces_dropped_total", "Traces dropped")?,
            traces_force_sampled_total: r.counter(
                "traces_force_sampled_total",
                "Traces decided by a force rule",
            )?,
            late_spans_total: r.counter_vec(
                "late_spans_total",
                "Spans that arrived after their trace was decided",
                &["decision"],
            )?,
            buffered_traces: r.gauge("buffered_traces", "Traces waiting for a decision")?,
            buffered_spans: r.gauge("buffered_spans", "Spans waiting for a decision")?,
            decision_latency_seconds: r.histogram(
                "decision_latency_seconds",
                "From a trace's last span arriving to its decision",
                vec![0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0],
            )?,
            decision_cache_short_replies_total: r.counter(
                "decision_cache_short_replies_total",
                "Decision-cache reads whose reply did not answer every key (those traces were decided afresh)",
            )?,
            policy_reloads_total: r.counter_vec(
                "policy_reloads_total",
                "Reloads of the sampling policy list, by result (ok, error)",
                &["result"],
            )?,
            policies_loaded: r.gauge("policies_loaded", "Sampling policies in force")?,
            red: {
                let overflow = r.counter(
                    "span_metrics_overflow_spans_total",
                    "Spans counted in the `other` RED series because metrics.max_series label sets exist",
                )?;
                r.shared(Arc::new(red::RedSeries::new(max_series, overflow)?))?
            },
        };
        for result in ["ok", "error"] {
            m.policy_reloads_total.with_label_values(&[result]);
        }
        for decision in ["kept", "dropped"] {
            m.late_spans_total.with_label_values(&[decision]);
        }
        for reason in SamplingReason::ALL {
            m.traces_sampled_total.with_label_values(&[reason.as_str()]);
        }
        Ok(m)
    }
}
