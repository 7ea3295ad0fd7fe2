//! The service and operation lists without scanning the table.
//!
//! Grafana, the Jaeger UI and the web UI ask for the services and their
//! operations every time a search form opens; a `GROUP BY` over days of spans
//! for each would grow with the table. Data files never change once written,
//! so what a file holds is read once: per distinct (service, span name, span
//! kind) and minute of start time, how many spans. A list plans the current
//! snapshot's files (the manifests only, and only when the snapshot moved),
//! reads the few columns of the files it has not seen yet, forgets the files
//! the snapshot no longer holds (compacted or expired) and merges the rest.
//! After the first list only the files committed since the last one are
//! read; a rewrite by compaction is read once more.
//!
//! The index lives in the process and is rebuilt from the files after a
//! restart. Ranges are honoured to the minute: a list for `[from, to)`
//! includes the minutes that overlap it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::TimestampMicrosecondType;
use futures::{stream, StreamExt, TryStreamExt};
use iceberg::scan::FileScanTask;
use iceberg::table::Table;

use super::lookup::read_tasks;
use super::search::{Operation, ServiceNames};
use super::QueryError;

/// Files read at once when the index catches up.
const READ_CONCURRENCY: usize = 4;
const MICROS_PER_MINUTE: i64 = 60_000_000;
/// The columns a file's summary is read from, in this order.
const COLUMNS: [&str; 4] = ["service_name", "name", "kind", "start_time"];

/// A service, one of its span names and that name's span kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    service: String,
    name: String,
    kind: String,
}

/// Spans of one key starting in one minute of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cell {
    key: u32,
    minute: i64,
    spans: u64,
}

/// The keys, numbered once for every file that holds them.
#[derive(Debug, Default)]
struct Keys {
    all: Vec<Key>,
    numbers: HashMap<Key, u32>,
}

impl Keys {
    fn number(&mut self, key: Key) -> u32 {
        if let Some(n) = self.numbers.get(&key) {
            return *n;
        }
        let n = self.all.len() as u32;
        self.all.push(key.clone());
        self.numbers.insert(key, n);
        n
    }
}

#[derive(Debug, Default)]
struct State {
    keys: Keys,
    /// Per data file path, what it holds.
    files: HashMap<String, Vec<Cell>>,
    /// The snapshot whose files `files` holds exactly, once caught up.
    snapshot: Option<i64>,
}

/// Per data file, the services, span names and kinds it holds by minute.
/// Clones share one index.
#[derive(Debug, Clone, Default)]
pub struct NameIndex {
    state: Arc<Mutex<State>>,
    /// One catch-up at a time; the others wait and find it done.
    catching_up: Arc<tokio::sync::Mutex<()>>,
}

fn failed(what: &str, e: impl std::fmt::Display) -> QueryError {
    QueryError::Unavailable(format!("service index: {what}: {e}"))
}

impl NameIndex {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves whole entries only.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the index to `table`'s current snapshot. Files are recorded
    /// as they are read, so a catch-up cut short by the query timeout is
    /// not lost: the next one goes on from there.
    async fn catch_up(&self, table: &Table) -> Result<(), QueryError> {
        let _one = self.catching_up.lock().await;
        let snapshot = table.metadata().current_snapshot_id();
        if snapshot.is_none() || self.state().snapshot == snapshot {
            return Ok(());
        }
        let scan = table
            .scan()
            .select(COLUMNS)
            .build()
            .map_err(|e| failed("planning", e))?;
        let tasks: Vec<FileScanTask> = scan
            .plan_files()
            .await
            .map_err(|e| failed("planning", e))?
            .try_collect()
            .await
            .map_err(|e| failed("planning", e))?;
        let live: HashSet<&str> = tasks.iter().map(|t| t.data_file_path.as_str()).collect();
        let unread: Vec<FileScanTask> = {
            let mut state = self.state();
            state.files.retain(|path, _| live.contains(path.as_str()));
            tasks
                .iter()
                .filter(|t| !state.files.contains_key(&t.data_file_path))
                .cloned()
                .collect()
        };
        stream::iter(unread)
            .map(|task| async move {
                let path = task.data_file_path.clone();
                let counts = read_file(table, task).await?;
                let mut state = self.state();
                let cells = counts
                    .into_iter()
                    .map(|((key, minute), spans)| Cell {
                        key: state.keys.number(key),
                        minute,
                        spans,
                    })
                    .collect();
                state.files.insert(path, cells);
                Ok::<_, QueryError>(())
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        self.state().snapshot = snapshot;
        Ok(())
    }

    /// Spans per key starting in the minutes that overlap `[from, to)`
    /// (Unix microseconds), by key.
    fn totals(&self, from_micros: i64, to_micros: i64) -> BTreeMap<Key, u64> {
        let first = from_micros.div_euclid(MICROS_PER_MINUTE);
        let last = (to_micros - 1).div_euclid(MICROS_PER_MINUTE);
        let state = self.state();
        let mut totals: HashMap<u32, u64> = HashMap::new();
        for cell in state.files.values().flatten() {
            if (first..=last).contains(&cell.minute) {
                *totals.entry(cell.key).or_default() += cell.spans;
            }
        }
        totals
            .into_iter()
            .filter_map(|(n, spans)| Some((state.keys.all.get(n as usize)?.clone(), spans)))
            .collect()
    }

    /// The services and their span names with spans in `[from, to)`, by
    /// service and name; `true` when cut at `max_rows` names.
    pub async fn services(
        &self,
        table: &Table,
        from_micros: i64,
        to_micros: i64,
        max_rows: usize,
    ) -> Result<(Vec<ServiceNames>, bool), QueryError> {
        self.catch_up(table).await?;
        Ok(group_services(
            self.totals(from_micros, to_micros),
            max_rows,
        ))
    }

    /// The span names and kinds of `service` (every service when `None`)
    /// with spans in `[from, to)`, by service, name and kind; `true` when
    /// cut at `max_rows`.
    pub async fn operations(
        &self,
        table: &Table,
        service: Option<&str>,
        from_micros: i64,
        to_micros: i64,
        max_rows: usize,
    ) -> Result<(Vec<Operation>, bool), QueryError> {
        self.catch_up(table).await?;
        let totals = self.totals(from_micros, to_micros);
        Ok(list_operations(totals, service, max_rows))
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

/// Spans per key and minute in one data file.
async fn read_file(
    table: &Table,
    task: FileScanTask,
) -> Result<HashMap<(Key, i64), u64>, QueryError> {
    let path = task.data_file_path.clone();
    let mut batches = read_tasks(table, vec![task])?.stream();
    let mut counts = HashMap::new();
    while let Some(batch) = batches.try_next().await.map_err(|e| failed(&path, e))? {
        count_batch(&batch, &mut counts).map_err(|e| failed(&path, e))?;
    }
    Ok(counts)
}

/// Adds the spans of `batch` (the [`COLUMNS`], in order) to `counts`.
fn count_batch(batch: &RecordBatch, counts: &mut HashMap<(Key, i64), u64>) -> Result<(), String> {
    let text = |i: usize| {
        batch
            .columns()
            .get(i)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| format!("column `{}` is not a string column", COLUMNS[i]))
    };
    let (services, names, kinds) = (text(0)?, text(1)?, text(2)?);
    let starts = batch
        .columns()
        .get(3)
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or("column `start_time` is not a timestamp in microseconds")?;
    let value = |a: &datafusion::arrow::array::StringArray, row: usize| {
        if a.is_null(row) {
            String::new()
        } else {
            a.value(row).to_string()
        }
    };
    for row in 0..batch.num_rows() {
        let key = Key {
            service: value(services, row),
            name: value(names, row),
            kind: value(kinds, row),
        };
        let minute = starts.value(row).div_euclid(MICROS_PER_MINUTE);
        *counts.entry((key, minute)).or_default() += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{StringArray, TimestampMicrosecondArray};
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
            let mut counts = HashMap::new();
            count_batch(&batch(rows), &mut counts).expect("counted");
            let mut state = index.state();
            let cells = counts
                .into_iter()
                .map(|((key, minute), spans)| Cell {
                    key: state.keys.number(key),
                    minute,
                    spans,
                })
                .collect();
            state.files.insert(path.to_string(), cells);
        }
        index
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
