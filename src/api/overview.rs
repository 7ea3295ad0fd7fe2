//! `GET /admin/overview`: the pipeline's state in one small JSON document,
//! read from the same registry `/metrics` serves, for the web UI's overview
//! page (which computes rates from two readings).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use prometheus::core::Collector;
use prometheus::proto::Histogram;
use serde::Serialize;

use super::error::ApiError;
use super::state::AppState;
use crate::health::HealthReport;
use crate::metrics::Metrics;

/// A labelled family as `{label value: value}`, summed over other labels.
fn by_label(collector: &dyn Collector, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for family in collector.collect() {
        for m in family.get_metric() {
            let key = m
                .get_label()
                .iter()
                .find(|l| l.name() == label)
                .map_or_else(String::new, |l| l.value().to_string());
            *out.entry(key).or_insert(0.0) +=
                m.get_counter().get_value() + m.get_gauge().get_value();
        }
    }
    out
}

/// The `q` quantile of a histogram by linear interpolation within its
/// bucket, as PromQL's `histogram_quantile` does; `None` without samples.
pub fn quantile(h: &Histogram, q: f64) -> Option<f64> {
    let total = h.get_sample_count() as f64;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for b in h.get_bucket() {
        let count = b.cumulative_count() as f64;
        if count >= rank {
            let upper = b.upper_bound();
            let width = count - below;
            return Some(if width > 0.0 {
                lower + (upper - lower) * (rank - below) / width
            } else {
                upper
            });
        }
        (lower, below) = (b.upper_bound(), count);
    }
    // Beyond the last bound: the last bound is the best known.
    Some(lower)
}

/// A histogram's count, sum and two quantiles.
#[derive(Debug, Serialize)]
pub struct HistogramSummary {
    count: u64,
    sum_seconds: f64,
    p50_seconds: Option<f64>,
    p99_seconds: Option<f64>,
}

fn histogram(collector: &dyn Collector) -> Option<HistogramSummary> {
    let families = collector.collect();
    let h = families
        .first()
        .and_then(|f| f.get_metric().first())
        .map(|m| m.get_histogram().clone())?;
    Some(HistogramSummary {
        count: h.get_sample_count(),
        sum_seconds: h.get_sample_sum(),
        p50_seconds: quantile(&h, 0.5),
        p99_seconds: quantile(&h, 0.99),
    })
}

/// The document (docs/api.md, "GET /admin/overview"): counters as totals since start,
/// gauges as they are now.
#[derive(Debug, Serialize)]
pub struct Overview {
    at_unix_ms: i64,
    ingest: Ingest,
    decisions: Decisions,
    buffer: Buffer,
    consumer: Consumer,
    iceberg: Iceberg,
    sinks: Sinks,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<HealthReport>,
}

#[derive(Debug, Serialize)]
struct Ingest {
    messages_total: u64,
    spans_total: u64,
    traces_total: u64,
    invalid_messages_total: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
struct Decisions {
    kept_by_reason: BTreeMap<String, f64>,
    dropped_total: u64,
    latency_seconds: Option<HistogramSummary>,
}

#[derive(Debug, Serialize)]
struct Buffer {
    traces: i64,
    spans: i64,
    held_spans: i64,
}

#[derive(Debug, Serialize)]
struct Consumer {
    lag_messages: f64,
    lag_by_partition: BTreeMap<String, f64>,
    assigned_partitions: i64,
    paused: bool,
    watermark_lag_seconds: f64,
}

#[derive(Debug, Serialize)]
struct Iceberg {
    commits_total: u64,
    commit_failures_total: u64,
    spans_written_total: u64,
    commit_duration: Option<HistogramSummary>,
}

#[derive(Debug, Serialize)]
struct Sinks {
    exported_spans_by_sink: BTreeMap<String, f64>,
    failures_by_sink: BTreeMap<String, f64>,
    retries_by_sink: BTreeMap<String, f64>,
    lag_messages_by_sink: BTreeMap<String, f64>,
    lag_seconds_by_sink: BTreeMap<String, f64>,
}

/// The document, from the registry.
pub fn overview(m: &Metrics) -> Overview {
    let lag = by_label(&m.ingest.consumer_lag_messages, "partition");
    Overview {
        at_unix_ms: chrono::Utc::now().timestamp_millis(),
        ingest: Ingest {
            messages_total: m.ingest.messages_consumed_total.get(),
            spans_total: m.decide.spans_ingested_total.get(),
            traces_total: m.decide.traces_ingested_total.get(),
            invalid_messages_total: by_label(&m.ingest.messages_invalid_total, "reason"),
        },
        decisions: Decisions {
            kept_by_reason: by_label(&m.decide.traces_sampled_total, "reason"),
            dropped_total: m.decide.traces_dropped_total.get(),
            latency_seconds: histogram(&m.decide.decision_latency_seconds),
        },
        buffer: Buffer {
            traces: m.decide.buffered_traces.get(),
            spans: m.decide.buffered_spans.get(),
            held_spans: m.ingest.held_spans.get(),
        },
        consumer: Consumer {
            lag_messages: lag.values().sum(),
            lag_by_partition: lag,
            assigned_partitions: m.ingest.assigned_partitions.get(),
            paused: m.ingest.consumer_paused.get() != 0,
            watermark_lag_seconds: m.ingest.watermark_lag_seconds.get(),
        },
        iceberg: Iceberg {
            commits_total: m.storage.iceberg_commits_total.get(),
            commit_failures_total: m.storage.iceberg_commit_failures_total.get(),
            spans_written_total: m
                .sinks
                .spans_exported_total
                .with_label_values(&["iceberg"])
                .get(),
            commit_duration: histogram(&m.storage.iceberg_commit_duration_seconds),
        },
        sinks: Sinks {
            exported_spans_by_sink: by_label(&m.sinks.spans_exported_total, "sink"),
            failures_by_sink: by_label(&m.sinks.export_failures_total, "sink"),
            retries_by_sink: by_label(&m.sinks.export_retries_total, "sink"),
            lag_messages_by_sink: by_label(&m.sinks.forward_lag_messages, "sink"),
            lag_seconds_by_sink: by_label(&m.sinks.forward_lag_seconds, "sink"),
        },
        health: None,
    }
}

/// `GET /admin/overview`.
pub async fn get(State(state): State<AppState>) -> Result<Response, ApiError> {
    let m = state.metrics.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "metrics are not available")
    })?;
    let mut doc = overview(m);
    doc.health = Some(state.health.report());
    Ok(Json(doc).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let h = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("h", "h").buckets(vec![0.1, 0.2, 0.4]),
        )
        .expect("histogram");
        assert_eq!(
            quantile(&h.collect()[0].get_metric()[0].get_histogram().clone(), 0.5),
            None
        );
        for v in [0.05, 0.15, 0.15, 0.3] {
            h.observe(v);
        }
        let proto = h.collect()[0].get_metric()[0].get_histogram().clone();
        let p50 = quantile(&proto, 0.5).expect("samples");
        assert!(
            (p50 - 0.15).abs() < 1e-9,
            "rank 2 of 4 is half way into (0.1, 0.2]: {p50}"
        );
        let p99 = quantile(&proto, 0.99).expect("samples");
        assert!(p99 > 0.2 && p99 <= 0.4, "{p99}");
    }

    #[test]
    fn the_document_reads_the_registry() {
        let m = Metrics::new().expect("metrics");
        m.decide
            .traces_sampled_total
            .with_label_values(&["error"])
            .inc_by(4);
        m.decide.traces_dropped_total.inc_by(6);
        m.ingest
            .consumer_lag_messages
            .with_label_values(&["0"])
            .set(3);
        m.ingest
            .consumer_lag_messages
            .with_label_values(&["1"])
            .set(2);
        m.decide.buffered_traces.set(7);
        let doc = serde_json::to_value(overview(&m)).expect("serializes");
        assert_eq!(doc["decisions"]["kept_by_reason"]["error"], json!(4.0));
        assert_eq!(doc["decisions"]["dropped_total"], json!(6));
        assert_eq!(doc["consumer"]["lag_messages"], json!(5.0));
        assert_eq!(doc["buffer"]["traces"], json!(7));
        assert_eq!(doc["iceberg"]["commit_duration"]["count"], json!(0));
    }
}
