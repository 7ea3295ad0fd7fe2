//! The Kafka source: topic setup, the consumer loop and offset commits.

pub use crate::kafka_client as client;
pub mod ownership;
pub mod range;

use std::sync::atomic::Ordering;
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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ack::{Acks, OffsetTracker};
use crate::config::{BackpressureConfig, BufferMode, KafkaConfig};
use crate::handoff::ShardBatch;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::model::{shard_of, unix_now_ms, MsgRef, SpanRecord, TraceId};
use crate::otlp::decode::decode_message;
use crate::supervise::{StageExit, StageTask};

/// How long a revocation waits for a running Iceberg commit to finish.
const REVOKE_COMMIT_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("kafka: {0}")]
    Kafka(KafkaError),
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
pub async fn ensure_topics(cfg: &KafkaConfig, topics: &[(&str, i32)]) -> Result<(), IngestError> {
    let probe_cfg = cfg.clone();
    let timeout = cfg.admin_timeout_ms.duration();
    tokio::task::spawn_blocking(move || client::handshake(&probe_cfg, timeout))
        .await
        .map_err(|e| IngestError::Unreachable(e.to_string()))??;
    let admin: AdminClient<DefaultClientContext> = client::client_config(cfg).create()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, partitions)| NewTopic::new(t, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin.create_topics(&new_topics, &opts).await?;
    for r in results {
        match r {
            Ok(name) => {
                tracing::info!(topic = %name, "created topic")
            }
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
    acks: Acks,
    topic: String,
    assigned_partitions: prometheus::IntGauge,
}

impl ClientContext for SelectorContext {
    /// How far each partition is from its end, for the stream clock's
    /// idleness: a partition is idle only once it is read to its end.
    ///
    /// That is the high watermark less `app_offset` (one past the last
    /// message handed to the selector), not librdkafka's `consumer_lag`,
    /// which counts from the committed offset: that one stays above zero
    /// while decided traces wait for their commit, and at the end of a quiet
    /// stream the last traces would wait for an idleness that never comes.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for (partition, p) in &topic.partitions {
            if *partition >= 0 {
                self.acks.clock.report_lag(*partition, unread(p));
            }
        }
    }
}

impl ConsumerContext for SelectorContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned = partitions_of(tpl);
                self.acks.assignments.assign(&assigned);
                let leases: Vec<_> = assigned
                    .iter()
                    .filter_map(|p| self.acks.assignments.lease(*p))
                    .collect();
                self.acks.clock.assign(&leases);
                self.assigned_partitions
                    .set(self.acks.assignments.count() as i64);
                tracing::info!(partitions = ?assigned, owned = self.acks.assignments.count(), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                let revoked = partitions_of(tpl);
                self.acks.assignments.revoke(&revoked);
                self.acks.clock.revoke(&revoked);
                let finished = block_briefly(|| self.acks.gate.wait_free(REVOKE_COMMIT_WAIT));
                if !finished {
                    tracing::warn!(
                        partitions = ?revoked,
                        "an Iceberg commit is still running after {REVOKE_COMMIT_WAIT:?}; giving the partitions up anyway"
                    );
                }
                commit_watermarks(consumer, &self.acks.tracker, &self.topic, CommitMode::Sync);
                self.acks.tracker.forget(&revoked);
                self.assigned_partitions
                    .set(self.acks.assignments.count() as i64);
                tracing::info!(partitions = ?revoked, owned = self.acks.assignments.count(), "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// Messages of a partition not yet handed to the selector, or -1 when
/// unknown (no high watermark from the broker yet, or no idea where reading
/// starts).
///
/// Before a partition's first message is handed over, reading starts at
/// its committed offset or, with none, at its low watermark
/// (`auto.offset.reset` = earliest). That case matters: librdkafka hands
/// over one partition's prefetched backlog before the next one's, so a
/// partition can wait behind its neighbour for as long as the neighbour's
/// backlog takes, and must not look read to its end meanwhile.
fn unread(p: &rdkafka::statistics::Partition) -> i64 {
    let start = [p.app_offset, p.committed_offset, p.lo_offset]
        .into_iter()
        .find(|o| *o >= 0);
    match start {
        Some(start) if p.hi_offset >= 0 => (p.hi_offset - start).max(0),
        _ => -1,
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
/// How often librdkafka reports its statistics (the partitions' lag).
const STATISTICS_INTERVAL_MS: u32 = 500;

fn create_consumer(
    cfg: &KafkaConfig,
    acks: Acks,
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
        .set(
            "fetch.message.max.bytes",
            cfg.max_message_bytes.min(1 << 30).to_string(),
        )
        .set(
            "partition.assignment.strategy",
            &cfg.partition_assignment_strategy,
        )
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        // Each partition's consumer lag, every half second: see `SelectorContext::stats`.
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS.to_string())
        .create_with_context(SelectorContext {
            acks,
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

/// What the Kafka side shares with the rest of the pipeline.
#[derive(Clone)]
pub struct IngestContext {
    pub acks: Acks,
    pub metrics: Metrics,
    pub health: Health,
}

/// The running Kafka side: the consumer loop and the offset committer.
pub struct Ingest {
    /// Shared with the health probes; closed last, which leaves the group.
    pub consumer: Arc<SelectorConsumer>,
    source: StageTask,
    committer: StageTask,
    stop_committer: CancellationToken,
}

/// Starts the Kafka side: joins the group, then reads messages into `shards`
/// until `shutdown`, while committing watermarks every
/// `kafka.commit_interval_ms`. The topics must exist (see [`ensure_topics`]).
pub fn start(
    cfg: &KafkaConfig,
    backpressure: BackpressureConfig,
    ctx: IngestContext,
    shards: Vec<mpsc::Sender<ShardBatch>>,
    shutdown: CancellationToken,
) -> Result<Ingest, IngestError> {
    let acks = &ctx.acks;
    let consumer = Arc::new(create_consumer(
        cfg,
        acks.clone(),
        ctx.metrics.ingest.assigned_partitions.clone(),
    )?);
    let stop_committer = CancellationToken::new();
    let committer = StageTask::spawn(
        "offset committer",
        run_committer(
            consumer.clone(),
            ctx.clone(),
            cfg.topic.clone(),
            cfg.commit_interval_ms.duration(),
            stop_committer.clone(),
        ),
    );
    let source = Source {
        consumer: consumer.clone(),
        shards,
        limits: backpressure,
        dead_letter: dead_letter_producer(cfg)?,
        max_message_bytes: cfg.max_message_bytes,
        ctx,
    };
    tracing::info!(topic = %cfg.topic, group = %cfg.group_id, "consuming");
    let source = StageTask::spawn("consumer", source.run(shutdown));
    Ok(Ingest {
        consumer,
        source,
        committer,
        stop_committer,
    })
}

impl Ingest {
    /// Waits for the consumer loop, which ends at shutdown and then drops the
    /// shard senders, so the deciding stage stops after it.
    pub async fn stopped_reading(&mut self) {
        self.source.join().await;
    }

    /// Resolves when the consumer loop or the committer ends before the
    /// drain: a dead stage. Cancel-safe.
    pub async fn ended(&mut self) -> StageExit {
        tokio::select! {
            exit = self.source.ended() => exit,
            exit = self.committer.ended() => exit,
        }
    }

    /// Makes the last watermark commit and stops committing. Call it after
    /// storage has stopped, so the commit covers its final flush.
    pub async fn stop_committing(&mut self) {
        self.stop_committer.cancel();
        self.committer.join().await;
    }
}

/// Leaves the group: the partitions move to other members at once instead
/// of after the session timeout. The revoke callback commits the last
/// watermarks. Every other holder of the consumer must have let it go.
pub async fn close(consumer: Arc<SelectorConsumer>) {
    let closing = tokio::task::spawn_blocking(move || drop(consumer));
    if tokio::time::timeout(Duration::from_secs(10), closing)
        .await
        .is_err()
    {
        tracing::warn!("leaving the consumer group took more than 10 s");
    }
}

/// The consumer loop.
struct Source {
    consumer: Arc<SelectorConsumer>,
    shards: Vec<mpsc::Sender<ShardBatch>>,
    limits: BackpressureConfig,
    dead_letter: Option<(FutureProducer, String)>,
    max_message_bytes: usize,
    ctx: IngestContext,
}

/// A message's spans as one batch per worker shard (by trace id) that gets
/// some, each under its own ticket from `tracker`: what the live consumer
/// and a range reader both send to the workers.
pub(crate) fn shard_batches(
    tracker: &Arc<OffsetTracker>,
    msg: MsgRef,
    payload_len: usize,
    spans: Vec<(TraceId, SpanRecord)>,
    seen_ms: i64,
    n: usize,
) -> Vec<(usize, ShardBatch)> {
    let lease = msg.lease();
    let mut per_shard: Vec<Vec<(TraceId, SpanRecord)>> = (0..n).map(|_| Vec::new()).collect();
    for (trace_id, mut span) in spans {
        span.lease = lease;
        per_shard[shard_of(&trace_id, n)].push((trace_id, span));
    }
    let shares: Vec<_> = per_shard
        .into_iter()
        .enumerate()
        .filter(|(_, spans)| !spans.is_empty())
        .collect();
    let tickets = tracker.receive(
        msg,
        payload_len,
        seen_ms,
        shares.iter().map(|(_, s)| s.len()),
    );
    shares
        .into_iter()
        .zip(tickets)
        .map(|((shard, spans), ticket)| (shard, ShardBatch { ticket, spans }))
        .collect()
}

/// From how far behind the wall clock stream time counts as catching up.
const CATCHING_UP_AFTER_SECS: f64 = 10.0;
/// While paused, how often the limit is looked at again.
const PAUSE_CHECK: Duration = Duration::from_millis(100);
/// While idle, how often the held-spans gauge is refreshed.
const IDLE_CHECK: Duration = Duration::from_secs(1);

impl Source {
    /// Reads messages until `shutdown`, pausing the partitions while the
    /// held spans or bytes are at their limits.
    async fn run(self, shutdown: CancellationToken) {
        let mut paused = false;
        loop {
            paused = self.apply_backpressure(paused);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                msg = self.consumer.recv() => match msg {
                    Ok(m) => {
                        self.ctx.health.set_kafka(Ok(()));
                        self.handle(&m).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consumer error");
                        self.ctx.health.set_kafka(Err(e.to_string()));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                // While paused, recv() waits for nothing but rebalances; look
                // at the limit again now and then (and refresh the gauge when idle).
                _ = tokio::time::sleep(if paused { PAUSE_CHECK } else { IDLE_CHECK }) => {}
            }
        }
    }

    /// Pauses every assigned partition at either limit and resumes them when
    /// both are below `resume_ratio` of their limit. Returns whether the
    /// consumer is paused.
    fn apply_backpressure(&self, paused: bool) -> bool {
        let held = self.ctx.acks.tracker.held_spans();
        let building = self.ctx.acks.building_bytes.load(Ordering::Relaxed);
        // A compact buffer keeps no span, so an uncommitted offset keeps no
        // message in memory: what counts is the second read's copies of
        // kept traces' messages until they are stored.
        let pending = match self.limits.mode {
            BufferMode::Spans => self.ctx.acks.tracker.pending_bytes(),
            BufferMode::Compact => self.ctx.acks.tracker.reread_bytes(),
        };
        let bytes = (pending + building) as i64;
        self.ctx.metrics.ingest.held_spans.set(held);
        self.ctx.metrics.ingest.held_bytes.set(bytes);
        let limits = [
            (held, self.limits.max_buffered_spans as i64),
            (bytes, self.limits.max_buffered_bytes as i64),
        ];
        let ratio = self.limits.resume_ratio;
        let pause = if paused {
            limits
                .iter()
                .any(|&(v, max)| v > (max as f64 * ratio) as i64)
        } else {
            limits.iter().any(|&(v, max)| v >= max)
        };
        if pause {
            // Partitions assigned since the last call are paused too.
            if let Err(e) = self
                .consumer
                .assignment()
                .and_then(|a| self.consumer.pause(&a))
            {
                tracing::warn!(error = %e, "pausing the consumer failed");
            }
            if !paused {
                let (max_spans, max_bytes) = (limits[0].1, limits[1].1);
                tracing::warn!(
                    held_spans = held,
                    held_bytes = bytes,
                    max_spans,
                    max_bytes,
                    "buffer full: pausing consumption until storage catches up"
                );
                self.ctx.health.set_backpressure(Some(format!(
                    "{held} spans and {bytes} bytes held, limits buffer.max_buffered_spans = {max_spans} \
                     and buffer.max_buffered_bytes = {max_bytes}; consumption paused"
                )));
                self.ctx.metrics.ingest.consumer_paused.set(1);
                self.ctx.acks.clock.set_paused(true);
            }
        } else if paused {
            if let Err(e) = self
                .consumer
                .assignment()
                .and_then(|a| self.consumer.resume(&a))
            {
                tracing::warn!(error = %e, "resuming the consumer failed");
                return true;
            }
            tracing::info!(
                held_spans = held,
                held_bytes = bytes,
                "buffer drained: consumption resumed"
            );
            self.ctx.health.set_backpressure(None);
            self.ctx.metrics.ingest.consumer_paused.set(0);
            self.ctx.acks.clock.set_paused(false);
        }
        pause
    }

    async fn handle(&self, m: &BorrowedMessage<'_>) {
        self.ctx.metrics.ingest.messages_consumed_total.inc();
        let Some(lease) = self.ctx.acks.assignments.lease(m.partition()) else {
            // Read just before its partition was revoked: the next owner reads it.
            return;
        };
        let msg = MsgRef {
            partition: m.partition(),
            offset: m.offset(),
            epoch: lease.epoch,
        };
        let seen_ms = self
            .ctx
            .acks
            .clock
            .observe(lease, m.timestamp().to_millis(), unix_now_ms());
        let payload = Bytes::copy_from_slice(m.payload().unwrap_or_default());
        let payload_len = payload.len();
        let decoded = match decode_message(payload, self.max_message_bytes) {
            Ok(d) => d,
            Err(e) => {
                self.ctx
                    .metrics
                    .ingest
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
                self.ctx.acks.tracker.skip(msg);
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
        let batches = shard_batches(
            &self.ctx.acks.tracker,
            msg,
            payload_len,
            decoded.spans,
            seen_ms,
            self.shards.len(),
        );
        for (shard, batch) in batches {
            // Workers never wait on storage, so a full channel clears quickly.
            // A refused batch is dropped with its ticket: its spans are
            // freed and the message stays uncommitted.
            if self.shards[shard].send(batch).await.is_err() {
                tracing::warn!("worker stopped; message stays uncommitted");
            }
        }
    }

    /// Counts and logs spans skipped inside an otherwise valid message.
    fn count_invalid_spans(&self, m: &BorrowedMessage<'_>, reason: &str, spans: usize, what: &str) {
        if spans == 0 {
            return;
        }
        self.ctx
            .metrics
            .ingest
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

/// Commits watermarks every `interval` and exports the consumer lag and
/// the watermark lag.
async fn run_committer(
    consumer: Arc<SelectorConsumer>,
    ctx: IngestContext,
    topic: String,
    interval: Duration,
    stop: CancellationToken,
) {
    let tracker = &ctx.acks.tracker;
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        commit_watermarks(consumer.as_ref(), tracker, &topic, CommitMode::Async);
        for (p, lag) in tracker.lag() {
            ctx.metrics
                .ingest
                .consumer_lag_messages
                .with_label_values(&[&p.to_string()])
                .set(lag);
        }
        report_stream_time(&ctx);
    }
    commit_watermarks(consumer.as_ref(), tracker, &topic, CommitMode::Sync);
}

/// Exports how far stream time trails the wall clock, and says so in
/// `/health` while a backlog is read.
fn report_stream_time(ctx: &IngestContext) {
    let now = unix_now_ms();
    let Some(watermark) = ctx.acks.watermark(now) else {
        return;
    };
    let lag = (now - watermark).max(0) as f64 / 1000.0;
    ctx.metrics.ingest.watermark_lag_seconds.set(lag);
    let detail = (lag >= CATCHING_UP_AFTER_SECS)
        .then(|| format!("reading a backlog: stream time is {lag:.0} s behind the wall clock"));
    ctx.health.set_catching_up(detail);
}

/// A producer for the dead-letter topic, when one is configured.
fn dead_letter_producer(
    cfg: &KafkaConfig,
) -> Result<Option<(FutureProducer, String)>, IngestError> {
    let Some(topic) = cfg.dead_letter_topic.clone().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let producer: FutureProducer = client::client_config(cfg)
        .set("message.timeout.ms", "10000")
        .create()?;
    Ok(Some((producer, topic)))
}

impl From<KafkaError> for IngestError {
    fn from(e: KafkaError) -> Self {
        IngestError::Kafka(e)
    }
}

#[cfg(test)]
mod tests {
    use super::unread;
    use rdkafka::statistics::Partition;

    /// librdkafka's "invalid offset".
    const INVALID: i64 = -1001;

    fn stats(lo: i64, hi: i64, committed: i64, app: i64) -> Partition {
        Partition {
            lo_offset: lo,
            hi_offset: hi,
            committed_offset: committed,
            app_offset: app,
            ..Default::default()
        }
    }

    #[test]
    fn a_partition_waiting_behind_its_neighbour_is_not_read_to_its_end() {
        // As librdkafka reported a fresh group's second partition while it
        // handed over the first one's backlog: fetched, nothing handed over.
        assert_eq!(unread(&stats(0, 10_000, INVALID, INVALID)), 10_000);
        assert_eq!(
            unread(&stats(0, 10_000, 4_000, INVALID)),
            6_000,
            "from the committed offset"
        );
        assert_eq!(unread(&stats(0, 10_000, 4_000, 9_000)), 1_000);
        assert_eq!(unread(&stats(0, 10_000, 4_000, 10_000)), 0);
    }

    #[test]
    fn an_empty_partition_is_read_to_its_end_and_an_unknown_one_is_unknown() {
        assert_eq!(unread(&stats(0, 0, INVALID, INVALID)), 0);
        assert_eq!(
            unread(&stats(INVALID, INVALID, INVALID, INVALID)),
            -1,
            "no high watermark yet"
        );
        assert_eq!(
            unread(&stats(INVALID, 10, INVALID, INVALID)),
            -1,
            "nowhere to start from"
        );
    }
}
