//! What table maintenance records, each series named
//! `tail_sampling_maintenance_…`.

use prometheus::{GaugeVec, HistogramVec, IntCounter, IntCounterVec, IntGauge};

use super::registrar::Registrar;

/// The steps maintenance runs, as the `step` label names them.
const STEPS: [&str; 4] = ["compaction", "expiry", "retention", "orphans"];

#[derive(Clone)]
pub struct MaintenanceMetrics {
    pub runs_total: IntCounterVec,
    pub duration_seconds: HistogramVec,
    pub files_rewritten_total: IntCounter,
    pub files_written_total: IntCounter,
    pub bytes_rewritten_total: IntCounter,
    pub commit_rebases_total: IntCounter,
    pub snapshots_expired_total: IntCounter,
    pub partitions_removed_total: IntCounter,
    pub files_deleted_total: IntCounter,
    pub orphan_files_deleted_total: IntCounterVec,
    pub lease_held: IntGauge,
    pub last_success_timestamp_seconds: GaugeVec,
}

impl MaintenanceMetrics {
    pub fn register(r: &Registrar) -> Result<Self, prometheus::Error> {
        let m = Self {
            runs_total: r.counter_vec(
                "maintenance_runs_total",
                "Table-maintenance steps run, by step and result (ok, error)",
                &["step", "result"],
            )?,
            duration_seconds: r.histogram_vec(
                "maintenance_duration_seconds",
                "Duration of each table-maintenance step",
                vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0],
                &["step"],
            )?,
            files_rewritten_total: r.counter(
                "maintenance_files_rewritten_total",
                "Data files compaction removed (their rows rewritten into larger files)",
            )?,
            files_written_total: r.counter(
                "maintenance_files_written_total",
                "Data files compaction wrote",
            )?,
            bytes_rewritten_total: r.counter(
                "maintenance_bytes_rewritten_total",
                "Bytes of the data files compaction rewrote",
            )?,
            commit_rebases_total: r.counter(
                "maintenance_commit_rebases_total",
                "Maintenance commits rebuilt because an append committed first",
            )?,
            snapshots_expired_total: r.counter(
                "maintenance_snapshots_expired_total",
                "Snapshots expired",
            )?,
            partitions_removed_total: r.counter(
                "maintenance_partitions_removed_total",
                "Day partitions removed because they are past storage.retention_days",
            )?,
            files_deleted_total: r.counter(
                "maintenance_files_deleted_total",
                "Manifest lists, manifests and data files deleted because only expired snapshots reached them",
            )?,
            orphan_files_deleted_total: r.counter_vec(
                "maintenance_orphan_files_deleted_total",
                "Unreferenced files under the table's location deleted past orphan_file_grace_secs, by kind: data (data files and manifests) or metadata (metadata.json)",
                &["kind"],
            )?,
            lease_held: r.gauge(
                "maintenance_lease_held",
                "1 while this instance holds the maintenance lease (it maintains the table), 0 otherwise",
            )?,
            last_success_timestamp_seconds: r.float_gauge_vec(
                "maintenance_last_success_timestamp_seconds",
                "When each maintenance step last succeeded (Unix seconds)",
                &["step"],
            )?,
        };
        for result in ["ok", "error"] {
            for step in STEPS {
                m.runs_total.with_label_values(&[step, result]);
            }
        }
        for kind in ["data", "metadata"] {
            m.orphan_files_deleted_total.with_label_values(&[kind]);
        }
        Ok(m)
    }
}
