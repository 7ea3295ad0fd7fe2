//! The OTLP forwarders: each `[[forward]]` reads the sampled topic in a
//! consumer group of its own and sends what it reads to an OTLP backend,
//! storing a record's offset for commit only once the backend accepted it.
//!
//! The topic is the durable queue and the group's lag is the backlog: a
//! backend that is slow, down or hung stalls only its forwarder, never
//! sampling or the table's commits, and a forwarder killed at any moment
//! loses nothing (what it had not had accepted is read again, so a backend
//! may see a batch twice: at least once). Answers the OTLP specification
//! calls retryable are retried with backoff and jitter, honouring
//! `Retry-After`; a batch refused for good goes to the dead-letter topic
//! with its reason. The forwarders run in the selector's process, or alone
//! with `tail-sampling-selector forward`.

mod client;
mod error;
mod grpc;
pub mod retry;

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::ForwardError;

use crate::config::OtlpProtocol;
use crate::config::{ForwardConfig, KafkaConfig};
use crate::health::Health;
use crate::kafka_client;
use crate::metrics::Metrics;
use crate::otlp::encode::count_spans;
use client::OtlpHttp;
use grpc::OtlpGrpc;
use retry::{Backoff, Verdict};

/// What the forwarders share with the rest of the process.
#[derive(Clone)]
pub struct ForwardContext {
    pub metrics: Metrics,
    pub health: Health,
}

/// The running forwarders.
pub struct Forwarders {
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// Starts one forwarder per entry, reading `topic`.
pub fn start(
    configs: &[ForwardConfig],
    kafka: &KafkaConfig,
    topic: &str,
    ctx: ForwardContext,
) -> Result<Forwarders, ForwardError> {
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    for cfg in configs {
        let forwarder = Forwarder::new(cfg, kafka, topic, ctx.clone())?;
        tasks.spawn(forwarder.run(stop.clone()));
    }
    tasks.close();
    Ok(Forwarders { tasks, stop })
}

impl Forwarders {
    /// Stops reading and waits up to `limit` for requests in flight; what
    /// was not accepted by then is read again at the next start.
    pub async fn stop(self, limit: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(limit, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "forwarders did not stop in time; what they had not delivered is read again"
            );
        }
    }

    /// Resolves when every forwarder has ended.
    pub async fn wait(&self) {
        self.tasks.wait().await;
    }
}

/// Reports the group's lag from librdkafka's statistics.
struct LagContext {
    topic: String,
    lag: prometheus::IntGauge,
}

impl ClientContext for LagContext {
    fn stats(&self, stats: rdkafka::Statistics) {
        let Some(topic) = stats.topics.get(&self.topic) else {
            return;
        };
        let lag: i64 = topic
            .partitions
            .iter()
            .filter(|(p, _)| **p >= 0)
            .map(|(_, p)| p.consumer_lag_stored.max(0))
            .sum();
        self.lag.set(lag);
    }
}

impl ConsumerContext for LagContext {}

/// One record read from the sampled topic.
struct Record {
    partition: i32,
    offset: i64,
    payload: Vec<u8>,
    spans: usize,
    timestamp_ms: i64,
}

/// Records sent in one request.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    spans: usize,
    bytes: usize,
}

impl Batch {
    fn body(&self) -> Vec<u8> {
        // Concatenated requests are one request: protobuf merges repeated fields.
        let mut body = Vec::with_capacity(self.bytes);
        for r in &self.records {
            body.extend_from_slice(&r.payload);
        }
        body
    }

    fn oldest_ms(&self) -> Option<i64> {
        self.records.iter().map(|r| r.timestamp_ms).min()
    }
}

/// The OTLP transport of one forwarder.
enum Exporter {
    Http(OtlpHttp),
    Grpc(Box<OtlpGrpc>),
}

impl Exporter {
    fn new(cfg: &ForwardConfig) -> Result<Self, ForwardError> {
        Ok(match cfg.protocol {
            OtlpProtocol::Grpc => Exporter::Grpc(Box::new(OtlpGrpc::new(cfg)?)),
            OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
                Exporter::Http(OtlpHttp::new(cfg)?)
            }
        })
    }

    async fn export(&self, request: &[u8]) -> Verdict {
        match self {
            Exporter::Http(c) => c.export(request).await,
            Exporter::Grpc(c) => c.export(request).await,
        }
    }
}

/// What the sending of one batch needs, shared by its attempts.
struct Sender {
    name: String,
    sink: String,
    client: Exporter,
    backoff: Backoff,
    dead_letters: FutureProducer,
    dead_letter_topic: String,
    /// The catch-up limit and its burst (one second's worth): every
    /// attempt, a retry too, takes its spans' worth.
    limiter: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    ctx: ForwardContext,
}

struct Forwarder {
    topic: String,
    consumer: StreamConsumer<LagContext>,
    sender: Arc<Sender>,
    max_batch_spans: usize,
    max_batch_bytes: usize,
    linger: Duration,
    concurrency: usize,
}

impl Forwarder {
    fn new(
        cfg: &ForwardConfig,
        kafka: &KafkaConfig,
        topic: &str,
        ctx: ForwardContext,
    ) -> Result<Self, ForwardError> {
        let sink = cfg.sink_label();
        let lag = ctx
            .metrics
            .sinks
            .forward_lag_messages
            .with_label_values(&[&sink]);
        let mut config = kafka_client::client_config(kafka);
        if let Some(id) = &cfg.group_instance_id {
            config.set("group.instance.id", id);
        }
        let consumer: StreamConsumer<LagContext> = config
            .set("group.id", cfg.group_id())
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "2000")
            .create_with_context(LagContext {
                topic: topic.to_string(),
                lag,
            })?;
        consumer.subscribe(&[topic])?;
        let dead_letters: FutureProducer = kafka_client::client_config(kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        // A second's worth of spans at most goes at once: a backlog is sent
        // at the limit's pace, whatever the batch size.
        let limiter = NonZeroU32::new(cfg.max_spans_per_sec)
            .map(|rate| (RateLimiter::direct(Quota::per_second(rate)), rate));
        ctx.metrics
            .sinks
            .spans_exported_total
            .with_label_values(&[&sink])
            .inc_by(0);
        ctx.health.set_sink(&sink, Ok(()));
        let sender = Sender {
            name: cfg.name.clone(),
            sink,
            client: Exporter::new(cfg)?,
            backoff: Backoff {
                initial: cfg.retry_initial_backoff_ms.duration(),
                max: cfg.retry_max_backoff_ms.duration(),
            },
            dead_letters,
            dead_letter_topic: cfg.dead_letter_topic.clone(),
            limiter,
            ctx,
        };
        tracing::info!(forwarder = %cfg.name, endpoint = %cfg.endpoint, protocol = cfg.protocol.as_str(), group = %cfg.group_id(), "forwarding kept traces");
        Ok(Self {
            topic: topic.to_string(),
            consumer,
            sender: Arc::new(sender),
            max_batch_spans: cfg.max_batch_spans,
            max_batch_bytes: cfg.max_batch_bytes,
            linger: cfg.linger_ms.duration(),
            concurrency: cfg.concurrency,
        })
    }

    /// Reads, batches and sends until `stop`; offsets of a batch are stored
    /// for commit in the order batches were read, once each is accepted.
    async fn run(self, stop: CancellationToken) {
        let mut batch = Batch::default();
        let mut linger_until: Option<Instant> = None;
        let mut in_flight = FuturesOrdered::new();
        let mut oldest: VecDeque<Option<i64>> = VecDeque::new();
        let lag_seconds = self
            .sender
            .ctx
            .metrics
            .sinks
            .forward_lag_seconds
            .with_label_values(&[&self.sender.sink]);
        loop {
            let full = in_flight.len() >= self.concurrency;
            // A full batch reads nothing more until it has gone.
            let batch_full =
                batch.spans >= self.max_batch_spans || batch.bytes >= self.max_batch_bytes;
            let linger = async {
                match linger_until {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(done) = in_flight.next() => {
                    self.store_offsets(done);
                    oldest.pop_front();
                }
                msg = self.consumer.recv(), if !full && !batch_full => match msg {
                    Ok(m) => {
                        let Some(record) = self.record(&m) else { continue };
                        batch.spans += record.spans;
                        batch.bytes += record.payload.len();
                        batch.records.push(record);
                        linger_until.get_or_insert(Instant::now() + self.linger);
                        if batch.spans >= self.max_batch_spans || batch.bytes >= self.max_batch_bytes {
                            linger_until = Some(Instant::now());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(forwarder = %self.sender.name, error = %e, "reading the sampled topic failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                _ = linger, if !full => {
                    let ready = std::mem::take(&mut batch);
                    linger_until = None;
                    oldest.push_back(ready.oldest_ms());
                    in_flight.push_back(self.sender.clone().deliver(ready));
                }
            }
            let oldest_ms = oldest
                .iter()
                .chain([&batch.oldest_ms()])
                .flatten()
                .min()
                .copied();
            lag_seconds.set(oldest_ms.map_or(0.0, |t| {
                (crate::model::unix_now_ms() - t).max(0) as f64 / 1000.0
            }));
        }
        // Offsets of accepted batches not yet committed are committed as
        // the consumer closes; the rest is read again.
        drop(in_flight);
        if let Err(e) = self
            .consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        {
            tracing::debug!(forwarder = %self.sender.name, error = %e, "final offset commit");
        }
        lag_seconds.set(0.0);
    }

    fn record(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Record> {
        let payload = m.payload().unwrap_or_default().to_vec();
        let spans = match count_spans(&payload) {
            Ok(n) => n,
            Err(e) => {
                // Not OTLP: the sampled topic holds only what the selector
                // wrote, so this is someone else's record. Skip it loudly.
                tracing::error!(forwarder = %self.sender.name, partition = m.partition(), offset = m.offset(), error = %e, "skipping a sampled-topic record that is not an OTLP request");
                self.sender
                    .ctx
                    .metrics
                    .sinks
                    .export_failures_total
                    .with_label_values(&[&self.sender.sink, "undecodable_record"])
                    .inc();
                let _ = self
                    .consumer
                    .store_offset(&self.topic, m.partition(), m.offset());
                return None;
            }
        };
        Some(Record {
            partition: m.partition(),
            offset: m.offset(),
            payload,
            spans,
            timestamp_ms: m
                .timestamp()
                .to_millis()
                .unwrap_or_else(crate::model::unix_now_ms),
        })
    }

    fn store_offsets(&self, done: Vec<(i32, i64)>) {
        for (partition, offset) in done {
            // A partition revoked meanwhile refuses the store: its next
            // owner sends the batch again.
            if let Err(e) = self.consumer.store_offset(&self.topic, partition, offset) {
                tracing::debug!(forwarder = %self.sender.name, partition, offset, error = %e, "offset not stored");
            }
        }
    }
}

/// Waits until `spans` may go: a batch larger than the burst takes its
/// tokens a burst at a time.
async fn wait_for_quota(limiter: &DefaultDirectRateLimiter, burst: NonZeroU32, spans: usize) {
    let mut left = spans;
    while left > 0 {
        let take = left.min(burst.get() as usize);
        left -= take;
        let Some(n) = NonZeroU32::new(take as u32) else {
            return;
        };
        // `take` never exceeds the burst, so this cannot fail.
        let _ = limiter.until_n_ready(n).await;
    }
}

impl Sender {
    /// Sends the batch until the backend accepts it, or dead-letters it when
    /// the backend refuses it for good. Returns the highest offset of each
    /// partition it held, for commit.
    async fn deliver(self: Arc<Self>, batch: Batch) -> Vec<(i32, i64)> {
        let started = Instant::now();
        let body = batch.body();
        let mut retries = 0u32;
        let m = &self.ctx.metrics;
        loop {
            if let Some((limiter, burst)) = &self.limiter {
                wait_for_quota(limiter, *burst, batch.spans).await;
            }
            match self.client.export(&body).await {
                Verdict::Accepted {
                    rejected_spans,
                    message,
                } => {
                    if rejected_spans > 0 || !message.is_empty() {
                        m.sinks
                            .spans_rejected_total
                            .with_label_values(&[&self.sink])
                            .inc_by(rejected_spans.max(0) as u64);
                        tracing::warn!(forwarder = %self.name, rejected_spans, message = %message, "the backend accepted a batch but rejected part of it (partial_success)");
                    }
                    m.sinks
                        .spans_exported_total
                        .with_label_values(&[&self.sink])
                        .inc_by(batch.spans as u64);
                    m.sinks
                        .export_duration_seconds
                        .with_label_values(&[&self.sink])
                        .observe(started.elapsed().as_secs_f64());
                    if retries > 0 {
                        self.ctx.health.set_sink(&self.sink, Ok(()));
                        tracing::info!(forwarder = %self.name, retries, "the backend accepted a batch after retries");
                    }
                    break;
                }
                Verdict::Retry { reason, after } => {
                    retries += 1;
                    let wait = self.backoff.next(retries, after);
                    m.sinks
                        .export_failures_total
                        .with_label_values(&[&self.sink, &reason])
                        .inc();
                    m.sinks
                        .export_retries_total
                        .with_label_values(&[&self.sink])
                        .inc();
                    self.ctx
                        .health
                        .set_sink(&self.sink, Err(format!("{reason}; retrying")));
                    tracing::warn!(forwarder = %self.name, reason = %reason, retries, retry_in_ms = wait.as_millis() as u64, spans = batch.spans, "sending a batch failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Verdict::Reject { reason, status } => {
                    m.sinks
                        .export_failures_total
                        .with_label_values(&[&self.sink, &format!("http_{status}")])
                        .inc();
                    self.dead_letter(&batch, &reason).await;
                    break;
                }
            }
        }
        let mut done: Vec<(i32, i64)> = Vec::new();
        for r in &batch.records {
            match done.iter_mut().find(|(p, _)| *p == r.partition) {
                Some((_, o)) => *o = (*o).max(r.offset),
                None => done.push((r.partition, r.offset)),
            }
        }
        done
    }

    /// Copies the batch's records to the dead-letter topic with the reason,
    /// retrying until the broker has them: nothing refused is dropped.
    async fn dead_letter(&self, batch: &Batch, reason: &str) {
        let reason_label = reason.split(':').next().unwrap_or(reason).to_string();
        tracing::error!(forwarder = %self.name, reason = %reason, spans = batch.spans, topic = %self.dead_letter_topic, "the backend refused a batch for good; copying it to the dead-letter topic");
        for r in &batch.records {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "tss.forward.sink",
                    value: Some(self.sink.as_str()),
                })
                .insert(Header {
                    key: "tss.forward.reason",
                    value: Some(reason),
                });
            let key = format!("{}-{}", r.partition, r.offset);
            let mut failures = 0;
            loop {
                let record = FutureRecord::to(&self.dead_letter_topic)
                    .key(&key)
                    .payload(&r.payload)
                    .headers(headers.clone());
                match self.dead_letters.send(record, Timeout::Never).await {
                    Ok(_) => break,
                    Err((e, _)) => {
                        failures += 1;
                        tracing::error!(forwarder = %self.name, error = %e, failures, "producing to the dead-letter topic failed; retrying");
                        tokio::time::sleep(self.backoff.ceiling(failures)).await;
                    }
                }
            }
        }
        self.ctx
            .metrics
            .sinks
            .spans_dead_lettered_total
            .with_label_values(&[&self.sink, &reason_label])
            .inc_by(batch.spans as u64);
    }
}
