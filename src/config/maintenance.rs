//! `[maintenance]`: compaction, snapshot expiry, retention and orphan
//! cleanup, and the lease that lets one instance run them.

use serde::Deserialize;

use super::checks::{invalid, seconds, MIN_ORPHAN_GRACE_SECS};
use super::duration::Seconds;
use super::error::ConfigError;

/// `[maintenance]`: keeping the table fast as it ages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Run on a schedule (one instance at a time, by a Redis lease).
    pub enabled: bool,
    /// How often a run starts.
    pub interval_secs: Seconds,
    /// How long the lease lasts without renewal: a crashed holder's lease
    /// runs out after this.
    pub lease_ttl_secs: Seconds,
    /// Compaction writes files of about this size; files under three
    /// quarters of it are candidates.
    pub target_file_bytes: u64,
    /// A day partition is compacted once it has this many small files.
    pub min_files_to_compact: usize,
    /// Rows a compaction holds in memory to sort them; past this it spills
    /// sorted runs to the temporary directory.
    pub compaction_memory_bytes: usize,
    /// Files under the table's location that no snapshot or metadata
    /// references are deleted once older than this: younger ones may belong
    /// to a commit that has not published them yet.
    pub orphan_file_grace_secs: Seconds,
    /// Longest a maintenance run may take; a run still going then (a hung
    /// catalog or store) is cancelled and the lease released.
    pub run_timeout_secs: Seconds,
    /// Snapshots older than this are expired (the newest
    /// `min_snapshots_to_keep` and the current one never are).
    pub snapshot_max_age_secs: Seconds,
    pub min_snapshots_to_keep: usize,
}

impl MaintenanceConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        seconds("maintenance.interval_secs", self.interval_secs)?;
        seconds("maintenance.lease_ttl_secs", self.lease_ttl_secs)?;
        if self.target_file_bytes < 1 << 20 {
            return Err(invalid(
                "maintenance.target_file_bytes",
                "must be at least 1 MiB (1048576)",
            ));
        }
        seconds(
            "maintenance.snapshot_max_age_secs",
            self.snapshot_max_age_secs,
        )?;
        if self.min_snapshots_to_keep < 1 {
            return Err(invalid(
                "maintenance.min_snapshots_to_keep",
                "must be at least 1",
            ));
        }
        if self.compaction_memory_bytes < 4 << 20 {
            return Err(invalid(
                "maintenance.compaction_memory_bytes",
                "must be at least 4 MiB (4194304)",
            ));
        }
        seconds(
            "maintenance.orphan_file_grace_secs",
            self.orphan_file_grace_secs,
        )?;
        // Shorter than a slow commit, cleanup could delete the files of a
        // commit in flight: a writer's or a compaction's, or one whose
        // outcome was unknown and lands late.
        if self.orphan_file_grace_secs.get() < MIN_ORPHAN_GRACE_SECS {
            return Err(invalid(
                "maintenance.orphan_file_grace_secs",
                format!("must be at least {MIN_ORPHAN_GRACE_SECS} (an hour): a younger unreferenced file may belong to a commit in flight"),
            ));
        }
        seconds("maintenance.run_timeout_secs", self.run_timeout_secs)?;
        if self.min_files_to_compact < 2 {
            return Err(invalid(
                "maintenance.min_files_to_compact",
                "must be at least 2",
            ));
        }
        Ok(())
    }
}
