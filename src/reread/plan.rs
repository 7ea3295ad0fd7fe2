//! Which messages one batch of kept traces needs read again, and where the
//! read stands on each partition. Pure bookkeeping, no I/O, so the reader's
//! choices (decode, skip, jump ahead, done) are tested without a broker.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::handoff::KeptTrace;
use crate::model::{Lease, SpanRecord, TraceId};

/// From how many unneeded messages before the next needed one a new round
/// (a fresh consumer, assigned there) is cheaper than reading through
/// them. Reading through costs only bytes (skipped messages are not
/// decoded); a round costs a connection and a fetch round trip.
pub const MAX_READ_THROUGH: i64 = 512;

/// One batch's needs.
#[derive(Debug)]
pub struct Plan {
    /// Needed offsets not read yet, per partition. A set rather than a
    /// cursor: a message prefetched for an earlier batch may still come
    /// after a new assignment, out of order, and must not make a needed
    /// offset look passed.
    remaining: BTreeMap<i32, BTreeSet<i64>>,
    /// Who wants each message: (trace index, the lease it was read under).
    wanted: HashMap<(i32, i64), Vec<(usize, Lease)>>,
    /// How far before its next needed offset a partition's next round
    /// starts: a broker may serve a fetch from the first record batch that
    /// begins at or after the offset asked for rather than the one holding
    /// it (Tansu does), which passes over a message in the middle of a
    /// batch. Grows by eight each time that happens.
    rewind: HashMap<i32, i64>,
    /// The partitions' low watermarks, where known: no round starts below.
    low: HashMap<i32, i64>,
}

/// A rewind past which a needed message that never comes counts as gone.
const MAX_REWIND: i64 = 1 << 21;

/// What to do with a message the reader got.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Not needed, or read already.
    Skip,
    /// Needed: decode it and give its spans to these traces.
    Decode(Vec<(usize, Lease)>),
}

impl Plan {
    /// The messages `traces` hold, except of traces with nothing to read.
    pub fn new(traces: &[KeptTrace]) -> Self {
        let mut remaining: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
        let mut wanted: HashMap<(i32, i64), Vec<(usize, Lease)>> = HashMap::new();
        for (i, t) in traces.iter().enumerate() {
            if t.spans_in_kafka == 0 {
                continue;
            }
            for m in t.hold.msgs() {
                remaining.entry(m.partition).or_default().insert(m.offset);
                wanted
                    .entry((m.partition, m.offset))
                    .or_default()
                    .push((i, m.lease()));
            }
        }
        Self {
            remaining,
            wanted,
            rewind: HashMap::new(),
            low: HashMap::new(),
        }
    }

    /// Whether every needed message was read (or found gone).
    pub fn is_done(&self) -> bool {
        self.remaining.values().all(BTreeSet::is_empty)
    }

    /// Where each partition not yet done starts its next round: its first
    /// needed offset, less its rewind, not below its low watermark.
    pub fn positions(&self) -> Vec<(i32, i64)> {
        self.remaining
            .keys()
            .filter_map(|p| {
                let next = self.next_needed(*p)?;
                let back = self.rewind.get(p).copied().unwrap_or(0);
                let low = self.low.get(p).copied().unwrap_or(0);
                Some((*p, (next - back).max(low).min(next)))
            })
            .collect()
    }

    /// The read of `partition` came past its next needed offset without
    /// delivering it: the next round starts further back. Returns how many
    /// needed messages were given up as gone (after the widest rewind).
    pub fn passed(&mut self, partition: i32) -> usize {
        let back = self.rewind.entry(partition).or_insert(0);
        *back = (*back * 8).max(8);
        if *back <= MAX_REWIND {
            return 0;
        }
        *back = 0;
        let Some(next) = self.next_needed(partition) else {
            return 0;
        };
        self.gone_below(partition, next + 1)
    }

    /// Records a partition's low watermark and gives up on the needed
    /// offsets below it; returns how many.
    pub fn set_low(&mut self, partition: i32, low: i64) -> usize {
        self.low.insert(partition, low);
        self.gone_below(partition, low)
    }

    pub fn next_needed(&self, partition: i32) -> Option<i64> {
        self.remaining.get(&partition)?.first().copied()
    }

    /// Takes in a message at `offset` of `partition`.
    pub fn on_message(&mut self, partition: i32, offset: i64) -> Step {
        let needed = self
            .remaining
            .get_mut(&partition)
            .is_some_and(|left| left.remove(&offset));
        if !needed {
            return Step::Skip;
        }
        let who = self.wanted.remove(&(partition, offset)).unwrap_or_default();
        Step::Decode(who)
    }

    /// Gives up on needed offsets of `partition` below `low`: the topic no
    /// longer holds them (retention). Returns how many.
    pub fn gone_below(&mut self, partition: i32, low: i64) -> usize {
        let Some(left) = self.remaining.get_mut(&partition) else {
            return 0;
        };
        let kept = left.split_off(&low);
        std::mem::replace(left, kept).len()
    }
}

/// Gives each decoded span to the traces that want its message and its
/// trace id, under the lease the trace read the message with. Returns how
/// many spans were given.
pub fn pick(
    traces: &mut [KeptTrace],
    who: &[(usize, Lease)],
    spans: Vec<(TraceId, SpanRecord)>,
) -> usize {
    let mut given = 0;
    for (trace_id, mut span) in spans {
        let Some(&(i, lease)) = who
            .iter()
            .find(|(i, _)| traces.get(*i).is_some_and(|t| t.trace_id == trace_id))
        else {
            continue;
        };
        span.lease = lease;
        traces[i].spans.push(span);
        given += 1;
    }
    given
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::ack::Hold;
    use crate::model::{MsgRef, SamplingReason};

    fn m(partition: i32, offset: i64) -> MsgRef {
        MsgRef {
            partition,
            offset,
            epoch: 3,
        }
    }

    fn kept(id: u8, msgs: Vec<MsgRef>, spans_in_kafka: usize) -> KeptTrace {
        KeptTrace {
            trace_id: [id; 16],
            spans: Vec::new(),
            spans_in_kafka,
            charge: None,
            reason: SamplingReason::Error,
            rule_id: None,
            sample_rate: 1.0,
            hold: Hold::detached(msgs),
            decided_at: SystemTime::now(),
        }
    }

    fn span() -> SpanRecord {
        SpanRecord::default()
    }

    #[test]
    fn needed_messages_are_decoded_once_and_the_rest_skipped() {
        let traces = vec![
            kept(1, vec![m(0, 5), m(0, 9)], 3),
            kept(2, vec![m(0, 9), m(1, 2)], 2),
            kept(3, vec![m(0, 7)], 0),
        ];
        let mut plan = Plan::new(&traces);
        assert_eq!(plan.positions(), vec![(0, 5), (1, 2)]);
        assert_eq!(
            plan.on_message(0, 5),
            Step::Decode(vec![(0, m(0, 5).lease())])
        );
        assert_eq!(
            plan.on_message(0, 7),
            Step::Skip,
            "held only by a trace with its spans at hand"
        );
        let Step::Decode(who) = plan.on_message(0, 9) else {
            panic!("offset 9 is needed")
        };
        assert_eq!(who.len(), 2, "two traces share offset 9");
        assert_eq!(plan.on_message(0, 9), Step::Skip, "decoded once");
        assert_eq!(plan.next_needed(0), None, "partition 0 is done");
        assert_eq!(plan.next_needed(1), Some(2));
        assert!(!plan.is_done());
        assert_eq!(plan.on_message(0, 10), Step::Skip, "past the plan");
        assert!(matches!(plan.on_message(1, 2), Step::Decode(_)));
        assert!(plan.is_done());
    }

    #[test]
    fn a_passed_offset_rewinds_the_next_round_and_is_given_up_at_last() {
        let traces = vec![kept(1, vec![m(0, 100), m(0, 5_000_000)], 2)];
        let mut plan = Plan::new(&traces);
        assert_eq!(plan.positions(), vec![(0, 100)]);
        assert_eq!(plan.passed(0), 0);
        assert_eq!(plan.positions(), vec![(0, 92)], "eight back");
        assert_eq!(plan.passed(0), 0);
        assert_eq!(plan.positions(), vec![(0, 36)]);
        assert_eq!(plan.set_low(0, 50), 0);
        assert_eq!(
            plan.positions(),
            vec![(0, 50)],
            "not below the low watermark"
        );
        let mut gone = 0;
        for _ in 0..10 {
            gone += plan.passed(0);
        }
        assert_eq!(gone, 1, "offset 100 never came");
        assert_eq!(plan.next_needed(0), Some(5_000_000));
    }

    #[test]
    fn offsets_under_the_low_watermark_are_given_up() {
        let traces = vec![kept(1, vec![m(2, 10), m(2, 20), m(2, 30)], 3)];
        let mut plan = Plan::new(&traces);
        assert_eq!(plan.gone_below(2, 25), 2);
        assert_eq!(plan.positions(), vec![(2, 30)]);
        assert_eq!(plan.gone_below(7, 25), 0, "a partition not in the plan");
    }

    #[test]
    fn spans_go_to_the_trace_of_their_id_under_its_lease() {
        let mut traces = vec![kept(1, vec![m(0, 1)], 2), kept(2, vec![m(0, 1)], 1)];
        let lease = m(0, 1).lease();
        let spans = vec![
            ([1; 16], span()),
            ([2; 16], span()),
            ([9; 16], span()),
            ([1; 16], span()),
        ];
        let given = pick(&mut traces, &[(0, lease), (1, lease)], spans);
        assert_eq!(given, 3, "the span of trace 9 is no one's");
        assert_eq!((traces[0].spans.len(), traces[1].spans.len()), (2, 1));
        assert!(traces[0].spans.iter().all(|s| s.lease == lease));
    }
}
