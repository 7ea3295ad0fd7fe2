//! The Kafka source: topic setup, the consumer loop and offset commits.

pub mod decode;
pub mod offsets;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
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
use crate::config::KafkaConfig;
use crate::health::Health;
use crate::metrics::Metrics;
use decode::{decode_message, TraceId};
use offsets::{MsgRef, OffsetTracker};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic `{topic}`: {reason}")]
    CreateTopic { topic: String, reason: String },
}

/// Creates the topic with `topic_partitions` partitions unless it exists.
/// Needed because some brokers (Tansu) do not auto-create topics.
pub async fn ensure_topic(cfg: &KafkaConfig, topic: &str) -> Result<(), IngestError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .create()?;
    let new_topic = NewTopic::new(topic, cfg.topic_partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics([&new_topic], &opts).await?;
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

/// Commits the watermarks of revoked partitions before giving them up, and
/// forgets their pending messages (the next owner re-reads them).
pub struct SelectorContext {
    tracker: Arc<OffsetTracker>,
    topic: String,
}

impl ClientContext for SelectorContext {}

impl ConsumerContext for SelectorContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            commit_watermarks(consumer, &self.tracker, &self.topic, CommitMode::Sync);
            self.tracker.forget(&revoked);
            tracing::info!(partitions = ?revoked, "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let assigned: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?assigned, "partitions assigned");
        }
    }
}

pub type SelectorConsumer = StreamConsumer<SelectorContext>;

/// A group member with auto-commit off: offsets are committed only from the
/// watermarks of the offset tracker.
pub fn create_consumer(
    cfg: &KafkaConfig,
    tracker: Arc<OffsetTracker>,
) -> Result<SelectorConsumer, IngestError> {
    let consumer: SelectorConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.message.max.bytes", cfg.max_message_bytes.min(1 << 30).to_string())
        .create_with_context(SelectorContext {
            tracker,
            topic: cfg.topic.clone(),
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
    pub metrics: Metrics,
    pub health: Health,
    pub dead_letter: Option<(FutureProducer, String)>,
    pub max_message_bytes: usize,
}

impl Source {
    /// Reads messages until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
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
            }
        }
    }

    async fn handle(&self, m: &BorrowedMessage<'_>) {
        self.metrics.messages_consumed_total.inc();
        let msg = MsgRef {
            partition: m.partition(),
            offset: m.offset(),
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
        if decoded.invalid_trace_id_spans > 0 {
            self.metrics
                .spans_invalid_total
                .with_label_values(&["invalid_trace_id"])
                .inc_by(decoded.invalid_trace_id_spans as u64);
            tracing::warn!(
                topic = m.topic(),
                partition = msg.partition,
                offset = msg.offset,
                spans = decoded.invalid_trace_id_spans,
                "skipped spans with a missing or zero trace id"
            );
        }
        let n = self.shards.len();
        let mut per_shard: Vec<Vec<(TraceId, _)>> = (0..n).map(|_| Vec::new()).collect();
        for (trace_id, span) in decoded.spans {
            per_shard[shard_of(&trace_id, n)].push((trace_id, span));
        }
        let tickets = per_shard.iter().filter(|s| !s.is_empty()).count();
        self.tracker.register(msg, tickets as i64);
        for (shard, spans) in per_shard.into_iter().enumerate() {
            if spans.is_empty() {
                continue;
            }
            // Awaiting a full shard channel is the backpressure on Kafka.
            if self.shards[shard].send(ShardBatch { msg, spans }).await.is_err() {
                tracing::warn!("worker stopped; message stays uncommitted");
            }
        }
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
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("message.timeout.ms", "10000")
        .create()?;
    Ok(Some((producer, topic)))
}
