//! The sampled-topic sink: every kept span produced to a Kafka topic as
//! OTLP protobuf, in the raw topic's format (an `ExportTraceServiceRequest`
//! per record, keyed by the hex trace id), so that any OpenTelemetry
//! Collector's `kafkareceiver`, and this project's forwarders, can read it.
//!
//! The producer is idempotent with `acks=all`. A kept trace goes on (to the
//! table, or to the acknowledgements) only once the broker has confirmed
//! every one of its records; a record that fails is produced again, with
//! backoff, until it lands. So the trace's input offsets never commit
//! before its spans are on the topic: at least once, across crashes. A
//! replay after a crash between the two may produce a trace twice; a reader
//! that must not see duplicates deduplicates on (trace id, span id).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::mpsc;

use crate::config::{KafkaConfig, SampledTopicConfig};
use crate::handoff::KeptTrace;
use crate::handoff::Onward;
use crate::health::Health;
use crate::kafka_client;
use crate::metrics::Metrics;
use crate::otlp::encode::export_requests;
use crate::supervise::StageTask;

/// The `sink` label of this sink's metrics and its name in `/health`.
pub const SINK: &str = "sampled_topic";

/// Record headers: why the trace was kept, for readers that route on it.
pub const HEADER_REASON: &str = "tss.sampling.reason";
pub const HEADER_RULE: &str = "tss.sampling.rule_id";
pub const HEADER_RATE: &str = "tss.sampling.rate";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("creating the sampled-topic producer: {0}")]
    Producer(rdkafka::error::KafkaError),
}

/// What the sink shares with the rest of the pipeline.
#[derive(Clone)]
pub struct PublishContext {
    pub metrics: Metrics,
    pub health: Health,
}

/// Starts the sink. It runs until every sender of the returned channel is
/// gone and every trace it took has gone on.
pub fn start(
    cfg: &SampledTopicConfig,
    kafka: &KafkaConfig,
    ctx: PublishContext,
    onward: Onward,
) -> Result<(mpsc::UnboundedSender<KeptTrace>, StageTask), PublishError> {
    let producer: FutureProducer = kafka_client::client_config(kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", &cfg.compression)
        .set("linger.ms", "20")
        .set(
            "message.timeout.ms",
            cfg.delivery_timeout_ms.duration().as_millis().to_string(),
        )
        .set(
            "message.max.bytes",
            (cfg.max_record_bytes + 4096).to_string(),
        )
        .create()?;
    ctx.metrics
        .sinks
        .spans_exported_total
        .with_label_values(&[SINK])
        .inc_by(0);
    ctx.health.set_sink(SINK, Ok(()));
    let sink = Publisher {
        producer,
        topic: Arc::from(cfg.topic.as_str()),
        max_record_bytes: cfg.max_record_bytes,
        ctx,
        onward,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    Ok((tx, StageTask::spawn("sampled-topic sink", sink.run(rx))))
}

struct Publisher {
    producer: FutureProducer,
    topic: Arc<str>,
    max_record_bytes: usize,
    ctx: PublishContext,
    onward: Onward,
}

/// A trace on its way to the broker, and how often it failed so far.
struct InFlight {
    kept: KeptTrace,
    failures: u32,
    first_try: Instant,
}

type Produced = (InFlight, Result<(), String>);

impl Publisher {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<KeptTrace>) {
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        while open || !in_flight.is_empty() {
            tokio::select! {
                kept = rx.recv(), if open => match kept {
                    Some(kept) => {
                        let job = InFlight { kept, failures: 0, first_try: Instant::now() };
                        in_flight.push(self.produce(job, Duration::ZERO));
                    }
                    None => open = false,
                },
                Some((job, result)) = in_flight.next() => {
                    if let Some(retry) = self.settle(job, result) {
                        let wait = backoff(retry.failures);
                        in_flight.push(self.produce(retry, wait));
                    }
                }
            }
        }
    }

    /// Produces every record of the trace after `wait`, resolving once the
    /// broker confirmed them all or one failed.
    fn produce(
        &self,
        job: InFlight,
        wait: Duration,
    ) -> futures::future::BoxFuture<'static, Produced> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let records = export_requests(&job.kept.spans, self.max_record_bytes);
        let key = hex::encode(job.kept.trace_id);
        let headers = headers(&job.kept);
        async move {
            tokio::time::sleep(wait).await;
            let sends = records.iter().map(|payload| {
                let record = FutureRecord::to(&topic)
                    .key(&key)
                    .payload(payload)
                    .headers(headers.clone());
                producer.send(record, Timeout::Never)
            });
            let result = futures::future::join_all(sends)
                .await
                .into_iter()
                .find_map(|r| r.err())
                .map_or(Ok(()), |(e, _)| Err(e.to_string()));
            (job, result)
        }
        .boxed()
    }

    /// Passes a confirmed trace on; returns a failed one for another try.
    fn settle(&self, mut job: InFlight, result: Result<(), String>) -> Option<InFlight> {
        let m = &self.ctx.metrics;
        match result {
            Ok(()) => {
                m.sinks
                    .spans_exported_total
                    .with_label_values(&[SINK])
                    .inc_by(job.kept.spans.len() as u64);
                m.sinks
                    .export_duration_seconds
                    .with_label_values(&[SINK])
                    .observe(job.first_try.elapsed().as_secs_f64());
                if job.failures > 0 {
                    self.ctx.health.set_sink(SINK, Ok(()));
                }
                self.onward.pass(job.kept);
                None
            }
            Err(e) => {
                job.failures += 1;
                m.sinks
                    .export_failures_total
                    .with_label_values(&[SINK, "kafka"])
                    .inc();
                m.sinks
                    .export_retries_total
                    .with_label_values(&[SINK])
                    .inc();
                self.ctx.health.set_sink(SINK, Err(e.clone()));
                tracing::warn!(
                    error = %e,
                    topic = %self.topic,
                    trace_id = %hex::encode(job.kept.trace_id),
                    failures = job.failures,
                    "producing a kept trace to the sampled topic failed; producing it again"
                );
                Some(job)
            }
        }
    }
}

/// Exponential from 100 ms to 10 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(7))).min(Duration::from_secs(10))
}

fn headers(kept: &KeptTrace) -> OwnedHeaders {
    let rate = kept.sample_rate.to_string();
    let mut h = OwnedHeaders::new()
        .insert(Header {
            key: HEADER_REASON,
            value: Some(kept.reason.as_str()),
        })
        .insert(Header {
            key: HEADER_RATE,
            value: Some(rate.as_str()),
        });
    if let Some(rule) = &kept.rule_id {
        h = h.insert(Header {
            key: HEADER_RULE,
            value: Some(rule.as_ref()),
        });
    }
    h
}

impl From<rdkafka::error::KafkaError> for PublishError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        PublishError::Producer(e)
    }
}
