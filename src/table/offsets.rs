//! The Kafka offsets the table's snapshots cover, as the replay check reads
//! them. Every append's snapshot summary records, per partition, the next
//! offset its kept spans reach and the lease (owner) that read them:
//!
//! ```json
//! {"topic": "otel-traces-raw",
//!  "partitions": {"3": {"next_offset": 1234, "owner": "0193…/7"}}}
//! ```
//!
//! Expiring snapshots would drop those records, so before it expires any,
//! maintenance folds every snapshot's record into a checkpoint kept as a
//! table property, committed only if no snapshot arrived meanwhile. For
//! each partition the checkpoint keeps the two owners with the highest
//! offsets: the replay check asks for the highest offset of any owner other
//! than the current one, which is always one of those two.

use std::collections::{BTreeMap, HashMap};

use iceberg::spec::TableMetadata;
use serde::{Deserialize, Serialize};

/// Snapshot-summary key holding the Kafka offsets a snapshot covers.
pub const SNAPSHOT_KAFKA_OFFSETS_KEY: &str = "tail-sampling.kafka-offsets";
/// Snapshot-summary key of a recovery job's append: the job's id. Such an
/// append covers no live offsets; a recovery writer that lost a race to it
/// checks its batch against the table again.
pub const SNAPSHOT_RECOVERY_JOB_KEY: &str = "tail-sampling.recovery-job";
/// Table property holding the checkpoint of expired snapshots' offsets.
pub const OFFSETS_CHECKPOINT_KEY: &str = "tail-sampling.kafka-offsets-checkpoint";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct OffsetsSummary {
    pub topic: String,
    pub partitions: BTreeMap<i32, PartitionOffsets>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct PartitionOffsets {
    /// One past the highest offset whose kept spans the snapshot contains.
    pub next_offset: i64,
    /// The lease that read them.
    pub owner: String,
}

/// One owner's mark in the checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OwnerMark {
    pub partition: i32,
    pub owner: String,
    pub next_offset: i64,
}

/// The checkpoint: per topic, the marks that matter.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub topics: BTreeMap<String, Vec<OwnerMark>>,
}

/// High marks per (partition, owner) of one topic.
pub type Marks = HashMap<(i32, String), i64>;

fn raise(marks: &mut Marks, partition: i32, owner: String, next: i64) {
    let e = marks.entry((partition, owner)).or_insert(next);
    *e = (*e).max(next);
}

/// The marks a snapshot summary's offsets record holds for `topic`.
pub fn add_summary(marks: &mut Marks, raw: &str, topic: &str) {
    let Ok(summary) = serde_json::from_str::<OffsetsSummary>(raw) else {
        return;
    };
    if summary.topic != topic {
        return;
    }
    for (p, o) in summary.partitions {
        raise(marks, p, o.owner, o.next_offset);
    }
}

/// The checkpoint's marks for `topic`.
pub fn add_checkpoint(marks: &mut Marks, metadata: &TableMetadata, topic: &str) {
    let Some(cp) = checkpoint(metadata) else {
        return;
    };
    for m in cp.topics.get(topic).into_iter().flatten() {
        raise(marks, m.partition, m.owner.clone(), m.next_offset);
    }
}

pub fn checkpoint(metadata: &TableMetadata) -> Option<Checkpoint> {
    serde_json::from_str(metadata.properties().get(OFFSETS_CHECKPOINT_KEY)?).ok()
}

/// Every snapshot's record and the checkpoint, folded into a new checkpoint
/// that keeps the two highest owners of each partition.
pub fn fold(metadata: &TableMetadata) -> Checkpoint {
    let mut by_topic: BTreeMap<String, Marks> = BTreeMap::new();
    for s in metadata.snapshots() {
        let Some(raw) = s
            .summary()
            .additional_properties
            .get(SNAPSHOT_KAFKA_OFFSETS_KEY)
        else {
            continue;
        };
        let Ok(summary) = serde_json::from_str::<OffsetsSummary>(raw) else {
            continue;
        };
        let marks = by_topic.entry(summary.topic).or_default();
        for (p, o) in summary.partitions {
            raise(marks, p, o.owner, o.next_offset);
        }
    }
    if let Some(cp) = checkpoint(metadata) {
        for (topic, list) in cp.topics {
            let marks = by_topic.entry(topic).or_default();
            for m in list {
                raise(marks, m.partition, m.owner, m.next_offset);
            }
        }
    }
    let topics = by_topic
        .into_iter()
        .map(|(topic, marks)| (topic, top_two(marks)))
        .collect();
    Checkpoint { topics }
}

/// Per partition, the two owners with the highest marks.
fn top_two(marks: Marks) -> Vec<OwnerMark> {
    let mut by_partition: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for ((p, owner), next) in marks {
        by_partition.entry(p).or_default().push((next, owner));
    }
    let mut out = Vec::new();
    for (partition, mut owners) in by_partition {
        owners.sort_by(|a, b| b.cmp(a));
        out.extend(
            owners
                .into_iter()
                .take(2)
                .map(|(next_offset, owner)| OwnerMark {
                    partition,
                    owner,
                    next_offset,
                }),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The highest mark of an owner other than `me`, as the replay check asks.
    fn foreign(marks: &Marks, partition: i32, me: &str) -> Option<i64> {
        marks
            .iter()
            .filter(|((p, o), _)| *p == partition && o != me)
            .map(|(_, n)| *n)
            .max()
    }

    #[test]
    fn the_two_highest_owners_answer_every_owner_as_all_marks_would() {
        let mut all = Marks::new();
        for (owner, next) in [
            ("a/1", 10),
            ("b/2", 40),
            ("c/3", 25),
            ("b/2", 30),
            ("d/4", 5),
        ] {
            raise(&mut all, 0, owner.to_string(), next);
        }
        let kept = top_two(all.clone());
        assert_eq!(kept.len(), 2);
        let mut pruned = Marks::new();
        for m in kept {
            raise(&mut pruned, m.partition, m.owner, m.next_offset);
        }
        for me in ["a/1", "b/2", "c/3", "d/4", "new/9"] {
            assert_eq!(foreign(&pruned, 0, me), foreign(&all, 0, me), "owner {me}");
        }
    }
}
