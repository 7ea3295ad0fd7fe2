//! Batches kept traces and commits them to the table as ZSTD Parquet.
//!
//! One commit per batch, when `flush_max_rows` or `flush_interval_secs` is
//! reached. Only after a commit succeeds are the traces' Kafka messages
//! released, so the offset watermark never passes an unstored kept span. A
//! failed write is retried with backoff and every trace is kept meanwhile;
//! the memory this takes is bounded by `buffer.max_buffered_spans`, at which
//! the consumer pauses. Spans of revoked partitions are dropped before each
//! commit (their next owner stores them), and spans a replay brings back are
//! checked against the table first (see [`super::replay`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::TableProperties;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use tokio::sync::mpsc;

use super::error::StorageError;
use super::pinned::{landed_over, recovery_landed, PinnedCatalog};
use super::replay::{self, ReplayGuard, SNAPSHOT_KAFKA_OFFSETS_KEY};
use super::rows::{RowChunks, RowStats};
use crate::ack::{Acks, CommitGate};
use crate::handoff::KeptTrace;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::model::{AttributeLimits, TraceId};
use crate::table::layout::ParquetLayout;
use crate::table::offsets::SNAPSHOT_RECOVERY_JOB_KEY;
use crate::table::write::write_batches;
use crate::table::TableHandle;

/// Flushes roll files at iceberg's default target; compaction merges them.
const FLUSH_FILE_TARGET_BYTES: u64 =
    TableProperties::PROPERTY_WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT as u64;

/// Tunables of the writer, from `[storage]`.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    pub flush_max_rows: usize,
    /// Most bytes of Arrow rows built at a time (`storage.flush_max_bytes`).
    pub flush_max_bytes: usize,
    pub flush_interval: Duration,
    /// Longest the replay check's reads and the data-file writes may take.
    pub write_timeout: Duration,
    /// Caps on what each row stores.
    pub limits: AttributeLimits,
    /// Row groups and the `trace_id` bloom filter of every file written.
    pub layout: ParquetLayout,
}

/// What the writer shares with the rest of the pipeline.
#[derive(Clone)]
pub struct WriterContext {
    pub acks: Acks,
    pub metrics: Metrics,
    pub health: Health,
    /// The Kafka topic, recorded in each snapshot summary.
    pub topic: String,
    pub role: WriterRole,
}

/// Whose traces the writer stores.
#[derive(Clone, Debug)]
pub enum WriterRole {
    /// The live path's: its snapshots record the Kafka offsets they cover,
    /// and only replayed or suspect traces are checked against the table.
    Live,
    /// A recovery job's: every trace is checked against the table first, so
    /// what was kept live or by an earlier run of the job is skipped span by
    /// span, and its snapshots name the job instead of offsets.
    Recovery {
        job_id: Arc<str>,
        stored: Arc<StoredTally>,
    },
}

/// What a recovery writer has stored.
#[derive(Debug, Default)]
pub struct StoredTally {
    /// Traces of which no span was in the table before.
    pub traces: std::sync::atomic::AtomicU64,
    pub spans: std::sync::atomic::AtomicU64,
    /// Traces that were in the table already, kept live or recovered before.
    pub traces_present: std::sync::atomic::AtomicU64,
}

pub struct IcebergWriter {
    table: TableHandle,
    cfg: WriterConfig,
    ctx: WriterContext,
    pending: VecDeque<KeptTrace>,
    pending_rows: usize,
    replay: ReplayGuard,
    /// Traces of a batch whose commit failed: its outcome may be unknown,
    /// so the next attempt checks them against the table.
    suspect: HashSet<TraceId>,
}

/// Appends that lose a race, in a row, before the batch is rebuilt.
const MAX_REBASES: usize = 10;

/// Leaves the commit gate however the commit ends.
struct GateGuard<'a>(&'a CommitGate);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl IcebergWriter {
    pub fn new(table: TableHandle, cfg: WriterConfig, ctx: WriterContext) -> Self {
        // The series exists from the start, at 0.
        ctx.metrics
            .sinks
            .spans_exported_total
            .with_label_values(&["iceberg"])
            .inc_by(0);
        Self {
            table,
            cfg,
            ctx,
            pending: VecDeque::new(),
            pending_rows: 0,
            replay: ReplayGuard::default(),
            suspect: HashSet::new(),
        }
    }

    /// Runs until the channel closes, then makes one last attempt to commit
    /// what is pending. Input is always accepted, also while commits fail.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<KeptTrace>) {
        let mut deadline = Instant::now() + self.cfg.flush_interval;
        let mut backoff: Option<Duration> = None;
        loop {
            let sleep = tokio::time::sleep_until(deadline.into());
            let due = tokio::select! {
                kept = rx.recv() => match kept {
                    Some(kept) => {
                        self.pending_rows += kept.spans.len();
                        self.pending.push_back(kept);
                        // A full batch goes at once, unless commits are failing.
                        backoff.is_none() && self.pending_rows >= self.cfg.flush_max_rows
                    }
                    None => break,
                },
                _ = sleep => true,
            };
            if !due {
                continue;
            }
            match self.flush().await {
                Ok(()) => {
                    backoff = None;
                    deadline = Instant::now() + self.cfg.flush_interval;
                }
                Err(e) => {
                    let wait = backoff.map_or(Duration::from_millis(200), |b| {
                        (b * 2).min(Duration::from_secs(30))
                    });
                    backoff = Some(wait);
                    self.ctx.metrics.storage.iceberg_commit_failures_total.inc();
                    self.ctx.health.set_storage_error(Some(e.to_string()));
                    tracing::error!(
                        error = %e,
                        traces = self.pending.len(),
                        rows = self.pending_rows,
                        retry_in_ms = wait.as_millis() as u64,
                        "iceberg commit failed; keeping the batch and retrying"
                    );
                    deadline = Instant::now() + wait;
                }
            }
        }
        if let Err(e) = self.flush().await {
            tracing::error!(error = %e, traces = self.pending.len(), "final flush failed; the traces stay uncommitted in Kafka");
        }
    }

    /// Commits everything pending, one snapshot per `flush_max_rows` rows.
    pub async fn flush(&mut self) -> Result<(), StorageError> {
        while !self.pending.is_empty() {
            let mut batch = Vec::new();
            let mut rows = 0;
            while rows < self.cfg.flush_max_rows {
                let Some(t) = self.pending.pop_front() else {
                    break;
                };
                rows += t.spans.len();
                batch.push(t);
            }
            self.pending_rows -= rows;
            if let Err(e) = self.commit(&mut batch).await {
                // Back to the front, in order, for the next attempt.
                self.pending_rows += batch.iter().map(|t| t.spans.len()).sum::<usize>();
                for t in batch.into_iter().rev() {
                    self.pending.push_front(t);
                }
                return Err(e);
            }
        }
        self.ctx.health.set_storage_error(None);
        Ok(())
    }

    /// Writes and commits one batch as one snapshot, then releases its
    /// messages. On error the batch is left for a retry.
    async fn commit(&mut self, batch: &mut Vec<KeptTrace>) -> Result<(), StorageError> {
        #[cfg(feature = "testkit")]
        if crate::testkit::faults::armed("writer_panic") {
            panic!("testkit fault writer_panic: the storage writer panics before a commit");
        }
        let started = Instant::now();
        let table = self.table.load().await?;
        let loaded = started.elapsed();
        let assignments = self.ctx.acks.assignments.clone();
        // Entering the gate and dropping revoked spans is one step with
        // respect to a rebalance: see `CommitGate`.
        // The holds free the dropped spans; their messages are re-read by
        // the partitions' next owners.
        self.ctx.acks.gate.enter(|| {
            let current = assignments.snapshot();
            for t in batch.iter_mut() {
                t.hold.retain_current(&mut t.spans, |l| current.contains(l));
            }
        });
        let _gate = GateGuard(&self.ctx.acks.gate);
        batch.retain(|t| !t.spans.is_empty());

        let foreign_high = self
            .replay
            .foreign_high(&table, &self.ctx.topic, &assignments);
        // A trace whose earlier commit failed may be stored already, whoever
        // owns its partition now.
        let recovering = matches!(self.ctx.role, WriterRole::Recovery { .. });
        let replayed: Vec<&KeptTrace> = batch
            .iter()
            .filter(|t| {
                recovering
                    || replay::is_replayed(t, &foreign_high)
                    || self.suspect.contains(&t.trace_id)
            })
            .collect();
        let stored = self
            .bounded(
                "reading stored spans back",
                replay::stored_spans(&table, &replayed),
            )
            .await??;

        let arrow_schema = Arc::new(schema_to_arrow_schema(table.metadata().current_schema())?);
        let mut chunks = RowChunks::new(
            batch,
            arrow_schema,
            self.cfg.limits,
            self.cfg.flush_max_bytes,
            |trace, span_id| stored.contains(&(trace.trace_id, span_id.to_vec())),
        )
        .reporting_to(self.ctx.acks.building_bytes.clone());
        let writing = Instant::now();
        let chunk_stream = futures::stream::iter((&mut chunks).map(|chunk| {
            chunk.map_err(|e| iceberg::Error::new(iceberg::ErrorKind::DataInvalid, e.to_string()))
        }));
        let files = self
            .bounded(
                "writing data files",
                write_batches(
                    &table,
                    chunk_stream,
                    &self.cfg.layout,
                    FLUSH_FILE_TARGET_BYTES,
                ),
            )
            .await;
        self.ctx
            .acks
            .building_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let files = files??;
        let written = writing.elapsed();
        let stats = chunks.stats();
        drop(chunks);
        self.report_rows(&stats, replayed.len());
        let (mut turn_waited, mut catalog) = (Duration::ZERO, Duration::ZERO);
        if stats.rows > 0 {
            let offsets = match &self.ctx.role {
                WriterRole::Live => (
                    SNAPSHOT_KAFKA_OFFSETS_KEY,
                    replay::offsets_summary(&self.ctx.topic, batch, &assignments),
                ),
                WriterRole::Recovery { job_id, .. } => {
                    (SNAPSHOT_RECOVERY_JOB_KEY, job_id.to_string())
                }
            };
            let waiting = Instant::now();
            let _turn = self.table.commits.lock().await;
            turn_waited = waiting.elapsed();
            let committing = Instant::now();
            let committed = self.append(table, files, offsets, batch).await;
            catalog = committing.elapsed();
            if let Err(e) = committed {
                // Its outcome may be unknown (a 5xx or a cut connection after
                // the catalog took it): the retry checks these traces first.
                self.suspect.extend(batch.iter().map(|t| t.trace_id));
                return Err(e);
            }
            self.ctx.metrics.storage.iceberg_commits_total.inc();
            self.ctx
                .metrics
                .sinks
                .spans_exported_total
                .with_label_values(&["iceberg"])
                .inc_by(stats.rows as u64);
            self.ctx
                .metrics
                .storage
                .iceberg_commit_duration_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        if let WriterRole::Recovery { stored: tally, .. } = &self.ctx.role {
            tally_recovered(tally, batch, &stored, stats.rows);
        }
        for trace in batch.drain(..) {
            self.suspect.remove(&trace.trace_id);
            trace.hold.settle();
        }
        // Where a commit's time goes: loading the table, writing the files,
        // waiting for a maintenance commit, and the catalog commit itself.
        tracing::debug!(
            rows = stats.rows,
            skipped = stats.skipped,
            elapsed_ms = started.elapsed().as_millis() as u64,
            load_ms = loaded.as_millis() as u64,
            write_ms = written.as_millis() as u64,
            turn_wait_ms = turn_waited.as_millis() as u64,
            catalog_ms = catalog.as_millis() as u64,
            "committed batch"
        );
        Ok(())
    }

    /// `f`, failed with [`StorageError::Timeout`] after `write_timeout`.
    async fn bounded<T>(
        &self,
        what: &'static str,
        f: impl std::future::Future<Output = T>,
    ) -> Result<T, StorageError> {
        tokio::time::timeout(self.cfg.write_timeout, f)
            .await
            .map_err(|_| StorageError::Timeout(what, self.cfg.write_timeout.as_secs_f64()))
    }

    /// Appends `files` on `table`, the exact base the batch was checked
    /// on. When another commit came first, it goes again on the new base,
    /// unless something that landed there recorded offsets past one of the
    /// batch's messages: then the whole batch is checked again (its files
    /// are left to orphan cleanup).
    /// `summary` is the snapshot-summary entry the append records: the
    /// offsets it covers, or the recovery job it belongs to.
    async fn append(
        &self,
        mut table: iceberg::table::Table,
        files: Vec<iceberg::spec::DataFile>,
        summary: (&str, String),
        batch: &[KeptTrace],
    ) -> Result<(), StorageError> {
        for _ in 0..MAX_REBASES {
            let tx = Transaction::new(&table);
            let tx = tx
                .fast_append()
                .with_check_duplicate(false)
                .add_data_files(files.clone())
                .set_snapshot_properties(HashMap::from([(
                    summary.0.to_string(),
                    summary.1.clone(),
                )]))
                .apply(tx)?;
            let pinned = PinnedCatalog::new(self.table.catalog.as_ref(), table.clone());
            match tx.commit(&pinned).await {
                Ok(_) => return Ok(()),
                Err(e) if pinned.conflicted() => {
                    let newer = self.table.load().await?;
                    let overlaps = match self.ctx.role {
                        WriterRole::Live => landed_over(&table, &newer, &self.ctx.topic, batch),
                        // Live appends never hold what a recovery re-reads:
                        // it reads only what the live group has committed.
                        WriterRole::Recovery { .. } => recovery_landed(&table, &newer),
                    };
                    if overlaps {
                        return Err(StorageError::Overlap(e.to_string()));
                    }
                    tracing::debug!(error = %e, "another commit came first; appending on the new snapshot");
                    table = newer;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StorageError::Overlap(format!(
            "still conflicting after {MAX_REBASES} attempts"
        )))
    }
}

/// Counts what a recovery batch stored: traces none of whose spans were in
/// the table before, and every span written.
fn tally_recovered(
    tally: &StoredTally,
    batch: &[KeptTrace],
    present: &HashSet<(TraceId, Vec<u8>)>,
    rows: usize,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let present: HashSet<&TraceId> = present.iter().map(|(t, _)| t).collect();
    let (old, new): (Vec<_>, Vec<_>) = batch.iter().partition(|t| present.contains(&t.trace_id));
    tally.traces.fetch_add(new.len() as u64, Relaxed);
    tally.traces_present.fetch_add(old.len() as u64, Relaxed);
    tally.spans.fetch_add(rows as u64, Relaxed);
}

impl IcebergWriter {
    /// Counts and logs what building the rows skipped and cut.
    fn report_rows(&self, stats: &RowStats, replayed_traces: usize) {
        let metrics = &self.ctx.metrics;
        if stats.undecodable_spans > 0 {
            metrics
                .ingest
                .spans_invalid_total
                .with_label_values(&["undecodable_span"])
                .inc_by(stats.undecodable_spans as u64);
            tracing::warn!(
                spans = stats.undecodable_spans,
                "skipped kept spans whose bytes did not decode"
            );
        }
        if stats.values_cut + stats.entries_dropped > 0 {
            let truncated = &metrics.storage.attributes_truncated_total;
            truncated
                .with_label_values(&["value_bytes"])
                .inc_by(stats.values_cut as u64);
            truncated
                .with_label_values(&["count"])
                .inc_by(stats.entries_dropped as u64);
            tracing::warn!(
                values_cut = stats.values_cut,
                entries_dropped = stats.entries_dropped,
                value_max_bytes = self.cfg.limits.value_max_bytes,
                max_count = self.cfg.limits.max_count,
                "kept spans exceeded the attribute limits; the rows are marked tss.truncated"
            );
        }
        if replayed_traces > 0 {
            metrics
                .storage
                .replayed_spans_skipped_total
                .inc_by(stats.skipped as u64);
            tracing::info!(
                traces = replayed_traces,
                already_stored_spans = stats.skipped,
                "checked replayed traces against the table"
            );
        }
    }
}
