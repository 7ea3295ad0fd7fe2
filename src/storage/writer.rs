//! Batches kept traces and commits them to the table as ZSTD Parquet.
//!
//! One commit per batch, when `flush_max_rows` or `flush_interval_secs` is
//! reached. Only after a commit succeeds are the traces' Kafka messages
//! released, so the offset watermark never passes an unstored kept span. A
//! failed write is retried with backoff and the batch is kept meanwhile; the
//! bounded input channel then fills, which pauses the workers and the consumer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iceberg::arrow::{schema_to_arrow_schema, RecordBatchPartitionSplitter};
use iceberg::spec::DataFileFormat;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::partitioning::PartitioningWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio::sync::mpsc;

use super::schema::SpanRows;
use super::{StorageError, TableHandle};
use crate::buffer::worker::KeptTrace;
use crate::health::Health;
use crate::ingest::offsets::{MsgRef, OffsetTracker};
use crate::metrics::Metrics;

/// Snapshot-summary key holding, per partition, one past the highest Kafka
/// offset whose kept spans the snapshot contains.
pub const SNAPSHOT_KAFKA_OFFSETS_KEY: &str = "tail-sampling.kafka-offsets";

/// Tunables of the writer, from `[storage]`.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    pub flush_max_rows: usize,
    pub flush_interval: Duration,
}

pub struct IcebergWriter {
    table: TableHandle,
    cfg: WriterConfig,
    tracker: Arc<OffsetTracker>,
    metrics: Metrics,
    health: Health,
    pending: Vec<KeptTrace>,
    pending_rows: usize,
}

impl IcebergWriter {
    pub fn new(
        table: TableHandle,
        cfg: WriterConfig,
        tracker: Arc<OffsetTracker>,
        metrics: Metrics,
        health: Health,
    ) -> Self {
        Self {
            table,
            cfg,
            tracker,
            metrics,
            health,
            pending: Vec::new(),
            pending_rows: 0,
        }
    }

    /// Runs until the channel closes, then flushes what is left.
    pub async fn run(mut self, mut rx: mpsc::Receiver<KeptTrace>) {
        let mut deadline = Instant::now() + self.cfg.flush_interval;
        let mut backoff = Duration::from_millis(200);
        loop {
            // While a flush is failing, stop taking input so the channel fills.
            let accepting = self.pending_rows < self.cfg.flush_max_rows;
            let sleep = tokio::time::sleep_until(deadline.into());
            tokio::select! {
                kept = rx.recv(), if accepting => match kept {
                    Some(kept) => {
                        self.pending_rows += kept.spans.len();
                        self.pending.push(kept);
                        if self.pending_rows < self.cfg.flush_max_rows {
                            continue;
                        }
                    }
                    None => break,
                },
                _ = sleep => {}
            }
            if self.pending.is_empty() {
                deadline = Instant::now() + self.cfg.flush_interval;
                continue;
            }
            match self.flush().await {
                Ok(()) => {
                    backoff = Duration::from_millis(200);
                    deadline = Instant::now() + self.cfg.flush_interval;
                }
                Err(e) => {
                    self.metrics.iceberg_commit_failures_total.inc();
                    self.health.set_storage_error(Some(e.to_string()));
                    tracing::error!(
                        error = %e,
                        traces = self.pending.len(),
                        rows = self.pending_rows,
                        retry_in_ms = backoff.as_millis() as u64,
                        "iceberg commit failed; keeping the batch and retrying"
                    );
                    deadline = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        if !self.pending.is_empty() {
            if let Err(e) = self.flush().await {
                tracing::error!(error = %e, "final flush failed; the traces stay uncommitted in Kafka");
            }
        }
    }

    /// Writes and commits everything pending as one snapshot.
    pub async fn flush(&mut self) -> Result<(), StorageError> {
        let started = Instant::now();
        let table = self.table.load().await?;
        let arrow_schema = Arc::new(schema_to_arrow_schema(table.metadata().current_schema())?);
        let mut rows = SpanRows::default();
        for trace in &self.pending {
            rows.push_trace(trace);
        }
        if rows.undecodable_spans > 0 {
            self.metrics
                .spans_invalid_total
                .with_label_values(&["undecodable_span"])
                .inc_by(rows.undecodable_spans as u64);
            tracing::warn!(spans = rows.undecodable_spans, "skipped kept spans whose bytes did not decode");
        }
        let row_count = rows.len();
        if row_count > 0 {
            let batch = rows.into_batch(arrow_schema)?;
            let files = write_data_files(&table, batch).await?;
            let offsets = offsets_summary(self.pending.iter().flat_map(|t| t.msgs.iter()));
            let tx = Transaction::new(&table);
            let tx = tx
                .fast_append()
                .with_check_duplicate(false)
                .add_data_files(files)
                .set_snapshot_properties(HashMap::from([(
                    SNAPSHOT_KAFKA_OFFSETS_KEY.to_string(),
                    offsets,
                )]))
                .apply(tx)?;
            tx.commit(self.table.catalog.as_ref()).await?;
            self.metrics.iceberg_commits_total.inc();
            self.metrics.spans_exported_total.inc_by(row_count as u64);
            self.metrics
                .iceberg_commit_duration_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        for trace in self.pending.drain(..) {
            self.tracker.release(&trace.msgs);
        }
        self.pending_rows = 0;
        self.health.set_storage_error(None);
        tracing::debug!(rows = row_count, elapsed_ms = started.elapsed().as_millis() as u64, "committed batch");
        Ok(())
    }
}

/// Writes one batch as Parquet data files, split by `day(start_time)`.
async fn write_data_files(
    table: &Table,
    batch: arrow_array::RecordBatch,
) -> Result<Vec<iceberg::spec::DataFile>, StorageError> {
    let metadata = table.metadata();
    let schema = metadata.current_schema().clone();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .build();
    // A fresh UUIDv7 prefix per batch: the file-name counter restarts at 0, and
    // a reused prefix would overwrite earlier data files.
    let names = DefaultFileNameGenerator::new(
        uuid::Uuid::now_v7().to_string(),
        None,
        DataFileFormat::Parquet,
    );
    let rolling = RollingFileWriterBuilder::new_with_default_file_size(
        ParquetWriterBuilder::new(props, schema.clone()),
        table.file_io().clone(),
        DefaultLocationGenerator::new(metadata)?,
        names,
    );
    let mut writer = FanoutWriter::new(DataFileWriterBuilder::new(rolling));
    let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(
        schema,
        metadata.default_partition_spec().clone(),
    )?;
    for (key, part) in splitter.split(&batch)? {
        writer.write(key, part).await?;
    }
    Ok(writer.close().await?)
}

/// `{"partition": next_offset, ...}` over the messages of a batch.
fn offsets_summary<'a>(msgs: impl Iterator<Item = &'a MsgRef>) -> String {
    let mut max: BTreeMap<i32, i64> = BTreeMap::new();
    for m in msgs {
        let e = max.entry(m.partition).or_insert(m.offset + 1);
        *e = (*e).max(m.offset + 1);
    }
    serde_json::to_string(&max).unwrap_or_default()
}
