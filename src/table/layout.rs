//! How the selector lays out the Parquet files it writes, so that a lookup
//! of one trace id reads as little as it can: ZSTD pages, row groups of
//! `storage.parquet_row_group_rows`, statistics on every column, and a
//! bloom filter on `trace_id` in every row group (as Grafana Tempo keeps a
//! bloom filter per block, and the ClickHouse exporter one on `TraceId`).
//!
//! Trace ids are random, so in a file written in arrival order every row
//! group's min/max covers nearly the whole id range and statistics prune
//! nothing; the bloom filter is what lets a lookup skip a file.

use super::columns as column;
use crate::config::StorageConfig;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

/// Row groups and bloom filters of the files the selector writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParquetLayout {
    pub row_group_rows: usize,
    /// False-positive probability of the `trace_id` bloom filter.
    pub bloom_fpp: f64,
}

impl ParquetLayout {
    /// The layout `[storage]` asks for.
    pub fn of(storage: &StorageConfig) -> Self {
        Self {
            row_group_rows: storage.parquet_row_group_rows,
            bloom_fpp: storage.trace_id_bloom_fpp,
        }
    }

    pub fn writer_properties(&self) -> WriterProperties {
        let trace_id = ColumnPath::from(column::TRACE_ID);
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
            .set_max_row_group_row_count(Some(self.row_group_rows))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_column_bloom_filter_enabled(trace_id.clone(), true)
            .set_column_bloom_filter_fpp(trace_id.clone(), self.bloom_fpp)
            // A row group holds at most this many distinct ids (fewer: a
            // trace has several spans), which sizes the filter: about 1.2
            // bytes per row at 1% false positives.
            .set_column_bloom_filter_ndv(trace_id, self.row_group_rows as u64)
            .build()
    }
}
