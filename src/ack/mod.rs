//! Acknowledgements: what tracks a Kafka message from the moment it is read
//! until its offset may be committed. Kafka is the write-ahead log.
//!
//! Part of the shared core, like Vector's event finalization: the consumer
//! registers messages, the deciding stage and the storage writer return their
//! references, and the committer reads the watermarks. No stage owns it.
//!
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
//!
//! Every message also carries the *lease* it was read under: its partition and
//! the epoch of this instance's ownership of it. A revoked partition's lease
//! ends at once, and everything read under it (buffered spans, references,
//! kept spans not yet committed) is dropped, because the next owner re-reads
//! those messages from the committed offset.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

mod clock;
pub use clock::{StreamClock, IDLE_AFTER, LIVE_WITHIN};

use crate::model::{KeptTrace, Lease, MsgRef, SpanRecord};

/// The partitions this instance owns now, each with the epoch of its lease.
///
/// Read by the consumer (to stamp messages), by the workers (to purge spans
/// of revoked partitions) and by the storage writer (to drop them from a
/// batch, and to name the lease owner in the snapshot summary).
#[derive(Debug)]
pub struct Assignments {
    /// A fresh id per process, so a restarted selector never mistakes an
    /// earlier incarnation's commits for its own.
    instance: String,
    owned: Mutex<HashMap<i32, u32>>,
    next_epoch: AtomicU32,
    revocations: AtomicU64,
}

impl Default for Assignments {
    fn default() -> Self {
        Self {
            instance: uuid::Uuid::now_v7().simple().to_string(),
            owned: Mutex::new(HashMap::new()),
            next_epoch: AtomicU32::new(1),
            revocations: AtomicU64::new(0),
        }
    }
}

impl Assignments {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a new lease on each partition.
    pub fn assign(&self, partitions: &[i32]) {
        let mut owned = self.owned.lock();
        for p in partitions {
            owned.insert(*p, self.next_epoch.fetch_add(1, Ordering::Relaxed));
        }
    }

    /// Ends the leases on these partitions.
    pub fn revoke(&self, partitions: &[i32]) {
        let mut owned = self.owned.lock();
        for p in partitions {
            owned.remove(p);
        }
        self.revocations.fetch_add(1, Ordering::Release);
    }

    /// How many partitions this instance owns now.
    pub fn count(&self) -> usize {
        self.owned.lock().len()
    }

    /// The current lease on a partition, if this instance owns it.
    pub fn lease(&self, partition: i32) -> Option<Lease> {
        self.owned
            .lock()
            .get(&partition)
            .map(|&epoch| Lease { partition, epoch })
    }

    pub fn is_current(&self, lease: Lease) -> bool {
        self.owned.lock().get(&lease.partition) == Some(&lease.epoch)
    }

    /// The current leases, for checking many spans under one lock.
    pub fn snapshot(&self) -> CurrentLeases {
        CurrentLeases(self.owned.lock().clone())
    }

    /// Counts revocations, so that holders of leases know when to look again.
    pub fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }

    /// How a lease is named in snapshot summaries: `instance/epoch`.
    pub fn owner_token(&self, lease: Lease) -> String {
        format!("{}/{}", self.instance, lease.epoch)
    }
}

/// The leases owned at one moment.
#[derive(Debug, Clone, Default)]
pub struct CurrentLeases(HashMap<i32, u32>);

impl CurrentLeases {
    pub fn contains(&self, lease: Lease) -> bool {
        self.0.get(&lease.partition) == Some(&lease.epoch)
    }
}

/// The acknowledgement state of one selector, shared by its stages: the
/// consumer registers messages and stamps leases, the deciding stage and the
/// storage writer return references and held spans, the committer and the
/// rebalance callback read watermarks and wait for the commit gate.
#[derive(Debug, Clone, Default)]
pub struct Acks {
    pub tracker: Arc<OffsetTracker>,
    pub assignments: Arc<Assignments>,
    pub gate: Arc<CommitGate>,
    pub held: Arc<HeldSpans>,
    /// Stream time: the consumer moves it, the workers complete traces by it.
    pub clock: Arc<StreamClock>,
    /// Bytes of the Arrow rows the writer is building from kept spans: what
    /// they expand to beyond their messages, counted against
    /// `buffer.max_buffered_bytes` with the messages' own bytes.
    pub building_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

/// Keeps an Iceberg commit and a partition revocation from overlapping.
///
/// The writer enters the gate after dropping spans of revoked leases and
/// leaves it when its commit has finished; the rebalance callback ends the
/// leases first, then waits for the gate to be free. So once the callback
/// returns, no commit of this instance can contain a span of the revoked
/// partitions that the next owner might also store.
#[derive(Debug, Default)]
pub struct CommitGate {
    busy: Mutex<bool>,
    freed: Condvar,
}

impl CommitGate {
    /// Runs `check` and marks the gate busy, atomically with respect to `wait_free`.
    pub fn enter<T>(&self, check: impl FnOnce() -> T) -> T {
        let mut busy = self.busy.lock();
        let out = check();
        *busy = true;
        out
    }

    pub fn leave(&self) {
        *self.busy.lock() = false;
        self.freed.notify_all();
    }

    /// Blocks until no commit is running. False when `timeout` passed first.
    pub fn wait_free(&self, timeout: Duration) -> bool {
        let mut busy = self.busy.lock();
        let deadline = std::time::Instant::now() + timeout;
        while *busy {
            if self.freed.wait_until(&mut busy, deadline).timed_out() {
                return !*busy;
            }
        }
        true
    }
}

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
    /// The lease epoch the state belongs to.
    epoch: u32,
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

    /// Records a consumed message of `bytes` bytes with `tickets`
    /// outstanding references. The first message of a new lease starts the
    /// partition afresh.
    pub fn register(&self, msg: MsgRef, tickets: i64, bytes: usize) {
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
            let pending = state.pending.entry(msg.offset).or_default();
            pending.refs += tickets;
            if pending.bytes == 0 {
                pending.bytes = bytes;
                state.pending_bytes += bytes;
            }
        }
    }

    /// Adds `delta` references to a registered message (negative to release).
    pub fn adjust(&self, msg: MsgRef, delta: i64) {
        if delta == 0 {
            return;
        }
        let mut parts = self.partitions.lock();
        let Some(state) = parts
            .get_mut(&msg.partition)
            .filter(|s| s.epoch == msg.epoch)
        else {
            return; // The lease ended; the partition's next owner re-reads the message.
        };
        let pending = state.pending.entry(msg.offset).or_default();
        pending.refs += delta;
        if pending.refs <= 0 {
            let bytes = pending.bytes;
            state.pending.remove(&msg.offset);
            state.pending_bytes -= bytes;
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

fn watermark(state: &PartitionState) -> i64 {
    state
        .pending
        .keys()
        .next()
        .copied()
        .unwrap_or(state.next_offset)
}

/// Spans held in memory anywhere in the pipeline: from the moment the
/// consumer hands them to a worker until they are dropped, committed to the
/// table, or given up with a revoked partition. The consumer pauses at
/// `buffer.max_buffered_spans`.
#[derive(Debug, Default)]
pub struct HeldSpans(AtomicI64);

impl HeldSpans {
    pub fn add(&self, spans: usize) {
        self.0.fetch_add(spans as i64, Ordering::Relaxed);
    }

    pub fn release(&self, spans: usize) {
        self.0.fetch_sub(spans as i64, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Keeps the spans and message references of current leases; returns how
/// many spans were removed.
pub fn retain_current(
    spans: &mut Vec<SpanRecord>,
    msgs: &mut Vec<MsgRef>,
    is_current: impl Fn(Lease) -> bool,
) -> usize {
    let before = spans.len();
    spans.retain(|s| is_current(s.lease));
    msgs.retain(|m| is_current(m.lease()));
    before - spans.len()
}

/// Where a sink hands a kept trace once it holds it safely: the next sink
/// of the chain, or, after the last one, the acknowledgements, which lets
/// the trace's Kafka messages commit. A trace that never gets here (a
/// sink that failed or stopped) stays uncommitted and is read again.
#[derive(Debug, Clone)]
pub enum Onward {
    Next(tokio::sync::mpsc::UnboundedSender<KeptTrace>),
    Release(Acks),
}

impl Onward {
    pub fn pass(&self, kept: KeptTrace) {
        match self {
            // A closed channel means the next sink is gone: the trace is
            // dropped unreleased, so its messages are read again.
            Onward::Next(tx) => drop(tx.send(kept)),
            Onward::Release(acks) => {
                acks.tracker.release(&kept.msgs);
                acks.held.release(kept.spans.len());
            }
        }
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
        t.register(m(0, 10), 1, 100);
        t.register(m(0, 11), 1, 100);
        t.register(m(0, 12), 0, 100); // undecodable: nothing to wait for
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
        t.register(m(0, 1), 2, 1_000);
        t.register(m(0, 2), 0, 5_000); // undecodable: holds nothing
        t.register(m(1, 1), 1, 300);
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
        t.register(m(0, 5), 1, 100);
        t.register(m(1, 7), 0, 100);
        assert_eq!(t.take_commits(), vec![(1, 8)]);
        t.forget(&[0]);
        t.release(&[m(0, 5)]);
        assert_eq!(t.pending_messages(), 0);
        assert!(t.take_commits().is_empty());
    }

    #[test]
    fn a_new_lease_starts_the_partition_afresh() {
        let t = OffsetTracker::new();
        t.register(m(0, 5), 1, 100);
        let later = MsgRef {
            epoch: 2,
            ..m(0, 3)
        };
        t.register(later, 0, 100);
        // The old lease's pending message no longer holds the watermark, and
        // releasing it does nothing to the new lease.
        assert_eq!(t.take_commits(), vec![(0, 4)]);
        t.release(&[m(0, 5)]);
        assert_eq!(t.pending_messages(), 0);
    }

    #[test]
    fn leases_end_on_revoke_and_never_repeat() {
        let a = Assignments::new();
        a.assign(&[0, 1]);
        let l0 = a.lease(0).expect("owned");
        assert!(a.is_current(l0));
        let before = a.revocations();
        a.revoke(&[0]);
        assert!(a.revocations() > before);
        assert!(!a.is_current(l0));
        assert!(a.lease(1).is_some());
        a.assign(&[0]);
        let again = a.lease(0).expect("owned again");
        assert_ne!(again, l0, "a new lease has a new epoch");
        assert!(a.owner_token(again).ends_with(&format!("/{}", again.epoch)));
    }

    #[test]
    fn the_gate_waits_for_a_running_commit() {
        let gate = std::sync::Arc::new(CommitGate::default());
        assert!(gate.wait_free(Duration::from_millis(1)));
        gate.enter(|| ());
        assert!(
            !gate.wait_free(Duration::from_millis(20)),
            "a commit is running"
        );
        let g = gate.clone();
        let t = std::thread::spawn(move || g.wait_free(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        gate.leave();
        assert!(t.join().expect("thread"));
    }
}
