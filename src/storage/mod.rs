//! The storage stage: kept traces become Parquet files in the spans table,
//! committed with the Kafka offsets they cover, and only then are their
//! messages released for the offset commit.

mod columns;
pub mod pinned;
pub mod replay;
pub mod rows;
pub mod writer;

use rows::RowError;

/// Errors writing kept traces to the table.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    #[error("building rows: {0}")]
    Rows(#[from] RowError),
    #[error(transparent)]
    Table(#[from] crate::table::TableError),
    /// A commit that landed since the batch was checked recorded offsets
    /// past one of its messages: the batch is checked again.
    #[error("the table moved past the batch's offsets: {0}")]
    Overlap(String),
    /// Object storage did not finish in time; nothing was committed.
    #[error("{0} took longer than {1:.0} s (storage.write_timeout_secs)")]
    Timeout(&'static str, f64),
}

use tokio::sync::mpsc;

use crate::config::StorageConfig;
use crate::model::KeptTrace;
use crate::supervise::StageTask;
use crate::table::TableHandle;
use writer::{IcebergWriter, WriterConfig, WriterContext};

/// Starts the writer. It runs until every sender of the returned channel is
/// gone, then makes one last flush.
pub fn start(
    table: TableHandle,
    cfg: &StorageConfig,
    ctx: WriterContext,
) -> (mpsc::UnboundedSender<KeptTrace>, StageTask) {
    let (kept_tx, kept_rx) = mpsc::unbounded_channel();
    let writer = IcebergWriter::new(
        table,
        WriterConfig {
            flush_max_rows: cfg.flush_max_rows,
            flush_max_bytes: cfg.flush_max_bytes,
            flush_interval: cfg.flush_interval_secs.duration(),
            write_timeout: cfg.write_timeout_secs.duration(),
            limits: cfg.attribute_limits(),
            layout: cfg.parquet_layout(),
        },
        ctx,
    );
    (
        kept_tx,
        StageTask::spawn("storage writer", writer.run(kept_rx)),
    )
}
