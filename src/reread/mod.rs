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
//! Each partition has a reader of its own ([`reader`]) with one consumer
//! that joins no group and commits nothing. Kept traces are decided
//! roughly in the order of their messages, so it reads the partition
//! forward, about as the live consumer read it, each message once. A
//! message several kept traces want is read once for all of them, and a
//! trace goes on as soon as its last message is read. A broker error or a
//! stall retries; nothing is settled or dropped, so a trace is either
//! handed on whole or, if the process stops first, read again from its
//! uncommitted messages. A lease revoked while a trace is here is the table
//! writer's to act on, as in the spans mode: the spans carry the lease
//! their message was read under.

mod cursor;
mod pending;
mod reader;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::ack::Acks;
use crate::config::KafkaConfig;
use crate::handoff::{KeptTrace, Onward};
use crate::health::Health;
use crate::kafka_client;
use crate::metrics::Metrics;
use crate::supervise::StageTask;
use pending::{Pending, Ready};
use reader::{Event, Reader};

/// The stage's name in `/health`'s sinks and in logs.
pub const STAGE: &str = "kafka_reread";

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
    /// Stream time, which the readers' delay also counts in.
    pub acks: Acks,
}

/// Starts the stage in front of `onward`; each kept trace's messages are
/// read `delay` (`buffer.reread_delay_ms`) after it came, of wall or stream
/// time, at the earliest. It runs until every sender of the returned
/// channel is gone and every trace it took has gone on.
pub fn start(
    kafka: &KafkaConfig,
    delay: Duration,
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
        // Small fetches: a reader reads on from where it stands, so a
        // fetch that comes back quickly keeps it as busy as a large one,
        // and each partition has a consumer of its own. With 1 MiB fetches
        // and 4 MiB queues, eight readers took 250 MiB more at their peak
        // than with these (the end-to-end bench), for the same pace.
        // librdkafka grows a fetch for a larger message.
        .set("fetch.message.max.bytes", "262144")
        .set("fetch.max.bytes", "1048576")
        .set("queued.max.messages.kbytes", "1024")
        .set("fetch.queue.backoff.ms", "10");
    // Checked once here, so a bad setting stops startup, not a read.
    let _: StreamConsumer = config.create()?;
    ctx.health.set_sink(STAGE, Ok(()));
    let stage = Reread {
        config,
        topic: kafka.topic.clone(),
        max_message_bytes: kafka.max_message_bytes,
        delay,
        ctx,
        onward,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    Ok((tx, StageTask::spawn("kafka re-read", stage.run(rx))))
}

struct Reread {
    config: ClientConfig,
    topic: String,
    max_message_bytes: usize,
    delay: Duration,
    ctx: RereadContext,
    onward: Onward,
}

/// The partitions' readers: each a task with the inbox it is asked
/// through.
struct Readers {
    inboxes: HashMap<i32, mpsc::UnboundedSender<i64>>,
    tasks: JoinSet<()>,
    events: mpsc::UnboundedSender<Event>,
}

impl Reread {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<KeptTrace>) {
        let (events, mut heard) = mpsc::unbounded_channel();
        let mut readers = Readers {
            inboxes: HashMap::new(),
            tasks: JoinSet::new(),
            events,
        };
        let mut pending = Pending::default();
        let mut open = true;
        while open || !pending.is_empty() {
            tokio::select! {
                t = rx.recv(), if open => match t {
                    Some(t) => self.admit(t, &mut pending, &mut readers),
                    None => open = false,
                },
                Some(event) = heard.recv() => {
                    let ready = match event {
                        Event::Read { partition, offset, spans } => pending.read((partition, offset), spans),
                        Event::Gone { partition, offsets } => pending.gone(partition, &offsets),
                    };
                    for r in ready {
                        self.hand_on(r);
                    }
                }
                Some(ended) = readers.tasks.join_next() => {
                    // A reader ends only when its inbox closes, below.
                    if let Err(e) = ended {
                        if e.is_panic() {
                            std::panic::resume_unwind(e.into_panic());
                        }
                    }
                }
            }
        }
        readers.inboxes.clear();
        while readers.tasks.join_next().await.is_some() {}
    }

    /// A kept trace comes in: charged its messages' bytes from here until
    /// it is stored, so the consumer pauses at `buffer.max_buffered_bytes`
    /// on what the second read holds, as it does on held messages in the
    /// spans mode; its messages are asked of their partitions' readers.
    fn admit(&self, mut trace: KeptTrace, pending: &mut Pending, readers: &mut Readers) {
        let now = Instant::now();
        if trace.spans_in_kafka == 0 || trace.hold.msgs().is_empty() {
            self.hand_on((trace, now));
            return;
        }
        trace.charge = Some(trace.hold.charge(trace.hold.message_bytes()));
        for (partition, offset) in pending.add(trace, now) {
            let inbox = readers.inboxes.entry(partition).or_insert_with(|| {
                self.spawn_reader(partition, &mut readers.tasks, &readers.events)
            });
            // A reader lives until its inbox is dropped, below.
            let _ = inbox.send(offset);
        }
    }

    fn spawn_reader(
        &self,
        partition: i32,
        tasks: &mut JoinSet<()>,
        events: &mpsc::UnboundedSender<Event>,
    ) -> mpsc::UnboundedSender<i64> {
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = Reader {
            partition,
            topic: self.topic.clone(),
            config: self.config.clone(),
            max_message_bytes: self.max_message_bytes,
            delay: self.delay,
            acks: self.ctx.acks.clone(),
            metrics: self.ctx.metrics.reread.clone(),
            health: self.ctx.health.clone(),
            stage: STAGE,
            events: events.clone(),
        };
        tasks.spawn(reader.run(rx));
        tx
    }

    /// Hands a trace on with the spans found for it.
    fn hand_on(&self, (mut trace, since): Ready) {
        let metrics = &self.ctx.metrics.reread;
        let expected = std::mem::take(&mut trace.spans_in_kafka);
        if expected > 0 {
            metrics.traces_total.inc();
            metrics.spans_total.inc_by(trace.spans.len() as u64);
            metrics.wait_seconds.observe(since.elapsed().as_secs_f64());
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
                return;
            }
        }
        self.onward.pass(trace);
    }
}
