//! One trace by id, reading as little as the layout allows.
//!
//! 1. Iceberg plans the files whose partition and column bounds may hold the
//!    id (manifest pruning).
//! 2. Each planned file's footer and its `trace_id` bloom filters are read;
//!    a file whose every row group's filter rules the id out is skipped. In
//!    files written in arrival order the min/max statistics of a random id
//!    column prune nothing, so this is the step that pays.
//! 3. Iceberg's reader reads the files left, skipping row groups by their
//!    statistics (which do prune in files sorted by trace id) and filtering
//!    rows, with the table's current schema (older files read null in newer
//!    columns).
//!
//! What each step skipped is returned, so that `GET /admin/traces/{id}` can
//! show it and the metrics count it.

use futures::{stream, StreamExt, TryStreamExt};
use iceberg::arrow::{ArrowFileReader, ArrowReaderBuilder, ScanResult};
use iceberg::expr::Reference;
use iceberg::io::FileMetadata;
use iceberg::Runtime;
use iceberg::scan::FileScanTask;
use iceberg::spec::Datum;
use iceberg::table::Table;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use serde::Serialize;

use super::{to_json, QueryError, QueryResult};
use crate::table::layout::TRACE_ID_COLUMN;

/// Footers read at once.
const FOOTER_CONCURRENCY: usize = 16;

/// What a lookup read and what it skipped.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct LookupStats {
    /// Files Iceberg planned after manifest pruning.
    pub files_planned: usize,
    /// Planned files skipped because no row group's bloom filter holds the id.
    pub files_skipped_by_bloom: usize,
    /// Files read.
    pub files_read: usize,
    /// Row groups in the planned files.
    pub row_groups: usize,
    /// Row groups whose bloom filter rules the id out.
    pub row_groups_skipped_by_bloom: usize,
}

/// Why a lookup failed.
fn failed(what: &str, e: impl std::fmt::Display) -> QueryError {
    QueryError::Unavailable(format!("trace lookup: {what}: {e}"))
}

/// The spans of `trace_id` (lowercase hex), ordered by start time and span id.
pub async fn find_trace(table: &Table, trace_id: &str, max_rows: usize) -> Result<(QueryResult, LookupStats), QueryError> {
    let (tasks, stats) = plan_trace(table, trace_id, None).await?;
    let batches: Vec<_> = read_tasks(table, tasks)?
        .stream()
        .try_collect()
        .await
        .map_err(|e| failed("reading", e))?;
    let mut result = to_json(&batches, max_rows)?;
    sort_rows(&mut result);
    Ok((result, stats))
}

/// The files that may hold `trace_id`, with `columns` (all when `None`)
/// and the id as their row filter: Iceberg's plan after manifest pruning,
/// less the files whose bloom filters rule the id out in every row group.
pub async fn plan_trace(
    table: &Table,
    trace_id: &str,
    columns: Option<Vec<String>>,
) -> Result<(Vec<FileScanTask>, LookupStats), QueryError> {
    let predicate = Reference::new(TRACE_ID_COLUMN).equal_to(Datum::string(trace_id));
    let scan = match columns {
        Some(columns) => table.scan().select(columns),
        None => table.scan().select_all(),
    };
    let scan = scan.with_filter(predicate).build().map_err(|e| failed("planning", e))?;
    let tasks: Vec<FileScanTask> = scan
        .plan_files()
        .await
        .map_err(|e| failed("planning", e))?
        .try_collect()
        .await
        .map_err(|e| failed("planning", e))?;
    let mut stats = LookupStats { files_planned: tasks.len(), ..Default::default() };
    let checked: Vec<(FileScanTask, usize, usize)> = stream::iter(tasks)
        .map(|task| async move {
            let (groups, ruled_out) = bloom_check(table, &task, trace_id).await?;
            Ok::<_, QueryError>((task, groups, ruled_out))
        })
        .buffer_unordered(FOOTER_CONCURRENCY)
        .try_collect()
        .await?;
    let mut keep = Vec::new();
    for (task, groups, ruled_out) in checked {
        stats.row_groups += groups;
        stats.row_groups_skipped_by_bloom += ruled_out;
        if groups > 0 && ruled_out == groups {
            stats.files_skipped_by_bloom += 1;
        } else {
            keep.push(task);
        }
    }
    stats.files_read = keep.len();
    Ok((keep, stats))
}

/// The rows of planned files, in the table's current schema (older files
/// read null in newer columns), row groups skipped by their statistics and
/// rows filtered by each task's predicate.
pub fn read_tasks(table: &Table, tasks: Vec<FileScanTask>) -> Result<ScanResult, QueryError> {
    let reader = ArrowReaderBuilder::new(table.file_io().clone(), Runtime::current()).build();
    reader
        .read(Box::pin(stream::iter(tasks.into_iter().map(Ok))))
        .map_err(|e| failed("reading", e))
}

/// Row groups in the file, and how many of them the `trace_id` bloom filter
/// rules the id out of. A row group without a filter (a file written before
/// they were) may hold anything.
async fn bloom_check(table: &Table, task: &FileScanTask, trace_id: &str) -> Result<(usize, usize), QueryError> {
    let input = table
        .file_io()
        .new_input(&task.data_file_path)
        .map_err(|e| failed(&task.data_file_path, e))?;
    let reader = input.reader().await.map_err(|e| failed(&task.data_file_path, e))?;
    let file = ArrowFileReader::new(FileMetadata { size: task.file_size_in_bytes }, reader);
    let mut builder = ParquetRecordBatchStreamBuilder::new(file)
        .await
        .map_err(|e| failed(&task.data_file_path, e))?;
    let metadata = builder.metadata().clone();
    let groups = metadata.num_row_groups();
    let Some(column) = metadata
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.path().string() == TRACE_ID_COLUMN)
    else {
        return Ok((groups, 0));
    };
    let mut ruled_out = 0;
    for group in 0..groups {
        let filter = builder
            .get_row_group_column_bloom_filter(group, column)
            .await
            .map_err(|e| failed(&task.data_file_path, e))?;
        if filter.is_some_and(|f| !f.check(trace_id)) {
            ruled_out += 1;
        }
    }
    Ok((groups, ruled_out))
}

/// Orders rows by `start_time`, then `span_id` (both render so that text
/// order is time order).
fn sort_rows(result: &mut QueryResult) {
    let at = |name: &str| result.columns.iter().position(|c| c == name);
    let (Some(start), Some(span)) = (at("start_time"), at("span_id")) else { return };
    let key = |row: &Vec<serde_json::Value>, i: usize| row[i].as_str().unwrap_or("").to_string();
    result.rows.sort_by(|a, b| key(a, start).cmp(&key(b, start)).then_with(|| key(a, span).cmp(&key(b, span))));
}
