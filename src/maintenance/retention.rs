//! Retention: `storage.retention_days` removes whole day partitions past it
//! (Grafana Tempo's default is 14 days; 0 keeps everything), in one `delete`
//! snapshot per run. The files themselves go with the snapshots that still
//! reach them, when those expire.

use std::collections::HashSet;

use iceberg::spec::{Literal, Operation, PrimitiveLiteral};

use super::commit::Committer;
use super::compaction::{commit_rewrite, live_files, ManifestCache};
use super::error::MaintenanceError;
use crate::table::TableHandle;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub partitions_removed: u64,
    pub files_removed: u64,
    pub rows_removed: u64,
    pub rebases: u64,
}

/// Attempts at committing before giving up.
const MAX_ATTEMPTS: u32 = 10;

/// Whether a `day(start_time)` partition (days since the epoch) is past
/// retention on `today`.
pub fn past_retention(day: i32, today: i32, retention_days: u32) -> bool {
    retention_days > 0 && day < today - retention_days as i32
}

pub async fn apply(
    handle: &TableHandle,
    committer: &Committer,
    retention_days: u32,
) -> Result<RetentionOutcome, MaintenanceError> {
    let mut outcome = RetentionOutcome::default();
    if retention_days == 0 {
        return Ok(outcome);
    }
    let today = (chrono::Utc::now().timestamp().div_euclid(86_400)) as i32;
    let mut cache = ManifestCache::default();
    let _turn = handle.commits.lock().await;
    for attempt in 0..MAX_ATTEMPTS {
        let table = handle.load().await?;
        let Some(snapshot) = table.metadata().current_snapshot().cloned() else {
            return Ok(outcome);
        };
        let (live, _) = live_files(&table, &snapshot, &mut cache).await?;
        let mut days = HashSet::new();
        let mut removed = HashSet::new();
        let mut rows = 0;
        for (path, e) in &live {
            let day = e
                .data_file
                .partition()
                .fields()
                .first()
                .and_then(|f| match f {
                    Some(Literal::Primitive(PrimitiveLiteral::Int(d))) => Some(*d),
                    _ => None,
                });
            if let Some(day) = day.filter(|d| past_retention(*d, today, retention_days)) {
                days.insert(day);
                removed.insert(path.clone());
                rows += e.data_file.record_count();
            }
        }
        if removed.is_empty() {
            return Ok(outcome);
        }
        match commit_rewrite(
            handle,
            &table,
            committer,
            &removed,
            &[],
            Operation::Delete,
            &mut cache,
        )
        .await
        {
            Ok(_) => {
                outcome.partitions_removed = days.len() as u64;
                outcome.files_removed = removed.len() as u64;
                outcome.rows_removed = rows;
                return Ok(outcome);
            }
            Err(MaintenanceError::Conflict(_)) if attempt + 1 < MAX_ATTEMPTS => {
                outcome.rebases += 1
            }
            Err(e) => return Err(e),
        }
    }
    Err(MaintenanceError::Conflict(
        "retention kept losing races with appends".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::past_retention;

    #[test]
    fn whole_days_past_the_limit_go_and_zero_keeps_everything() {
        let today = 20_000;
        assert!(past_retention(today - 15, today, 14));
        assert!(
            !past_retention(today - 14, today, 14),
            "the 14th day back stays"
        );
        assert!(!past_retention(today, today, 14));
        assert!(!past_retention(today - 1000, today, 0));
    }
}
