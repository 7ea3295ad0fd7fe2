//! Trace search: the kept traces of a time range, filtered and summarised one
//! row per trace, for `GET /admin/traces` and the web UI's search page.
//!
//! As in Jaeger, every condition applies to one span: a trace matches when
//! one of its spans, starting within the range, satisfies them all (service,
//! span name, status, reason, duration, attributes).
//!
//! Two passes keep the work proportional to the page, not to the range:
//! 1. The matching spans are grouped by `trace_id` and only the `limit`
//!    newest (or longest) traces kept, newest first scanning back from the
//!    end of the range in growing windows ([`matching_ids`]).
//! 2. The spans of those traces alone are read back, by the trace lookup's
//!    bloom filters and min/max ([`lookup::plan_traces`]), and summarised
//!    here: root span, start, duration, span and error counts, reason.

use crate::table::columns as column;
use std::collections::HashMap;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::functions_aggregate::expr_fn::max;
use datafusion::prelude::{cast, col, lit, DataFrame, Expr, SessionContext};
use iceberg::table::Table;
use serde::Serialize;
use serde_json::Value;

use super::lookup;
use super::result::{to_json, QueryError, TABLE_NAME};

/// The order of the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchOrder {
    /// Newest first, by the latest matching span's start.
    #[default]
    Start,
    /// Longest first, by the longest matching span.
    Duration,
}

/// A span status to match, as stored in `status_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Error,
    Ok,
    Unset,
}

impl StatusFilter {
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "error" => Some(Self::Error),
            "ok" => Some(Self::Ok),
            "unset" => Some(Self::Unset),
            _ => None,
        }
    }

    fn stored(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Ok => "OK",
            Self::Unset => "UNSET",
        }
    }
}

/// What to search for. Times are Unix microseconds, `[from, to)`.
#[derive(Debug, Clone, Default)]
pub struct TraceSearch {
    pub from_micros: i64,
    pub to_micros: i64,
    pub service: Option<String>,
    pub name: Option<String>,
    pub status: Option<StatusFilter>,
    pub reason: Option<String>,
    pub min_duration_ms: Option<f64>,
    pub max_duration_ms: Option<f64>,
    /// `key=value` pairs a span attribute or its resource must have.
    pub attributes: Vec<(String, String)>,
    pub limit: usize,
    pub order: SearchOrder,
}

/// One trace of the results.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The root span's service and name: the span without a parent, or else
    /// the earliest span whose parent is not stored.
    pub root_service: Option<String>,
    pub root_name: Option<String>,
    /// Unix milliseconds of the earliest span's start.
    pub start_unix_ms: f64,
    pub start_time: String,
    /// From the earliest start to the latest end.
    pub duration_ms: f64,
    pub span_count: u64,
    pub error_count: u64,
    pub services: Vec<String>,
    /// Spans and error spans per service, by name.
    pub service_counts: Vec<ServiceCount>,
    pub sampling_reason: Option<String>,
    pub sampling_rule_id: Option<String>,
}

/// The spans of one service in a trace.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServiceCount {
    pub name: String,
    pub span_count: u64,
    pub error_count: u64,
}

/// A service and the span names it has in the range.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceNames {
    pub service: String,
    pub names: Vec<String>,
    pub span_count: u64,
}

fn timestamp(micros: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(micros),
        Some("+00:00".into()),
    ))
}

fn in_range(from_micros: i64, to_micros: i64) -> Expr {
    col(column::START_TIME)
        .gt_eq(timestamp(from_micros))
        .and(col(column::START_TIME).lt(timestamp(to_micros)))
}

impl TraceSearch {
    /// The condition one span starting in `[from, to)` must satisfy.
    fn span_condition(&self, from_micros: i64, to_micros: i64) -> Expr {
        let mut all = vec![in_range(from_micros, to_micros)];
        let mut eq = |column: &str, value: &Option<String>| {
            if let Some(v) = value {
                all.push(col(column).eq(lit(v.clone())));
            }
        };
        eq(column::SERVICE_NAME, &self.service);
        eq(column::NAME, &self.name);
        eq(column::SAMPLING_REASON, &self.reason);
        if let Some(status) = self.status {
            all.push(col(column::STATUS_CODE).eq(lit(status.stored())));
        }
        if let Some(min) = self.min_duration_ms {
            all.push(col(column::DURATION_MS).gt_eq(lit(min)));
        }
        if let Some(max) = self.max_duration_ms {
            all.push(col(column::DURATION_MS).lt_eq(lit(max)));
        }
        for (key, value) in &self.attributes {
            let on = |map: &str| get_field(col(map), key.as_str()).eq(lit(value.clone()));
            all.push(on(column::SPAN_ATTRIBUTES).or(on(column::RESOURCE_ATTRIBUTES)));
        }
        all.into_iter()
            .reduce(Expr::and)
            .unwrap_or_else(|| lit(true))
    }
}

/// Pass 1: the ids of the `limit` newest (or longest) matching traces.
///
/// Newest first, the range is scanned in windows back from `to`, each four
/// times the last ([`windows`]), until `limit` traces are found: every trace
/// not found yet has its latest matching span before the windows scanned,
/// so it cannot be newer than those found. Data files cover a stretch of
/// time each (a flush, or the flushes compaction merged), so Iceberg plans
/// only the files of a window, and a busy service's page costs about the
/// first window's files however wide the range. Longest first has no such
/// bound and scans the whole range.
pub(super) async fn matching_ids(
    ctx: &SessionContext,
    q: &TraceSearch,
) -> Result<Vec<String>, QueryError> {
    let ranges = match q.order {
        SearchOrder::Start => windows(q.from_micros, q.to_micros),
        SearchOrder::Duration => vec![(q.from_micros, q.to_micros)],
    };
    let mut best: HashMap<String, f64> = HashMap::new();
    for (from, to) in ranges {
        for (id, key) in top_traces(ctx, q, from, to).await? {
            let entry = best.entry(id).or_insert(key);
            *entry = entry.max(key);
        }
        if best.len() >= q.limit {
            break;
        }
    }
    let mut found: Vec<(String, f64)> = best.into_iter().collect();
    found.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    found.truncate(q.limit);
    Ok(found.into_iter().map(|(id, _)| id).collect())
}

/// The first window of a newest-first search: a 360th of the range (10 s
/// of an hour), at least 10 s. At 23,000 spans/s a minute held 1.4 M spans
/// and 180,000 traces to group for a page of 20.
const FIRST_WINDOW_MICROS: i64 = 10 * 1_000_000;
const FIRST_WINDOW_PARTS: i64 = 360;

/// `[from, to)` cut into adjacent windows, newest first, each four times
/// as wide as the one before.
fn windows(from: i64, to: i64) -> Vec<(i64, i64)> {
    let mut width = ((to - from) / FIRST_WINDOW_PARTS).max(FIRST_WINDOW_MICROS);
    let (mut upper, mut out) = (to, Vec::new());
    while upper > from {
        let lower = upper.saturating_sub(width).max(from);
        out.push((lower, upper));
        upper = lower;
        width = width.saturating_mul(4);
    }
    out
}

/// The `limit` traces of `[from, to)` with the latest start (or longest
/// span) among their matching spans, with that key. `max(…) ORDER BY …
/// DESC LIMIT n` is the shape DataFusion's top-k aggregation runs without
/// sorting every group.
async fn top_traces(
    ctx: &SessionContext,
    q: &TraceSearch,
    from: i64,
    to: i64,
) -> Result<Vec<(String, f64)>, QueryError> {
    let (key, as_number) = match q.order {
        SearchOrder::Start => (
            max(col(column::START_TIME)),
            cast(col("sort_key"), DataType::Int64),
        ),
        SearchOrder::Duration => (max(col(column::DURATION_MS)), col("sort_key")),
    };
    let df = spans(ctx)
        .await?
        .filter(q.span_condition(from, to))
        .and_then(|df| df.aggregate(vec![col(column::TRACE_ID)], vec![key.alias("sort_key")]))
        .and_then(|df| df.sort(vec![col("sort_key").sort(false, false)]))
        .and_then(|df| df.limit(0, Some(q.limit)))
        .and_then(|df| df.select(vec![col(column::TRACE_ID), as_number.alias("key")]))
        .map_err(QueryError::Invalid)?;
    let result = to_json(&df.collect().await.map_err(QueryError::Execution)?, q.limit)?;
    Ok(result
        .rows
        .into_iter()
        .filter_map(|row| Some((row.first()?.as_str()?.to_string(), row.get(1)?.as_f64()?)))
        .collect())
}

/// The columns pass 2 reads.
const SUMMARY_COLUMNS: [&str; 10] = [
    column::TRACE_ID,
    column::SPAN_ID,
    column::PARENT_SPAN_ID,
    column::SERVICE_NAME,
    column::NAME,
    column::STATUS_CODE,
    column::SAMPLING_REASON,
    column::SAMPLING_RULE_ID,
    column::START_TIME,
    column::END_TIME,
];

/// Pass 2: every stored span of these traces, found as `GET
/// /admin/traces/{id}` finds one trace (by bloom filter and min/max, one
/// footer read per file for all of them), summarised per trace, newest or
/// longest first.
pub(super) async fn summaries(
    table: &Table,
    files: &lookup::FileCache,
    ids: &[String],
    order: SearchOrder,
    max_rows: usize,
    max_bytes: usize,
) -> Result<(Vec<TraceSummary>, bool), QueryError> {
    if ids.is_empty() {
        return Ok((Vec::new(), false));
    }
    let columns = SUMMARY_COLUMNS.iter().map(|c| c.to_string()).collect();
    let (result, _) =
        lookup::find_traces(table, files, ids, Some(columns), max_rows, max_bytes).await?;
    let at: Vec<Option<usize>> = SUMMARY_COLUMNS
        .iter()
        .map(|name| result.columns.iter().position(|c| c == name))
        .collect();
    let mut by_trace: HashMap<String, Vec<SpanRow>> = HashMap::new();
    for row in result.rows {
        if let Some(span) = SpanRow::from_json(&row, &at) {
            by_trace
                .entry(span.trace_id.clone())
                .or_default()
                .push(span);
        }
    }
    let mut found: Vec<TraceSummary> = ids
        .iter()
        .filter_map(|id| by_trace.remove(id).map(|spans| summarise(id, &spans)))
        .collect();
    // Pass 1 chose the traces by their matching spans; the page is ordered
    // by what it shows, the whole trace's start or duration.
    match order {
        SearchOrder::Start => found.sort_by(|a, b| b.start_unix_ms.total_cmp(&a.start_unix_ms)),
        SearchOrder::Duration => found.sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms)),
    }
    Ok((found, result.truncated))
}

async fn spans(ctx: &SessionContext) -> Result<DataFrame, QueryError> {
    ctx.table(TABLE_NAME).await.map_err(QueryError::Invalid)
}

/// A span name of a service, with its span kind as stored (`SERVER`, …).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Operation {
    pub service: String,
    pub name: String,
    pub kind: String,
}

/// How often one service called another in `[from, to)`: a span whose
/// parent is stored beside it (see `names`) and belongs to another service
/// is one call.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Dependency {
    pub parent: String,
    pub child: String,
    pub call_count: u64,
}

/// One span as pass 2 reads it.
#[derive(Debug, Clone, Default)]
struct SpanRow {
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    service_name: Option<String>,
    name: String,
    status_code: String,
    sampling_reason: Option<String>,
    sampling_rule_id: Option<String>,
    start_micros: i64,
    end_micros: i64,
}

impl SpanRow {
    /// A row of [`SUMMARY_COLUMNS`], found at `at` (by name: the reader's
    /// column order is its own).
    fn from_json(row: &[Value], at: &[Option<usize>]) -> Option<Self> {
        let text = |i: usize| {
            at.get(i)
                .copied()
                .flatten()
                .and_then(|i| row.get(i))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let micros = |i: usize| {
            text(i)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.timestamp_micros())
        };
        Some(Self {
            trace_id: text(0)?,
            span_id: text(1)?,
            parent_span_id: text(2),
            service_name: text(3),
            name: text(4).unwrap_or_default(),
            status_code: text(5).unwrap_or_default(),
            sampling_reason: text(6),
            sampling_rule_id: text(7),
            start_micros: micros(8)?,
            end_micros: micros(9)?,
        })
    }
}

/// One trace's summary from its spans (at least one).
fn summarise(trace_id: &str, spans: &[SpanRow]) -> TraceSummary {
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let start = spans.iter().map(|s| s.start_micros).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_micros).max().unwrap_or(start);
    // The span without a parent; else the earliest whose parent is missing.
    let root = spans
        .iter()
        .filter(|s| s.parent_span_id.is_none())
        .min_by_key(|s| s.start_micros)
        .or_else(|| {
            spans
                .iter()
                .filter(|s| {
                    s.parent_span_id
                        .as_deref()
                        .is_some_and(|p| !ids.contains(p))
                })
                .min_by_key(|s| s.start_micros)
        });
    let mut counts: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for span in spans {
        if let Some(service) = span.service_name.as_deref() {
            let (all, errors) = counts.entry(service).or_default();
            *all += 1;
            *errors += u64::from(span.status_code == "ERROR");
        }
    }
    let services: Vec<String> = counts.keys().map(|s| s.to_string()).collect();
    let service_counts = counts
        .into_iter()
        .map(|(name, (span_count, error_count))| ServiceCount {
            name: name.to_string(),
            span_count,
            error_count,
        })
        .collect();
    let first = spans.first();
    TraceSummary {
        trace_id: trace_id.to_string(),
        root_service: root.and_then(|r| r.service_name.clone()),
        root_name: root.map(|r| r.name.clone()),
        start_unix_ms: start as f64 / 1e3,
        start_time: chrono::DateTime::from_timestamp_micros(start)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .unwrap_or_default(),
        duration_ms: (end - start).max(0) as f64 / 1e3,
        span_count: spans.len() as u64,
        error_count: spans.iter().filter(|s| s.status_code == "ERROR").count() as u64,
        services,
        service_counts,
        sampling_reason: first.and_then(|s| s.sampling_reason.clone()),
        sampling_rule_id: spans.iter().find_map(|s| s.sampling_rule_id.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(
        id: &str,
        parent: Option<&str>,
        service: &str,
        start: i64,
        end: i64,
        status: &str,
    ) -> SpanRow {
        SpanRow {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            service_name: Some(service.into()),
            name: format!("op-{id}"),
            status_code: status.into(),
            sampling_reason: Some("error".into()),
            sampling_rule_id: None,
            start_micros: start,
            end_micros: end,
        }
    }

    #[test]
    fn the_summary_covers_every_span() {
        let spans = [
            span("b", Some("a"), "db", 2_000, 3_000, "OK"),
            span("a", None, "web", 1_000, 9_000, "ERROR"),
            span("c", Some("b"), "db", 2_500, 12_000, "ERROR"),
        ];
        let s = summarise("t", &spans);
        assert_eq!(s.root_name.as_deref(), Some("op-a"));
        assert_eq!(s.root_service.as_deref(), Some("web"));
        assert_eq!(s.duration_ms, 11.0, "earliest start to latest end");
        assert_eq!(s.start_unix_ms, 1.0);
        assert_eq!((s.span_count, s.error_count), (3, 2));
        assert_eq!(s.services, vec!["db".to_string(), "web".to_string()]);
        let count = |name: &str, span_count, error_count| ServiceCount {
            name: name.into(),
            span_count,
            error_count,
        };
        assert_eq!(
            s.service_counts,
            vec![count("db", 2, 1), count("web", 1, 1)]
        );
        assert_eq!(s.start_time, "1970-01-01T00:00:00.001000Z");
    }

    #[test]
    fn without_a_parentless_span_the_earliest_orphan_is_the_root() {
        let spans = [
            span("c", Some("b"), "db", 2_500, 3_000, "OK"),
            span("b", Some("gone"), "api", 2_000, 4_000, "OK"),
        ];
        let s = summarise("t", &spans);
        assert_eq!(
            s.root_name.as_deref(),
            Some("op-b"),
            "its parent is not stored"
        );
        assert_eq!(s.error_count, 0);
    }

    #[test]
    fn windows_cover_the_range_newest_first_and_grow() {
        let hour = 3_600 * 1_000_000;
        let w = windows(0, hour);
        assert_eq!(w.first().map(|w| w.1), Some(hour), "newest first");
        assert_eq!(w.last().map(|w| w.0), Some(0), "down to from");
        assert!(
            w.windows(2).all(|p| p[0].0 == p[1].1),
            "adjacent, no gap or overlap: {w:?}"
        );
        assert_eq!(
            w[0].1 - w[0].0,
            FIRST_WINDOW_MICROS,
            "a 360th of an hour is 10 s"
        );
        assert_eq!(w[1].1 - w[1].0, 4 * FIRST_WINDOW_MICROS);
        assert_eq!(w.len(), 6, "10, 40, 160, 640, 2560 s, then the rest: {w:?}");
        let week = 7 * 24 * hour;
        assert_eq!(
            windows(0, week)[0].1 - windows(0, week)[0].0,
            week / FIRST_WINDOW_PARTS
        );
        let minute = 60 * 1_000_000;
        assert_eq!(
            windows(0, minute)[0].1 - windows(0, minute)[0].0,
            FIRST_WINDOW_MICROS,
            "at least 10 s"
        );
        assert_eq!(
            windows(5, 6),
            vec![(5, 6)],
            "a range narrower than a window"
        );
        assert!(windows(6, 6).is_empty());
    }

    #[test]
    fn statuses_parse_in_any_case() {
        assert_eq!(StatusFilter::parse("ERROR"), Some(StatusFilter::Error));
        assert_eq!(StatusFilter::parse("ok"), Some(StatusFilter::Ok));
        assert_eq!(StatusFilter::parse("Unset"), Some(StatusFilter::Unset));
        assert_eq!(StatusFilter::parse("failed"), None);
    }

    #[test]
    fn every_condition_applies_to_the_same_span() {
        let q = TraceSearch {
            from_micros: 0,
            to_micros: 10,
            service: Some("web".into()),
            status: Some(StatusFilter::Error),
            attributes: vec![("http.route".into(), "/x".into())],
            ..Default::default()
        };
        let text = q.span_condition(q.from_micros, q.to_micros).to_string();
        for part in [
            "service_name = Utf8(\"web\")",
            "status_code = Utf8(\"ERROR\")",
            "http.route",
            "resource_attributes",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
        assert!(!text.contains("sampling_reason"), "no reason asked: {text}");
    }
}
