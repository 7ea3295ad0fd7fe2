//! What the storage stage records: Iceberg commits, their failures and
//! duration, replayed spans it skipped and attributes it cut.

use prometheus::{Histogram, IntCounter, IntCounterVec};

use super::registrar::Registrar;

#[derive(Clone)]
pub struct StorageMetrics {
    pub iceberg_commits_total: IntCounter,
    pub iceberg_commit_failures_total: IntCounter,
    pub iceberg_commit_duration_seconds: Histogram,
    pub replayed_spans_skipped_total: IntCounter,
    pub attributes_truncated_total: IntCounterVec,
}

impl StorageMetrics {
    pub fn register(r: &Registrar) -> Result<Self, prometheus::Error> {
        Ok(Self {
            iceberg_commits_total: r.counter("iceberg_commits_total", "Successful Iceberg commits")?,
            iceberg_commit_failures_total: r.counter(
                "iceberg_commit_failures_total",
                "Iceberg writes or commits that failed and will be retried",
            )?,
            iceberg_commit_duration_seconds: r.histogram(
                "iceberg_commit_duration_seconds",
                "Writing data files and committing one Iceberg snapshot",
                vec![0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            )?,
            replayed_spans_skipped_total: r.counter(
                "replayed_spans_skipped_total",
                "Spans re-read from Kafka after a restart or rebalance that were already in the table",
            )?,
            attributes_truncated_total: r.counter_vec(
                "attributes_truncated_total",
                "Stored attributes cut by storage.attribute_value_max_bytes (limit=value_bytes) or dropped past storage.attribute_max_count (limit=count)",
                &["limit"],
            )?,
        })
    }
}
