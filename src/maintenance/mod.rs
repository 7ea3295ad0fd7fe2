//! Table maintenance, so that the table stays fast as it ages: compaction of
//! small files into large ones sorted by trace id ([`compaction`]), through
//! commits the public iceberg-rust API cannot make ([`commit`]).
//!
//! One instance at a time runs it: a Redis lease ([`lease`]) that its holder
//! renews while it works and that runs out if the holder dies. It runs every
//! `maintenance.interval_secs`, and once from the command line
//! (`tail-sampling-selector maintenance`).

pub mod commit;
pub mod compaction;
pub mod lease;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{MaintenanceConfig, Settings};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::redis_client::LazyRedis;
use crate::table::TableHandle;
use commit::Committer;
use compaction::CompactionOutcome;
use lease::Lease;

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("catalog: {0}")]
    Catalog(String),
    /// Another commit came first; rebuild on the new metadata.
    #[error("commit conflict: {0}")]
    Conflict(String),
    /// The work no longer applies (another run did it).
    #[error("aborted: {0}")]
    Aborted(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("redis: {0}")]
    Redis(String),
}

impl From<crate::table::TableError> for MaintenanceError {
    fn from(e: crate::table::TableError) -> Self {
        MaintenanceError::Catalog(e.to_string())
    }
}

/// What maintenance works on.
#[derive(Clone)]
pub struct Maintainer {
    pub table: TableHandle,
    pub committer: Arc<Committer>,
    pub cfg: MaintenanceConfig,
    pub layout: crate::table::layout::ParquetLayout,
    pub metrics: Metrics,
    pub health: Health,
}

impl Maintainer {
    pub async fn new(settings: &Settings, table: TableHandle, metrics: Metrics, health: Health) -> Result<Self, MaintenanceError> {
        Ok(Self {
            committer: Arc::new(Committer::connect(&settings.storage.iceberg).await?),
            table,
            cfg: settings.maintenance.clone(),
            layout: settings.storage.parquet_layout(),
            metrics,
            health,
        })
    }

    /// One pass: compaction. Counts and times each step.
    pub async fn run_once(&self) -> Result<CompactionOutcome, MaintenanceError> {
        let started = Instant::now();
        let m = &self.metrics;
        let result = compaction::compact(
            &self.table,
            &self.committer,
            &self.layout,
            self.cfg.target_file_bytes,
            self.cfg.min_files_to_compact,
        )
        .await;
        m.maintenance_duration_seconds
            .with_label_values(&["compaction"])
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(o) => {
                m.maintenance_runs_total.with_label_values(&["compaction", "ok"]).inc();
                m.maintenance_files_rewritten_total.inc_by(o.files_removed);
                m.maintenance_files_written_total.inc_by(o.files_added);
                m.maintenance_bytes_rewritten_total.inc_by(o.bytes_removed);
                m.maintenance_commit_rebases_total.inc_by(o.rebases);
                m.maintenance_last_success_timestamp_seconds
                    .with_label_values(&["compaction"])
                    .set(chrono::Utc::now().timestamp() as f64);
                self.health.set_maintenance(Ok(()));
                if o.files_removed > 0 {
                    tracing::info!(
                        files_removed = o.files_removed,
                        files_added = o.files_added,
                        bytes_removed = o.bytes_removed,
                        bytes_added = o.bytes_added,
                        rows = o.rows,
                        manifests_before = o.manifests_before,
                        manifests_after = o.manifests_after,
                        rebases = o.rebases,
                        "compaction committed"
                    );
                }
            }
            Err(e) => {
                m.maintenance_runs_total.with_label_values(&["compaction", "error"]).inc();
                self.health.set_maintenance(Err(format!("compaction failed: {e}")));
                tracing::warn!(error = %e, "compaction failed; the table is unchanged and the next run tries again");
            }
        }
        result
    }

    /// Runs every `interval_secs` while this instance holds the lease, until
    /// `stop`.
    pub async fn run_scheduled(self, redis: Arc<LazyRedis>, stop: CancellationToken) {
        let lease = Lease::new(redis, &self.table.ident.to_string(), self.cfg.lease_ttl_secs.duration());
        let mut tick = tokio::time::interval(self.cfg.interval_secs.duration());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate: let the writer start first
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match lease.acquire().await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!("another instance holds the maintenance lease");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "maintenance lease unavailable; skipping this run");
                    continue;
                }
            }
            let renew = lease.keep_renewed(stop.child_token());
            let _ = self.run_once().await;
            renew.cancel();
            lease.release().await;
        }
    }
}

/// How long a run may hold the lease between renewals.
pub fn renew_every(ttl: Duration) -> Duration {
    ttl / 3
}
