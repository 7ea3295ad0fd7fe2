//! Prometheus metrics, named as docs/operations.md lists them (prefix
//! `tail_sampling_`).

pub mod red;
pub mod sinks;

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

const NAMESPACE: &str = "tail_sampling";

/// Every metric of the selector, registered in its own registry.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub traces_ingested_total: IntCounter,
    pub spans_ingested_total: IntCounter,
    pub traces_sampled_total: IntCounterVec,
    pub traces_dropped_total: IntCounter,
    pub traces_force_sampled_total: IntCounter,
    /// Spans each sink has taken for good: `iceberg` (committed to the
    /// table), `sampled_topic`, `otlp/<name>`.
    pub spans_exported_total: IntCounterVec,
    pub sinks: sinks::SinkMetrics,
    pub late_spans_total: IntCounterVec,
    pub messages_invalid_total: IntCounterVec,
    pub spans_invalid_total: IntCounterVec,
    pub messages_consumed_total: IntCounter,
    pub iceberg_commits_total: IntCounter,
    pub iceberg_commit_failures_total: IntCounter,
    pub buffered_traces: IntGauge,
    pub buffered_spans: IntGauge,
    pub consumer_lag_messages: IntGaugeVec,
    pub replayed_spans_skipped_total: IntCounter,
    pub attributes_truncated_total: IntCounterVec,
    pub admin_requests_refused_total: IntCounterVec,
    pub held_spans: IntGauge,
    pub held_bytes: IntGauge,
    pub watermark_lag_seconds: prometheus::Gauge,
    pub consumer_paused: IntGauge,
    pub assigned_partitions: IntGauge,
    pub decision_cache_short_replies_total: IntCounter,
    pub decision_latency_seconds: Histogram,
    pub iceberg_commit_duration_seconds: Histogram,
    /// The RED metrics of every span; workers record into it.
    pub red: Arc<red::RedSeries>,
    pub policy_reloads_total: IntCounterVec,
    pub policies_loaded: IntGauge,
    pub maintenance_runs_total: IntCounterVec,
    pub maintenance_duration_seconds: prometheus::HistogramVec,
    pub maintenance_files_rewritten_total: IntCounter,
    pub maintenance_files_written_total: IntCounter,
    pub maintenance_bytes_rewritten_total: IntCounter,
    pub maintenance_commit_rebases_total: IntCounter,
    pub maintenance_snapshots_expired_total: IntCounter,
    pub maintenance_partitions_removed_total: IntCounter,
    pub maintenance_files_deleted_total: IntCounter,
    pub maintenance_orphan_files_deleted_total: IntCounterVec,
    pub maintenance_lease_held: IntGauge,
    pub maintenance_last_success_timestamp_seconds: prometheus::GaugeVec,
    pub trace_lookups_total: IntCounter,
    pub trace_lookup_files_total: IntCounterVec,
    pub trace_lookup_row_groups_total: IntCounterVec,
}

/// `metrics.max_series` where no config is at hand (tests, benchmarks).
pub const DEFAULT_MAX_SERIES: usize = 5000;

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::with_max_series(DEFAULT_MAX_SERIES)
    }

    /// `max_series` caps the RED metrics' label sets (`metrics.max_series`).
    pub fn with_max_series(max_series: usize) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::with_opts(opts(name, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counter_vec =
            |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(opts(name, help), &[label])?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::with_opts(opts(name, help))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram =
            |name: &str, help: &str, buckets: Vec<f64>| -> Result<Histogram, prometheus::Error> {
                let h = Histogram::with_opts(
                    HistogramOpts::new(name, help)
                        .namespace(NAMESPACE)
                        .buckets(buckets),
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let consumer_lag_messages = IntGaugeVec::new(
            opts(
                "consumer_lag_messages",
                "Messages consumed but not yet committed, per partition",
            ),
            &["partition"],
        )?;
        registry.register(Box::new(consumer_lag_messages.clone()))?;
        let m = Self {
            traces_ingested_total: counter(
                "traces_ingested_total",
                "Traces opened in the buffer (a trace whose spans arrive after its decision counts again)",
            )?,
            spans_ingested_total: counter("spans_ingested_total", "Spans read from Kafka")?,
            traces_sampled_total: counter_vec(
                "traces_sampled_total",
                "Traces kept, by sampling reason",
                "reason",
            )?,
            traces_dropped_total: counter("traces_dropped_total", "Traces dropped")?,
            traces_force_sampled_total: counter(
                "traces_force_sampled_total",
                "Traces decided by a force rule",
            )?,
            spans_exported_total: counter_vec(
                "spans_exported_total",
                "Spans each sink took for good, by sink: iceberg (committed to the table), sampled_topic (confirmed by the broker), otlp/<name> (accepted by the backend)",
                "sink",
            )?,
            sinks: sinks::SinkMetrics::register(&registry)?,
            late_spans_total: counter_vec(
                "late_spans_total",
                "Spans that arrived after their trace was decided",
                "decision",
            )?,
            messages_invalid_total: counter_vec(
                "messages_invalid_total",
                "Kafka messages that could not be decoded, by reason",
                "reason",
            )?,
            spans_invalid_total: counter_vec(
                "spans_invalid_total",
                "Spans skipped inside otherwise valid messages, by reason",
                "reason",
            )?,
            messages_consumed_total: counter(
                "messages_consumed_total",
                "Kafka messages consumed",
            )?,
            iceberg_commits_total: counter(
                "iceberg_commits_total",
                "Successful Iceberg commits",
            )?,
            iceberg_commit_failures_total: counter(
                "iceberg_commit_failures_total",
                "Iceberg writes or commits that failed and will be retried",
            )?,
            buffered_traces: gauge("buffered_traces", "Traces waiting for a decision")?,
            buffered_spans: gauge("buffered_spans", "Spans waiting for a decision")?,
            decision_latency_seconds: histogram(
                "decision_latency_seconds",
                "From a trace's last span arriving to its decision",
                vec![0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0],
            )?,
            iceberg_commit_duration_seconds: histogram(
                "iceberg_commit_duration_seconds",
                "Writing data files and committing one Iceberg snapshot",
                vec![0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            )?,
            replayed_spans_skipped_total: counter(
                "replayed_spans_skipped_total",
                "Spans re-read from Kafka after a restart or rebalance that were already in the table",
            )?,
            attributes_truncated_total: counter_vec(
                "attributes_truncated_total",
                "Stored attributes cut by storage.attribute_value_max_bytes (limit=value_bytes) or dropped past storage.attribute_max_count (limit=count)",
                "limit",
            )?,
            admin_requests_refused_total: counter_vec(
                "admin_requests_refused_total",
                "Requests to the admin port refused as cross-site, by reason: host (Host not served, 403), origin (another site's Origin, 403) or content_type (a body that is not JSON, 415)",
                "reason",
            )?,
            held_spans: gauge(
                "held_spans",
                "Spans in memory: buffered, or decided and not yet committed",
            )?,
            watermark_lag_seconds: {
                let g = prometheus::Gauge::with_opts(opts(
                    "watermark_lag_seconds",
                    "Wall clock minus the stream-time watermark: how far behind the backlog being read is",
                ))?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            held_bytes: gauge(
                "held_bytes",
                "Bytes of the Kafka messages that held spans keep alive, plus the Arrow rows the writer is building",
            )?,
            consumer_paused: gauge(
                "consumer_paused",
                "1 while the consumer pauses its partitions at buffer.max_buffered_spans or buffer.max_buffered_bytes",
            )?,
            assigned_partitions: gauge(
                "assigned_partitions",
                "Partitions of the topic this instance owns in its consumer group",
            )?,
            decision_cache_short_replies_total: counter(
                "decision_cache_short_replies_total",
                "Decision-cache reads whose reply did not answer every key (those traces were decided afresh)",
            )?,
            red: {
                let overflow = counter(
                    "span_metrics_overflow_spans_total",
                    "Spans counted in the `other` RED series because metrics.max_series label sets exist",
                )?;
                let series = Arc::new(red::RedSeries::new(max_series, overflow)?);
                registry.register(Box::new(SharedCollector(series.clone())))?;
                series
            },
            policy_reloads_total: counter_vec(
                "policy_reloads_total",
                "Reloads of the sampling policy list, by result (ok, error)",
                "result",
            )?,
            policies_loaded: gauge("policies_loaded", "Sampling policies in force")?,
            maintenance_runs_total: {
                let c = IntCounterVec::new(
                    opts("maintenance_runs_total", "Table-maintenance steps run, by step and result (ok, error)"),
                    &["step", "result"],
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            maintenance_duration_seconds: {
                let h = prometheus::HistogramVec::new(
                    HistogramOpts::new("maintenance_duration_seconds", "Duration of each table-maintenance step")
                        .namespace(NAMESPACE)
                        .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0]),
                    &["step"],
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            maintenance_files_rewritten_total: counter(
                "maintenance_files_rewritten_total",
                "Data files compaction removed (their rows rewritten into larger files)",
            )?,
            maintenance_files_written_total: counter("maintenance_files_written_total", "Data files compaction wrote")?,
            maintenance_bytes_rewritten_total: counter(
                "maintenance_bytes_rewritten_total",
                "Bytes of the data files compaction rewrote",
            )?,
            maintenance_commit_rebases_total: counter(
                "maintenance_commit_rebases_total",
                "Maintenance commits rebuilt because an append committed first",
            )?,
            maintenance_snapshots_expired_total: counter("maintenance_snapshots_expired_total", "Snapshots expired")?,
            maintenance_partitions_removed_total: counter(
                "maintenance_partitions_removed_total",
                "Day partitions removed because they are past storage.retention_days",
            )?,
            maintenance_files_deleted_total: counter(
                "maintenance_files_deleted_total",
                "Manifest lists, manifests and data files deleted because only expired snapshots reached them",
            )?,
            maintenance_lease_held: gauge(
                "maintenance_lease_held",
                "1 while this instance holds the maintenance lease (it maintains the table), 0 otherwise",
            )?,
            maintenance_orphan_files_deleted_total: counter_vec(
                "maintenance_orphan_files_deleted_total",
                "Unreferenced files under the table's location deleted past orphan_file_grace_secs, by kind: data (data files and manifests) or metadata (metadata.json)",
                "kind",
            )?,
            maintenance_last_success_timestamp_seconds: {
                let g = prometheus::GaugeVec::new(
                    opts("maintenance_last_success_timestamp_seconds", "When each maintenance step last succeeded (Unix seconds)"),
                    &["step"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            trace_lookups_total: counter("trace_lookups_total", "GET /admin/traces/{id} lookups")?,
            trace_lookup_files_total: counter_vec(
                "trace_lookup_files_total",
                "Data files trace lookups planned, by outcome: read, skipped_by_statistics (no row group's trace_id min/max covers the id) or skipped_by_bloom (the rest ruled out by trace_id bloom filters)",
                "outcome",
            )?,
            trace_lookup_row_groups_total: counter_vec(
                "trace_lookup_row_groups_total",
                "Row groups in the files trace lookups planned (planned), those their trace_id min/max ruled out (skipped_by_statistics), and those their trace_id bloom filter ruled out (skipped_by_bloom)",
                "outcome",
            )?,
            consumer_lag_messages,
            registry,
        };
        for result in ["ok", "error"] {
            m.policy_reloads_total.with_label_values(&[result]);
            m.maintenance_runs_total
                .with_label_values(&["compaction", result]);
            m.maintenance_runs_total
                .with_label_values(&["expiry", result]);
            m.maintenance_runs_total
                .with_label_values(&["retention", result]);
            m.maintenance_runs_total
                .with_label_values(&["orphans", result]);
        }
        for kind in ["data", "metadata"] {
            m.maintenance_orphan_files_deleted_total
                .with_label_values(&[kind]);
        }
        for decision in ["kept", "dropped"] {
            m.late_spans_total.with_label_values(&[decision]);
        }
        for reason in crate::model::SamplingReason::ALL {
            m.traces_sampled_total.with_label_values(&[reason.as_str()]);
        }
        Ok(m)
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

/// Registers a collector that is also used elsewhere.
struct SharedCollector<C>(Arc<C>);

impl<C: prometheus::core::Collector> prometheus::core::Collector for SharedCollector<C> {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design() {
        let m = Metrics::new().expect("metrics");
        m.traces_sampled_total.with_label_values(&["error"]).inc();
        m.messages_invalid_total
            .with_label_values(&["protobuf"])
            .inc();
        m.decision_latency_seconds.observe(0.2);
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
