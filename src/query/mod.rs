//! Read-only SQL over the spans table with DataFusion.
//!
//! Two independent guards keep it read-only: the statement must parse as one
//! of `SELECT`/`WITH`/`EXPLAIN`/`SHOW`/`DESCRIBE`, and the planned query must
//! pass DataFusion's own `SQLOptions` with DDL, DML and statements disallowed
//! (which also catches `SELECT … INTO`).

use std::time::{Duration, Instant};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::CatalogProvider;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use iceberg_datafusion::IcebergCatalogProvider;
use serde::Serialize;

use crate::table::TableHandle;

pub mod bounded_udf;
pub mod catalog;
pub mod lookup;
pub mod names;
mod result;
pub mod search;
pub mod spans_table;

use result::to_json;
pub use result::{QueryError, QueryResult, TABLE_NAME};

/// What [`QueryEngine::search`] found.
#[derive(Debug, Serialize)]
pub struct SearchResult {
    pub traces: Vec<search::TraceSummary>,
    pub truncated: bool,
    pub elapsed_ms: u64,
    /// Of which finding the matching traces (pass 1); the rest is reading
    /// their spans back (pass 2).
    pub match_ms: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub max_rows: usize,
    pub timeout: Duration,
    /// The memory pool all running queries share.
    pub max_memory_bytes: usize,
    /// The largest result a query may return, in Arrow bytes; also bounds
    /// what `repeat`, `lpad` and `rpad` may build.
    pub max_result_bytes: usize,
    /// What trace lookups keep of the files they read (footers and bloom
    /// filters), in bytes.
    pub file_cache_bytes: usize,
    /// How often the service index catches up on its own while lists are
    /// asked for, so that a list reads only what the last moments added.
    pub index_refresh: Duration,
}

/// One catch-up of the service index between lists; a failure waits for
/// the next (a list reports its own).
async fn refresh(index: &names::NameIndex, table: &TableHandle) {
    let caught_up = match table.load().await {
        Ok(table) => index.catch_up(&table).await,
        Err(e) => Err(QueryError::Unavailable(e.to_string())),
    };
    if let Err(e) = caught_up {
        tracing::debug!(error = %e, "service index refresh failed");
    }
}

/// A SQL engine over the table. Each query plans against the latest snapshot,
/// because the Iceberg provider reloads the table's metadata on every scan.
#[derive(Clone)]
pub struct QueryEngine {
    ctx: SessionContext,
    limits: QueryLimits,
    table: TableHandle,
    names: names::NameIndex,
    /// Footers and bloom filters the trace lookups read, shared by SQL's.
    files: lookup::FileCache,
}

impl QueryEngine {
    /// Registers the table as `spans`. The table must exist already.
    pub async fn new(table: &TableHandle, limits: QueryLimits) -> Result<Self, QueryError> {
        let config = SessionConfig::new().with_information_schema(true);
        // A bounded pool and no spilling: a query that needs more memory fails
        // instead of growing the process (or filling the disk).
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(limits.max_memory_bytes, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(QueryError::catalog)?;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        bounded_udf::register(&ctx, limits.max_result_bytes);
        let view = catalog::SingleTableCatalog::new(table.catalog.clone(), table.ident.clone());
        let provider = IcebergCatalogProvider::try_new(std::sync::Arc::new(view))
            .await
            .map_err(QueryError::catalog)?;
        let ns = table.ident.namespace().to_url_string();
        let schema = provider
            .schema(&ns)
            .ok_or_else(|| QueryError::Unavailable(format!("namespace `{ns}` not found")))?;
        let spans = schema
            .table(table.ident.name())
            .await
            .map_err(QueryError::catalog)?
            .ok_or_else(|| QueryError::Unavailable(format!("table `{}` not found", table.ident)))?;
        let files = lookup::FileCache::new(limits.file_cache_bytes);
        let spans = std::sync::Arc::new(spans_table::SpansTable::new(
            spans,
            table.clone(),
            files.clone(),
        ));
        ctx.register_table(TABLE_NAME, spans)
            .map_err(QueryError::catalog)?;
        Ok(Self {
            ctx,
            limits,
            table: table.clone(),
            names: names::NameIndex::default(),
            files,
        })
    }

    /// The engine with its background work (reading what compaction
    /// rewrote into the service index) on `tasks`, stopped by `stop`.
    pub fn with_background(
        mut self,
        tasks: tokio_util::task::TaskTracker,
        stop: tokio_util::sync::CancellationToken,
    ) -> Self {
        self.names = names::NameIndex::with_tasks(tasks.clone(), stop.clone());
        let (index, table, every) = (
            self.names.clone(),
            self.table.clone(),
            self.limits.index_refresh,
        );
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                if index.in_demand() {
                    refresh(&index, &table).await;
                }
            }
        });
        self
    }

    /// The table at its latest snapshot, for a read that plans its own files.
    async fn load_table(&self) -> Result<iceberg::table::Table, QueryError> {
        self.table.load().await.map_err(QueryError::catalog)
    }

    /// The spans of one trace (lowercase hex id), within the row and time
    /// limits, skipping files by their `trace_id` bloom filters
    /// ([`lookup`]).
    pub async fn find_trace(
        &self,
        trace_id: &str,
    ) -> Result<(QueryResult, lookup::LookupStats), QueryError> {
        let started = Instant::now();
        let run = async {
            let table = self.load_table().await?;
            let limits = self.limits;
            lookup::find_trace(
                &table,
                &self.files,
                trace_id,
                limits.max_rows,
                limits.max_result_bytes,
            )
            .await
        };
        let (mut result, stats) = self.within_limits(run).await?;
        result.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok((result, stats))
    }

    /// The traces matching `q` ([`search`]), newest or longest first, within
    /// the time limit; `truncated` when their spans exceeded the row limit.
    pub async fn search(&self, q: &search::TraceSearch) -> Result<SearchResult, QueryError> {
        let started = Instant::now();
        let mut match_ms = 0;
        let run = async {
            let ids = search::matching_ids(&self.ctx, q).await?;
            match_ms = started.elapsed().as_millis() as u64;
            let table = self.load_table().await?;
            let limits = self.limits;
            search::summaries(
                &table,
                &self.files,
                &ids,
                q.order,
                limits.max_rows,
                limits.max_result_bytes,
            )
            .await
        };
        let (traces, truncated) = self.within_limits(run).await?;
        Ok(SearchResult {
            traces,
            truncated,
            elapsed_ms: started.elapsed().as_millis() as u64,
            match_ms,
        })
    }

    /// The ids of the traces matching `q`, newest or longest first by their
    /// matching spans: [`search`]'s first pass alone, for callers that read
    /// the traces whole next (the Jaeger API) and would otherwise read them
    /// twice.
    pub async fn search_ids(&self, q: &search::TraceSearch) -> Result<Vec<String>, QueryError> {
        self.within_limits(search::matching_ids(&self.ctx, q)).await
    }

    /// The [`names`] index, brought to the latest snapshot within the time
    /// limit.
    async fn names(&self) -> Result<&names::NameIndex, QueryError> {
        self.names.asked();
        let run = async {
            let table = self.load_table().await?;
            self.names.catch_up(&table).await
        };
        self.within_limits(run).await?;
        Ok(&self.names)
    }

    /// The services and their span names with spans starting in the
    /// minutes that overlap `[from, to)` (Unix microseconds), from the
    /// [`names`] index rather than a scan.
    pub async fn services(
        &self,
        from_micros: i64,
        to_micros: i64,
    ) -> Result<Vec<search::ServiceNames>, QueryError> {
        let index = self.names().await?;
        Ok(index
            .services(from_micros, to_micros, self.limits.max_rows)
            .0)
    }

    /// The span names and kinds of `service` (every service when `None`)
    /// with spans starting in the minutes that overlap `[from, to)` (Unix
    /// microseconds), from the [`names`] index.
    pub async fn operations(
        &self,
        service: Option<&str>,
        from_micros: i64,
        to_micros: i64,
    ) -> Result<Vec<search::Operation>, QueryError> {
        let index = self.names().await?;
        let max_rows = self.limits.max_rows;
        Ok(index
            .operations(service, from_micros, to_micros, max_rows)
            .0)
    }

    /// Service-to-service call counts of the spans starting in the minutes
    /// that overlap `[from, to)`, from the [`names`] index.
    pub async fn dependencies(
        &self,
        from_micros: i64,
        to_micros: i64,
    ) -> Result<Vec<search::Dependency>, QueryError> {
        let index = self.names().await?;
        Ok(index
            .dependencies(from_micros, to_micros, self.limits.max_rows)
            .0)
    }

    /// The spans of several traces (lowercase hex ids) in one read, within
    /// the row and time limits ([`lookup::find_traces`]).
    pub async fn find_traces(&self, trace_ids: &[String]) -> Result<QueryResult, QueryError> {
        let started = Instant::now();
        let run = async {
            let table = self.load_table().await?;
            let limits = self.limits;
            lookup::find_traces(
                &table,
                &self.files,
                trace_ids,
                None,
                limits.max_rows,
                limits.max_result_bytes,
            )
            .await
        };
        let (mut result, _) = self.within_limits(run).await?;
        result.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(result)
    }

    /// Runs `work` within the time limit, telling memory exhaustion apart
    /// from other execution failures. Dropping the future on timeout
    /// cancels every stream of its plans.
    async fn within_limits<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, QueryError>>,
    ) -> Result<T, QueryError> {
        let limit = self.limits.max_memory_bytes;
        match tokio::time::timeout(self.limits.timeout, work).await {
            Err(_) => Err(QueryError::Timeout(self.limits.timeout)),
            Ok(Err(QueryError::Execution(e))) => {
                Err(execution_error(e, limit, self.limits.max_result_bytes))
            }
            Ok(Err(QueryError::Invalid(e))) if e.to_string().contains(bounded_udf::REFUSAL) => {
                Err(QueryError::TooLarge {
                    limit: self.limits.max_result_bytes,
                    reason: e.to_string(),
                })
            }
            Ok(other) => other,
        }
    }

    /// Runs one read-only statement within the row and time limits.
    pub async fn query(&self, sql: &str) -> Result<QueryResult, QueryError> {
        check_read_only(sql)?;
        let started = Instant::now();
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let max_rows = self.limits.max_rows;
        let run = async {
            let df = self
                .ctx
                .sql_with_options(sql, options)
                .await
                .map_err(QueryError::Invalid)?;
            // One row more than the cap tells whether the result was cut.
            // `EXPLAIN [ANALYZE]` must stay the root of its plan (DataFusion
            // refuses a limit above it), and its output is small anyway.
            let explains = matches!(
                df.logical_plan(),
                LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)
            );
            let df = if explains {
                df
            } else {
                df.limit(0, Some(max_rows + 1))
                    .map_err(QueryError::Invalid)?
            };
            collect_within(df, self.limits.max_result_bytes).await
        };
        let batches = self.within_limits(run).await?;
        let mut result = to_json(&batches, max_rows)?;
        result.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(result)
    }
}

/// Tells a query that ran out of its memory pool, or would have built too
/// large a result, from other failures.
fn execution_error(e: DataFusionError, limit: usize, max_result_bytes: usize) -> QueryError {
    match e.find_root() {
        DataFusionError::ResourcesExhausted(reason) => QueryError::OutOfMemory {
            limit,
            reason: reason.clone(),
        },
        root if root.to_string().contains(bounded_udf::REFUSAL) => QueryError::TooLarge {
            limit: max_result_bytes,
            reason: root.to_string(),
        },
        _ => QueryError::Execution(e),
    }
}

/// Collects the result batch by batch, refusing it once it holds more than
/// `max_bytes`: a result is built outside the memory pool, and then copied
/// again as JSON.
async fn collect_within(
    df: datafusion::dataframe::DataFrame,
    max_bytes: usize,
) -> Result<Vec<RecordBatch>, QueryError> {
    use futures::StreamExt;
    let mut stream = df.execute_stream().await.map_err(QueryError::Execution)?;
    let mut batches = Vec::new();
    let mut bytes = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(QueryError::Execution)?;
        bytes += batch.get_array_memory_size();
        if bytes > max_bytes {
            return Err(QueryError::TooLarge {
                limit: max_bytes,
                reason: format!(
                    "more than {bytes} bytes after {} batches",
                    batches.len() + 1
                ),
            });
        }
        batches.push(batch);
    }
    Ok(batches)
}

/// Accepts exactly one `SELECT`/`WITH`/`EXPLAIN`/`SHOW`/`DESCRIBE` statement.
pub fn check_read_only(sql: &str) -> Result<(), QueryError> {
    let statements = DFParser::parse_sql(sql).map_err(QueryError::Invalid)?;
    if statements.len() != 1 {
        return Err(QueryError::BadRequest(format!(
            "exactly one statement is allowed, got {}",
            statements.len()
        )));
    }
    let allowed = statements.front().is_some_and(statement_is_read_only);
    if allowed {
        Ok(())
    } else {
        Err(QueryError::BadRequest(
            "only read-only statements are allowed: SELECT, WITH, EXPLAIN, SHOW, DESCRIBE".into(),
        ))
    }
}

fn statement_is_read_only(statement: &DfStatement) -> bool {
    match statement {
        DfStatement::Statement(s) => sql_statement_is_read_only(s),
        DfStatement::Explain(e) => statement_is_read_only(&e.statement),
        DfStatement::CreateExternalTable(_) | DfStatement::CopyTo(_) | DfStatement::Reset(_) => {
            false
        }
    }
}

fn sql_statement_is_read_only(statement: &SqlStatement) -> bool {
    match statement {
        SqlStatement::Query(_)
        | SqlStatement::ExplainTable { .. }
        | SqlStatement::ShowTables { .. }
        | SqlStatement::ShowColumns { .. }
        | SqlStatement::ShowFunctions { .. }
        | SqlStatement::ShowVariable { .. } => true,
        SqlStatement::Explain { statement, .. } => sql_statement_is_read_only(statement),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_statements_pass() {
        for sql in [
            "SELECT count(*) FROM spans",
            "with t as (select 1) select * from t",
            "EXPLAIN SELECT * FROM spans",
            "SHOW TABLES",
            "SHOW COLUMNS FROM spans",
            "DESCRIBE spans",
        ] {
            check_read_only(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn everything_else_is_refused() {
        for sql in [
            "DROP TABLE spans",
            "INSERT INTO spans VALUES (1)",
            "DELETE FROM spans",
            "UPDATE spans SET name = 'x'",
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "CREATE TABLE x AS SELECT 1",
            "COPY spans TO '/tmp/x.parquet'",
            "SET datafusion.execution.batch_size = 1",
            "EXPLAIN ANALYZE INSERT INTO spans VALUES (1)",
            "EXPLAIN COPY spans TO '/tmp/x'",
            "SELECT 1; DROP TABLE spans",
            "RESET datafusion.execution.batch_size",
        ] {
            assert!(
                matches!(check_read_only(sql), Err(QueryError::BadRequest(_))),
                "{sql} must be refused"
            );
        }
    }

    #[test]
    fn syntax_errors_carry_the_parser_message() {
        let err = check_read_only("SELEC * FROM spans")
            .unwrap_err()
            .to_string();
        assert!(err.contains("SELEC"), "{err}");
    }
}
