//! One trace by id, reading as little as the layout allows.
//!
//! 1. Iceberg plans the files whose partition and column bounds may hold the
//!    id (manifest pruning).
//! 2. Each planned file's footer is read. A row group whose `trace_id`
//!    min/max statistics do not cover the id is ruled out without further
//!    reads: in files that compaction sorted by trace id that is every row
//!    group but one. The bloom filters of the row groups left are read, and a
//!    file whose every row group is ruled out is skipped. In files written in
//!    arrival order a random id column's min/max covers nearly everything,
//!    so there the bloom filter is what pays. Reading every row group's
//!    filter of a large sorted file instead (a hundred small reads for a
//!    128 MiB file) made lookups slower as compaction built such files.
//! 3. Iceberg's reader reads the files left, skipping row groups by their
//!    statistics (which do prune in files sorted by trace id) and filtering
//!    rows, with the table's current schema (older files read null in newer
//!    columns).
//!
//! What each step skipped is returned, so that `GET /admin/traces/{id}` can
//! show it and the metrics count it.
//!
//! Data files never change once written, so the footers and bloom filters
//! step 2 reads are kept ([`FileCache`]): a lookup reads them once per file,
//! not once per lookup. Before, every lookup read a footer and a filter for
//! each of the few hundred files flushed since the last compaction.

use crate::table::columns as column;
use std::sync::Arc;

use futures::{stream, StreamExt, TryStreamExt};
use iceberg::arrow::{ArrowFileReader, ArrowReaderBuilder, ScanResult};
use iceberg::expr::{Bind, Predicate, Reference};
use iceberg::io::FileMetadata;
use iceberg::scan::FileScanTask;
use iceberg::spec::Datum;
use iceberg::table::Table;
use iceberg::Runtime;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::bloom_filter::Sbbf;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;
use serde::Serialize;

use super::result::{to_json, QueryError, QueryResult};
use crate::table::manifest_cache::BoundedMap;

/// Footers read at once.
const FOOTER_CONCURRENCY: usize = 16;

/// What a lookup read and what it skipped.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct LookupStats {
    /// Files Iceberg planned after manifest pruning.
    pub files_planned: usize,
    /// Planned files skipped because no row group may hold the id, at least
    /// one of them ruled out by its bloom filter.
    pub files_skipped_by_bloom: usize,
    /// Planned files skipped by the row groups' min/max statistics alone.
    pub files_skipped_by_statistics: usize,
    /// Files read.
    pub files_read: usize,
    /// Row groups in the planned files.
    pub row_groups: usize,
    /// Row groups whose bloom filter rules the id out.
    pub row_groups_skipped_by_bloom: usize,
    /// Row groups whose `trace_id` min/max does not cover the id (their
    /// bloom filter is not read).
    pub row_groups_skipped_by_statistics: usize,
}

/// What a file's row groups say about the trace ids looked up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct FileCheck {
    row_groups: usize,
    /// Row groups whose min/max covers none of the ids.
    by_statistics: usize,
    /// Row groups left whose bloom filter rules out every id they cover.
    by_bloom: usize,
    /// The ids some row group may hold.
    ids: Vec<String>,
}

impl FileCheck {
    fn may_hold(&self) -> bool {
        self.row_groups == 0 || self.by_statistics + self.by_bloom < self.row_groups
    }
}

/// The footers and `trace_id` bloom filters of the data files lookups have
/// read, by path, up to a number of bytes ([`BoundedMap`]). Clones share
/// one cache.
#[derive(Debug, Clone)]
pub struct FileCache(BoundedMap<(String, Option<usize>), Cached>);

/// A file's footer (keyed without a row group) or a row group's filter.
#[derive(Debug, Clone)]
enum Cached {
    Footer(Arc<ParquetMetaData>),
    /// `None`: the row group has none.
    Bloom(Option<Arc<Sbbf>>),
}

impl FileCache {
    pub fn new(max_bytes: usize) -> Self {
        Self(BoundedMap::new(max_bytes))
    }

    fn footer(&self, path: &str) -> Option<Arc<ParquetMetaData>> {
        match self.0.get(&(path.to_string(), None))? {
            Cached::Footer(footer) => Some(footer),
            Cached::Bloom(_) => None,
        }
    }

    fn bloom(&self, path: &str, group: usize) -> Option<Option<Arc<Sbbf>>> {
        match self.0.get(&(path.to_string(), Some(group)))? {
            Cached::Bloom(bloom) => Some(bloom),
            Cached::Footer(_) => None,
        }
    }

    fn keep_footer(&self, path: &str, footer: Arc<ParquetMetaData>) {
        let bytes = footer.memory_size();
        self.0
            .keep((path.to_string(), None), Cached::Footer(footer), bytes);
    }

    fn keep_bloom(&self, path: &str, group: usize, bloom: Option<Arc<Sbbf>>) {
        // A block is 32 bytes.
        let bytes = 64 + bloom.as_ref().map_or(0, |b| b.num_blocks() * 32);
        self.0
            .keep((path.to_string(), Some(group)), Cached::Bloom(bloom), bytes);
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.0.bytes()
    }
}

/// Why a lookup failed.
fn failed(what: &str, e: impl std::fmt::Display) -> QueryError {
    QueryError::Unavailable(format!("trace lookup: {what}: {e}"))
}

/// The spans of `trace_id` (lowercase hex), ordered by start time and span id.
pub async fn find_trace(
    table: &Table,
    cache: &FileCache,
    trace_id: &str,
    max_rows: usize,
    max_bytes: usize,
) -> Result<(QueryResult, LookupStats), QueryError> {
    let ids = [trace_id.to_string()];
    let (mut result, stats) = find_traces(table, cache, &ids, None, max_rows, max_bytes).await?;
    sort_rows(&mut result);
    Ok((result, stats))
}

/// The spans of several traces at once ([`plan_traces`]), with `columns`
/// (all when `None`), at most `max_rows` of them, in the order read.
///
/// Reading stops at `max_rows` rows or `max_bytes` bytes of Arrow data,
/// whichever comes first, and the result is then `truncated`: a trace of a
/// million spans, or many colliding ids, cannot make a lookup hold more.
pub async fn find_traces(
    table: &Table,
    cache: &FileCache,
    trace_ids: &[String],
    columns: Option<Vec<String>>,
    max_rows: usize,
    max_bytes: usize,
) -> Result<(QueryResult, LookupStats), QueryError> {
    let (tasks, stats) = plan_traces(table, cache, trace_ids, columns).await?;
    let mut stream = read_tasks(table, tasks)?.stream();
    let (mut batches, mut rows, mut bytes) = (Vec::new(), 0, 0);
    let mut cut_by_bytes = false;
    while let Some(batch) = stream.try_next().await.map_err(|e| failed("reading", e))? {
        rows += batch.num_rows();
        bytes += batch.get_array_memory_size();
        batches.push(batch);
        // One row past the cap tells `to_json` that the result was cut.
        if rows > max_rows {
            break;
        }
        if bytes > max_bytes {
            cut_by_bytes = true;
            break;
        }
    }
    let mut result = to_json(&batches, max_rows)?;
    result.truncated |= cut_by_bytes;
    Ok((result, stats))
}

/// The files that may hold `trace_id`, with `columns` (all when `None`)
/// and the id as their row filter: Iceberg's plan after manifest pruning,
/// less the files whose bloom filters rule the id out in every row group.
pub async fn plan_trace(
    table: &Table,
    cache: &FileCache,
    trace_id: &str,
    columns: Option<Vec<String>>,
) -> Result<(Vec<FileScanTask>, LookupStats), QueryError> {
    plan_traces(table, cache, &[trace_id.to_string()], columns).await
}

/// The row filter of a set of trace ids.
fn ids_predicate(ids: &[String]) -> Predicate {
    let trace_id = Reference::new(column::TRACE_ID);
    match ids {
        [one] => trace_id.equal_to(Datum::string(one)),
        many => trace_id.is_in(many.iter().map(Datum::string)),
    }
}

/// [`plan_trace`] for several traces at once (the pages of a trace search):
/// one plan and one footer read per file for them all. Each file kept
/// filters its rows by only the ids its row groups may hold, so that
/// Iceberg's reader skips, by statistics, the row groups of the others.
pub async fn plan_traces(
    table: &Table,
    cache: &FileCache,
    trace_ids: &[String],
    columns: Option<Vec<String>>,
) -> Result<(Vec<FileScanTask>, LookupStats), QueryError> {
    if trace_ids.is_empty() {
        return Ok((Vec::new(), LookupStats::default()));
    }
    let predicate = ids_predicate(trace_ids);
    let scan = match columns {
        Some(columns) => table.scan().select(columns),
        None => table.scan().select_all(),
    };
    let scan = scan
        .with_filter(predicate)
        .build()
        .map_err(|e| failed("planning", e))?;
    let tasks: Vec<FileScanTask> = scan
        .plan_files()
        .await
        .map_err(|e| failed("planning", e))?
        .try_collect()
        .await
        .map_err(|e| failed("planning", e))?;
    let mut stats = LookupStats {
        files_planned: tasks.len(),
        ..Default::default()
    };
    let checked: Vec<(FileScanTask, FileCheck)> = stream::iter(tasks)
        .map(|task| async move {
            let check = row_group_check(table, cache, &task, trace_ids).await?;
            Ok::<_, QueryError>((task, check))
        })
        .buffer_unordered(FOOTER_CONCURRENCY)
        .try_collect()
        .await?;
    let mut keep = Vec::new();
    for (task, check) in checked {
        stats.row_groups += check.row_groups;
        stats.row_groups_skipped_by_statistics += check.by_statistics;
        stats.row_groups_skipped_by_bloom += check.by_bloom;
        if check.may_hold() {
            keep.push(narrowed(task, &check.ids, trace_ids)?);
        } else if check.by_bloom > 0 {
            stats.files_skipped_by_bloom += 1;
        } else {
            stats.files_skipped_by_statistics += 1;
        }
    }
    stats.files_read = keep.len();
    Ok((keep, stats))
}

/// The task with its row filter narrowed to `may_hold`, when that is fewer
/// ids than were looked up (and not none: a file without statistics or
/// filters may hold any).
fn narrowed(
    mut task: FileScanTask,
    may_hold: &[String],
    all: &[String],
) -> Result<FileScanTask, QueryError> {
    if may_hold.is_empty() || may_hold.len() == all.len() {
        return Ok(task);
    }
    let bound = ids_predicate(may_hold)
        .bind(task.schema.clone(), true)
        .map_err(|e| failed("planning", e))?;
    task.predicate = Some(bound);
    Ok(task)
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

/// Which row groups of the file may hold which of `trace_ids`: first by the
/// column's min/max statistics, then, for the ids a row group's range
/// covers, by its bloom filter. A row group without statistics or a filter
/// (a file written before they were) may hold anything. Footer and filters
/// come from `cache` when it has them.
async fn row_group_check(
    table: &Table,
    cache: &FileCache,
    task: &FileScanTask,
    trace_ids: &[String],
) -> Result<FileCheck, QueryError> {
    let path = task.data_file_path.as_str();
    let mut file = OpenFile {
        table,
        task,
        builder: None,
    };
    let metadata = match cache.footer(path) {
        Some(footer) => footer,
        None => {
            let footer = file.builder(None).await?.metadata().clone();
            cache.keep_footer(path, footer.clone());
            footer
        }
    };
    let mut check = FileCheck {
        row_groups: metadata.num_row_groups(),
        ..Default::default()
    };
    let Some(column) = metadata
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.path().string() == column::TRACE_ID)
    else {
        check.ids = trace_ids.to_vec();
        return Ok(check);
    };
    let mut may_hold = vec![false; trace_ids.len()];
    for (group, row_group) in metadata.row_groups().iter().enumerate() {
        let statistics = row_group.column(column).statistics();
        let covered: Vec<usize> = (0..trace_ids.len())
            .filter(|&i| covers(statistics, trace_ids[i].as_bytes()))
            .collect();
        if covered.is_empty() {
            check.by_statistics += 1;
            continue;
        }
        let filter = match cache.bloom(path, group) {
            Some(filter) => filter,
            None => {
                let filter = file
                    .builder(Some(&metadata))
                    .await?
                    .get_row_group_column_bloom_filter(group, column)
                    .await
                    .map_err(|e| failed(path, e))?
                    .map(Arc::new);
                cache.keep_bloom(path, group, filter.clone());
                filter
            }
        };
        let passed: Vec<usize> = covered
            .into_iter()
            .filter(|&i| {
                filter
                    .as_ref()
                    .is_none_or(|f| f.check(trace_ids[i].as_str()))
            })
            .collect();
        if passed.is_empty() {
            check.by_bloom += 1;
        }
        for i in passed {
            may_hold[i] = true;
        }
    }
    check.ids = trace_ids
        .iter()
        .zip(may_hold)
        .filter(|(_, m)| *m)
        .map(|(id, _)| id.clone())
        .collect();
    Ok(check)
}

/// A planned file, opened for reading the first time a footer or filter
/// is not in the cache.
struct OpenFile<'a> {
    table: &'a Table,
    task: &'a FileScanTask,
    builder: Option<ParquetRecordBatchStreamBuilder<ArrowFileReader>>,
}

impl OpenFile<'_> {
    /// The file's reader, its footer read now unless `footer` is known.
    async fn builder(
        &mut self,
        footer: Option<&Arc<ParquetMetaData>>,
    ) -> Result<&mut ParquetRecordBatchStreamBuilder<ArrowFileReader>, QueryError> {
        let path = &self.task.data_file_path;
        if self.builder.is_none() {
            let input = self
                .table
                .file_io()
                .new_input(path)
                .map_err(|e| failed(path, e))?;
            let reader = input.reader().await.map_err(|e| failed(path, e))?;
            let file = ArrowFileReader::new(
                FileMetadata {
                    size: self.task.file_size_in_bytes,
                },
                reader,
            );
            let builder = match footer {
                Some(footer) => {
                    let metadata =
                        ArrowReaderMetadata::try_new(footer.clone(), ArrowReaderOptions::new())
                            .map_err(|e| failed(path, e))?;
                    ParquetRecordBatchStreamBuilder::new_with_metadata(file, metadata)
                }
                None => ParquetRecordBatchStreamBuilder::new(file)
                    .await
                    .map_err(|e| failed(path, e))?,
            };
            self.builder = Some(builder);
        }
        self.builder
            .as_mut()
            .ok_or_else(|| failed(path, "the file could not be opened"))
    }
}

/// Whether a string column chunk's min/max may include `value`; true when
/// the chunk has no such statistics. Parquet's bounds stay bounds when
/// truncated, and UTF-8 strings order as their bytes.
fn covers(statistics: Option<&Statistics>, value: &[u8]) -> bool {
    let Some(Statistics::ByteArray(s)) = statistics else {
        return true;
    };
    let below = s.min_opt().is_some_and(|min| value < min.data());
    let above = s.max_opt().is_some_and(|max| value > max.data());
    !(below || above)
}

/// Orders rows by `start_time`, then `span_id` (both render so that text
/// order is time order).
fn sort_rows(result: &mut QueryResult) {
    let at = |name: &str| result.columns.iter().position(|c| c == name);
    let (Some(start), Some(span)) = (at(column::START_TIME), at(column::SPAN_ID)) else {
        return;
    };
    let key = |row: &Vec<serde_json::Value>, i: usize| row[i].as_str().unwrap_or("").to_string();
    result.rows.sort_by(|a, b| {
        key(a, start)
            .cmp(&key(b, start))
            .then_with(|| key(a, span).cmp(&key(b, span)))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::data_type::ByteArray;

    fn range(min: &str, max: &str) -> Statistics {
        Statistics::byte_array(
            Some(ByteArray::from(min)),
            Some(ByteArray::from(max)),
            None,
            Some(0),
            false,
        )
    }

    #[test]
    fn statistics_rule_out_ids_outside_a_row_groups_range() {
        let s = range("4000", "7fff");
        assert!(covers(Some(&s), b"4000"));
        assert!(covers(Some(&s), b"5abc"));
        assert!(covers(Some(&s), b"7fff"));
        assert!(!covers(Some(&s), b"3fff"));
        assert!(!covers(Some(&s), b"8000"));
        // No statistics, or statistics of another type: may hold anything.
        assert!(covers(None, b"0000"));
        assert!(covers(
            Some(&Statistics::int32(Some(1), Some(2), None, Some(0), false)),
            b"0000"
        ));
        // A bound that is missing bounds nothing on its side.
        let open =
            Statistics::byte_array(None, Some(ByteArray::from("7fff")), None, Some(0), false);
        assert!(covers(Some(&open), b"0000"));
        assert!(!covers(Some(&open), b"8000"));
    }

    #[test]
    fn the_file_cache_keeps_what_fits_and_empties_when_full() {
        // 128 blocks of 32 bytes, plus 64 for the entry.
        let bloom = || Some(Arc::new(Sbbf::new_with_num_of_bytes(4096)));
        let cache = FileCache::new(10_000);
        cache.keep_bloom("a", 0, bloom());
        cache.keep_bloom("a", 1, None);
        assert_eq!(cache.bytes(), 4096 + 64 + 64);
        assert!(cache.bloom("a", 0).is_some_and(|b| b.is_some()));
        assert!(
            cache.bloom("a", 1).is_some_and(|b| b.is_none()),
            "a row group without a filter is remembered as such"
        );
        assert!(cache.bloom("a", 2).is_none(), "never read");
        cache.keep_bloom("b", 0, bloom());
        assert_eq!(cache.bytes(), 2 * 4096 + 3 * 64);
        // A third does not fit: the cache starts over with it alone.
        cache.keep_bloom("c", 0, bloom());
        assert_eq!(cache.bytes(), 4096 + 64);
        assert!(cache.bloom("a", 0).is_none() && cache.bloom("c", 0).is_some());
        // An entry larger than the whole cache is not kept, nor does it
        // empty the cache.
        cache.keep_bloom("d", 0, Some(Arc::new(Sbbf::new_with_num_of_bytes(16_384))));
        assert!(cache.bloom("d", 0).is_none());
        assert!(cache.bloom("c", 0).is_some());
        let off = FileCache::new(0);
        off.keep_bloom("a", 0, None);
        assert!(
            off.bytes() == 0 && off.bloom("a", 0).is_none(),
            "0 keeps none"
        );
    }

    #[test]
    fn a_file_is_skipped_when_every_row_group_is_ruled_out() {
        let file = |row_groups, by_statistics, by_bloom| FileCheck {
            row_groups,
            by_statistics,
            by_bloom,
            ids: Vec::new(),
        };
        assert!(!file(100, 99, 1).may_hold());
        assert!(!file(3, 3, 0).may_hold());
        assert!(file(100, 99, 0).may_hold());
        assert!(
            file(0, 0, 0).may_hold(),
            "a file without row groups is read, not judged"
        );
    }
}
