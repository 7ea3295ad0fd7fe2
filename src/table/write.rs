//! Writing record batches as the table's data files: Parquet in the layout
//! of [`super::layout`], split by the partition spec (`day(start_time)`),
//! rolled at a target size. The writer's flushes and compaction's rewrites
//! both write through here, so every file has the same layout.

use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::spec::{DataFile, DataFileFormat};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::partitioning::PartitioningWriter;

use super::layout::ParquetLayout;

/// Writes one batch as data files of at most about `target_file_bytes`.
pub async fn write_data_files(
    table: &Table,
    batch: arrow_array::RecordBatch,
    layout: &ParquetLayout,
    target_file_bytes: u64,
) -> iceberg::Result<Vec<DataFile>> {
    write_batches(
        table,
        futures::stream::iter([Ok(batch)]),
        layout,
        target_file_bytes,
    )
    .await
}

/// Writes a stream of batches as data files of at most about
/// `target_file_bytes`, holding one batch at a time (and each open file's
/// current row group), so that a rewrite of gigabytes needs megabytes.
pub async fn write_batches(
    table: &Table,
    batches: impl futures::Stream<Item = iceberg::Result<arrow_array::RecordBatch>>,
    layout: &ParquetLayout,
    target_file_bytes: u64,
) -> iceberg::Result<Vec<DataFile>> {
    use futures::TryStreamExt;
    let metadata = table.metadata();
    let schema = metadata.current_schema().clone();
    // A fresh UUIDv7 prefix per call: the file-name counter restarts at 0, and
    // a reused prefix would overwrite earlier data files.
    let names = DefaultFileNameGenerator::new(
        uuid::Uuid::now_v7().to_string(),
        None,
        DataFileFormat::Parquet,
    );
    let rolling = RollingFileWriterBuilder::new(
        ParquetWriterBuilder::new(layout.writer_properties(), schema.clone()),
        target_file_bytes as usize,
        table.file_io().clone(),
        DefaultLocationGenerator::new(metadata)?,
        names,
    );
    let mut writer = FanoutWriter::new(DataFileWriterBuilder::new(rolling));
    let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(
        schema,
        metadata.default_partition_spec().clone(),
    )?;
    let mut batches = std::pin::pin!(batches);
    while let Some(batch) = batches.try_next().await? {
        for (key, part) in splitter.split(&batch)? {
            writer.write(key, part).await?;
        }
    }
    writer.close().await
}
