//! Acknowledgements: what tracks a Kafka message from the moment it is read
//! until its offset may be committed. Kafka is the write-ahead log.
//!
//! Part of the shared core, like Vector's event finalization: the consumer
//! receives messages, the deciding stage and the sinks settle what they are
//! done with, and the committer reads the watermarks. No stage owns it.
//!
//! A message is "pending" while any trace it fed is undecided, or decided as
//! kept but not yet committed to Iceberg. The committable offset of a partition
//! is the lowest pending offset, or one past the highest offset seen when
//! nothing is pending. Committing that and nothing more means a crash loses no
//! kept trace: everything after the watermark is read again on restart.
//!
//! Accounting is by references, and no stage counts them by hand: they
//! travel in values. The consumer turns a message into one [`Ticket`] per
//! worker shard; the shard's trace buffer redeems it for the references its
//! traces took, each kept in the trace's [`Hold`]; the hold goes with the
//! decided trace and is settled when the policies drop the trace or the last
//! sink has stored it. A message whose count reaches zero is done. Dropping
//! a ticket or a hold frees the memory its spans were counted for and never
//! an offset: what was not settled is read again.
//!
//! Every message also carries the *lease* it was read under: its partition and
//! the epoch of this instance's ownership of it. A revoked partition's lease
//! ends at once, and everything read under it (buffered spans, references,
//! kept spans not yet committed) is dropped, because the next owner re-reads
//! those messages from the committed offset.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

mod clock;
mod hold;
mod tracker;
pub use clock::{StreamClock, IDLE_AFTER, LIVE_WITHIN};
pub use hold::{Charge, Hold, Ticket};
pub use tracker::OffsetTracker;

use crate::model::Lease;

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
/// consumer receives messages and stamps leases, the deciding stage and the
/// sinks settle the holds of the traces they are done with, the committer
/// and the rebalance callback read watermarks and wait for the commit gate.
#[derive(Debug, Clone, Default)]
pub struct Acks {
    pub tracker: Arc<OffsetTracker>,
    pub assignments: Arc<Assignments>,
    pub gate: Arc<CommitGate>,
    /// Stream time: the consumer moves it, the workers complete traces by it.
    pub clock: Arc<StreamClock>,
    /// Bytes of the Arrow rows the writer is building from kept spans: what
    /// they expand to beyond their messages, counted against
    /// `buffer.max_buffered_bytes` with the messages' own bytes.
    pub building_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

impl Acks {
    /// Stream time at wall time `now_ms` ([`StreamClock::watermark`]) as
    /// far as the workers have read: a partition with messages still on
    /// their way to the workers counts only up to the oldest of them.
    pub fn watermark(&self, now_ms: i64) -> Option<i64> {
        let in_flight = self.tracker.in_flight();
        self.clock.watermark(now_ms, &in_flight)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
