//! The series of the sinks kept traces leave through: the sampled topic
//! (`sink="sampled_topic"`) and each OTLP forwarder (`sink="otlp/<name>"`).
//! What reached each sink is `tail_sampling_spans_exported_total{sink}`.

use prometheus::{GaugeVec, HistogramVec, IntCounterVec, IntGaugeVec};

use super::registrar::Registrar;

#[derive(Clone)]
pub struct SinkMetrics {
    /// Spans each sink has taken for good: `iceberg` (committed to the
    /// table), `sampled_topic`, `otlp/<name>`.
    pub spans_exported_total: IntCounterVec,
    /// Attempts that failed, by sink and reason (`http_503`, `timeout`,
    /// `connect`, `kafka`…); each is retried or dead-lettered.
    pub export_failures_total: IntCounterVec,
    /// Requests sent again after a retryable failure.
    pub export_retries_total: IntCounterVec,
    /// One accepted request or produced trace, from first try to acceptance.
    pub export_duration_seconds: HistogramVec,
    /// Spans a backend accepted the request of but rejected itself
    /// (OTLP `partial_success.rejected_spans`).
    pub spans_rejected_total: IntCounterVec,
    /// Spans of batches a backend refused for good, copied to the
    /// forwarder's dead-letter topic, by reason.
    pub spans_dead_lettered_total: IntCounterVec,
    /// Records of the sampled topic a forwarder has not yet had accepted.
    pub forward_lag_messages: IntGaugeVec,
    /// Age of the oldest record a forwarder has read and not yet had
    /// accepted; 0 when it is caught up.
    pub forward_lag_seconds: GaugeVec,
}

impl SinkMetrics {
    pub fn register(r: &Registrar) -> Result<Self, prometheus::Error> {
        Ok(Self {
            spans_exported_total: r.counter_vec(
                "spans_exported_total",
                "Spans each sink took for good, by sink: iceberg (committed to the table), sampled_topic (confirmed by the broker), otlp/<name> (accepted by the backend)",
                &["sink"],
            )?,
            export_failures_total: r.counter_vec(
                "export_failures_total",
                "Export attempts that failed, by sink and reason; each is retried or dead-lettered",
                &["sink", "reason"],
            )?,
            export_retries_total: r.counter_vec(
                "export_retries_total",
                "Export requests sent again after a retryable failure, by sink",
                &["sink"],
            )?,
            export_duration_seconds: r.histogram_vec(
                "export_duration_seconds",
                "From a sink's first attempt at a request (or a trace, for the sampled topic) to its acceptance",
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
                &["sink"],
            )?,
            spans_rejected_total: r.counter_vec(
                "export_spans_rejected_total",
                "Spans an OTLP backend rejected in an accepted request (partial_success), by sink",
                &["sink"],
            )?,
            spans_dead_lettered_total: r.counter_vec(
                "export_spans_dead_lettered_total",
                "Spans of requests an OTLP backend refused for good, copied to the dead-letter topic, by sink and reason",
                &["sink", "reason"],
            )?,
            forward_lag_messages: r.gauge_vec(
                "forward_lag_messages",
                "Records of the sampled topic a forwarder has not had accepted yet (its consumer group's lag)",
                &["sink"],
            )?,
            forward_lag_seconds: r.float_gauge_vec(
                "forward_lag_seconds",
                "Age of the oldest sampled-topic record a forwarder has read and not had accepted; 0 when caught up",
                &["sink"],
            )?,
        })
    }
}
