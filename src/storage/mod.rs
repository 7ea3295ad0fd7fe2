//! The storage stage: kept traces become Parquet files in the spans table,
//! committed with the Kafka offsets they cover, and only then are their
//! messages released for the offset commit.

mod columns;
mod error;
pub mod pinned;
pub mod replay;
pub mod rows;
pub mod writer;

pub use error::{RowError, StorageError};
use tokio::sync::mpsc;

use crate::config::StorageConfig;
use crate::handoff::KeptTrace;
use crate::supervise::StageTask;
use crate::table::layout::ParquetLayout;
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
            layout: ParquetLayout::of(cfg),
        },
        ctx,
    );
    (
        kept_tx,
        StageTask::spawn("storage writer", writer.run(kept_rx)),
    )
}
