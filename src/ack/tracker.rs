//! The offset tracker: which consumed messages still hold their partition's
//! watermark back, and how much memory what they hold takes.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::model::MsgRef;

/// A message that still holds the watermark back.
#[derive(Debug, Default)]
struct Pending {
    /// Outstanding references.
    refs: i64,
    /// The message's size: its spans keep the whole message alive.
    bytes: usize,
}

#[derive(Debug, Default)]
struct PartitionState {
    /// Offset → the pending message.
    pending: BTreeMap<i64, Pending>,
    /// The bytes of the pending messages.
    pending_bytes: usize,
    /// One past the highest offset registered.
    next_offset: i64,
    /// The last watermark handed out for commit.
    committed: i64,
    /// Worker shares (tickets) handed out and not yet redeemed or dropped,
    /// by the stream time their message was read at: messages the consumer
    /// has read whose spans no trace buffer has yet.
    in_flight: BTreeMap<i64, i64>,
    /// The lease epoch the state belongs to.
    epoch: u32,
}

/// Shared by the consumer, the workers and the sinks, through the tickets
/// and holds it hands out. Each call takes the lock once per message or per
/// trace, never per span.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: Mutex<HashMap<i32, PartitionState>>,
    pub(super) held: HeldSpans,
    /// Bytes of messages read again for kept traces (compact mode) and
    /// still in memory: see [`super::Charge`].
    pub(super) reread_bytes: AtomicUsize,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in a consumed message that holds nothing (it could not be
    /// decoded): it is done at once.
    pub fn skip(&self, msg: MsgRef) {
        self.register(msg, 0, 0, i64::MIN);
    }

    /// Spans held in memory anywhere in the pipeline: counted from the
    /// moment the consumer hands them to a worker until the ticket or hold
    /// carrying them is dropped or settled. The consumer pauses at
    /// `buffer.max_buffered_spans`.
    pub fn held_spans(&self) -> i64 {
        self.held.get()
    }

    /// Records a consumed message of `bytes` bytes, read at stream time
    /// `seen_ms`, with `tickets` outstanding references. The first message
    /// of a new lease starts the partition afresh.
    pub(super) fn register(&self, msg: MsgRef, tickets: i64, bytes: usize, seen_ms: i64) {
        let mut parts = self.partitions.lock();
        let fresh = || PartitionState {
            next_offset: msg.offset,
            committed: msg.offset,
            epoch: msg.epoch,
            ..Default::default()
        };
        let state = parts.entry(msg.partition).or_insert_with(fresh);
        if state.epoch != msg.epoch {
            *state = fresh();
        }
        state.next_offset = state.next_offset.max(msg.offset + 1);
        if tickets != 0 {
            *state.in_flight.entry(seen_ms).or_default() += tickets;
            let pending = state.pending.entry(msg.offset).or_default();
            pending.refs += tickets;
            if pending.bytes == 0 {
                pending.bytes = bytes;
                state.pending_bytes += bytes;
            }
        }
    }

    /// Adds `delta` references to a registered message (negative to release).
    pub(super) fn adjust(&self, msg: MsgRef, delta: i64) {
        if delta == 0 {
            return;
        }
        let mut parts = self.partitions.lock();
        if let Some(state) = current(&mut parts, msg) {
            add_refs(state, msg.offset, delta);
        }
    }

    /// A worker share of `msg`, read at stream time `seen_ms`, is done
    /// with: its spans are in traces' holds (`delta` references more in
    /// place of the share's own), or it was dropped (`delta` 0: its
    /// reference stays, so the message is read again).
    pub(super) fn share_done(&self, msg: MsgRef, seen_ms: i64, delta: i64) {
        let mut parts = self.partitions.lock();
        if let Some(state) = current(&mut parts, msg) {
            if let Entry::Occupied(mut shares) = state.in_flight.entry(seen_ms) {
                *shares.get_mut() -= 1;
                if *shares.get() <= 0 {
                    shares.remove();
                }
            }
            if delta != 0 {
                add_refs(state, msg.offset, delta);
            }
        }
    }

    /// The partitions with messages read by the consumer whose spans have
    /// not reached a trace buffer yet, each with the stream time the oldest
    /// such message was read at. The workers have read such a partition
    /// only that far, whatever the consumer has: a trace whose next spans
    /// are still on their way to a worker is not complete.
    pub fn in_flight(&self) -> Vec<(i32, i64)> {
        let parts = self.partitions.lock();
        parts
            .iter()
            .filter_map(|(p, s)| Some((*p, *s.in_flight.keys().next()?)))
            .collect()
    }

    /// Releases one reference on each message.
    pub(super) fn release(&self, msgs: &[MsgRef]) {
        for m in msgs {
            self.adjust(*m, -1);
        }
    }

    /// The watermark of each partition that moved since the last call.
    pub fn take_commits(&self) -> Vec<(i32, i64)> {
        self.take_commits_of(|_| true)
    }

    /// Like `take_commits`, for the partitions `which` selects.
    pub fn take_commits_of(&self, which: impl Fn(i32) -> bool) -> Vec<(i32, i64)> {
        let mut parts = self.partitions.lock();
        let mut out = Vec::new();
        for (p, state) in parts.iter_mut().filter(|(p, _)| which(**p)) {
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

    /// The bytes of `msgs` that are still pending; messages of an ended
    /// lease count nothing.
    pub(super) fn bytes_of(&self, msgs: &[MsgRef]) -> usize {
        let parts = self.partitions.lock();
        msgs.iter()
            .filter_map(|m| {
                let state = parts.get(&m.partition).filter(|s| s.epoch == m.epoch)?;
                state.pending.get(&m.offset).map(|p| p.bytes)
            })
            .sum()
    }

    /// Bytes of messages read a second time for kept traces and not yet
    /// stored (`buffer.mode = "compact"`); the consumer pauses on them at
    /// `buffer.max_buffered_bytes`, as on pending messages in the spans mode.
    pub fn reread_bytes(&self) -> usize {
        self.reread_bytes.load(Ordering::Relaxed)
    }

    /// Messages still pending, over all partitions.
    pub fn pending_messages(&self) -> usize {
        self.partitions
            .lock()
            .values()
            .map(|s| s.pending.len())
            .sum()
    }

    /// The bytes of the pending messages, over all partitions: what the
    /// spans held anywhere in the pipeline keep alive, since a span is a
    /// slice of its message. The consumer pauses at `buffer.max_buffered_bytes`.
    pub fn pending_bytes(&self) -> usize {
        self.partitions
            .lock()
            .values()
            .map(|s| s.pending_bytes)
            .sum()
    }
}

/// The state of `msg`'s partition, unless its lease ended (the
/// partition's next owner re-reads the message).
fn current(parts: &mut HashMap<i32, PartitionState>, msg: MsgRef) -> Option<&mut PartitionState> {
    parts
        .get_mut(&msg.partition)
        .filter(|s| s.epoch == msg.epoch)
}

/// Adds `delta` references to the message at `offset`; one left with none
/// no longer holds the watermark back.
fn add_refs(state: &mut PartitionState, offset: i64, delta: i64) {
    let pending = state.pending.entry(offset).or_default();
    pending.refs += delta;
    if pending.refs <= 0 {
        let bytes = pending.bytes;
        state.pending.remove(&offset);
        state.pending_bytes -= bytes;
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

/// The count behind [`OffsetTracker::held_spans`]; only tickets and holds
/// move it.
#[derive(Debug, Default)]
pub(super) struct HeldSpans(AtomicI64);

impl HeldSpans {
    pub(super) fn add(&self, spans: usize) {
        self.0.fetch_add(spans as i64, Ordering::Relaxed);
    }

    pub(super) fn release(&self, spans: usize) {
        self.0.fetch_sub(spans as i64, Ordering::Relaxed);
    }

    fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: i32, o: i64) -> MsgRef {
        MsgRef {
            partition: p,
            offset: o,
            epoch: 1,
        }
    }

    #[test]
    fn watermark_waits_for_the_lowest_pending_message() {
        let t = OffsetTracker::new();
        t.register(m(0, 10), 1, 100, 0);
        t.register(m(0, 11), 1, 100, 0);
        t.register(m(0, 12), 0, 100, 0); // undecodable: nothing to wait for
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
    fn pending_bytes_follow_the_messages_still_held() {
        let t = OffsetTracker::new();
        t.register(m(0, 1), 2, 1_000, 0);
        t.register(m(0, 2), 0, 5_000, 0); // undecodable: holds nothing
        t.register(m(1, 1), 1, 300, 0);
        assert_eq!(t.pending_bytes(), 1_300);
        t.release(&[m(0, 1)]);
        assert_eq!(t.pending_bytes(), 1_300, "one reference left on 0/1");
        t.release(&[m(0, 1)]);
        assert_eq!(t.pending_bytes(), 300);
        t.forget(&[1]);
        assert_eq!(
            t.pending_bytes(),
            0,
            "a revoked partition's messages are re-read elsewhere"
        );
    }

    #[test]
    fn partitions_are_independent_and_can_be_forgotten() {
        let t = OffsetTracker::new();
        t.register(m(0, 5), 1, 100, 0);
        t.register(m(1, 7), 0, 100, 0);
        assert_eq!(t.take_commits(), vec![(1, 8)]);
        t.forget(&[0]);
        t.release(&[m(0, 5)]);
        assert_eq!(t.pending_messages(), 0);
        assert!(t.take_commits().is_empty());
    }

    #[test]
    fn a_new_lease_starts_the_partition_afresh() {
        let t = OffsetTracker::new();
        t.register(m(0, 5), 1, 100, 0);
        let later = MsgRef {
            epoch: 2,
            ..m(0, 3)
        };
        t.register(later, 0, 100, 0);
        // The old lease's pending message no longer holds the watermark, and
        // releasing it does nothing to the new lease.
        assert_eq!(t.take_commits(), vec![(0, 4)]);
        t.release(&[m(0, 5)]);
        assert_eq!(t.pending_messages(), 0);
    }
}
