//! What the ingest stage records: messages read and refused, the
//! consumer's lag and pauses, and the memory its held messages take.

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use super::registrar::Registrar;

#[derive(Clone)]
pub struct IngestMetrics {
    pub messages_consumed_total: IntCounter,
    /// Messages that could not be decoded, by reason.
    pub messages_invalid_total: IntCounterVec,
    /// Spans skipped inside otherwise valid messages, by reason (the
    /// storage stage counts those it cannot encode too).
    pub spans_invalid_total: IntCounterVec,
    pub consumer_lag_messages: IntGaugeVec,
    pub held_spans: IntGauge,
    pub held_bytes: IntGauge,
    pub watermark_lag_seconds: Gauge,
    pub consumer_paused: IntGauge,
    pub assigned_partitions: IntGauge,
}

impl IngestMetrics {
    pub fn register(r: &Registrar) -> Result<Self, prometheus::Error> {
        Ok(Self {
            messages_consumed_total: r.counter("messages_consumed_total", "Kafka messages consumed")?,
            messages_invalid_total: r.counter_vec(
                "messages_invalid_total",
                "Kafka messages that could not be decoded, by reason",
                &["reason"],
            )?,
            spans_invalid_total: r.counter_vec(
                "spans_invalid_total",
                "Spans skipped inside otherwise valid messages, by reason",
                &["reason"],
            )?,
            consumer_lag_messages: r.gauge_vec(
                "consumer_lag_messages",
                "Messages consumed but not yet committed, per partition",
                &["partition"],
            )?,
            held_spans: r.gauge(
                "held_spans",
                "Spans in memory: buffered, or decided and not yet committed",
            )?,
            held_bytes: r.gauge(
                "held_bytes",
                "Bytes of the Kafka messages that held spans keep alive, plus the Arrow rows the writer is building",
            )?,
            watermark_lag_seconds: r.float_gauge(
                "watermark_lag_seconds",
                "Wall clock minus the stream-time watermark: how far behind the backlog being read is",
            )?,
            consumer_paused: r.gauge(
                "consumer_paused",
                "1 while the consumer pauses its partitions at buffer.max_buffered_spans or buffer.max_buffered_bytes",
            )?,
            assigned_partitions: r.gauge(
                "assigned_partitions",
                "Partitions of the topic this instance owns in its consumer group",
            )?,
        })
    }
}
