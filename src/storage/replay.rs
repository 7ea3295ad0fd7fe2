//! Replay protection: a span re-read from Kafka is never stored twice.
//!
//! Kafka offsets are committed after the Iceberg commit, so a crash between
//! the two, or a partition changing owner, makes the next owner re-read
//! messages whose kept spans are already in the table. As the Iceberg Kafka
//! Connect sink does, every snapshot records in its summary which Kafka
//! offsets it covers, here per partition together with the lease (instance
//! and epoch) that read them:
//!
//! ```json
//! {"topic": "otel-traces-raw",
//!  "partitions": {"3": {"next_offset": 1234, "owner": "0193…/7"}}}
//! ```
//!
//! A message below the highest offset that *another* lease committed for its
//! partition may already be stored. Only traces holding such messages are
//! checked against the table, by trace id and start-time range, so the check
//! costs nothing in steady state and touches only the replayed window after a
//! restart or a rebalance.

use crate::table::columns as column;
use std::collections::{BTreeMap, HashMap, HashSet};

use futures::TryStreamExt;
use iceberg::expr::{Predicate, Reference};
use iceberg::spec::Datum;
use iceberg::table::Table;

use crate::ack::Assignments;
use crate::handoff::KeptTrace;
use crate::model::TraceId;

use crate::table::offsets;
pub use crate::table::offsets::{OffsetsSummary, PartitionOffsets, SNAPSHOT_KAFKA_OFFSETS_KEY};

/// The summary value for a batch of kept traces.
pub fn offsets_summary(topic: &str, traces: &[KeptTrace], assignments: &Assignments) -> String {
    let mut partitions: BTreeMap<i32, PartitionOffsets> = BTreeMap::new();
    for m in traces.iter().flat_map(|t| t.hold.msgs().iter()) {
        let entry = partitions
            .entry(m.partition)
            .or_insert_with(|| PartitionOffsets {
                next_offset: m.offset + 1,
                owner: assignments.owner_token(m.lease()),
            });
        entry.next_offset = entry.next_offset.max(m.offset + 1);
    }
    let summary = OffsetsSummary {
        topic: topic.to_string(),
        partitions,
    };
    serde_json::to_string(&summary).unwrap_or_default()
}

/// Highest committed offsets per (partition, owner), read incrementally from
/// the table's snapshots (which never change once written).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen_snapshots: HashSet<i64>,
    high: HashMap<(i32, String), i64>,
}

impl ReplayGuard {
    /// Per partition, the offset below which other leases may have stored
    /// spans of `topic`.
    pub fn foreign_high(
        &mut self,
        table: &Table,
        topic: &str,
        assignments: &Assignments,
    ) -> HashMap<i32, i64> {
        for snapshot in table.metadata().snapshots() {
            if !self.seen_snapshots.insert(snapshot.snapshot_id()) {
                continue;
            }
            if let Some(raw) = snapshot
                .summary()
                .additional_properties
                .get(SNAPSHOT_KAFKA_OFFSETS_KEY)
            {
                offsets::add_summary(&mut self.high, raw, topic);
            }
        }
        // What expired snapshots recorded lives on in the checkpoint.
        offsets::add_checkpoint(&mut self.high, table.metadata(), topic);
        let mut out: HashMap<i32, i64> = HashMap::new();
        for ((p, owner), next) in &self.high {
            let mine = assignments
                .lease(*p)
                .is_some_and(|l| assignments.owner_token(l) == *owner);
            if !mine {
                let e = out.entry(*p).or_insert(*next);
                *e = (*e).max(*next);
            }
        }
        out
    }
}

/// Whether a trace holds a message that another lease may already have stored.
pub fn is_replayed(trace: &KeptTrace, foreign_high: &HashMap<i32, i64>) -> bool {
    trace.hold.msgs().iter().any(|m| {
        foreign_high
            .get(&m.partition)
            .is_some_and(|h| m.offset < *h)
    })
}

/// `(trace id, span id)` of every stored span of these traces.
pub async fn stored_spans(
    table: &Table,
    traces: &[&KeptTrace],
) -> iceberg::Result<HashSet<(TraceId, Vec<u8>)>> {
    let mut out = HashSet::new();
    if traces.is_empty() || table.metadata().current_snapshot().is_none() {
        return Ok(out);
    }
    let starts = traces
        .iter()
        .flat_map(|t| t.spans.iter())
        .map(|s| (s.start_unix_nano / 1000) as i64);
    let (Some(min), Some(max)) = (starts.clone().min(), starts.max()) else {
        return Ok(out);
    };
    let ids: Vec<Datum> = traces
        .iter()
        .map(|t| Datum::string(hex::encode(t.trace_id)))
        .collect();
    // The start-time bounds prune day partitions and data files; the ids
    // prune row groups and rows.
    let predicate: Predicate = Reference::new(column::TRACE_ID)
        .is_in(ids)
        .and(
            Reference::new(column::START_TIME)
                .greater_than_or_equal_to(Datum::timestamptz_micros(min)),
        )
        .and(
            Reference::new(column::START_TIME)
                .less_than_or_equal_to(Datum::timestamptz_micros(max)),
        );
    let wanted: HashSet<String> = traces.iter().map(|t| hex::encode(t.trace_id)).collect();
    let scan = table
        .scan()
        .select([column::TRACE_ID, column::SPAN_ID])
        .with_filter(predicate)
        .build()?;
    let batches: Vec<_> = scan.to_arrow().await?.try_collect().await?;
    for batch in batches {
        let (Some(tids), Some(sids)) = (
            string_column(&batch, column::TRACE_ID),
            string_column(&batch, column::SPAN_ID),
        ) else {
            continue;
        };
        for i in 0..batch.num_rows() {
            let (Some(t), Some(s)) = (tids(i), sids(i)) else {
                continue;
            };
            if !wanted.contains(t) {
                continue;
            }
            let (Ok(tid), Ok(sid)) = (hex::decode(t), hex::decode(s)) else {
                continue;
            };
            if let Ok(tid) = TraceId::try_from(tid.as_slice()) {
                out.insert((tid, sid));
            }
        }
    }
    Ok(out)
}

/// A string column by name, as a row accessor; any Arrow string layout.
fn string_column<'a>(
    batch: &'a arrow_array::RecordBatch,
    name: &str,
) -> Option<impl Fn(usize) -> Option<&'a str> + 'a> {
    use arrow_array::{Array, LargeStringArray, StringArray, StringViewArray};
    let col = batch.column_by_name(name)?;
    let any = col.as_any();
    let get: Box<dyn Fn(usize) -> Option<&'a str> + 'a> =
        if let Some(a) = any.downcast_ref::<StringArray>() {
            Box::new(move |i| (!a.is_null(i)).then(|| a.value(i)))
        } else if let Some(a) = any.downcast_ref::<LargeStringArray>() {
            Box::new(move |i| (!a.is_null(i)).then(|| a.value(i)))
        } else if let Some(a) = any.downcast_ref::<StringViewArray>() {
            Box::new(move |i| (!a.is_null(i)).then(|| a.value(i)))
        } else {
            return None;
        };
    Some(get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MsgRef;

    fn kept(msgs: Vec<MsgRef>) -> KeptTrace {
        KeptTrace::held([1; 16], msgs, 0)
    }

    fn m(partition: i32, offset: i64, epoch: u32) -> MsgRef {
        MsgRef {
            partition,
            offset,
            epoch,
        }
    }

    #[test]
    fn summary_names_the_highest_offset_and_owner_per_partition() {
        let a = Assignments::new();
        a.assign(&[0, 2]);
        let e0 = a.lease(0).expect("lease").epoch;
        let e2 = a.lease(2).expect("lease").epoch;
        let traces = vec![
            kept(vec![m(0, 5, e0), m(0, 9, e0)]),
            kept(vec![m(2, 3, e2)]),
        ];
        let raw = offsets_summary("t", &traces, &a);
        let parsed: OffsetsSummary = serde_json::from_str(&raw).expect("json");
        assert_eq!(parsed.topic, "t");
        assert_eq!(parsed.partitions[&0].next_offset, 10);
        assert_eq!(parsed.partitions[&2].next_offset, 4);
        assert_eq!(
            parsed.partitions[&0].owner,
            a.owner_token(a.lease(0).expect("lease"))
        );
    }

    #[test]
    fn only_traces_below_a_foreign_high_mark_are_replayed() {
        let high = HashMap::from([(0, 100)]);
        assert!(is_replayed(&kept(vec![m(0, 99, 1)]), &high));
        assert!(is_replayed(&kept(vec![m(0, 150, 1), m(0, 42, 1)]), &high));
        assert!(!is_replayed(&kept(vec![m(0, 100, 1)]), &high));
        assert!(
            !is_replayed(&kept(vec![m(1, 5, 1)]), &high),
            "partition 1 has no foreign commits"
        );
    }
}
