//! Cleanup of orphan files: what lies under the table's location and nothing
//! references. Expiry deletes what the snapshots it removes reached; this
//! step finds the rest by listing, as Iceberg's `DeleteOrphanFiles` does:
//! data files and manifests a crash left between writing and committing,
//! and `metadata.json` files older than the metadata log keeps
//! (`write.metadata.previous-versions-max`, 100 by default).
//!
//! Referenced, and never deleted: every file any snapshot of the table
//! reaches (manifest lists, manifests, every data file a manifest names,
//! whatever its status), the current `metadata.json` and those in the
//! metadata log. An unreferenced file is deleted only when older than
//! `maintenance.orphan_file_grace_secs`, because a commit in flight has
//! written its files and not yet published them. Only Iceberg's own kinds
//! of files (`.parquet`, `.avro`, `.metadata.json`) are considered: anything
//! else under the location is left alone.

use std::collections::HashSet;
use std::time::Duration;

use iceberg::table::Table;

use super::error::MaintenanceError;
use super::expiry::{reach, Entries};
use crate::table::Listing;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OrphanOutcome {
    /// Files listed under the table's location.
    pub files_listed: u64,
    /// Unreferenced data files and manifests deleted.
    pub files_deleted: u64,
    /// Unreferenced `metadata.json` files deleted.
    pub metadata_files_deleted: u64,
    /// Unreferenced files left because they are younger than the grace period.
    pub young_files_kept: u64,
}

/// A path as a key that does not depend on how its scheme was spelled
/// (`file:/a`, `file:///a` and `/a` are one file).
fn key(path: &str) -> String {
    let rest = path.split_once("://").map_or(path, |(_, rest)| rest);
    let rest = rest.strip_prefix("file:").unwrap_or(rest);
    rest.trim_start_matches('/').to_string()
}

/// What the table may still need.
async fn referenced(table: &Table) -> Result<HashSet<String>, MaintenanceError> {
    let metadata = table.metadata();
    let mut keep: HashSet<String> = metadata
        .metadata_log()
        .iter()
        .map(|l| key(&l.metadata_file))
        .collect();
    if let Some(current) = table.metadata_location() {
        keep.insert(key(current));
    }
    let snapshots: Vec<_> = metadata.snapshots().cloned().collect();
    let (lists, manifests, data) = reach(table, &snapshots, Entries::All).await?;
    keep.extend(lists.iter().chain(&manifests).chain(&data).map(|p| key(p)));
    Ok(keep)
}

/// Whether a listed file is one of Iceberg's, and so a candidate.
fn candidate(path: &str) -> bool {
    path.ends_with(".parquet") || path.ends_with(".avro") || path.ends_with(".metadata.json")
}

/// The wall clock in milliseconds. A test build can set it ahead
/// (`TSS_TESTKIT_CLOCK_AHEAD_SECS`) to age every file at once, where an
/// object store's modification times cannot be changed.
fn now_ms() -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    #[cfg(feature = "testkit")]
    let now = now + crate::testkit::faults::clock_ahead_secs() * 1000;
    now
}

/// Deletes the unreferenced files under `table`'s location older than `grace`.
pub async fn remove_orphans(
    table: &Table,
    listing: &Listing,
    grace: Duration,
) -> Result<OrphanOutcome, MaintenanceError> {
    // Listed before the references are read: a file a commit publishes in
    // between is then referenced, or young.
    let listing_error = |error: opendal::Error| MaintenanceError::Listing {
        prefix: listing.prefix.clone(),
        error,
    };
    let entries = listing
        .operator
        .list_with(&listing.prefix)
        .recursive(true)
        .await
        .map_err(listing_error)?;
    let keep = referenced(table).await?;
    let cutoff_ms = now_ms() - grace.as_millis() as i64;
    let mut outcome = OrphanOutcome::default();
    for entry in entries {
        if entry.metadata().is_dir() || !candidate(entry.path()) {
            continue;
        }
        outcome.files_listed += 1;
        let uri = format!(
            "{}{}",
            listing.uri_base,
            entry.path().trim_start_matches('/')
        );
        if keep.contains(&key(&uri)) {
            continue;
        }
        let modified = match entry.metadata().last_modified() {
            Some(t) => Some(t),
            None => listing
                .operator
                .stat(entry.path())
                .await
                .map_err(listing_error)?
                .last_modified(),
        };
        // Unknown age counts as young: never delete what might be in flight.
        if modified.is_none_or(|t| t.into_inner().as_millisecond() >= cutoff_ms) {
            outcome.young_files_kept += 1;
            continue;
        }
        match table.file_io().delete(&uri).await {
            Ok(()) if uri.ends_with(".metadata.json") => outcome.metadata_files_deleted += 1,
            Ok(()) => outcome.files_deleted += 1,
            Err(e) => {
                tracing::warn!(path = %uri, error = %e, "deleting an orphan file failed; a later run tries again")
            }
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::{candidate, key};

    #[test]
    fn one_file_has_one_key_however_its_uri_is_spelled() {
        assert_eq!(key("file:///w/t/a.parquet"), "w/t/a.parquet");
        assert_eq!(key("file:/w/t/a.parquet"), "w/t/a.parquet");
        assert_eq!(key("/w/t/a.parquet"), "w/t/a.parquet");
        assert_eq!(key("s3://bucket/t/a.parquet"), "bucket/t/a.parquet");
        assert_ne!(
            key("s3://bucket/t/a.parquet"),
            key("s3://other/t/a.parquet")
        );
    }

    #[test]
    fn only_icebergs_own_files_are_candidates() {
        assert!(candidate("t/data/x.parquet"));
        assert!(candidate("t/metadata/snap-1.avro"));
        assert!(candidate("t/metadata/00003-x.metadata.json"));
        assert!(!candidate("t/notes.txt"));
        assert!(!candidate("t/metadata/version-hint.text"));
    }
}
