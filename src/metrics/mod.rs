//! Prometheus metrics, named as docs/operations.md lists them (prefix
//! `tail_sampling_`), grouped by the stage that records them: a stage takes
//! its own group, and the overview page and `/metrics` read them all.

pub mod api;
pub mod decide;
pub mod ingest;
pub mod maintenance;
pub mod recovery;
pub mod red;
pub mod reread;
pub mod sinks;
pub mod storage;

mod registrar;

use prometheus::{Encoder, Registry, TextEncoder};
pub use registrar::Registrar;

/// Every metric of the selector, registered in its own registry.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Reading Kafka: messages, invalid input, lag, held memory, pauses.
    pub ingest: ingest::IngestMetrics,
    /// Grouping spans into traces and deciding them, with the RED series.
    pub decide: decide::DecideMetrics,
    /// Writing kept traces to the table.
    pub storage: storage::StorageMetrics,
    /// Every sink kept traces leave through, the table included.
    pub sinks: sinks::SinkMetrics,
    /// Compaction, expiry, retention and orphan removal.
    pub maintenance: maintenance::MaintenanceMetrics,
    /// The HTTP surface: refused requests and trace lookups.
    pub api: api::ApiMetrics,
    /// Recovery jobs: what they read and stored.
    pub recovery: recovery::RecoveryMetrics,
    /// The compact buffer's second read of kept traces' spans.
    pub reread: reread::RereadMetrics,
}

/// `metrics.max_series` where no config is at hand (tests, benchmarks).
pub const DEFAULT_MAX_SERIES: usize = 5000;

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::with_max_series(DEFAULT_MAX_SERIES)
    }

    /// `max_series` caps the RED metrics' label sets (`metrics.max_series`).
    pub fn with_max_series(max_series: usize) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let r = Registrar::new(&registry);
        Ok(Self {
            ingest: ingest::IngestMetrics::register(&r)?,
            decide: decide::DecideMetrics::register(&r, max_series)?,
            storage: storage::StorageMetrics::register(&r)?,
            sinks: sinks::SinkMetrics::register(&r)?,
            maintenance: maintenance::MaintenanceMetrics::register(&r)?,
            api: api::ApiMetrics::register(&r)?,
            recovery: recovery::RecoveryMetrics::register(&r)?,
            reread: reread::RereadMetrics::register(&r)?,
            registry,
        })
    }

    /// The text exposition format served on `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design() {
        let m = Metrics::new().expect("metrics");
        m.decide
            .traces_sampled_total
            .with_label_values(&["error"])
            .inc();
        m.ingest
            .messages_invalid_total
            .with_label_values(&["protobuf"])
            .inc();
        m.decide.decision_latency_seconds.observe(0.2);
        let text = m.render();
        for name in [
            "tail_sampling_traces_ingested_total",
            "tail_sampling_spans_ingested_total",
            "tail_sampling_traces_sampled_total{reason=\"error\"} 1",
            "tail_sampling_traces_sampled_total{reason=\"latency\"} 0",
            "tail_sampling_traces_dropped_total",
            "tail_sampling_traces_force_sampled_total",
            "tail_sampling_messages_invalid_total{reason=\"protobuf\"} 1",
            "tail_sampling_iceberg_commits_total",
            "tail_sampling_buffered_traces",
            "tail_sampling_buffered_spans",
            "tail_sampling_decision_latency_seconds_bucket",
            "tail_sampling_iceberg_commit_duration_seconds",
            "tail_sampling_assigned_partitions",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }
}
