//! Table maintenance, so that the table stays fast as it ages: compaction of
//! small files into large ones sorted by trace id ([`compaction`]), then
//! retention of whole day partitions ([`retention`]), then snapshot expiry
//! and the deletion of the files only expired snapshots reached
//! ([`expiry`]), then the deletion of old files nothing references
//! ([`orphans`]), through commits the public iceberg-rust API cannot
//! make ([`commit`]).
//!
//! One instance at a time runs it: a Redis lease ([`lease`]) that its holder
//! renews while it works and that runs out if the holder dies. It runs every
//! `maintenance.interval_secs`, and once from the command line
//! (`tail-sampling-selector maintenance`).

pub mod commit;
pub mod compaction;
mod error;
pub mod expiry;
pub mod lease;
pub mod orphans;
pub mod retention;

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::config::{MaintenanceConfig, Settings};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::redis_client::LazyRedis;
use crate::table::layout::ParquetLayout;
use crate::table::TableHandle;
use commit::Committer;
use compaction::CompactionOutcome;
use expiry::ExpiryOutcome;

/// What one maintenance run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOutcome {
    pub compaction: CompactionOutcome,
    pub retention: retention::RetentionOutcome,
    pub expiry: ExpiryOutcome,
    pub orphans: orphans::OrphanOutcome,
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (c, r, e, o) = (
            &self.compaction,
            &self.retention,
            &self.expiry,
            &self.orphans,
        );
        write!(
            f,
            "compaction: {} files ({} bytes) rewritten into {} files ({} bytes), {} rows; manifests {} -> {}; {} rebases\n\
             retention: {} day partitions removed ({} files, {} rows); {} rebases\n\
             expiry: {} snapshots expired, {} unreferenced files deleted; {} rebases\n\
             orphans: {} files listed, {} data files and manifests and {} metadata.json files deleted, {} younger than the grace period kept",
            c.files_removed, c.bytes_removed, c.files_added, c.bytes_added, c.rows, c.manifests_before, c.manifests_after,
            c.rebases, r.partitions_removed, r.files_removed, r.rows_removed, r.rebases, e.snapshots_expired, e.files_deleted,
            e.rebases, o.files_listed, o.files_deleted, o.metadata_files_deleted, o.young_files_kept
        )
    }
}
pub use error::MaintenanceError;
use lease::Lease;

/// How a run under the lease ended.
enum RunEnd {
    Done(Result<RunOutcome, MaintenanceError>),
    LeaseLost,
    TimedOut,
    Stopped,
}

/// What maintenance works on.
#[derive(Clone)]
pub struct Maintainer {
    pub table: TableHandle,
    pub committer: Arc<Committer>,
    pub cfg: MaintenanceConfig,
    pub layout: ParquetLayout,
    /// `storage.retention_days`.
    pub retention_days: u32,
    pub metrics: Metrics,
    pub health: Health,
    /// The storage settings, for listing the table's location.
    pub storage: crate::config::IcebergConfig,
}

impl Maintainer {
    pub async fn new(
        settings: &Settings,
        table: TableHandle,
        metrics: Metrics,
        health: Health,
    ) -> Result<Self, MaintenanceError> {
        Ok(Self {
            committer: Arc::new(Committer::connect(&settings.storage.iceberg).await?),
            table,
            cfg: settings.maintenance.clone(),
            layout: ParquetLayout::of(&settings.storage),
            retention_days: settings.storage.retention_days,
            metrics,
            health,
            storage: settings.storage.iceberg.clone(),
        })
    }

    /// One pass: compaction, then expiry. Counts and times each step; a
    /// failed step does not stop the next.
    pub async fn run_once(&self) -> Result<RunOutcome, MaintenanceError> {
        let compaction = self
            .step(
                "compaction",
                compaction::compact(
                    &self.table,
                    &self.committer,
                    &self.layout,
                    self.cfg.target_file_bytes,
                    self.cfg.min_files_to_compact,
                    self.cfg.compaction_memory_bytes,
                ),
            )
            .await;
        if let Ok(o) = &compaction {
            let m = &self.metrics;
            m.maintenance.files_rewritten_total.inc_by(o.files_removed);
            m.maintenance.files_written_total.inc_by(o.files_added);
            m.maintenance.bytes_rewritten_total.inc_by(o.bytes_removed);
            m.maintenance.commit_rebases_total.inc_by(o.rebases);
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
        let retention = self
            .step(
                "retention",
                retention::apply(&self.table, &self.committer, self.retention_days),
            )
            .await;
        if let Ok(o) = &retention {
            self.metrics
                .maintenance
                .partitions_removed_total
                .inc_by(o.partitions_removed);
            self.metrics
                .maintenance
                .commit_rebases_total
                .inc_by(o.rebases);
            if o.partitions_removed > 0 {
                tracing::info!(
                    partitions = o.partitions_removed,
                    files = o.files_removed,
                    rows = o.rows_removed,
                    retention_days = self.retention_days,
                    "removed day partitions past retention"
                );
            }
        }
        let expiry = self
            .step(
                "expiry",
                expiry::expire(
                    &self.table,
                    &self.committer,
                    self.cfg.snapshot_max_age_secs.duration(),
                    self.cfg.min_snapshots_to_keep,
                ),
            )
            .await;
        if let Ok(o) = &expiry {
            let m = &self.metrics;
            m.maintenance
                .snapshots_expired_total
                .inc_by(o.snapshots_expired);
            m.maintenance.files_deleted_total.inc_by(o.files_deleted);
            m.maintenance.commit_rebases_total.inc_by(o.rebases);
            if o.snapshots_expired > 0 {
                tracing::info!(
                    snapshots = o.snapshots_expired,
                    files_deleted = o.files_deleted,
                    "expired snapshots"
                );
            }
        }
        let orphans = self.step("orphans", self.remove_orphans()).await;
        if let Ok(o) = &orphans {
            let m = &self.metrics.maintenance.orphan_files_deleted_total;
            m.with_label_values(&["data"]).inc_by(o.files_deleted);
            m.with_label_values(&["metadata"])
                .inc_by(o.metadata_files_deleted);
            if o.files_deleted + o.metadata_files_deleted > 0 {
                tracing::info!(
                    listed = o.files_listed,
                    data_files_and_manifests = o.files_deleted,
                    metadata_files = o.metadata_files_deleted,
                    young_kept = o.young_files_kept,
                    "deleted orphan files"
                );
            }
        }
        let failed: Vec<String> = [
            compaction.as_ref().err(),
            retention.as_ref().err(),
            expiry.as_ref().err(),
            orphans.as_ref().err(),
        ]
        .into_iter()
        .flatten()
        .map(|e| e.to_string())
        .collect();
        if failed.is_empty() {
            self.health.set_maintenance(Ok(()));
        } else {
            self.health.set_maintenance(Err(failed.join("; ")));
        }
        Ok(RunOutcome {
            compaction: compaction?,
            retention: retention?,
            expiry: expiry?,
            orphans: orphans?,
        })
    }

    async fn remove_orphans(&self) -> Result<orphans::OrphanOutcome, MaintenanceError> {
        let table = self.table.load().await?;
        let listing =
            crate::table::Listing::for_location(&self.storage, table.metadata().location())?;
        orphans::remove_orphans(&table, &listing, self.cfg.orphan_file_grace_secs.duration()).await
    }

    /// Runs one step, timing and counting it.
    async fn step<T>(
        &self,
        name: &str,
        work: impl std::future::Future<Output = Result<T, MaintenanceError>>,
    ) -> Result<T, MaintenanceError> {
        let started = Instant::now();
        let result = work.await;
        let m = &self.metrics;
        m.maintenance
            .duration_seconds
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => {
                m.maintenance
                    .runs_total
                    .with_label_values(&[name, "ok"])
                    .inc();
                m.maintenance
                    .last_success_timestamp_seconds
                    .with_label_values(&[name])
                    .set(chrono::Utc::now().timestamp() as f64);
            }
            Err(e) => {
                m.maintenance
                    .runs_total
                    .with_label_values(&[name, "error"])
                    .inc();
                tracing::warn!(step = name, error = %e, "table maintenance step failed; the table is unchanged and the next run tries again");
            }
        }
        result
    }

    /// Runs every `interval_secs` while this instance holds the lease, until
    /// `stop`. The lease is kept between runs and renewed every third of its
    /// TTL, from this task, so the same instance maintains until it stops (and
    /// releases it) or dies (and it runs out). A run cut short by `stop` is
    /// safe to drop: each commit lands whole or not at all, and files it wrote
    /// without committing are orphans for a later run's cleanup.
    pub async fn run_scheduled(self, redis: Arc<LazyRedis>, stop: CancellationToken) {
        let lease = Lease::new(
            redis,
            &self.table.ident.to_string(),
            self.cfg.lease_ttl_secs.duration(),
        );
        let mut runs = tokio::time::interval(self.cfg.interval_secs.duration());
        runs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        runs.tick().await; // the first tick is immediate: let the writer start first
        let mut renewals = tokio::time::interval(lease.renew_every());
        renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut holding = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = renewals.tick(), if holding => holding = self.keep(&lease).await,
                _ = runs.tick() => {
                    holding = self.take(&lease, holding).await;
                    if holding {
                        match self.run_holding(&lease, &stop).await {
                            RunEnd::Done(_) | RunEnd::Stopped => {}
                            // The new holder does the work.
                            RunEnd::LeaseLost => holding = false,
                            RunEnd::TimedOut => {
                                lease.release().await;
                                holding = false;
                            }
                        }
                        renewals.reset();
                    }
                }
            }
        }
        if holding {
            lease.release().await;
        }
        self.metrics.maintenance.lease_held.set(0);
    }

    /// One run from the command line (`tail-sampling-selector maintenance`),
    /// under the same lease as the scheduled runs: never two at once.
    pub async fn run_leased_once(
        &self,
        redis: Arc<LazyRedis>,
    ) -> Result<RunOutcome, MaintenanceError> {
        let lease = Lease::new(
            redis,
            &self.table.ident.to_string(),
            self.cfg.lease_ttl_secs.duration(),
        );
        if !lease.acquire().await? {
            return Err(MaintenanceError::Aborted(
                "another instance holds the maintenance lease; it maintains the table (try again later)".into(),
            ));
        }
        let end = self.run_holding(&lease, &CancellationToken::new()).await;
        lease.release().await;
        match end {
            RunEnd::Done(result) => result,
            RunEnd::LeaseLost => Err(MaintenanceError::Aborted(
                "the maintenance lease was lost during the run".into(),
            )),
            RunEnd::TimedOut | RunEnd::Stopped => Err(MaintenanceError::Aborted(format!(
                "the run took longer than maintenance.run_timeout_secs ({:.0} s) and was cancelled",
                self.cfg.run_timeout_secs.get()
            ))),
        }
    }

    /// One run while this instance holds `lease`, renewing it, for at most
    /// `maintenance.run_timeout_secs`. A run cut short is dropped whole:
    /// the commit lock it held is released, each commit landed whole or
    /// not at all, and files it wrote without committing are orphans.
    async fn run_holding(&self, lease: &Lease, stop: &CancellationToken) -> RunEnd {
        let run = self.run_once();
        tokio::pin!(run);
        let every = lease.renew_every();
        let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let limit = self.cfg.run_timeout_secs.duration();
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                result = &mut run => return RunEnd::Done(result),
                _ = stop.cancelled() => return RunEnd::Stopped,
                _ = renewals.tick() => {
                    if !self.keep(lease).await {
                        return RunEnd::LeaseLost;
                    }
                }
                _ = &mut deadline => {
                    let why = format!("a run took longer than maintenance.run_timeout_secs ({:.0} s); cancelled", limit.as_secs_f64());
                    tracing::error!(timeout_secs = limit.as_secs_f64(), "table maintenance hung; cancelled the run and released the lease");
                    self.metrics.maintenance.runs_total.with_label_values(&["run", "timeout"]).inc();
                    self.health.set_maintenance(Err(why));
                    return RunEnd::TimedOut;
                }
            }
        }
    }

    /// Takes the lease, or keeps it; whether this instance holds it now.
    async fn take(&self, lease: &Lease, holding: bool) -> bool {
        let held = match lease.acquire().await {
            Ok(true) => {
                if !holding {
                    tracing::info!(table = %self.table.ident, "took the maintenance lease; this instance maintains the table");
                }
                true
            }
            Ok(false) => {
                tracing::debug!("another instance holds the maintenance lease");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "maintenance lease unavailable; skipping this run");
                false
            }
        };
        self.metrics.maintenance.lease_held.set(i64::from(held));
        held
    }

    /// Renews the lease; whether it is still ours. A failed renewal keeps it
    /// until the next run's acquire tells.
    async fn keep(&self, lease: &Lease) -> bool {
        let held = match lease.renew().await {
            Ok(held) => {
                if !held {
                    tracing::warn!("the maintenance lease ran out and another instance took it");
                }
                held
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the maintenance lease failed");
                true
            }
        };
        self.metrics.maintenance.lease_held.set(i64::from(held));
        held
    }
}
