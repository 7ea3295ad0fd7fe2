//! What the compact buffer's second read records: the kept traces it
//! completed, the messages it fetched again (the cost on the brokers), and
//! what it could not find.

use prometheus::{Histogram, IntCounter};

use super::registrar::Registrar;

#[derive(Clone)]
pub struct RereadMetrics {
    pub traces_total: IntCounter,
    pub spans_total: IntCounter,
    pub messages_decoded_total: IntCounter,
    pub messages_skipped_total: IntCounter,
    pub bytes_fetched_total: IntCounter,
    pub spans_missing_total: IntCounter,
    pub errors_total: IntCounter,
    pub consumer_starts_total: IntCounter,
    pub wait_seconds: Histogram,
}

impl RereadMetrics {
    pub fn register(r: &Registrar) -> Result<Self, prometheus::Error> {
        Ok(Self {
            traces_total: r.counter(
                "reread_traces_total",
                "Kept traces whose spans were read again from Kafka (buffer.mode = compact)",
            )?,
            spans_total: r.counter(
                "reread_spans_total",
                "Spans of kept traces read again from Kafka",
            )?,
            messages_decoded_total: r.counter(
                "reread_messages_decoded_total",
                "Messages read again and decoded: each fed a kept trace",
            )?,
            messages_skipped_total: r.counter(
                "reread_messages_skipped_total",
                "Messages the second read fetched between ones it needed, and skipped undecoded",
            )?,
            bytes_fetched_total: r.counter(
                "reread_bytes_fetched_total",
                "Bytes of messages the second read fetched, decoded or skipped",
            )?,
            spans_missing_total: r.counter(
                "reread_spans_missing_total",
                "Spans of kept traces the second read did not find (messages gone from the topic)",
            )?,
            errors_total: r.counter(
                "reread_errors_total",
                "Broker errors and stalls of the second read; each is retried",
            )?,
            consumer_starts_total: r.counter(
                "reread_consumer_starts_total",
                "Consumers the second read started: one a partition, and again to go back, jump a gap, retry or after idling",
            )?,
            wait_seconds: r.histogram(
                "reread_wait_seconds",
                "How long a kept trace waited for its messages to be read again",
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            )?,
        })
    }
}
