//! Reading a range of the raw topic again, for a recovery job: the offsets
//! a time range covers on every partition, what the live group has
//! committed there, and a reader of those offsets that joins no group and
//! commits nothing, so the live group never sees it.
//!
//! Offsets are found by time with Kafka's `ListOffsets` (offsets for
//! times). A broker that cannot answer it, or answers an offset whose
//! message does not bear it out, is searched instead: a binary search over
//! the partition's offsets, one message read per step, which assumes what
//! `ListOffsets` assumes, timestamps that grow with the offsets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{shard_batches, IngestError};
use crate::ack::Acks;
use crate::config::KafkaConfig;
use crate::handoff::ShardBatch;
use crate::kafka_client as client;
use crate::model::{unix_now_ms, MsgRef};
use crate::otlp::decode::decode_message;

/// How long one metadata, watermark or offset request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a single message read of the offset search may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Silence after which the reader asks where it stands.
const IDLE_CHECK: Duration = Duration::from_secs(2);

/// The offsets `[start, end)` of one partition that a range covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionRange {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
    /// Milliseconds of the range the topic no longer holds: the partition's
    /// oldest message is younger than the range's start (retention).
    pub missing_ms: i64,
}

impl PartitionRange {
    pub fn messages(&self) -> i64 {
        (self.end - self.start).max(0)
    }
}

/// How the offsets were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetLookup {
    /// The broker's `ListOffsets` by timestamp.
    ListOffsets,
    /// A binary search over message timestamps.
    Search,
}

/// The offsets of `[from_ms, to_ms]` (message timestamps, Unix
/// milliseconds) on every partition of the topic. Blocking: call it off
/// the runtime.
pub fn plan_range(
    cfg: &KafkaConfig,
    from_ms: i64,
    to_ms: i64,
) -> Result<(Vec<PartitionRange>, OffsetLookup), IngestError> {
    let consumer: BaseConsumer = client::client_config(cfg)
        .set("group.id", reader_group("plan"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let partitions = partitions_of(&consumer, &cfg.topic)?;
    let mut ranges = Vec::new();
    let mut lookup = OffsetLookup::ListOffsets;
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(&cfg.topic, p, REQUEST_TIMEOUT)?;
        let probe = Probe {
            consumer: &consumer,
            topic: &cfg.topic,
            partition: p,
            low,
            high,
        };
        let (start, start_checked) = probe.offset_for_time(from_ms)?;
        let (end, end_checked) = probe.offset_for_time(to_ms.saturating_add(1))?;
        if !start_checked || !end_checked {
            lookup = OffsetLookup::Search;
        }
        let oldest = probe.read_at(low)?.map(|(_, ts)| ts);
        let missing_ms = match oldest {
            // Something was deleted, and it reached into the range.
            Some(ts) if low > 0 && ts > from_ms => ts.min(to_ms) - from_ms,
            _ => 0,
        };
        ranges.push(PartitionRange {
            partition: p,
            start,
            end: end.max(start),
            missing_ms,
        });
    }
    Ok((ranges, lookup))
}

/// The offsets the consumer group `group` has committed on `partitions`
/// (absent where it has none). It asks the group coordinator and joins
/// nothing. Blocking: call it off the runtime.
pub fn committed_offsets(
    cfg: &KafkaConfig,
    group: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, IngestError> {
    let consumer: BaseConsumer = client::client_config(cfg)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(&cfg.topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, REQUEST_TIMEOUT)?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// A group id for a reader that never joins or commits: librdkafka wants
/// one, and a unique one cannot touch any real group's offsets.
fn reader_group(what: &str) -> String {
    format!("tail-sampling-{what}-{}", uuid::Uuid::now_v7().simple())
}

fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, IngestError> {
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(IngestError::Kafka(KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
        )));
    }
    Ok(partitions)
}

/// Reads single messages of one partition, for the offset search.
struct Probe<'a> {
    consumer: &'a BaseConsumer,
    topic: &'a str,
    partition: i32,
    low: i64,
    high: i64,
}

impl Probe<'_> {
    /// The first offset whose message has a timestamp at or after `ts_ms`
    /// (the high watermark when none has), and whether the broker's answer
    /// was used (false: it was searched for).
    fn offset_for_time(&self, ts_ms: i64) -> Result<(i64, bool), IngestError> {
        if self.low >= self.high {
            return Ok((self.high, true));
        }
        if let Some(o) = self.list_offsets(ts_ms) {
            if self.bears_out(o, ts_ms)? {
                return Ok((o, true));
            }
        }
        Ok((self.search(ts_ms)?, false))
    }

    /// The broker's answer, if it gave one in the partition's bounds.
    fn list_offsets(&self, ts_ms: i64) -> Option<i64> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(self.topic, self.partition, Offset::Offset(ts_ms))
            .ok()?;
        let answer = self.consumer.offsets_for_times(tpl, REQUEST_TIMEOUT).ok()?;
        let found = answer.elements().first().map(|e| e.offset())?;
        match found {
            Offset::Offset(o) if (self.low..=self.high).contains(&o) => Some(o),
            // No message at or after the timestamp.
            Offset::End => Some(self.high),
            _ => None,
        }
    }

    /// Whether `offset` is where `ts_ms` begins: its message (if any) is at
    /// or after it, and the one before (if any) is before it.
    fn bears_out(&self, offset: i64, ts_ms: i64) -> Result<bool, IngestError> {
        let at = if offset < self.high {
            match self.read_at(offset)? {
                Some((o, ts)) => o == offset && ts >= ts_ms,
                None => false,
            }
        } else {
            true
        };
        let before = if offset > self.low {
            match self.read_at(offset - 1)? {
                Some((o, ts)) => o != offset - 1 || ts < ts_ms,
                None => false,
            }
        } else {
            true
        };
        Ok(at && before)
    }

    fn search(&self, ts_ms: i64) -> Result<i64, IngestError> {
        let (mut lo, mut hi, mut answer) = (self.low, self.high, self.high);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.read_at(mid)? {
                Some((o, ts)) if ts >= ts_ms => {
                    answer = answer.min(o);
                    hi = mid;
                }
                Some((o, _)) => lo = o + 1,
                // Nothing from `mid` on (control records to the end).
                None => hi = mid,
            }
        }
        Ok(answer)
    }

    /// The first message at or after `offset`: its offset and timestamp.
    fn read_at(&self, offset: i64) -> Result<Option<(i64, i64)>, IngestError> {
        if offset >= self.high {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(self.topic, self.partition, Offset::Offset(offset))?;
        self.consumer.assign(&tpl)?;
        let deadline = Instant::now() + PROBE_TIMEOUT;
        while Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.partition() == self.partition && m.offset() >= offset => {
                    let ts = m.timestamp().to_millis().unwrap_or(0);
                    return Ok(Some((m.offset(), ts)));
                }
                Some(Err(e)) => return Err(e.into()),
                _ => {}
            }
        }
        Err(IngestError::Kafka(KafkaError::MessageConsumption(
            rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
        )))
    }
}

/// What a range reader has read so far.
#[derive(Debug, Default)]
pub struct ReadProgress {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    /// Messages that did not decode (the live path dead-lettered them).
    pub messages_invalid: AtomicU64,
    /// The next offset to read, per partition.
    positions: Mutex<HashMap<i32, i64>>,
}

impl ReadProgress {
    pub fn positions(&self) -> HashMap<i32, i64> {
        self.positions.lock().clone()
    }
}

/// How a range reader reads.
#[derive(Debug, Clone)]
pub struct RangeReadConfig {
    /// Messages per second at most; 0 for no limit.
    pub max_messages_per_sec: u32,
    /// Spans held (buffered or being stored) at which reading waits.
    pub max_held_spans: usize,
    pub max_message_bytes: usize,
}

/// Reads `ranges` into `shards`, as the live consumer does but with its
/// own acknowledgements (`acks`, whose assignments hold every partition of
/// `ranges`), until every partition reached its end or `cancel`. The
/// senders are dropped on return, which ends the job's workers.
pub async fn read_range(
    cfg: &KafkaConfig,
    read: RangeReadConfig,
    ranges: Vec<PartitionRange>,
    acks: Acks,
    shards: Vec<mpsc::Sender<ShardBatch>>,
    progress: Arc<ReadProgress>,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    let consumer: StreamConsumer = client::client_config(cfg)
        .set("group.id", reader_group("recovery"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set(
            "fetch.message.max.bytes",
            read.max_message_bytes.min(1 << 30).to_string(),
        )
        // Its prefetch is its own share of memory, the live consumer's
        // default; it fetches again as soon as it has room. librdkafka waits
        // `fetch.queue.backoff.ms` (1 s by default) after a full queue,
        // which left the reader idle most of the time (20% of a plain
        // consumer's rate with a 16 MiB prefetch and the default backoff).
        .set("queued.max.messages.kbytes", "65536")
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    let mut open: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for r in ranges.iter().filter(|r| r.start < r.end) {
        tpl.add_partition_offset(&cfg.topic, r.partition, Offset::Offset(r.start))?;
        open.insert(r.partition, r.end);
        progress.positions.lock().insert(r.partition, r.start);
    }
    if open.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl)?;
    let partitions: Vec<i32> = open.keys().copied().collect();
    acks.clock.assign(
        &partitions
            .iter()
            .filter_map(|p| acks.assignments.lease(*p))
            .collect::<Vec<_>>(),
    );
    let mut pace = Pace::new(read.max_messages_per_sec);
    let hand = Hand {
        acks: &acks,
        shards: &shards,
        progress: &progress,
        max_message_bytes: read.max_message_bytes,
    };
    while !open.is_empty() {
        while acks.tracker.held_spans() >= read.max_held_spans as i64 {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        pace.wait().await;
        let m = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = tokio::time::timeout(IDLE_CHECK, consumer.recv()) => m,
        };
        match m {
            Ok(Ok(m)) => {
                let p = m.partition();
                let Some(&end) = open.get(&p) else { continue };
                if m.offset() < end {
                    hand.read_one(&m).await;
                }
                progress.positions.lock().insert(p, m.offset() + 1);
                if m.offset() + 1 >= end {
                    finish(&mut open, &acks, p);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "recovery read: kafka error");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(_) => {
                // Silence: a partition whose end is a control record (or a
                // gap) delivers nothing more; its position tells.
                for (p, next) in positions_of(&consumer, &cfg.topic)? {
                    if open.get(&p).is_some_and(|end| next >= *end) {
                        progress.positions.lock().insert(p, next);
                        finish(&mut open, &acks, p);
                    }
                }
            }
        }
    }
    Ok(())
}

/// A partition read to its end no longer holds stream time back.
fn finish(open: &mut HashMap<i32, i64>, acks: &Acks, partition: i32) {
    open.remove(&partition);
    acks.clock.revoke(&[partition]);
}

fn positions_of(consumer: &StreamConsumer, topic: &str) -> Result<Vec<(i32, i64)>, IngestError> {
    let tpl = consumer.position()?;
    Ok(tpl
        .elements_for_topic(topic)
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// Where a range reader's messages go: the job's workers, under the job's
/// own acknowledgements.
struct Hand<'a> {
    acks: &'a Acks,
    shards: &'a [mpsc::Sender<ShardBatch>],
    progress: &'a ReadProgress,
    max_message_bytes: usize,
}

impl Hand<'_> {
    /// Decodes one message and hands its spans to the workers under the
    /// job's own tickets.
    async fn read_one(&self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let Hand {
            acks,
            shards,
            progress,
            max_message_bytes,
        } = *self;
        let (partition, offset) = (m.partition(), m.offset());
        let payload = Bytes::copy_from_slice(m.payload().unwrap_or_default());
        let ts_ms = m.timestamp().to_millis();
        progress.messages.fetch_add(1, Ordering::Relaxed);
        progress
            .bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        let Some(lease) = acks.assignments.lease(partition) else {
            return;
        };
        let msg = MsgRef {
            partition,
            offset,
            epoch: lease.epoch,
        };
        let seen_ms = acks.clock.observe(lease, ts_ms, unix_now_ms());
        let payload_len = payload.len();
        let decoded = match decode_message(payload, max_message_bytes) {
            Ok(d) => d,
            Err(_) => {
                progress.messages_invalid.fetch_add(1, Ordering::Relaxed);
                acks.tracker.skip(msg);
                return;
            }
        };
        let batches = shard_batches(
            &acks.tracker,
            msg,
            payload_len,
            decoded.spans,
            seen_ms,
            shards.len(),
        );
        for (shard, batch) in batches {
            // A stopped worker means the job is ending; the batch's ticket
            // frees its spans.
            let _ = shards[shard].send(batch).await;
        }
    }
}

/// Spaces reads out to a rate: each message is due `1 / rate` after the
/// one before, and a late start does not build up a burst.
struct Pace {
    interval: Option<Duration>,
    next: Instant,
}

impl Pace {
    fn new(per_sec: u32) -> Self {
        Self {
            interval: (per_sec > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(per_sec))),
            next: Instant::now(),
        }
    }

    async fn wait(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        let now = Instant::now();
        // Timers tick in milliseconds: sleep only once a few are due.
        if self.next > now + Duration::from_millis(5) {
            tokio::time::sleep_until(self.next.into()).await;
        } else if self.next < now {
            // At most a tenth of a second's worth of catching up.
            self.next = self.next.max(now - Duration::from_millis(100));
        }
        self.next += interval;
    }
}
