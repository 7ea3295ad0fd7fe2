//! The kept traces waiting for their messages to be read again, and who
//! wants each message. Pure bookkeeping, no I/O.

use std::collections::HashMap;
use std::time::Instant;

use crate::handoff::KeptTrace;
use crate::model::{Lease, SpanRecord, TraceId};

/// A message of a partition: (partition, offset).
pub type At = (i32, i64);

/// A trace whose every message was read (or found gone), with when it
/// came.
pub type Ready = (KeptTrace, Instant);

#[derive(Default)]
pub struct Pending {
    next_key: u64,
    waiting: HashMap<u64, Waiting>,
    /// Who wants each message not read yet: (trace key, the lease the
    /// trace read it under). A message in here is with its partition's
    /// reader, or its answer is on the way.
    wanted: HashMap<At, Vec<(u64, Lease)>>,
}

struct Waiting {
    trace: KeptTrace,
    /// Its messages not read yet.
    left: usize,
    since: Instant,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Takes in a trace with spans to read. Returns the messages no trace
    /// wanted before it: those to ask the readers for.
    pub fn add(&mut self, trace: KeptTrace, now: Instant) -> Vec<At> {
        let key = self.next_key;
        self.next_key += 1;
        // A message listed twice (read again under a newer lease) is read
        // once, under its newest lease.
        let mut leases: HashMap<At, Lease> = HashMap::new();
        for m in trace.hold.msgs() {
            let lease = m.lease();
            leases
                .entry((m.partition, m.offset))
                .and_modify(|l| {
                    if lease.epoch > l.epoch {
                        *l = lease
                    }
                })
                .or_insert(lease);
        }
        let mut ask = Vec::new();
        for (at, lease) in &leases {
            let who = self.wanted.entry(*at).or_default();
            if who.is_empty() {
                ask.push(*at);
            }
            who.push((key, *lease));
        }
        ask.sort_unstable();
        self.waiting.insert(
            key,
            Waiting {
                trace,
                left: leases.len(),
                since: now,
            },
        );
        ask
    }

    /// A message was read: its spans go to the traces that want it and
    /// share their id, under the lease each read it with. Returns the
    /// traces now whole.
    pub fn read(&mut self, at: At, spans: Vec<(TraceId, SpanRecord)>) -> Vec<Ready> {
        let Some(who) = self.wanted.remove(&at) else {
            return Vec::new();
        };
        for (trace_id, mut span) in spans {
            let owner = who.iter().find(|(key, _)| {
                self.waiting
                    .get(key)
                    .is_some_and(|w| w.trace.trace_id == trace_id)
            });
            let Some(w) = owner.and_then(|(key, lease)| {
                span.lease = *lease;
                self.waiting.get_mut(key)
            }) else {
                continue;
            };
            w.trace.spans.push(span);
        }
        self.settle_message(&who)
    }

    /// Messages of a partition found gone from the topic: their traces go
    /// on without their spans. Returns the traces now whole.
    pub fn gone(&mut self, partition: i32, offsets: &[i64]) -> Vec<Ready> {
        let mut ready = Vec::new();
        for offset in offsets {
            if let Some(who) = self.wanted.remove(&(partition, *offset)) {
                ready.extend(self.settle_message(&who));
            }
        }
        ready
    }

    fn settle_message(&mut self, who: &[(u64, Lease)]) -> Vec<Ready> {
        let mut ready = Vec::new();
        for (key, _) in who {
            let Some(w) = self.waiting.get_mut(key) else {
                continue;
            };
            w.left = w.left.saturating_sub(1);
            if w.left == 0 {
                if let Some(w) = self.waiting.remove(key) {
                    ready.push((w.trace, w.since));
                }
            }
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MsgRef;

    fn m(partition: i32, offset: i64, epoch: u32) -> MsgRef {
        MsgRef {
            partition,
            offset,
            epoch,
        }
    }

    fn kept(id: u8, msgs: Vec<MsgRef>) -> KeptTrace {
        let spans_in_kafka = msgs.len();
        KeptTrace::held([id; 16], msgs, spans_in_kafka)
    }

    fn spans(ids: &[u8]) -> Vec<(TraceId, SpanRecord)> {
        ids.iter()
            .map(|i| ([*i; 16], SpanRecord::default()))
            .collect()
    }

    #[test]
    fn a_shared_message_is_asked_once_and_a_trace_goes_on_when_whole() {
        let now = Instant::now();
        let mut p = Pending::default();
        assert_eq!(
            p.add(kept(1, vec![m(0, 5, 1), m(0, 9, 1)]), now),
            vec![(0, 5), (0, 9)]
        );
        assert_eq!(
            p.add(kept(2, vec![m(0, 9, 1), m(1, 2, 1)]), now),
            vec![(1, 2)],
            "offset 9 was asked for already"
        );
        assert!(p.read((0, 5), spans(&[1, 7])).is_empty());
        let ready = p.read((0, 9), spans(&[2, 1, 9, 1]));
        assert_eq!(ready.len(), 1);
        let one = &ready[0].0;
        assert_eq!(one.trace_id, [1; 16]);
        assert_eq!(one.spans.len(), 3, "one from offset 5, two from 9");
        assert!(p.read((0, 9), spans(&[2])).is_empty(), "read once");
        let ready = p.read((1, 2), spans(&[2]));
        assert_eq!(ready[0].0.spans.len(), 2);
        assert!(p.is_empty());
    }

    #[test]
    fn spans_take_the_newest_lease_of_a_message_listed_twice() {
        let mut p = Pending::default();
        let ask = p.add(kept(1, vec![m(3, 4, 1), m(3, 4, 2)]), Instant::now());
        assert_eq!(ask, vec![(3, 4)]);
        let ready = p.read((3, 4), spans(&[1]));
        assert_eq!(ready.len(), 1, "one message, read once");
        assert_eq!(ready[0].0.spans[0].lease, m(3, 4, 2).lease());
    }

    #[test]
    fn gone_messages_let_their_traces_go_on_short() {
        let mut p = Pending::default();
        p.add(kept(1, vec![m(0, 1, 1), m(0, 2, 1)]), Instant::now());
        assert!(p.read((0, 1), spans(&[1])).is_empty());
        let ready = p.gone(0, &[2, 3]);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].0.spans.len(), 1);
        assert!(p.is_empty());
    }
}
