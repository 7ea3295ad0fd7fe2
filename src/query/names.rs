//! The service and operation lists without scanning the table.
//!
//! Grafana, the Jaeger UI and the web UI ask for the services and their
//! operations every time a search form opens; a `GROUP BY` over days of spans
//! for each would grow with the table. Data files never change once written,
//! so what a file holds is read once: per distinct (service, span name, span
//! kind) and minute of start time, how many spans. When the snapshot moved,
//! a list reads the current snapshot's manifest list and only the manifests
//! it has not seen (manifests never change either: a commit adds one), reads
//! the few columns of the data files it has not seen yet, forgets the files
//! the snapshot no longer holds (compacted or expired) and merges the rest.
//! After the first list only what was committed since the last one is read.
//! A file compaction wrote is read once more, in the background: it holds
//! the rows of the files it replaced, so those stand in for it until it is
//! read, and a list never waits for a 128 MiB file (it did: the first list
//! after each compaction took 13 s on a table of 17.9 M spans).
//!
//! The same read counts the calls between services for the dependency
//! graph: a span whose parent is in the same file and belongs to another
//! service is one call. A kept trace is written whole in one commit, and
//! compaction sorts by trace id, so a trace's spans share a file; a late span
//! written in a later commit counts once compaction puts it beside its
//! parent. A join over the table's spans instead needed memory in
//! proportion to the range and failed on an hour of heavy traffic.
//!
//! The index lives in the process and is rebuilt from the files after a
//! restart. Ranges are honoured to the minute: a list for `[from, to)`
//! includes the minutes that overlap it.

use crate::table::columns as column;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::TimestampMicrosecondType;
use futures::{stream, StreamExt, TryStreamExt};
use iceberg::arrow::ArrowFileReader;
use iceberg::io::FileMetadata;
use iceberg::spec::{DataContentType, ManifestContentType, Operation as SnapshotOperation};
use iceberg::table::Table;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::result::QueryError;
use super::search::{Dependency, Operation, ServiceNames};

/// Files read at once when the index catches up.
const READ_CONCURRENCY: usize = 4;
const MICROS_PER_MINUTE: i64 = 60_000_000;
/// The columns a file's summary is read from.
const COLUMNS: [&str; 7] = [
    column::SERVICE_NAME,
    column::NAME,
    column::KIND,
    column::START_TIME,
    column::TRACE_ID,
    column::SPAN_ID,
    column::PARENT_SPAN_ID,
];

/// A service, one of its span names and that name's span kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    service: String,
    name: String,
    kind: String,
}

/// A call from the first service to the second.
type Edge = (String, String);

/// Spans of one key (or calls of one edge) starting in one minute of one
/// file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cell {
    key: u32,
    minute: i64,
    spans: u64,
}

/// What one data file holds.
#[derive(Debug, Default)]
struct FileSummary {
    names: Vec<Cell>,
    calls: Vec<Cell>,
}

/// What one file's read counted, before its keys are numbered.
#[derive(Debug, Default)]
struct FileCounts {
    names: HashMap<(Key, i64), u64>,
    calls: HashMap<(Edge, i64), u64>,
}

/// Keys numbered once for every file that holds them.
#[derive(Debug)]
struct Keys<K> {
    all: Vec<K>,
    numbers: HashMap<K, u32>,
}

impl<K> Default for Keys<K> {
    fn default() -> Self {
        Self {
            all: Vec::new(),
            numbers: HashMap::new(),
        }
    }
}

impl<K: Clone + Eq + std::hash::Hash> Keys<K> {
    fn number(&mut self, key: K) -> u32 {
        if let Some(n) = self.numbers.get(&key) {
            return *n;
        }
        let n = self.all.len() as u32;
        self.all.push(key.clone());
        self.numbers.insert(key, n);
        n
    }

    /// One file's counts as cells, their keys numbered.
    fn cells(&mut self, counts: HashMap<(K, i64), u64>) -> Vec<Cell> {
        counts
            .into_iter()
            .map(|((key, minute), spans)| Cell {
                key: self.number(key),
                minute,
                spans,
            })
            .collect()
    }

    /// Sums the `cells` of the minutes of `range` by key.
    fn totals<'a>(
        &self,
        cells: impl Iterator<Item = &'a Cell>,
        range: std::ops::RangeInclusive<i64>,
    ) -> BTreeMap<K, u64>
    where
        K: Ord,
    {
        let mut totals: HashMap<u32, u64> = HashMap::new();
        for cell in cells.filter(|c| range.contains(&c.minute)) {
            *totals.entry(cell.key).or_default() += cell.spans;
        }
        totals
            .into_iter()
            .filter_map(|(n, spans)| Some((self.all.get(n as usize)?.clone(), spans)))
            .collect()
    }
}

#[derive(Debug, Default)]
struct State {
    keys: Keys<Key>,
    edges: Keys<Edge>,
    /// Per data file path, what it holds.
    files: HashMap<String, FileSummary>,
    /// Per manifest path, its live data files.
    manifests: HashMap<String, Arc<Vec<ManifestFile>>>,
    /// The snapshot last caught up to. While `rewrites` are being read,
    /// `files` holds the files they replaced instead of them.
    snapshot: Option<i64>,
    /// The data files of that snapshot.
    live: HashSet<String>,
    /// Live files that a compaction wrote and that are not read yet, with
    /// their sizes: read in the background ([`NameIndex::catch_up`]).
    rewrites: HashMap<String, u64>,
    /// Rewrites read, kept apart until the last is read: counted beside
    /// the files they replaced, they would count the same rows twice.
    staged: HashMap<String, FileCounts>,
    /// The background read of `rewrites`, while it runs.
    reading_rewrites: bool,
    /// When a list last asked for the index.
    asked: Option<std::time::Instant>,
}

/// How long after the last list the index goes on catching up on its own.
const IN_DEMAND_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// Per data file, the services, span names and kinds it holds by minute.
/// Clones share one index.
#[derive(Debug, Clone, Default)]
pub struct NameIndex {
    state: Arc<Mutex<State>>,
    /// One catch-up at a time; the others wait and find it done.
    catching_up: Arc<tokio::sync::Mutex<()>>,
    /// Where the background reads of compacted files run, and what stops
    /// them at shutdown.
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// A live data file: its path, its size and whether a compaction wrote it.
#[derive(Debug, Clone)]
struct LiveFile {
    path: String,
    size: u64,
    rewrite: bool,
}

fn failed(what: &str, e: impl std::fmt::Display) -> QueryError {
    QueryError::Unavailable(format!("service index: {what}: {e}"))
}

impl State {
    fn insert(&mut self, path: String, counts: FileCounts) {
        let names = self.keys.cells(counts.names);
        let calls = self.edges.cells(counts.calls);
        self.files.insert(path, FileSummary { names, calls });
    }

    /// Once every rewrite is read: the rewrites in, the files the snapshot
    /// no longer holds out, in one step. False while some are unread.
    fn settle(&mut self) -> bool {
        if !self.rewrites.is_empty() {
            return false;
        }
        for (path, counts) in std::mem::take(&mut self.staged) {
            self.insert(path, counts);
        }
        let Self { files, live, .. } = self;
        files.retain(|path, _| live.contains(path));
        true
    }
}

/// The minutes that overlap `[from, to)` (Unix microseconds).
fn minutes(from_micros: i64, to_micros: i64) -> std::ops::RangeInclusive<i64> {
    from_micros.div_euclid(MICROS_PER_MINUTE)..=(to_micros - 1).div_euclid(MICROS_PER_MINUTE)
}

impl NameIndex {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves whole entries only.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An index whose background reads run on `tasks` and end when `stop`
    /// is cancelled, as the service's other background tasks do.
    pub fn with_tasks(tasks: TaskTracker, stop: CancellationToken) -> Self {
        Self {
            tasks,
            stop,
            ..Self::default()
        }
    }

    /// Notes that a list asked for the index.
    pub fn asked(&self) {
        self.state().asked = Some(std::time::Instant::now());
    }

    /// Whether a list asked for the index within the last ten minutes:
    /// only then is it worth keeping up to date between lists.
    pub fn in_demand(&self) -> bool {
        self.state()
            .asked
            .is_some_and(|at| at.elapsed() < IN_DEMAND_FOR)
    }

    /// Brings the index to `table`'s current snapshot. Files are recorded
    /// as they are read, so a catch-up cut short by the query timeout is
    /// not lost: the next one goes on from there.
    ///
    /// What was appended is read before this returns, so that a list shows
    /// what was just committed. What a compaction rewrote holds the rows
    /// of the files it replaced, which the index has counted already: those
    /// files keep standing in for it while it is read in the background,
    /// and a list does not wait seconds for a 128 MiB file to give the
    /// answer it already has.
    pub async fn catch_up(&self, table: &Table) -> Result<(), QueryError> {
        let _one = self.catching_up.lock().await;
        let Some(snapshot) = table.metadata().current_snapshot() else {
            return Ok(());
        };
        if self.state().snapshot == Some(snapshot.snapshot_id()) {
            self.settle(table);
            return Ok(());
        }
        let live = self.live_files(table, snapshot).await?;
        let fresh: Vec<(String, u64)> = {
            let mut state = self.state();
            let first = state.files.is_empty();
            state.live = live.iter().map(|f| f.path.clone()).collect();
            let State {
                files,
                live: paths,
                rewrites,
                staged,
                ..
            } = &mut *state;
            rewrites.retain(|path, _| paths.contains(path));
            let unread = live
                .into_iter()
                .filter(|f| !files.contains_key(&f.path) && !staged.contains_key(&f.path));
            let (rewritten, fresh): (Vec<LiveFile>, Vec<LiveFile>) =
                unread.partition(|f| f.rewrite && !first);
            rewrites.extend(rewritten.into_iter().map(|f| (f.path, f.size)));
            fresh.into_iter().map(|f| (f.path, f.size)).collect()
        };
        read_files(table, self, fresh, Read::Fresh).await?;
        self.state().snapshot = Some(snapshot.snapshot_id());
        self.settle(table);
        Ok(())
    }

    /// Forgets the files the snapshot no longer holds once no compacted
    /// file is left to read; else makes sure the background read runs.
    fn settle(&self, table: &Table) {
        let mut state = self.state();
        if state.settle() || state.reading_rewrites {
            return;
        }
        state.reading_rewrites = true;
        let (index, table) = (self.clone(), table.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                () = index.stop.cancelled() => {}
                () = index.read_rewrites(&table) => {}
            }
            index.state().reading_rewrites = false;
        });
    }

    /// Reads the compacted files not read yet, until none is left, then
    /// forgets the files they replaced. A failed read leaves them for the
    /// next catch-up to start again.
    async fn read_rewrites(&self, table: &Table) {
        loop {
            let batch: Vec<(String, u64)> = self
                .state()
                .rewrites
                .iter()
                .map(|(path, size)| (path.clone(), *size))
                .collect();
            if batch.is_empty() {
                self.state().settle();
                return;
            }
            if let Err(e) = read_files(table, self, batch, Read::Rewrite).await {
                tracing::warn!(error = %e, "service index: reading compacted files failed; the files they replaced still stand in for them");
                return;
            }
        }
    }

    /// The live data files of `snapshot` with their sizes, from its manifest
    /// list and the manifests, each loaded once. A file is a rewrite when
    /// the snapshot that added it replaced files (a compaction) or, once
    /// that snapshot has expired, when some file the index holds has gone.
    async fn live_files(
        &self,
        table: &Table,
        snapshot: &iceberg::spec::SnapshotRef,
    ) -> Result<Vec<LiveFile>, QueryError> {
        let list = table
            .manifest_list_reader(snapshot)
            .load()
            .await
            .map_err(|e| failed("reading the manifest list", e))?;
        let mut files = Vec::new();
        let mut listed = HashSet::new();
        for manifest in list.entries() {
            if manifest.content != ManifestContentType::Data {
                continue;
            }
            listed.insert(manifest.manifest_path.clone());
            let known = self.state().manifests.get(&manifest.manifest_path).cloned();
            let entries = match known {
                Some(entries) => entries,
                None => {
                    let m = manifest
                        .load_manifest(table.file_io())
                        .await
                        .map_err(|e| failed(&manifest.manifest_path, e))?;
                    let entries: Vec<ManifestFile> = m
                        .entries()
                        .iter()
                        .filter(|e| e.is_alive() && e.content_type() == DataContentType::Data)
                        .map(|e| ManifestFile {
                            path: e.file_path().to_string(),
                            size: e.file_size_in_bytes(),
                            added_by: e.snapshot_id(),
                        })
                        .collect();
                    let entries = Arc::new(entries);
                    self.state()
                        .manifests
                        .insert(manifest.manifest_path.clone(), entries.clone());
                    entries
                }
            };
            files.extend(entries.iter().cloned());
        }
        let mut state = self.state();
        state.manifests.retain(|path, _| listed.contains(path));
        let paths: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
        let some_gone = state.files.keys().any(|p| !paths.contains(p.as_str()));
        let metadata = table.metadata();
        let rewrite =
            |added_by: Option<i64>| match added_by.and_then(|id| metadata.snapshot_by_id(id)) {
                Some(s) => s.summary().operation == SnapshotOperation::Replace,
                None => some_gone,
            };
        Ok(files
            .into_iter()
            .map(|f| LiveFile {
                rewrite: rewrite(f.added_by),
                path: f.path,
                size: f.size,
            })
            .collect())
    }

    /// Spans per key starting in the minutes that overlap `[from, to)`
    /// (Unix microseconds), by key.
    fn totals(&self, from_micros: i64, to_micros: i64) -> BTreeMap<Key, u64> {
        let state = self.state();
        let cells = state.files.values().flat_map(|f| &f.names);
        state.keys.totals(cells, minutes(from_micros, to_micros))
    }

    /// Calls per edge starting in the minutes that overlap `[from, to)`.
    fn call_totals(&self, from_micros: i64, to_micros: i64) -> BTreeMap<Edge, u64> {
        let state = self.state();
        let cells = state.files.values().flat_map(|f| &f.calls);
        state.edges.totals(cells, minutes(from_micros, to_micros))
    }

    /// The calls between services whose called span started in `[from,
    /// to)` (to the minute), by caller and callee, as of the last
    /// [`catch_up`](Self::catch_up); `true` when cut at `max_rows`.
    pub fn dependencies(
        &self,
        from_micros: i64,
        to_micros: i64,
        max_rows: usize,
    ) -> (Vec<Dependency>, bool) {
        let all = self.call_totals(from_micros, to_micros);
        let truncated = all.len() > max_rows;
        let list = all
            .into_iter()
            .take(max_rows)
            .map(|((parent, child), call_count)| Dependency {
                parent,
                child,
                call_count,
            })
            .collect();
        (list, truncated)
    }

    /// The services and their span names with spans in `[from, to)`, by
    /// service and name; `true` when cut at `max_rows` names.
    pub fn services(
        &self,
        from_micros: i64,
        to_micros: i64,
        max_rows: usize,
    ) -> (Vec<ServiceNames>, bool) {
        group_services(self.totals(from_micros, to_micros), max_rows)
    }

    /// The span names and kinds of `service` (every service when `None`)
    /// with spans in `[from, to)`, by service, name and kind; `true` when
    /// cut at `max_rows`.
    pub fn operations(
        &self,
        service: Option<&str>,
        from_micros: i64,
        to_micros: i64,
        max_rows: usize,
    ) -> (Vec<Operation>, bool) {
        list_operations(self.totals(from_micros, to_micros), service, max_rows)
    }
}

/// Span names grouped per service, by service and name; `true` when cut
/// at `max_rows` names.
fn group_services(totals: BTreeMap<Key, u64>, max_rows: usize) -> (Vec<ServiceNames>, bool) {
    let mut names: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (key, spans) in totals {
        *names.entry((key.service, key.name)).or_default() += spans;
    }
    let truncated = names.len() > max_rows;
    let mut services: Vec<ServiceNames> = Vec::new();
    for ((service, name), spans) in names.into_iter().take(max_rows) {
        match services.last_mut() {
            Some(last) if last.service == service => {
                last.names.push(name);
                last.span_count += spans;
            }
            _ => services.push(ServiceNames {
                service,
                names: vec![name],
                span_count: spans,
            }),
        }
    }
    (services, truncated)
}

/// The keys of `service` (all when `None`) as operations, by service, name
/// and kind; `true` when cut at `max_rows`.
fn list_operations(
    totals: BTreeMap<Key, u64>,
    service: Option<&str>,
    max_rows: usize,
) -> (Vec<Operation>, bool) {
    let all: Vec<Operation> = totals
        .into_keys()
        .filter(|key| service.is_none_or(|s| key.service == s))
        .map(|key| Operation {
            service: key.service,
            name: key.name,
            kind: key.kind,
        })
        .collect();
    let truncated = all.len() > max_rows;
    (all.into_iter().take(max_rows).collect(), truncated)
}

/// A data file as a manifest lists it.
#[derive(Debug, Clone)]
struct ManifestFile {
    path: String,
    size: u64,
    /// The snapshot that added it.
    added_by: Option<i64>,
}

/// Which files [`read_files`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Appended: counted as soon as read.
    Fresh,
    /// Written by a compaction: staged until the last one is read.
    Rewrite,
}

/// Reads `files` into `index`, a few at once, each recorded as soon as it
/// is read, so that a read cut short loses nothing it finished.
async fn read_files(
    table: &Table,
    index: &NameIndex,
    files: Vec<(String, u64)>,
    read: Read,
) -> Result<(), QueryError> {
    stream::iter(files)
        .map(|(path, size)| async move {
            let counts = read_file(table, &path, size).await?;
            let mut state = index.state();
            match read {
                Read::Fresh => state.insert(path, counts),
                Read::Rewrite => {
                    state.rewrites.remove(&path);
                    state.staged.insert(path, counts);
                }
            }
            Ok::<_, QueryError>(())
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect::<()>()
        .await
}

/// Spans per key and minute in one data file, read from its Parquet
/// columns directly (the columns were there from the table's first schema).
async fn read_file(table: &Table, path: &str, size: u64) -> Result<FileCounts, QueryError> {
    let input = table
        .file_io()
        .new_input(path)
        .map_err(|e| failed(path, e))?;
    let reader = input.reader().await.map_err(|e| failed(path, e))?;
    let file = ArrowFileReader::new(FileMetadata { size }, reader);
    let builder = ParquetRecordBatchStreamBuilder::new(file)
        .await
        .map_err(|e| failed(path, e))?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), COLUMNS);
    let mut batches = builder
        .with_projection(mask)
        .build()
        .map_err(|e| failed(path, e))?;
    let mut file = FileRead::default();
    while let Some(batch) = batches.try_next().await.map_err(|e| failed(path, e))? {
        file.add(&batch).map_err(|e| failed(path, e))?;
    }
    Ok(file.finish())
}

/// A span's place in its trace: its trace and span ids, hashed.
fn span_key(trace_id: &str, span_id: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = SPAN_KEYS.build_hasher();
    h.write(trace_id.as_bytes());
    h.write_u8(0);
    h.write(span_id.as_bytes());
    h.finish()
}

/// Fixed keys: the same ids hash the same within and across batches.
static SPAN_KEYS: std::sync::LazyLock<std::hash::RandomState> =
    std::sync::LazyLock::new(std::hash::RandomState::new);

/// One file as it is read: the names counted, and each span's service and
/// parent kept (as hashes and numbers) until the file's last batch, since a
/// parent may be in another row group.
#[derive(Default)]
struct FileRead {
    names: HashMap<(Key, i64), u64>,
    services: Keys<String>,
    /// Span (trace id, span id) hash → its service's number.
    owners: HashMap<u64, u32>,
    /// (trace id, parent span id) hash, the child's service, its minute.
    children: Vec<(u64, u32, i64)>,
}

impl FileRead {
    fn add(&mut self, batch: &RecordBatch) -> Result<(), String> {
        count_batch(batch, &mut self.names)?;
        let text = |i: usize| text_column(batch, COLUMNS[i]);
        let (services, traces, spans, parents) = (text(0)?, text(4)?, text(5)?, text(6)?);
        let starts = start_column(batch)?;
        for row in 0..batch.num_rows() {
            let service = self.services.number(text_at(services, row));
            let trace = traces.value(row);
            self.owners
                .insert(span_key(trace, spans.value(row)), service);
            if !parents.is_null(row) {
                let minute = starts.value(row).div_euclid(MICROS_PER_MINUTE);
                self.children
                    .push((span_key(trace, parents.value(row)), service, minute));
            }
        }
        Ok(())
    }

    /// The file's counts: a child whose parent is in the file and belongs
    /// to another service is one call.
    fn finish(self) -> FileCounts {
        let mut calls: HashMap<(Edge, i64), u64> = HashMap::new();
        let name = |n: u32| {
            self.services
                .all
                .get(n as usize)
                .cloned()
                .unwrap_or_default()
        };
        for (parent, child, minute) in &self.children {
            match self.owners.get(parent) {
                Some(owner) if owner != child => {
                    *calls
                        .entry(((name(*owner), name(*child)), *minute))
                        .or_default() += 1;
                }
                _ => {}
            }
        }
        FileCounts {
            names: self.names,
            calls,
        }
    }
}

/// Adds the spans of `batch` (the [`COLUMNS`], found by name) to `counts`.
fn count_batch(batch: &RecordBatch, counts: &mut HashMap<(Key, i64), u64>) -> Result<(), String> {
    let text = |i: usize| text_column(batch, COLUMNS[i]);
    let (services, names, kinds) = (text(0)?, text(1)?, text(2)?);
    let starts = start_column(batch)?;
    for row in 0..batch.num_rows() {
        let key = Key {
            service: text_at(services, row),
            name: text_at(names, row),
            kind: text_at(kinds, row),
        };
        let minute = starts.value(row).div_euclid(MICROS_PER_MINUTE);
        *counts.entry((key, minute)).or_default() += 1;
    }
    Ok(())
}

/// The string column `name` of `batch`.
fn text_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray, String> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| format!("column `{name}` is missing or not a string column"))
}

/// The `start_time` column of `batch`, in microseconds.
fn start_column(batch: &RecordBatch) -> Result<&TimestampMicrosecondArray, String> {
    batch
        .column_by_name(COLUMNS[3])
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or_else(|| "column `start_time` is missing or not a timestamp in microseconds".into())
}

/// The text at `row`, empty when null.
fn text_at(column: &StringArray, row: usize) -> String {
    if column.is_null(row) {
        String::new()
    } else {
        column.value(row).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::ArrayRef;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    /// Service, span name, kind, start (Unix µs).
    type Row<'a> = (&'a str, &'a str, &'a str, i64);

    fn batch(rows: &[Row]) -> RecordBatch {
        let text = |i: usize| {
            let values: Vec<&str> = rows.iter().map(|r| [r.0, r.1, r.2][i]).collect();
            Arc::new(StringArray::from(values)) as _
        };
        let schema = Schema::new(vec![
            Field::new("service_name", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new(
                "start_time",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                false,
            ),
        ]);
        let starts = TimestampMicrosecondArray::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())
            .with_timezone("+00:00");
        RecordBatch::try_new(
            Arc::new(schema),
            vec![text(0), text(1), text(2), Arc::new(starts)],
        )
        .expect("batch")
    }

    /// An index holding `files` as if read from a table.
    fn index(files: &[(&str, &[Row])]) -> NameIndex {
        let index = NameIndex::default();
        for (path, rows) in files {
            let mut names = HashMap::new();
            count_batch(&batch(rows), &mut names).expect("counted");
            let counts = FileCounts {
                names,
                calls: HashMap::new(),
            };
            index.state().insert(path.to_string(), counts);
        }
        index
    }

    /// Service, span id, parent span id, start minute; one trace.
    type Span<'a> = (&'a str, &'a str, Option<&'a str>, i64);

    fn span_batch(spans: &[Span]) -> RecordBatch {
        let strings = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as ArrayRef;
        let schema = Schema::new(
            COLUMNS
                .iter()
                .map(|name| match *name {
                    "start_time" => Field::new(
                        *name,
                        DataType::Timestamp(TimeUnit::Microsecond, None),
                        false,
                    ),
                    _ => Field::new(*name, DataType::Utf8, true),
                })
                .collect::<Vec<_>>(),
        );
        let columns: Vec<ArrayRef> = vec![
            strings(spans.iter().map(|s| Some(s.0)).collect()),
            strings(spans.iter().map(|_| Some("op")).collect()),
            strings(spans.iter().map(|_| Some("SERVER")).collect()),
            Arc::new(TimestampMicrosecondArray::from(
                spans
                    .iter()
                    .map(|s| s.3 * MICROS_PER_MINUTE)
                    .collect::<Vec<_>>(),
            )),
            strings(spans.iter().map(|_| Some("t1")).collect()),
            strings(spans.iter().map(|s| Some(s.1)).collect()),
            strings(spans.iter().map(|s| s.2).collect()),
        ];
        RecordBatch::try_new(Arc::new(schema), columns).expect("batch")
    }

    #[test]
    fn a_call_is_a_child_whose_parent_in_the_file_is_another_service() {
        let mut file = FileRead::default();
        // The child comes before its parent, in another batch.
        file.add(&span_batch(&[
            ("back", "b", Some("a"), 3),
            ("back", "c", Some("b"), 3),
            ("db", "d", Some("gone"), 3),
        ]))
        .expect("added");
        file.add(&span_batch(&[
            ("front", "a", None, 2),
            ("db", "e", Some("c"), 4),
        ]))
        .expect("added");
        let counts = file.finish();
        let edge = |p: &str, c: &str| (p.to_string(), c.to_string());
        assert_eq!(
            counts.calls,
            HashMap::from([
                ((edge("front", "back"), 3), 1),
                ((edge("back", "db"), 4), 1)
            ])
        );
        assert_eq!(counts.names.values().sum::<u64>(), 5);

        let index = NameIndex::default();
        index.state().insert("f".into(), counts);
        assert_eq!(
            index.call_totals(3 * MINUTE, 4 * MINUTE),
            BTreeMap::from([(edge("front", "back"), 1)])
        );
        assert_eq!(index.call_totals(0, 10 * MINUTE).len(), 2);
    }

    const MINUTE: i64 = MICROS_PER_MINUTE;

    #[test]
    fn totals_merge_files_and_keep_to_the_minutes_of_the_range() {
        let index = index(&[
            (
                "a",
                &[
                    ("front", "GET /", "SERVER", 10 * MINUTE + 1),
                    ("front", "GET /", "SERVER", 10 * MINUTE + 2),
                    ("db", "SELECT", "CLIENT", 11 * MINUTE),
                ],
            ),
            (
                "b",
                &[
                    ("front", "GET /", "SERVER", 10 * MINUTE + 5),
                    ("front", "GET /", "CLIENT", 12 * MINUTE),
                ],
            ),
        ]);
        let totals = index.totals(10 * MINUTE + 30, 11 * MINUTE);
        let key = |s: &str, n: &str, k: &str| Key {
            service: s.into(),
            name: n.into(),
            kind: k.into(),
        };
        // The minute that overlaps the range counts whole; 11:00 is out.
        assert_eq!(
            totals,
            BTreeMap::from([(key("front", "GET /", "SERVER"), 3)])
        );
        assert_eq!(index.totals(0, 13 * MINUTE).len(), 3);
        assert!(index.totals(13 * MINUTE, 14 * MINUTE).is_empty());
    }

    #[test]
    fn a_null_service_counts_as_the_empty_name() {
        let schema = Schema::new(vec![
            Field::new("service_name", DataType::Utf8, true),
            Field::new("name", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new(
                "start_time",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec![None::<&str>])),
                Arc::new(StringArray::from(vec!["op"])),
                Arc::new(StringArray::from(vec!["INTERNAL"])),
                Arc::new(TimestampMicrosecondArray::from(vec![-1])),
            ],
        )
        .expect("batch");
        let mut counts = HashMap::new();
        count_batch(&batch, &mut counts).expect("counted");
        let key = Key {
            service: String::new(),
            name: "op".into(),
            kind: "INTERNAL".into(),
        };
        // Before the epoch, the minute rounds down.
        assert_eq!(counts, HashMap::from([((key, -1), 1)]));
    }

    #[test]
    fn a_batch_of_other_types_is_refused_by_column() {
        let schema = Schema::new(vec![Field::new("service_name", DataType::Int64, false)]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(datafusion::arrow::array::Int64Array::from(vec![
                1,
            ]))],
        )
        .expect("batch");
        let e = count_batch(&batch, &mut HashMap::new()).expect_err("refused");
        assert!(e.contains("service_name"), "{e}");
    }

    #[test]
    fn services_and_operations_group_sort_and_cut() {
        let index = index(&[(
            "a",
            &[
                ("front", "b-op", "SERVER", MINUTE),
                ("front", "a-op", "SERVER", MINUTE),
                ("front", "a-op", "CLIENT", MINUTE),
                ("back", "q", "CLIENT", MINUTE),
            ],
        )]);
        let totals = || index.totals(0, 2 * MINUTE);
        let (services, cut) = group_services(totals(), 10);
        assert!(!cut);
        let listed: Vec<(&str, Vec<&str>, u64)> = services
            .iter()
            .map(|s| {
                let names = s.names.iter().map(String::as_str).collect();
                (s.service.as_str(), names, s.span_count)
            })
            .collect();
        assert_eq!(
            listed,
            [("back", vec!["q"], 1), ("front", vec!["a-op", "b-op"], 3)]
        );
        let (services, cut) = group_services(totals(), 2);
        assert!(cut);
        assert_eq!(services.iter().map(|s| s.names.len()).sum::<usize>(), 2);

        let (ops, cut) = list_operations(totals(), Some("front"), 10);
        assert!(!cut);
        let ops: Vec<(&str, &str)> = ops
            .iter()
            .map(|o| (o.name.as_str(), o.kind.as_str()))
            .collect();
        assert_eq!(
            ops,
            [("a-op", "CLIENT"), ("a-op", "SERVER"), ("b-op", "SERVER")]
        );
        let (ops, cut) = list_operations(totals(), None, 3);
        assert!(cut);
        assert_eq!(ops.len(), 3);
    }
}
