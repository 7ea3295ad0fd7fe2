//! Whether this instance owns any partition, and a warning when it has owned
//! none for too long while its group has work to do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::SelectorConsumer;
use crate::ack::Assignments;
use crate::config::KafkaConfig;

/// Tells an operator when this instance has owned no partition for longer
/// than the session timeout while the group still has messages to read: a
/// member that should be working is not (on a broker that is slow to evict a
/// dead member, for example; static membership avoids that).
pub struct OwnershipWatch {
    assignments: Arc<Assignments>,
    patience: Duration,
    empty_since: Option<Instant>,
    last_warning: Option<Instant>,
}

impl OwnershipWatch {
    /// Repeats the warning at most this often while the situation lasts.
    const WARN_EVERY: Duration = Duration::from_secs(60);

    pub fn new(assignments: Arc<Assignments>, cfg: &KafkaConfig) -> Self {
        Self {
            assignments,
            patience: Duration::from_millis(cfg.session_timeout_ms),
            empty_since: None,
            last_warning: None,
        }
    }

    /// Called every few seconds; looks at the group only while this
    /// instance owns nothing.
    pub async fn check(&mut self, consumer: &Arc<SelectorConsumer>, topic: &str) {
        if self.assignments.count() > 0 {
            self.empty_since = None;
            return;
        }
        let since = *self.empty_since.get_or_insert_with(Instant::now);
        let due = self
            .last_warning
            .is_none_or(|t| t.elapsed() >= Self::WARN_EVERY);
        if since.elapsed() < self.patience || !due {
            return;
        }
        let (c, t) = (consumer.clone(), topic.to_string());
        let lag =
            tokio::task::spawn_blocking(move || group_lag(c.as_ref(), &t, Duration::from_secs(3)))
                .await;
        if let Ok(Ok(lag)) = lag {
            // Partitions may have come while the lag was being read.
            if lag > 0 && self.assignments.count() == 0 {
                tracing::warn!(
                    owned_none_for_secs = since.elapsed().as_secs(),
                    group_lag_messages = lag,
                    "this instance owns no partition while its group has unread messages; \
                     if no other member is consuming, a dead member may still hold them \
                     (set kafka.group_instance_id for static membership)"
                );
                self.last_warning = Some(Instant::now());
            }
        }
    }
}

/// Messages of `topic` that the group has not committed yet, over all its
/// partitions: each high watermark minus the group's committed offset (the
/// low watermark where the group has none). Blocking: call it off the runtime.
fn group_lag<C: Consumer<X>, X: ConsumerContext>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> Result<i64, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut lag = 0;
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(topic, e.partition(), timeout)?;
        let from = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        lag += (high - from).max(0);
    }
    Ok(lag)
}
