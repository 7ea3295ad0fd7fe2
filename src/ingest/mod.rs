//! The Kafka source: topic setup, the consumer loop and offset commits.

pub mod client;
pub mod decode;
pub mod offsets;
pub mod ownership;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::buffer::worker::{shard_of, ShardBatch};
use crate::buffer::HeldSpans;
use crate::config::{BufferConfig, KafkaConfig};
use crate::health::Health;
use crate::metrics::Metrics;
use decode::{decode_message, TraceId};
use offsets::{Assignments, CommitGate, MsgRef, OffsetTracker};

/// How long a revocation waits for a running Iceberg commit to finish.
const REVOKE_COMMIT_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic `{topic}`: {reason}")]
    CreateTopic { topic: String, reason: String },
    /// The broker rejected the client's TLS or SASL settings. Retrying can't
    /// fix it, so startup stops.
    #[error("kafka rejected the connection (check kafka.security_protocol, kafka.ssl_* and kafka.sasl_*): {0}")]
    Security(String),
    #[error("no Kafka broker answered: {0}")]
    Unreachable(String),
}

impl From<client::HandshakeError> for IngestError {
    fn from(e: client::HandshakeError) -> Self {
        match e {
            client::HandshakeError::Rejected(reason) => IngestError::Security(reason),
            client::HandshakeError::Unreachable(reason) => IngestError::Unreachable(reason),
        }
    }
}

impl IngestError {
    /// True when only a change of settings can fix it.
    pub fn is_fatal(&self) -> bool {
        matches!(self, IngestError::Security(_))
    }
}

/// Creates the topics with `topic_partitions` partitions unless they exist.
/// Needed because some brokers (Tansu) do not auto-create topics. It first
/// connects once: a broker that rejects the client's TLS or SASL settings
/// ends the call with [`IngestError::Security`], which retrying can't fix.
pub async fn ensure_topics(cfg: &KafkaConfig, topics: &[&str]) -> Result<(), IngestError> {
    let probe_cfg = cfg.clone();
    tokio::task::spawn_blocking(move || client::handshake(&probe_cfg, Duration::from_secs(10)))
        .await
        .map_err(|e| IngestError::Unreachable(e.to_string()))??;
    let admin: AdminClient<DefaultClientContext> = client::client_config(cfg).create()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, cfg.topic_partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new_topics, &opts).await?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, partitions = cfg.topic_partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(IngestError::CreateTopic {
                    topic: name,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Starts a lease on every assigned partition, and hands revoked partitions
/// over cleanly: end their leases, let a running Iceberg commit finish, commit
/// their watermarks, then forget them. Their open traces and uncommitted kept
/// spans are dropped (workers and writer check the leases); the next owner
/// re-reads those messages from the committed offset.
pub struct SelectorContext {
    tracker: Arc<OffsetTracker>,
    assignments: Arc<Assignments>,
    gate: Arc<CommitGate>,
    topic: String,
    assigned_partitions: prometheus::IntGauge,
}

impl ClientContext for SelectorContext {}

impl ConsumerContext for SelectorContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned = partitions_of(tpl);
                self.assignments.assign(&assigned);
                self.assigned_partitions.set(self.assignments.count() as i64);
                tracing::info!(partitions = ?assigned, owned = self.assignments.count(), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                let revoked = partitions_of(tpl);
                self.assignments.revoke(&revoked);
                let finished = block_briefly(|| self.gate.wait_free(REVOKE_COMMIT_WAIT));
                if !finished {
                    tracing::warn!(
                        partitions = ?revoked,
                        "an Iceberg commit is still running after {REVOKE_COMMIT_WAIT:?}; giving the partitions up anyway"
                    );
                }
                commit_watermarks(consumer, &self.tracker, &self.topic, CommitMode::Sync);
                self.tracker.forget(&revoked);
                self.assigned_partitions.set(self.assignments.count() as i64);
                tracing::info!(partitions = ?revoked, owned = self.assignments.count(), "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

/// Runs a short blocking wait from a rebalance callback, which librdkafka
/// calls on the thread that polls the consumer: a runtime worker, here.
fn block_briefly<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub type SelectorConsumer = StreamConsumer<SelectorContext>;

/// A group member with auto-commit off: offsets are committed only from the
/// watermarks of the offset tracker.
pub fn create_consumer(
    cfg: &KafkaConfig,
    tracker: Arc<OffsetTracker>,
    assignments: Arc<Assignments>,
    gate: Arc<CommitGate>,
    assigned_partitions: prometheus::IntGauge,
) -> Result<SelectorConsumer, IngestError> {
    let mut config = client::client_config(cfg);
    if let Some(id) = &cfg.group_instance_id {
        config.set("group.instance.id", id);
    }
    let consumer: SelectorConsumer = config
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.message.max.bytes", cfg.max_message_bytes.min(1 << 30).to_string())
        .set("partition.assignment.strategy", &cfg.partition_assignment_strategy)
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        .create_with_context(SelectorContext {
            tracker,
            assignments,
            gate,
            topic: cfg.topic.clone(),
            assigned_partitions,
        })?;
    consumer.subscribe(&[cfg.topic.as_str()])?;
    Ok(consumer)
}

/// Commits every watermark that moved. Returns how many partitions moved.
pub fn commit_watermarks<C: Consumer<X>, X: ConsumerContext>(
    consumer: &C,
    tracker: &OffsetTracker,
    topic: &str,
    mode: CommitMode,
) -> usize {
    let commits = tracker.take_commits();
    if commits.is_empty() {
        return 0;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in &commits {
        if let Err(e) = tpl.add_partition_offset(topic, *p, Offset::Offset(*offset)) {
            tracing::warn!(partition = p, error = %e, "bad offset for commit");
        }
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::warn!(error = %e, "offset commit failed; it is retried with the next watermark");
        tracker.reset_committed(&commits);
        return 0;
    }
    commits.len()
}

/// Everything the consumer loop needs.
pub struct Source {
    pub consumer: Arc<SelectorConsumer>,
    pub shards: Vec<mpsc::Sender<ShardBatch>>,
    pub tracker: Arc<OffsetTracker>,
    pub assignments: Arc<Assignments>,
    pub held: Arc<HeldSpans>,
    pub limits: BufferConfig,
    pub metrics: Metrics,
    pub health: Health,
    pub dead_letter: Option<(FutureProducer, String)>,
    pub max_message_bytes: usize,
}

/// While paused, how often the limit is looked at again.
const PAUSE_CHECK: Duration = Duration::from_millis(100);
/// While idle, how often the held-spans gauge is refreshed.
const IDLE_CHECK: Duration = Duration::from_secs(1);

impl Source {
    /// Reads messages until `shutdown` turns true, pausing the partitions
    /// while the held spans are at `buffer.max_buffered_spans`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut paused = false;
        loop {
            paused = self.apply_backpressure(paused);
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                msg = self.consumer.recv() => match msg {
                    Ok(m) => {
                        self.health.set_kafka(Ok(()));
                        self.handle(&m).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consumer error");
                        self.health.set_kafka(Err(e.to_string()));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                // While paused, recv() waits for nothing but rebalances; look
                // at the limit again now and then (and refresh the gauge when idle).
                _ = tokio::time::sleep(if paused { PAUSE_CHECK } else { IDLE_CHECK }) => {}
            }
        }
    }

    /// Pauses every assigned partition at the limit and resumes them below
    /// `resume_ratio` of it. Returns whether the consumer is paused.
    fn apply_backpressure(&self, paused: bool) -> bool {
        let held = self.held.get();
        self.metrics.held_spans.set(held);
        let max = self.limits.max_buffered_spans as i64;
        let resume_below = (max as f64 * self.limits.resume_ratio) as i64;
        let pause = if paused { held > resume_below } else { held >= max };
        if pause {
            // Partitions assigned since the last call are paused too.
            if let Err(e) = self.consumer.assignment().and_then(|a| self.consumer.pause(&a)) {
                tracing::warn!(error = %e, "pausing the consumer failed");
            }
            if !paused {
                tracing::warn!(held_spans = held, limit = max, "buffer full: pausing consumption until storage catches up");
                self.health.set_backpressure(Some(format!(
                    "{held} spans held, limit buffer.max_buffered_spans = {max}; consumption paused"
                )));
                self.metrics.consumer_paused.set(1);
            }
        } else if paused {
            if let Err(e) = self.consumer.assignment().and_then(|a| self.consumer.resume(&a)) {
                tracing::warn!(error = %e, "resuming the consumer failed");
                return true;
            }
            tracing::info!(held_spans = held, "buffer drained: consumption resumed");
            self.health.set_backpressure(None);
            self.metrics.consumer_paused.set(0);
        }
        pause
    }

    async fn handle(&self, m: &BorrowedMessage<'_>) {
        self.metrics.messages_consumed_total.inc();
        let Some(lease) = self.assignments.lease(m.partition()) else {
            // Read just before its partition was revoked: the next owner reads it.
            return;
        };
        let msg = MsgRef {
            partition: m.partition(),
            offset: m.offset(),
            epoch: lease.epoch,
        };
        let payload = Bytes::copy_from_slice(m.payload().unwrap_or_default());
        let decoded = match decode_message(payload, self.max_message_bytes) {
            Ok(d) => d,
            Err(e) => {
                self.metrics
                    .messages_invalid_total
                    .with_label_values(&[e.reason()])
                    .inc();
                tracing::warn!(
                    topic = m.topic(),
                    partition = msg.partition,
                    offset = msg.offset,
                    reason = e.reason(),
                    error = %e,
                    "skipping undecodable message"
                );
                self.dead_letter(m, e.reason()).await;
                self.tracker.register(msg, 0);
                return;
            }
        };
        self.count_invalid_spans(
            m,
            "invalid_trace_id",
            decoded.invalid_trace_id_spans,
            "skipped spans with a missing or zero trace id",
        );
        self.count_invalid_spans(
            m,
            "invalid_timestamp",
            decoded.invalid_timestamp_spans,
            "skipped spans with absurd start or end times",
        );
        self.held.add(decoded.spans.len());
        let n = self.shards.len();
        let mut per_shard: Vec<Vec<(TraceId, _)>> = (0..n).map(|_| Vec::new()).collect();
        for (trace_id, mut span) in decoded.spans {
            span.lease = lease;
            per_shard[shard_of(&trace_id, n)].push((trace_id, span));
        }
        let tickets = per_shard.iter().filter(|s| !s.is_empty()).count();
        self.tracker.register(msg, tickets as i64);
        for (shard, spans) in per_shard.into_iter().enumerate() {
            if spans.is_empty() {
                continue;
            }
            // Workers never wait on storage, so a full channel clears quickly.
            let n = spans.len();
            if self.shards[shard].send(ShardBatch { msg, spans }).await.is_err() {
                self.held.release(n);
                tracing::warn!("worker stopped; message stays uncommitted");
            }
        }
    }

    /// Counts and logs spans skipped inside an otherwise valid message.
    fn count_invalid_spans(&self, m: &BorrowedMessage<'_>, reason: &str, spans: usize, what: &str) {
        if spans == 0 {
            return;
        }
        self.metrics
            .spans_invalid_total
            .with_label_values(&[reason])
            .inc_by(spans as u64);
        tracing::warn!(
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            spans,
            reason,
            "{what}"
        );
    }

    async fn dead_letter(&self, m: &BorrowedMessage<'_>, reason: &str) {
        let Some((producer, topic)) = &self.dead_letter else {
            return;
        };
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "tss.reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "tss.source.topic",
                value: Some(m.topic()),
            })
            .insert(Header {
                key: "tss.source.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "tss.source.offset",
                value: Some(&offset),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .payload(m.payload().unwrap_or_default())
            .headers(headers);
        if let Some(key) = m.key() {
            record = record.key(key);
        }
        if let Err((e, _)) = producer.send(record, Duration::from_secs(5)).await {
            tracing::error!(error = %e, dead_letter_topic = %topic, "dead-letter copy failed");
        }
    }
}

/// Commits watermarks every `interval` and exports the consumer lag.
pub async fn run_committer(
    consumer: Arc<SelectorConsumer>,
    tracker: Arc<OffsetTracker>,
    topic: String,
    metrics: Metrics,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        commit_watermarks(consumer.as_ref(), &tracker, &topic, CommitMode::Async);
        for (p, lag) in tracker.lag() {
            metrics
                .consumer_lag_messages
                .with_label_values(&[&p.to_string()])
                .set(lag);
        }
    }
    commit_watermarks(consumer.as_ref(), &tracker, &topic, CommitMode::Sync);
}

/// A producer for the dead-letter topic, when one is configured.
pub fn dead_letter_producer(cfg: &KafkaConfig) -> Result<Option<(FutureProducer, String)>, IngestError> {
    let Some(topic) = cfg.dead_letter_topic.clone().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let producer: FutureProducer = client::client_config(cfg)
        .set("message.timeout.ms", "10000")
        .create()?;
    Ok(Some((producer, topic)))
}
