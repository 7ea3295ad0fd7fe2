//! What the legacy API and api_v3 both read: the stored rows of traces, by
//! trace id, and the range a service list covers.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::api::state::{engine, AppState};
use crate::table::columns as column;

/// The range `/api/services` and the operation lists cover: Jaeger's have
/// no range, so this is how far back a service is still listed.
pub const SERVICES_LOOKBACK_MICROS: i64 = 7 * 24 * 3_600 * 1_000_000;

pub(super) fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

pub(super) type Row = Map<String, Value>;

/// The stored spans of `ids`, read in one lookup, by trace id.
pub(super) async fn rows_by_trace(
    state: &AppState,
    ids: &[String],
) -> Result<HashMap<String, Vec<Row>>, ApiError> {
    let mut by_trace: HashMap<String, Vec<Row>> = HashMap::new();
    if ids.is_empty() {
        return Ok(by_trace);
    }
    let result = engine(state)?.find_traces(ids).await.inspect_err(|e| {
        tracing::info!(error = %e, "Jaeger API trace lookup failed");
    })?;
    for row in result.rows {
        let row: Row = result.columns.iter().cloned().zip(row).collect();
        let id = row
            .get(column::TRACE_ID)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        by_trace.entry(id).or_default().push(row);
    }
    Ok(by_trace)
}
