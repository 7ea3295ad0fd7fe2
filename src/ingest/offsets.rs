//! Per-partition offset watermarks: Kafka is the write-ahead log.
//!
//! A message is "pending" while any trace it fed is undecided, or decided as
//! kept but not yet committed to Iceberg. The committable offset of a partition
//! is the lowest pending offset, or one past the highest offset seen when
//! nothing is pending. Committing that and nothing more means a crash loses no
//! kept trace: everything after the watermark is read again on restart.
//!
//! Accounting is by references. The consumer registers a message with one
//! ticket per worker shard it was sent to; each shard adds the references its
//! traces took and returns its ticket; each decided (and, if kept, stored)
//! trace returns its references. A message whose count reaches zero is done.

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

/// One Kafka message, by partition and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgRef {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Default)]
struct PartitionState {
    /// Offset → outstanding references.
    pending: BTreeMap<i64, i64>,
    /// One past the highest offset registered.
    next_offset: i64,
    /// The last watermark handed out for commit.
    committed: i64,
}

/// Shared by the consumer, the workers and the storage writer. Each call takes
/// the lock once per message or per trace, never per span.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: Mutex<HashMap<i32, PartitionState>>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a consumed message with `tickets` outstanding references.
    pub fn register(&self, msg: MsgRef, tickets: i64) {
        let mut parts = self.partitions.lock();
        let state = parts.entry(msg.partition).or_insert_with(|| PartitionState {
            next_offset: msg.offset,
            committed: msg.offset,
            ..Default::default()
        });
        state.next_offset = state.next_offset.max(msg.offset + 1);
        if tickets != 0 {
            *state.pending.entry(msg.offset).or_default() += tickets;
        }
    }

    /// Adds `delta` references to a registered message (negative to release).
    pub fn adjust(&self, msg: MsgRef, delta: i64) {
        if delta == 0 {
            return;
        }
        let mut parts = self.partitions.lock();
        let Some(state) = parts.get_mut(&msg.partition) else {
            return; // The partition was revoked; its new owner re-reads the message.
        };
        let count = state.pending.entry(msg.offset).or_default();
        *count += delta;
        if *count <= 0 {
            state.pending.remove(&msg.offset);
        }
    }

    /// Releases one reference on each message.
    pub fn release(&self, msgs: &[MsgRef]) {
        for m in msgs {
            self.adjust(*m, -1);
        }
    }

    /// The watermark of each partition that moved since the last call.
    pub fn take_commits(&self) -> Vec<(i32, i64)> {
        let mut parts = self.partitions.lock();
        let mut out = Vec::new();
        for (p, state) in parts.iter_mut() {
            let mark = watermark(state);
            if mark > state.committed {
                state.committed = mark;
                out.push((*p, mark));
            }
        }
        out
    }

    /// The current watermark of every partition, moved or not.
    pub fn watermarks(&self) -> Vec<(i32, i64)> {
        let parts = self.partitions.lock();
        parts.iter().map(|(p, s)| (*p, watermark(s))).collect()
    }

    /// After a failed commit: hand the same watermarks out again next time.
    pub fn reset_committed(&self, commits: &[(i32, i64)]) {
        let mut parts = self.partitions.lock();
        for (p, _) in commits {
            if let Some(state) = parts.get_mut(p) {
                state.committed = i64::MIN;
            }
        }
    }

    /// Consumed but uncommittable messages per partition: the lag between the
    /// consumed position and the watermark.
    pub fn lag(&self) -> Vec<(i32, i64)> {
        let parts = self.partitions.lock();
        parts
            .iter()
            .map(|(p, s)| (*p, s.next_offset - watermark(s)))
            .collect()
    }

    /// Forgets partitions that this instance no longer owns.
    pub fn forget(&self, partitions: &[i32]) {
        let mut parts = self.partitions.lock();
        for p in partitions {
            parts.remove(p);
        }
    }

    /// Messages still pending, over all partitions.
    pub fn pending_messages(&self) -> usize {
        self.partitions.lock().values().map(|s| s.pending.len()).sum()
    }
}

fn watermark(state: &PartitionState) -> i64 {
    state
        .pending
        .keys()
        .next()
        .copied()
        .unwrap_or(state.next_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: i32, o: i64) -> MsgRef {
        MsgRef {
            partition: p,
            offset: o,
        }
    }

    #[test]
    fn watermark_waits_for_the_lowest_pending_message() {
        let t = OffsetTracker::new();
        t.register(m(0, 10), 1);
        t.register(m(0, 11), 1);
        t.register(m(0, 12), 0); // undecodable: nothing to wait for
        assert!(t.take_commits().is_empty(), "offset 10 is still pending");
        // Offset 11's shard took two trace refs and returned its ticket.
        t.adjust(m(0, 11), 2 - 1);
        t.adjust(m(0, 10), -1);
        assert_eq!(t.take_commits(), vec![(0, 11)]);
        t.release(&[m(0, 11)]);
        assert!(t.take_commits().is_empty(), "one reference left on 11");
        t.release(&[m(0, 11)]);
        assert_eq!(t.take_commits(), vec![(0, 13)]);
        assert!(t.take_commits().is_empty(), "nothing moved");
    }

    #[test]
    fn partitions_are_independent_and_can_be_forgotten() {
        let t = OffsetTracker::new();
        t.register(m(0, 5), 1);
        t.register(m(1, 7), 0);
        assert_eq!(t.take_commits(), vec![(1, 8)]);
        t.forget(&[0]);
        t.release(&[m(0, 5)]);
        assert_eq!(t.pending_messages(), 0);
        assert!(t.take_commits().is_empty());
    }
}
