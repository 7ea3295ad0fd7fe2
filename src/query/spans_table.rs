//! The `spans` table as SQL sees it: Iceberg's provider, except that a
//! query with `trace_id = '…'` among its conditions plans through
//! [`lookup`], so that it skips files by their `trace_id` bloom filters as
//! `GET /admin/traces/{id}` does (iceberg-rust's reader prunes by manifest
//! bounds and row-group statistics, but reads no bloom filter).
//!
//! What the lookup skipped shows in `EXPLAIN ANALYZE` as the metrics of
//! `TraceLookupExec`: `files_planned`, `files_skipped_by_bloom`,
//! `files_skipped_by_statistics`, `files_read`, `row_groups`,
//! `row_groups_skipped_by_bloom`, `row_groups_skipped_by_statistics`,
//! `bytes_read`.
//! The other conditions are still applied above it: every filter is pushed
//! down as inexact, as Iceberg's provider does.
//!
//! An unfiltered scan says how many rows its snapshot holds (the summary's
//! `total-records`), so that DataFusion answers `SELECT count(*) FROM spans`
//! from metadata instead of decoding the table.

use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{ScalarValue, Statistics};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{BinaryExpr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::prelude::Expr;
use futures::{StreamExt, TryStreamExt};
use iceberg_datafusion::physical_plan::IcebergTableScan;

use super::lookup::{self, FileCache};
use crate::table::columns as column;
use crate::table::TableHandle;

/// Iceberg's provider for `spans`, with trace-id lookups of its own.
pub struct SpansTable {
    inner: Arc<dyn TableProvider>,
    table: TableHandle,
    files: FileCache,
}

impl std::fmt::Debug for SpansTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpansTable({})", self.table.ident)
    }
}

impl SpansTable {
    /// `files` is the cache the engine's other lookups share.
    pub fn new(inner: Arc<dyn TableProvider>, table: TableHandle, files: FileCache) -> Self {
        Self {
            inner,
            table,
            files,
        }
    }
}

/// The id of a `trace_id = '…'` condition (either way round).
fn trace_id_condition(filter: &Expr) -> Option<String> {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Eq,
        right,
    }) = filter
    else {
        return None;
    };
    let literal = |e: &Expr| match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::Utf8View(Some(s))
            | ScalarValue::LargeUtf8(Some(s)),
            _,
        ) => Some(s.clone()),
        _ => None,
    };
    let is_trace_id = |e: &Expr| matches!(e, Expr::Column(c) if c.name == column::TRACE_ID);
    match (left.as_ref(), right.as_ref()) {
        (l, r) if is_trace_id(l) => literal(r),
        (l, r) if is_trace_id(r) => literal(l),
        _ => None,
    }
}

#[async_trait]
impl TableProvider for SpansTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    /// Filters on a list, map or struct column (`links IS NOT NULL`) stay
    /// in DataFusion: Iceberg binds predicates to primitive fields only and
    /// fails the whole scan on one it cannot bind.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        let schema = self.inner.schema();
        let nested: Vec<bool> = filters
            .iter()
            .map(|f| {
                f.column_refs().iter().any(|c| {
                    schema
                        .field_with_name(&c.name)
                        .is_ok_and(|field| field.data_type().is_nested())
                })
            })
            .collect();
        let pushable: Vec<&Expr> = filters
            .iter()
            .zip(&nested)
            .filter(|(_, n)| !**n)
            .map(|(f, _)| *f)
            .collect();
        let mut answers = self.inner.supports_filters_pushdown(&pushable)?.into_iter();
        Ok(nested
            .iter()
            .map(|n| match n {
                true => TableProviderFilterPushDown::Unsupported,
                false => answers
                    .next()
                    .unwrap_or(TableProviderFilterPushDown::Unsupported),
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let Some(trace_id) = filters.iter().find_map(trace_id_condition) else {
            let plan = self.inner.scan(state, projection, filters, limit).await?;
            if filters.is_empty() && limit.is_none() {
                if let Some(rows) = snapshot_rows(plan.as_ref()) {
                    return Ok(Arc::new(CountedScan { inner: plan, rows }));
                }
            }
            return Ok(plan);
        };
        let schema = self.inner.schema();
        let (columns, output) = match projection {
            // Nothing to read (a bare count): Iceberg's scan does it.
            Some(p) if p.is_empty() => {
                return self.inner.scan(state, projection, filters, limit).await
            }
            Some(p) => (
                Some(p.iter().map(|i| schema.field(*i).name().clone()).collect()),
                Arc::new(schema.project(p)?),
            ),
            None => (None, schema),
        };
        Ok(Arc::new(TraceLookupExec::new(
            self.table.clone(),
            self.files.clone(),
            trace_id,
            columns,
            output,
        )))
    }
}

/// The rows of the snapshot an unfiltered Iceberg scan reads, from its
/// summary's `total-records`, when no delete file can make it differ.
fn snapshot_rows(plan: &dyn ExecutionPlan) -> Option<usize> {
    let scan = plan.as_any().downcast_ref::<IcebergTableScan>()?;
    let metadata = scan.table().metadata();
    let snapshot = match scan.snapshot_id() {
        Some(id) => metadata.snapshot_by_id(id)?.clone(),
        None => match metadata.current_snapshot() {
            Some(s) => s.clone(),
            None => return Some(0),
        },
    };
    let summary = &snapshot.summary().additional_properties;
    let zero = |key: &str| summary.get(key).is_none_or(|v| v == "0");
    if !(zero("total-delete-files")
        && zero("total-position-deletes")
        && zero("total-equality-deletes"))
    {
        return None;
    }
    summary.get("total-records")?.parse().ok()
}

/// Iceberg's scan of a whole snapshot, saying how many rows it holds:
/// DataFusion then answers `count(*)` from that figure, without reading a
/// file.
#[derive(Debug)]
struct CountedScan {
    inner: Arc<dyn ExecutionPlan>,
    rows: usize,
}

impl DisplayAs for CountedScan {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "CountedScan: rows={}, ", self.rows)?;
        match self.inner.as_any().downcast_ref::<IcebergTableScan>() {
            Some(scan) => scan.fmt_as(t, f),
            None => f.write_str(self.inner.name()),
        }
    }
}

impl ExecutionPlan for CountedScan {
    fn name(&self) -> &str {
        "CountedScan"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        self.inner.execute(partition, context)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.inner.metrics()
    }

    fn partition_statistics(&self, _: Option<usize>) -> DfResult<Statistics> {
        Ok(Statistics::new_unknown(&self.schema()).with_num_rows(Precision::Exact(self.rows)))
    }
}

/// Reads the files that may hold one trace, after bloom-filter pruning.
pub struct TraceLookupExec {
    table: TableHandle,
    files: FileCache,
    trace_id: String,
    columns: Option<Vec<String>>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl std::fmt::Debug for TraceLookupExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TraceLookupExec({})", self.trace_id)
    }
}

impl TraceLookupExec {
    fn new(
        table: TableHandle,
        files: FileCache,
        trace_id: String,
        columns: Option<Vec<String>>,
        schema: SchemaRef,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            table,
            files,
            trace_id,
            columns,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for TraceLookupExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "TraceLookupExec: trace_id={}, projection=[{}]",
            self.trace_id,
            self.columns
                .as_ref()
                .map_or_else(|| "*".to_string(), |c| c.join(", "))
        )
    }
}

impl ExecutionPlan for TraceLookupExec {
    fn name(&self) -> &str {
        "TraceLookupExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, _: usize, _: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let counter = |name: &'static str| {
            MetricBuilder::new(&self.metrics).global_counter(Cow::Borrowed(name))
        };
        let counters = [
            counter("files_planned"),
            counter("files_skipped_by_bloom"),
            counter("files_skipped_by_statistics"),
            counter("files_read"),
            counter("row_groups"),
            counter("row_groups_skipped_by_bloom"),
            counter("row_groups_skipped_by_statistics"),
        ];
        let bytes_read = MetricBuilder::new(&self.metrics).global_counter("bytes_read");
        let (handle, files, trace_id, columns) = (
            self.table.clone(),
            self.files.clone(),
            self.trace_id.clone(),
            self.columns.clone(),
        );
        let external = |e: Box<dyn std::error::Error + Send + Sync>| DataFusionError::External(e);
        let batches = async move {
            let table = handle.load().await.map_err(|e| external(Box::new(e)))?;
            let (tasks, stats) = lookup::plan_trace(&table, &files, &trace_id, columns)
                .await
                .map_err(|e| external(Box::new(e)))?;
            let figures = [
                stats.files_planned,
                stats.files_skipped_by_bloom,
                stats.files_skipped_by_statistics,
                stats.files_read,
                stats.row_groups,
                stats.row_groups_skipped_by_bloom,
                stats.row_groups_skipped_by_statistics,
            ];
            for (c, n) in counters.iter().zip(figures) {
                c.add(n);
            }
            let scan = lookup::read_tasks(&table, tasks).map_err(|e| external(Box::new(e)))?;
            let metrics = scan.metrics().clone();
            let rows = scan.stream().map_err(move |e| external(Box::new(e)));
            // Counted once the last batch is out.
            let done = futures::stream::once(async move {
                bytes_read.add(metrics.bytes_read() as usize);
                Ok::<_, DataFusionError>(None)
            });
            Ok::<_, DataFusionError>(
                rows.map_ok(Some)
                    .chain(done)
                    .try_filter_map(|b| async move { Ok(b) }),
            )
        };
        let stream = futures::stream::once(batches).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::trace_id_condition;
    use datafusion::prelude::{col, lit};

    #[test]
    fn a_trace_id_equality_either_way_round_is_a_lookup() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id_condition(&col("trace_id").eq(lit(id))).as_deref(),
            Some(id)
        );
        assert_eq!(
            trace_id_condition(&lit(id).eq(col("trace_id"))).as_deref(),
            Some(id)
        );
        assert_eq!(trace_id_condition(&col("span_id").eq(lit(id))), None);
        assert_eq!(trace_id_condition(&col("trace_id").gt(lit(id))), None);
        assert_eq!(
            trace_id_condition(&col("trace_id").eq(col("span_id"))),
            None
        );
    }
}
