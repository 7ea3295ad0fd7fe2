//! One partition's second read: a task that keeps a consumer on the
//! partition and reads it forward, as kept traces ask for its messages.
//!
//! Kept traces are decided roughly in the order of their messages, so the
//! consumer mostly reads on from where it stands, each message once,
//! skipping the unneeded ones undecoded. It starts a new consumer only to
//! go back (a trace decided late), to jump a long gap, after an error, or
//! after it was closed for being idle. Each start is a consumer of its own:
//! librdkafka's seeks and re-assignments of a running consumer can deliver
//! messages of the old position after the new one.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::cursor::{Cursor, Moment};
use crate::ack::Acks;
use crate::health::Health;
use crate::metrics::reread::RereadMetrics;
use crate::model::{unix_now_ms, SpanRecord, TraceId};
use crate::otlp::decode::decode_message;

/// Silence after which a read that still needs messages is stuck: a new
/// consumer that delivered nothing may be asked for an offset inside the
/// partition's last record batch, from a broker that serves only batches
/// beginning at or after it (Tansu), so its next start is further back; a
/// silence after messages came is a stall.
const QUIET: Duration = Duration::from_secs(3);
/// How long a consumer with nothing to read is kept open.
const IDLE: Duration = Duration::from_secs(30);
/// How long one watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a reader looks at stream time: again when a need waits on it.
const STREAM_POLL: Duration = Duration::from_millis(20);

/// Now, on the wall clock and in stream time, as a reader samples it. The
/// watermark takes the offset tracker's lock, which the consumer takes for
/// every message, so a reader reading through thousands of messages a
/// second looks at it at most once every [`STREAM_POLL`].
struct Clocks<'a> {
    acks: &'a Acks,
    /// When stream time was last looked at, and what it was.
    sampled: Option<(Instant, Option<i64>)>,
}

impl Clocks<'_> {
    fn now(&mut self) -> Moment {
        let wall = Instant::now();
        let stream_ms = match self.sampled {
            Some((at, stream_ms)) if wall.saturating_duration_since(at) < STREAM_POLL => stream_ms,
            _ => {
                let stream_ms = self.acks.watermark(unix_now_ms());
                self.sampled = Some((wall, stream_ms));
                stream_ms
            }
        };
        Moment { wall, stream_ms }
    }
}

/// What a reader tells the stage.
#[derive(Debug)]
pub enum Event {
    /// A needed message, decoded.
    Read {
        partition: i32,
        offset: i64,
        spans: Vec<(TraceId, SpanRecord)>,
    },
    /// Needed messages gone from the topic, or no longer decoding.
    Gone { partition: i32, offsets: Vec<i64> },
}

pub struct Reader {
    pub partition: i32,
    pub topic: String,
    pub config: ClientConfig,
    pub max_message_bytes: usize,
    /// `buffer.reread_delay_ms`: how long a need waits before it is read,
    /// of wall or stream time.
    pub delay: Duration,
    /// Where stream time comes from.
    pub acks: Acks,
    pub metrics: RereadMetrics,
    pub health: Health,
    /// The stage's name in `/health`, where a reader reports its errors.
    pub stage: &'static str,
    pub events: mpsc::UnboundedSender<Event>,
}

/// The running consumer, and whether it delivered anything yet.
struct Running {
    consumer: StreamConsumer,
    heard: bool,
}

impl Reader {
    /// Reads what `inbox` asks for until the stage drops its end.
    pub async fn run(self, mut inbox: mpsc::UnboundedReceiver<i64>) {
        let mut cursor = Cursor::default();
        let mut running: Option<Running> = None;
        let mut failures = 0u32;
        let mut clocks = Clocks {
            acks: &self.acks,
            sampled: None,
        };
        loop {
            let now = clocks.now();
            let ripening = cursor.ripen(now, self.delay);
            if cursor.is_idle() {
                // Wait for a need, the next to ripen, or, with none
                // waiting, long enough to close an idle consumer.
                let poll = if cursor.waits_on_stream() {
                    STREAM_POLL
                } else {
                    Duration::MAX
                };
                let wait = match ripening {
                    Some(at) => at.saturating_duration_since(now.wall).min(poll),
                    None if running.is_some() => IDLE,
                    None => Duration::MAX,
                };
                match tokio::time::timeout(wait, inbox.recv()).await {
                    Ok(Some(offset)) => self.need(&mut cursor, offset, clocks.now()),
                    Ok(None) => break,
                    Err(_) if cursor.is_empty() => stop(&mut running, &mut cursor),
                    Err(_) => {}
                }
                continue;
            }
            while let Ok(offset) = inbox.try_recv() {
                self.need(&mut cursor, offset, now);
            }
            if let Some(at) = cursor.restart_at() {
                stop(&mut running, &mut cursor);
                match self.start(at) {
                    Ok(consumer) => {
                        cursor.started(at);
                        running = Some(Running {
                            consumer,
                            heard: false,
                        });
                    }
                    Err(e) => {
                        self.failed(&mut cursor, &mut failures, e.to_string()).await;
                        continue;
                    }
                }
            }
            let Some(r) = running.as_mut() else {
                continue;
            };
            let outcome = match tokio::time::timeout(QUIET, r.consumer.recv()).await {
                Err(_) if !r.heard => self.silent_start(&mut cursor).await,
                Err(_) => Err(format!("no message for {} s", QUIET.as_secs())),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(m)) => {
                    r.heard = true;
                    self.take(&m, &mut cursor);
                    Ok(())
                }
            };
            match outcome {
                Ok(()) if failures > 0 && r.heard => {
                    failures = 0;
                    self.health.set_sink(self.stage, Ok(()));
                }
                Ok(()) => {}
                Err(detail) => {
                    stop(&mut running, &mut cursor);
                    self.failed(&mut cursor, &mut failures, detail).await;
                }
            }
            if !cursor.is_reading() {
                // It passed a needed message: the next start is further back.
                close(running.take());
            }
        }
        close(running.take());
    }

    /// A new consumer delivered nothing for [`QUIET`]: either the broker
    /// serves nothing from where it was started (an offset inside the
    /// partition's last record batch, on Tansu), and the next start goes
    /// further back, or the broker does not answer at all, which is an
    /// error to retry. Only a broker that answers a watermark request tells
    /// the two apart: taking a hung broker's silence for the first case
    /// would rewind again and again until the needed messages counted as
    /// gone, and their kept traces were stored without them.
    async fn silent_start(&self, cursor: &mut Cursor) -> Result<(), String> {
        let Some(low) = self.low_watermark().await else {
            return Err(format!(
                "no message for {} s, and no answer to a watermark request",
                QUIET.as_secs()
            ));
        };
        self.gone(cursor.set_low(low));
        self.gone(cursor.passed());
        Ok(())
    }

    fn need(&self, cursor: &mut Cursor, offset: i64, at: Moment) {
        if !cursor.need(offset, at) {
            self.gone(vec![offset]);
        }
    }

    /// A consumer of its own, assigned at `offset`: no group joined,
    /// nothing committed.
    fn start(&self, offset: i64) -> Result<StreamConsumer, KafkaError> {
        let consumer: StreamConsumer = self.config.create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(offset))?;
        consumer.assign(&tpl)?;
        self.metrics.consumer_starts_total.inc();
        Ok(consumer)
    }

    /// One message: decoded and its spans handed to the stage when needed,
    /// skipped otherwise.
    fn take(&self, m: &BorrowedMessage<'_>, cursor: &mut Cursor) {
        let metrics = &self.metrics;
        let payload = m.payload().unwrap_or_default();
        metrics.bytes_fetched_total.inc_by(payload.len() as u64);
        let delivered = cursor.on_message(m.offset());
        if delivered.decode {
            metrics.messages_decoded_total.inc();
            self.decode(m.offset(), payload);
        } else {
            metrics.messages_skipped_total.inc();
        }
        if delivered.passed {
            self.gone(cursor.passed());
        }
    }

    fn decode(&self, offset: i64, payload: &[u8]) {
        let event = match decode_message(Bytes::copy_from_slice(payload), self.max_message_bytes) {
            Ok(decoded) => Event::Read {
                partition: self.partition,
                offset,
                spans: decoded.spans,
            },
            // It decoded when it was first read; Kafka's bytes do not change.
            Err(e) => {
                tracing::error!(
                    partition = self.partition,
                    offset,
                    error = %e,
                    "a message that fed kept traces no longer decodes; their spans from it are missing"
                );
                Event::Gone {
                    partition: self.partition,
                    offsets: vec![offset],
                }
            }
        };
        // The stage outlives its readers.
        let _ = self.events.send(event);
    }

    fn gone(&self, offsets: Vec<i64>) {
        if offsets.is_empty() {
            return;
        }
        tracing::error!(
            partition = self.partition,
            messages = offsets.len(),
            first = offsets[0],
            "messages that fed kept traces are gone from the topic; their spans cannot be stored"
        );
        let _ = self.events.send(Event::Gone {
            partition: self.partition,
            offsets,
        });
    }

    /// After an error or a stall: counted, reported, and retried after a
    /// backoff. Needed offsets below the partition's low watermark were
    /// deleted (retention shorter than the wait), and retrying cannot
    /// bring them back.
    async fn failed(&self, cursor: &mut Cursor, failures: &mut u32, detail: String) {
        *failures += 1;
        self.metrics.errors_total.inc();
        tracing::warn!(
            partition = self.partition,
            error = %detail,
            failures = *failures,
            "re-reading kept traces' messages failed; retrying"
        );
        self.health.set_sink(self.stage, Err(detail));
        if let Some(low) = self.low_watermark().await {
            self.gone(cursor.set_low(low));
        }
        tokio::time::sleep(backoff(*failures)).await;
    }

    /// The partition's low watermark; `None` when the broker does not
    /// answer within [`REQUEST_TIMEOUT`].
    async fn low_watermark(&self) -> Option<i64> {
        let config = self.config.clone();
        let topic = self.topic.clone();
        let partition = self.partition;
        tokio::task::spawn_blocking(move || {
            let consumer = config.create::<BaseConsumer>().ok()?;
            let (low, _) = consumer
                .fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)
                .ok()?;
            Some(low)
        })
        .await
        .ok()
        .flatten()
    }
}

/// Closes the running consumer, if any, and tells the cursor, so that a
/// cursor reads as reading only while a consumer runs.
fn stop(running: &mut Option<Running>, cursor: &mut Cursor) {
    close(running.take());
    cursor.stopped();
}

/// Closing a consumer that joined no group is quick, but blocking.
fn close(running: Option<Running>) {
    if let Some(r) = running {
        drop(tokio::task::spawn_blocking(move || drop(r.consumer)));
    }
}

/// 100 ms doubling to 10 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(7))).min(Duration::from_secs(10))
}
