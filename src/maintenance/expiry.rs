//! Snapshot expiry and the cleanup of what only expired snapshots used.
//!
//! Kept: the current snapshot, the `min_snapshots_to_keep` newest, and every
//! snapshot younger than `snapshot_max_age_secs`. The rest are removed in one
//! commit that also stores the offsets checkpoint (`table::offsets`) folded
//! from every snapshot, required to land on the same current snapshot it was
//! folded from, so no offsets record is ever lost with its snapshot: the
//! no-loss, no-duplicate guarantee reads the checkpoint as it read the
//! snapshots.
//!
//! Then the files only the removed snapshots reached are deleted: their
//! manifest lists, manifests no kept snapshot lists, and data files no kept
//! snapshot has live (the small files a compaction replaced, once the
//! snapshots before it expire). A file any kept snapshot reaches is never
//! deleted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use iceberg::spec::{Snapshot, MAIN_BRANCH};
use iceberg::table::Table;
use iceberg::{TableRequirement, TableUpdate};

use super::commit::Committer;
use super::error::MaintenanceError;
use crate::table::offsets::{fold, OFFSETS_CHECKPOINT_KEY};
use crate::table::TableHandle;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryOutcome {
    pub snapshots_expired: u64,
    pub files_deleted: u64,
    pub rebases: u64,
}

/// Attempts at committing before giving up.
const MAX_ATTEMPTS: u32 = 10;

/// The snapshots to remove: not current, not among the `keep` newest, and
/// older than `cutoff_ms`.
pub fn expirable(snapshots: &[(i64, i64)], current: i64, keep: usize, cutoff_ms: i64) -> Vec<i64> {
    let mut by_age: Vec<&(i64, i64)> = snapshots.iter().collect();
    by_age.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    by_age
        .into_iter()
        .skip(keep)
        .filter(|(id, ts)| *id != current && *ts < cutoff_ms)
        .map(|(id, _)| *id)
        .collect()
}

pub async fn expire(
    handle: &TableHandle,
    committer: &Committer,
    max_age: Duration,
    keep: usize,
) -> Result<ExpiryOutcome, MaintenanceError> {
    let mut outcome = ExpiryOutcome::default();
    let turn = handle.commits.lock().await;
    for attempt in 0..MAX_ATTEMPTS {
        let table = handle.load().await?;
        let metadata = table.metadata();
        let Some(current) = metadata.current_snapshot_id() else {
            return Ok(outcome);
        };
        let cutoff = chrono::Utc::now().timestamp_millis() - max_age.as_millis() as i64;
        let all: Vec<(i64, i64)> = metadata
            .snapshots()
            .map(|s| (s.snapshot_id(), s.timestamp_ms()))
            .collect();
        let ids = expirable(&all, current, keep.max(1), cutoff);
        if ids.is_empty() {
            return Ok(outcome);
        }
        let removed: Vec<Arc<Snapshot>> = metadata
            .snapshots()
            .filter(|s| ids.contains(&s.snapshot_id()))
            .cloned()
            .collect();
        let checkpoint =
            serde_json::to_string(&fold(metadata)).map_err(MaintenanceError::Checkpoint)?;
        let requirements = vec![
            TableRequirement::UuidMatch {
                uuid: metadata.uuid(),
            },
            TableRequirement::RefSnapshotIdMatch {
                r#ref: MAIN_BRANCH.to_string(),
                snapshot_id: Some(current),
            },
        ];
        let updates = vec![
            TableUpdate::SetProperties {
                updates: [(OFFSETS_CHECKPOINT_KEY.to_string(), checkpoint)].into(),
            },
            TableUpdate::RemoveSnapshots {
                snapshot_ids: ids.clone(),
            },
        ];
        match committer.commit(&table, requirements, updates).await {
            Ok(()) => {
                drop(turn);
                outcome.snapshots_expired = ids.len() as u64;
                let after = handle.load().await?;
                outcome.files_deleted = cleanup(&after, &removed).await?;
                return Ok(outcome);
            }
            Err(MaintenanceError::Conflict(why)) if attempt + 1 < MAX_ATTEMPTS => {
                tracing::debug!(reason = %why, "snapshot expiry lost a race; folding again");
                outcome.rebases += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Err(MaintenanceError::Conflict(
        "snapshot expiry kept losing races with appends".into(),
    ))
}

/// Which data files of a manifest [`reach`] counts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Entries {
    /// Those the snapshot has live (added or existing).
    Live,
    /// Every file a manifest names, the ones it records as deleted too.
    All,
}

/// Every manifest list, manifest and data file (of `entries`) the snapshots
/// reach.
pub(super) async fn reach(
    table: &Table,
    snapshots: &[Arc<Snapshot>],
    entries: Entries,
) -> Result<(HashSet<String>, HashSet<String>, HashSet<String>), MaintenanceError> {
    let (mut lists, mut manifests, mut data) = (HashSet::new(), HashSet::new(), HashSet::new());
    for s in snapshots {
        lists.insert(s.manifest_list().to_string());
        let list = table.manifest_list_reader(s).load().await?;
        for m in list.entries() {
            if !manifests.insert(m.manifest_path.clone()) {
                continue; // loaded already: the same manifest, the same files
            }
            let manifest = m.load_manifest(table.file_io()).await?;
            let counted = manifest
                .entries()
                .iter()
                .filter(|e| entries == Entries::All || e.is_alive());
            data.extend(counted.map(|e| e.file_path().to_string()));
        }
    }
    Ok((lists, manifests, data))
}

/// Deletes what the removed snapshots reached and no kept one does.
async fn cleanup(table: &Table, removed: &[Arc<Snapshot>]) -> Result<u64, MaintenanceError> {
    let kept: Vec<Arc<Snapshot>> = table.metadata().snapshots().cloned().collect();
    let (kept_lists, kept_manifests, kept_data) = reach(table, &kept, Entries::Live).await?;
    let (lists, manifests, data) = reach(table, removed, Entries::Live).await?;
    let doomed: Vec<String> = lists
        .difference(&kept_lists)
        .chain(manifests.difference(&kept_manifests))
        .chain(data.difference(&kept_data))
        .cloned()
        .collect();
    let mut deleted = 0;
    for path in doomed {
        match table.file_io().delete(&path).await {
            Ok(()) => deleted += 1,
            Err(e) => {
                tracing::warn!(path, error = %e, "deleting an unreferenced file failed; a later run tries again")
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::expirable;

    #[test]
    fn keeps_the_current_the_newest_and_the_young() {
        // (id, timestamp): 1 oldest … 6 newest, 3 current (rolled back to).
        let snaps = [(1, 100), (2, 200), (3, 300), (4, 400), (5, 500), (6, 600)];
        assert_eq!(expirable(&snaps, 3, 2, 450), vec![4, 2, 1]);
        assert_eq!(expirable(&snaps, 6, 2, 250), vec![2, 1]);
        assert!(expirable(&snaps, 6, 10, 10_000).is_empty());
    }
}
