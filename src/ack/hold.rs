//! The values that carry acknowledgements through the pipeline, as Vector's
//! event finalizers do, so that no stage counts references by hand.
//!
//! A [`Ticket`] is one worker shard's share of a consumed message. The trace
//! buffer gives the share's spans and references to the [`Hold`]s of the
//! traces they belong to, then redeems the ticket. A hold goes with its
//! trace through the decision and the sinks, and is settled once, when the
//! trace is dropped by the policies or stored by the last sink.
//!
//! Dropping either value frees what its spans were counted for against the
//! memory budget, and nothing else: the references it held stay, so the
//! offsets of its messages cannot commit and the messages are read again
//! after a restart or by the partition's next owner. That is what a revoked
//! partition, a stopped sink and a shut-down worker need, and it makes a
//! forgotten settlement a stuck offset rather than a lost trace.

use std::sync::Arc;

use super::tracker::OffsetTracker;
use crate::model::{Lease, MsgRef, SpanRecord};

// Here rather than in `tracker.rs`, so that the tracker knows nothing of the
// values it hands out and the two files import one way only.
impl OffsetTracker {
    /// Takes in a consumed message of `bytes` bytes, read at stream time
    /// `seen_ms`, whose spans go to workers in shares of the given sizes:
    /// one ticket per share. A message with no share (undecodable, or no
    /// valid span) is done at once.
    pub fn receive(
        self: &Arc<Self>,
        msg: MsgRef,
        bytes: usize,
        seen_ms: i64,
        shares: impl ExactSizeIterator<Item = usize>,
    ) -> Vec<Ticket> {
        self.register(msg, shares.len() as i64, bytes, seen_ms);
        shares
            .map(|spans| {
                self.held.add(spans);
                Ticket::new(self.clone(), msg, seen_ms, spans)
            })
            .collect()
    }
}

/// One shard's share of a message: the message's reference for the shard,
/// and its spans, counted as held until they are given to traces' holds.
#[must_use = "a ticket is redeemed once its spans are in traces' holds"]
pub struct Ticket {
    tracker: Arc<OffsetTracker>,
    msg: MsgRef,
    /// The stream time the message was read at.
    seen_ms: i64,
    /// Spans of the share not yet given to a hold.
    spans: usize,
    /// References given to holds, counted in when the ticket is redeemed.
    given: i64,
    /// Whether it was redeemed: its references count in when it is
    /// dropped, which tells the tracker the share is done either way.
    redeemed: bool,
}

impl Ticket {
    fn new(tracker: Arc<OffsetTracker>, msg: MsgRef, seen_ms: i64, spans: usize) -> Self {
        Self {
            tracker,
            msg,
            seen_ms,
            spans,
            given: 0,
            redeemed: false,
        }
    }

    /// The message this share is of.
    pub fn msg(&self) -> MsgRef {
        self.msg
    }

    /// The stream time the message was read at.
    pub fn seen_ms(&self) -> i64 {
        self.seen_ms
    }

    /// An empty hold for a trace that this share opens.
    pub fn open(&self) -> Hold {
        Hold {
            tracker: self.tracker.clone(),
            msgs: Vec::new(),
            spans: 0,
        }
    }

    /// Gives `spans` of the share to `hold`, with a reference on the message
    /// unless the hold took one already. True when a reference was given.
    pub fn give(&mut self, hold: &mut Hold, spans: usize) -> bool {
        let spans = spans.min(self.spans);
        self.spans -= spans;
        hold.spans += spans;
        let took_ref = hold.msgs.last() != Some(&self.msg);
        if took_ref {
            // Most traces come in one or two messages: grow by half, not
            // double, from a first capacity of one (a `Vec` starts at four).
            if hold.msgs.len() == hold.msgs.capacity() {
                hold.msgs.reserve_exact((hold.msgs.len() / 2).max(1));
            }
            hold.msgs.push(self.msg);
            self.given += 1;
        }
        took_ref
    }

    /// Counts the references given in place of the ticket's own. Must come
    /// before any hold that took one is settled, or the message could look
    /// finished while a trace still holds it: the trace buffer redeems a
    /// ticket before it returns the traces the share completed.
    pub fn redeem(mut self) {
        self.redeemed = true;
    }
}

// By hand: the tracker is shared by the whole pipeline and not this value's to print.
impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("msg", &self.msg)
            .field("spans", &self.spans)
            .field("given", &self.given)
            .finish_non_exhaustive()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.tracker.held.release(self.spans);
        // Unredeemed, the share's own reference stays: the message is read
        // again.
        let refs = if self.redeemed { self.given - 1 } else { 0 };
        self.tracker.share_done(self.msg, self.seen_ms, refs);
    }
}

/// What one trace holds back: a reference on each message that fed it, and
/// its spans' share of the memory budget.
#[must_use = "a hold is settled when its trace is dropped by the policies or stored"]
pub struct Hold {
    tracker: Arc<OffsetTracker>,
    /// One reference on each, in the order the messages came.
    msgs: Vec<MsgRef>,
    /// How many spans are counted as held; the trace's span count.
    spans: usize,
}

impl Hold {
    /// A hold on messages of a tracker of its own, which nothing commits: for
    /// tests and benchmarks that build traces without a consumer.
    #[cfg(any(test, feature = "testkit"))]
    pub fn detached(msgs: Vec<MsgRef>) -> Self {
        Self {
            tracker: Arc::new(OffsetTracker::new()),
            msgs,
            spans: 0,
        }
    }

    /// The messages this trace holds back.
    pub fn msgs(&self) -> &[MsgRef] {
        &self.msgs
    }

    /// Keeps the spans and message references read under current leases,
    /// freeing the rest; returns how many spans went. The messages of the
    /// revoked partitions are re-read by their next owner, so their
    /// references are dropped, not returned.
    pub fn retain_current(
        &mut self,
        spans: &mut Vec<SpanRecord>,
        is_current: impl Fn(Lease) -> bool,
    ) -> usize {
        let before = spans.len();
        spans.retain(|s| is_current(s.lease));
        let gone = before - spans.len();
        self.release_revoked(gone, is_current);
        gone
    }

    /// Drops the references of revoked leases and frees `spans` of the
    /// count: [`Hold::retain_current`] once the spans are dropped, or for a
    /// trace kept as sketches, whose spans are gone already.
    pub fn release_revoked(&mut self, spans: usize, is_current: impl Fn(Lease) -> bool) {
        self.msgs.retain(|m| is_current(m.lease()));
        let freed = spans.min(self.spans);
        self.spans -= freed;
        self.tracker.held.release(freed);
    }

    /// The bytes of the messages this trace holds back: what reading them
    /// again costs.
    pub fn message_bytes(&self) -> usize {
        self.tracker.bytes_of(&self.msgs)
    }

    /// Counts `bytes` as in memory for this trace until the returned
    /// charge is dropped: the second read's copies of its messages.
    pub fn charge(&self, bytes: usize) -> Charge {
        self.tracker
            .reread_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        Charge {
            tracker: self.tracker.clone(),
            bytes,
        }
    }

    /// The trace is done with: dropped by the policies, or stored by the last
    /// sink. Its references go back, which lets its messages commit.
    pub fn settle(self) {
        self.tracker.release(&self.msgs);
    }
}

/// Bytes a kept trace's re-read messages take in memory, counted until
/// the trace (which carries the charge) is stored or given up.
pub struct Charge {
    tracker: Arc<OffsetTracker>,
    bytes: usize,
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.tracker
            .reread_bytes
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("msgs", &self.msgs)
            .field("spans", &self.spans)
            .finish_non_exhaustive()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.tracker.held.release(self.spans);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(offset: i64) -> MsgRef {
        MsgRef {
            partition: 0,
            offset,
            epoch: 1,
        }
    }

    fn span(epoch: u32) -> SpanRecord {
        SpanRecord {
            lease: Lease {
                partition: 0,
                epoch,
            },
            ..SpanRecord::default()
        }
    }

    #[test]
    fn a_settled_hold_lets_its_messages_commit_and_frees_its_spans() {
        let t = Arc::new(OffsetTracker::new());
        let mut tickets = t.receive(m(0), 100, 0, [2, 1].into_iter());
        let (b, a) = (tickets.pop().expect("two"), tickets.pop().expect("two"));
        assert_eq!(t.held_spans(), 3);
        let (mut a, mut b) = (a, b);
        let (mut x, mut y) = (a.open(), b.open());
        assert!(a.give(&mut x, 2));
        assert!(!a.give(&mut x, 0), "one reference per message per hold");
        assert!(b.give(&mut y, 1));
        a.redeem();
        b.redeem();
        assert!(t.take_commits().is_empty(), "two traces hold offset 0");
        x.settle();
        assert!(t.take_commits().is_empty(), "one trace still holds it");
        assert_eq!(t.held_spans(), 1);
        y.settle();
        assert_eq!(t.take_commits(), vec![(0, 1)]);
        assert_eq!(t.held_spans(), 0);
    }

    #[test]
    fn dropping_frees_memory_but_never_an_offset() {
        let t = Arc::new(OffsetTracker::new());
        let mut ticket = t.receive(m(0), 100, 0, [3].into_iter()).pop().expect("one");
        let mut hold = ticket.open();
        ticket.give(&mut hold, 2);
        ticket.redeem();
        assert_eq!(t.held_spans(), 2, "the span no trace took is freed");
        drop(hold);
        assert_eq!(t.held_spans(), 0);
        assert!(
            t.take_commits().is_empty(),
            "a dropped hold is re-read, not committed"
        );

        let unsent = t.receive(m(1), 100, 0, [4].into_iter());
        drop(unsent);
        assert_eq!(t.held_spans(), 0);
        assert!(
            t.take_commits().is_empty(),
            "a dropped ticket holds offset 1 too"
        );
    }

    #[test]
    fn a_partition_has_spans_in_flight_until_every_share_is_redeemed_or_dropped() {
        let t = Arc::new(OffsetTracker::new());
        let mut tickets = t.receive(m(0), 100, 5_000, [2, 1].into_iter());
        t.receive(m(1), 100, 6_000, [1].into_iter())
            .pop()
            .expect("one")
            .redeem();
        assert_eq!(t.in_flight(), vec![(0, 5_000)], "read at 5 s, not at 6 s");
        let mut first = tickets.remove(0);
        let mut hold = first.open();
        first.give(&mut hold, 2);
        first.redeem();
        assert_eq!(
            t.in_flight(),
            vec![(0, 5_000)],
            "one share still on its way"
        );
        drop(tickets);
        assert!(t.in_flight().is_empty(), "a dropped share is done too");
        assert!(
            t.take_commits().is_empty(),
            "the dropped share's reference stays: the message is read again"
        );
        hold.settle();
        assert!(t.take_commits().is_empty());
    }

    #[test]
    fn a_message_with_no_share_is_done_at_once() {
        let t = Arc::new(OffsetTracker::new());
        assert!(t.receive(m(0), 100, 0, std::iter::empty()).is_empty());
        assert_eq!(t.take_commits(), vec![(0, 1)]);
    }

    #[test]
    fn a_charge_counts_re_read_bytes_until_dropped() {
        let t = Arc::new(OffsetTracker::new());
        let mut ticket = t.receive(m(0), 700, 0, [1].into_iter()).pop().expect("one");
        let mut hold = ticket.open();
        ticket.give(&mut hold, 1);
        ticket.redeem();
        assert_eq!(hold.message_bytes(), 700);
        let charge = hold.charge(hold.message_bytes());
        assert_eq!(t.reread_bytes(), 700);
        drop(charge);
        assert_eq!(t.reread_bytes(), 0);
        hold.settle();
    }

    #[test]
    fn retaining_current_leases_frees_the_rest() {
        let t = Arc::new(OffsetTracker::new());
        let mut ticket = t.receive(m(0), 100, 0, [3].into_iter()).pop().expect("one");
        let mut hold = ticket.open();
        ticket.give(&mut hold, 3);
        ticket.redeem();
        let mut spans = vec![span(1), span(2), span(2)];
        let gone = hold.retain_current(&mut spans, |l| l.epoch == 2);
        assert_eq!((gone, spans.len()), (1, 2));
        assert!(hold.msgs().is_empty(), "offset 0 was read under epoch 1");
        assert_eq!(t.held_spans(), 2);
    }
}
