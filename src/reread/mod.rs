//! The compact buffer's second read: kept traces come from the workers as
//! facts and the offsets of the messages that fed them; this stage reads
//! those messages again from Kafka, picks out the kept traces' spans, and
//! hands whole traces to the sinks.
//!
//! Kafka is the write-ahead log: the messages cannot be gone before the
//! trace's hold settles, since their offsets do not commit until then, and
//! the topic's retention is far longer than any trace's wait. So the
//! buffer does not keep spans while a trace is open, and only the kept
//! fraction is decoded twice.
//!
//! It reads in batches: the kept traces that are waiting are gathered, the
//! messages they need are read in offset order per partition, and the
//! whole batch goes on. Each round of reading has a consumer of its own
//! that joins no group and commits nothing, assigned at each partition's
//! next needed offset; it reads through unneeded messages (skipped
//! undecoded) and leaves a partition to the next round where the next
//! needed message is far ahead. A broker error or a stall retries from
//! where each partition stands; nothing is settled or dropped, so a trace
//! is either handed on whole or, if the process stops first, read again
//! from its uncommitted messages. A lease revoked while
//! a trace is here is the table writer's to act on, as in the spans mode:
//! the spans carry the lease their message was read under.

mod plan;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::config::KafkaConfig;
use crate::handoff::{KeptTrace, Onward};
use crate::health::Health;
use crate::kafka_client;
use crate::metrics::Metrics;
use crate::otlp::decode::decode_message;
use crate::supervise::StageTask;
use plan::{pick, Plan, Step, MAX_READ_THROUGH};

/// The stage's name in `/health`'s sinks and in logs.
pub const STAGE: &str = "kafka_reread";

/// How long kept traces are gathered into one batch after the first.
const GATHER: Duration = Duration::from_millis(20);
/// Batches read at the same time, at most.
const MAX_BATCHES_IN_FLIGHT: usize = 4;
/// Kept traces in one batch at most.
const MAX_BATCH_TRACES: usize = 20_000;
/// Bytes of messages one batch reads, at most (a batch takes at least one
/// trace, whatever its size).
const MAX_BATCH_BYTES: usize = 64 << 20;
/// Silence after which a round that still needs messages ends: a
/// partition that delivered nothing starts its next round further back,
/// and one that did counts as stalled.
const QUIET: Duration = Duration::from_secs(3);
/// How long one watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RereadError {
    #[error("creating the second-read consumer: {0}")]
    Consumer(#[from] KafkaError),
}

/// What the stage shares with the rest of the pipeline.
#[derive(Clone)]
pub struct RereadContext {
    pub metrics: Metrics,
    pub health: Health,
}

/// Starts the stage in front of `onward`. It runs until every sender of
/// the returned channel is gone and every trace it took has gone on.
pub fn start(
    kafka: &KafkaConfig,
    ctx: RereadContext,
    onward: Onward,
) -> Result<(mpsc::UnboundedSender<KeptTrace>, StageTask), RereadError> {
    let mut config = kafka_client::client_config(kafka);
    config
        // librdkafka wants a group id; a unique one that never joins or
        // commits cannot touch the live group's offsets.
        .set(
            "group.id",
            format!("tail-sampling-reread-{}", uuid::Uuid::now_v7().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A needed message that is gone must be an error, never a silent
        // jump to the other end of the partition.
        .set("auto.offset.reset", "error")
        // A first fetch size per partition; librdkafka grows it for a
        // larger message.
        .set("fetch.message.max.bytes", "1048576")
        // A round reads a short stretch and stops: what was prefetched past
        // it is thrown away and fetched again by the next round. librdkafka
        // prefetches up to this much per partition (64 MiB by default) and
        // 50 MiB per fetch, which with 16 MiB fetched the topic about 1.3
        // times over; small fetches, asked for again quickly, waste little.
        .set("queued.max.messages.kbytes", "2048")
        .set("fetch.max.bytes", "4194304")
        .set("fetch.queue.backoff.ms", "10");
    // Checked once here, so a bad setting stops startup, not a round.
    let _: StreamConsumer = config.create()?;
    ctx.health.set_sink(STAGE, Ok(()));
    let stage = Reread {
        config,
        topic: kafka.topic.clone(),
        max_message_bytes: kafka.max_message_bytes,
        ctx,
        onward,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    Ok((tx, StageTask::spawn("kafka re-read", stage.run(rx))))
}

struct Reread {
    /// Each round reads with a consumer of its own: librdkafka's seeks and
    /// re-assignments of a running consumer can deliver messages of the
    /// old position after the new one, or start from the reset policy.
    config: ClientConfig,
    topic: String,
    max_message_bytes: usize,
    ctx: RereadContext,
    onward: Onward,
}

/// Why a round stopped before its end.
enum Interrupted {
    Kafka(KafkaError),
    Stalled,
}

impl From<KafkaError> for Interrupted {
    fn from(e: KafkaError) -> Self {
        Interrupted::Kafka(e)
    }
}

impl Reread {
    /// Up to [`MAX_BATCHES_IN_FLIGHT`] batches are read at once: a round's
    /// fixed cost (a connection, the first fetch) overlaps the others'
    /// reading, and batches are independent (each settles its own traces).
    async fn run(self, mut rx: mpsc::UnboundedReceiver<KeptTrace>) {
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        while open || !in_flight.is_empty() {
            tokio::select! {
                first = rx.recv(), if open && in_flight.len() < MAX_BATCHES_IN_FLIGHT => match first {
                    Some(first) => {
                        let batch = gather(first, &mut rx).await;
                        in_flight.push(self.complete(batch));
                    }
                    None => open = false,
                },
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            }
        }
    }

    /// Reads what `batch` needs, in rounds, retrying until it is all read,
    /// and hands the traces on.
    async fn complete(&self, mut batch: Vec<KeptTrace>) {
        let started = Instant::now();
        let mut plan = Plan::new(&batch);
        let mut failures = 0u32;
        while !plan.is_done() {
            let Err(why) = self.round(&mut plan, &mut batch).await else {
                continue;
            };
            failures += 1;
            self.ctx.metrics.reread.errors_total.inc();
            let detail = match &why {
                Interrupted::Kafka(e) => e.to_string(),
                Interrupted::Stalled => format!("no message for {} s", QUIET.as_secs()),
            };
            tracing::warn!(
                error = %detail,
                failures,
                traces = batch.len(),
                "re-reading kept traces' messages failed; retrying"
            );
            self.ctx.health.set_sink(STAGE, Err(detail));
            self.give_up_on_deleted(&mut plan).await;
            tokio::time::sleep(backoff(failures)).await;
        }
        if failures > 0 {
            self.ctx.health.set_sink(STAGE, Ok(()));
        }
        self.ctx
            .metrics
            .reread
            .batch_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        self.hand_on(batch);
    }

    /// One round: a fresh consumer reads each partition from its next
    /// needed offset on, in order, until the next needed one is more than
    /// [`plan::MAX_READ_THROUGH`] messages ahead (the next round starts
    /// there) or none is left.
    async fn round(&self, plan: &mut Plan, batch: &mut [KeptTrace]) -> Result<(), Interrupted> {
        let consumer: StreamConsumer = self.config.create()?;
        let mut tpl = TopicPartitionList::new();
        let mut open = HashMap::new();
        for (p, offset) in plan.positions() {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(offset))?;
            open.insert(p, false);
        }
        consumer.assign(&tpl)?;
        let result = self.read_round(&consumer, &mut open, plan, batch).await;
        // Closing a consumer that joined no group is quick, but blocking.
        drop(tokio::task::spawn_blocking(move || drop(consumer)));
        result
    }

    async fn read_round(
        &self,
        consumer: &StreamConsumer,
        open: &mut HashMap<i32, bool>,
        plan: &mut Plan,
        batch: &mut [KeptTrace],
    ) -> Result<(), Interrupted> {
        while !open.is_empty() {
            let m = match tokio::time::timeout(QUIET, consumer.recv()).await {
                Err(_) => return self.quiet(open, plan),
                Ok(Err(e)) => return Err(Interrupted::Kafka(e)),
                Ok(Ok(m)) => m,
            };
            let p = m.partition();
            let Some(heard) = open.get_mut(&p) else {
                continue;
            };
            *heard = true;
            let passed = plan.next_needed(p).is_some_and(|next| next < m.offset());
            self.take(&m, plan, batch);
            let done = if passed {
                // Delivered past a needed message: the next round starts
                // further back.
                self.missing(p, plan.passed(p));
                true
            } else {
                match plan.next_needed(p) {
                    None => true,
                    Some(next) => next - m.offset() > MAX_READ_THROUGH,
                }
            };
            if done {
                open.remove(&p);
                let mut one = TopicPartitionList::new();
                one.add_partition(&self.topic, p);
                // Only saves fetching what would be skipped.
                let _ = consumer.pause(&one);
            }
        }
        Ok(())
    }

    /// Nothing came for [`QUIET`]. A partition that delivered nothing this
    /// round may be asked for an offset inside its last record batch, from
    /// a broker that serves only batches beginning at or after it (Tansu):
    /// such a fetch stays empty, so its next round starts further back. A
    /// silence after messages came is a stall.
    fn quiet(&self, open: &HashMap<i32, bool>, plan: &mut Plan) -> Result<(), Interrupted> {
        let silent: Vec<i32> = open.iter().filter(|(_, h)| !**h).map(|(p, _)| *p).collect();
        if silent.is_empty() {
            return Err(Interrupted::Stalled);
        }
        for p in silent {
            self.missing(p, plan.passed(p));
        }
        Ok(())
    }

    /// One message: decoded and its kept spans given out when needed,
    /// skipped otherwise.
    fn take(&self, m: &BorrowedMessage<'_>, plan: &mut Plan, batch: &mut [KeptTrace]) {
        let metrics = &self.ctx.metrics.reread;
        let payload = m.payload().unwrap_or_default();
        metrics.bytes_fetched_total.inc_by(payload.len() as u64);
        let Step::Decode(who) = plan.on_message(m.partition(), m.offset()) else {
            metrics.messages_skipped_total.inc();
            return;
        };
        metrics.messages_decoded_total.inc();
        match decode_message(Bytes::copy_from_slice(payload), self.max_message_bytes) {
            Ok(decoded) => {
                pick(batch, &who, decoded.spans);
            }
            // It decoded when it was first read; Kafka's bytes do not change.
            Err(e) => tracing::error!(
                partition = m.partition(),
                offset = m.offset(),
                error = %e,
                "a message that fed kept traces no longer decodes; their spans from it are missing"
            ),
        }
    }

    fn missing(&self, partition: i32, messages: usize) {
        if messages == 0 {
            return;
        }
        tracing::error!(
            partition,
            messages,
            "messages that fed kept traces are gone from the topic; their spans cannot be stored"
        );
    }

    /// After an error: needed offsets below a partition's low watermark
    /// were deleted (retention shorter than the wait), and retrying cannot
    /// bring them back.
    async fn give_up_on_deleted(&self, plan: &mut Plan) {
        let config = self.config.clone();
        let topic = self.topic.clone();
        let partitions: Vec<i32> = plan.positions().into_iter().map(|(p, _)| p).collect();
        let lows = tokio::task::spawn_blocking(move || {
            let Ok(consumer) = config.create::<BaseConsumer>() else {
                return Vec::new();
            };
            partitions
                .into_iter()
                .filter_map(|p| {
                    let (low, _) = consumer.fetch_watermarks(&topic, p, REQUEST_TIMEOUT).ok()?;
                    Some((p, low))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (p, low) in lows {
            self.missing(p, plan.set_low(p, low));
        }
    }

    /// Hands every trace on, each with the spans found for it.
    fn hand_on(&self, batch: Vec<KeptTrace>) {
        let metrics = &self.ctx.metrics.reread;
        for mut trace in batch {
            let expected = std::mem::take(&mut trace.spans_in_kafka);
            if expected > 0 {
                metrics.traces_total.inc();
                metrics.spans_total.inc_by(trace.spans.len() as u64);
                let short = expected.saturating_sub(trace.spans.len());
                if short > 0 {
                    metrics.spans_missing_total.inc_by(short as u64);
                    tracing::warn!(
                        trace_id = %hex::encode(trace.trace_id),
                        expected,
                        found = trace.spans.len(),
                        "a kept trace is stored without spans the second read did not find"
                    );
                }
                if trace.spans.is_empty() {
                    // Nothing left to store: its messages are gone, and
                    // holding their offsets back would stop the partition's
                    // commits for good.
                    trace.hold.settle();
                    continue;
                }
            }
            self.onward.pass(trace);
        }
    }
}

/// The first trace and whatever follows within [`GATHER`], up to
/// [`MAX_BATCH_TRACES`] or [`MAX_BATCH_BYTES`] of messages to read. Each
/// trace is charged its messages' bytes from here until it is stored, so
/// the consumer pauses at `buffer.max_buffered_bytes` on what the second
/// read holds, as it does on held messages in the spans mode.
async fn gather(first: KeptTrace, rx: &mut mpsc::UnboundedReceiver<KeptTrace>) -> Vec<KeptTrace> {
    let mut bytes = 0;
    let mut batch = vec![charged(first, &mut bytes)];
    let deadline = tokio::time::Instant::now() + GATHER;
    while batch.len() < MAX_BATCH_TRACES && bytes < MAX_BATCH_BYTES {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(t)) => batch.push(charged(t, &mut bytes)),
            Ok(None) | Err(_) => break,
        }
    }
    batch
}

fn charged(mut trace: KeptTrace, total: &mut usize) -> KeptTrace {
    if trace.spans_in_kafka > 0 {
        let bytes = trace.hold.message_bytes();
        *total += bytes;
        trace.charge = Some(trace.hold.charge(bytes));
    }
    trace
}

/// 100 ms doubling to 10 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(7))).min(Duration::from_secs(10))
}
