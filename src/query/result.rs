//! What every read of the query stage answers with: its error, and Arrow
//! record batches as JSON rows. The engine, the lookups and the searches all
//! share them.

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array,
    Int8Array, UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// Name under which the table is visible to SQL.
pub const TABLE_NAME: &str = "spans";

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The statement is not allowed; the client should fix it.
    #[error("{0}")]
    BadRequest(String),
    /// The engine could not parse or plan the statement (400, with the
    /// engine's own message).
    #[error(transparent)]
    Invalid(DataFusionError),
    #[error("query exceeded the {0:?} time limit and was cancelled")]
    Timeout(Duration),
    #[error("query failed: {0}")]
    Execution(DataFusionError),
    #[error("query engine unavailable: {0}")]
    Unavailable(String),
    /// The catalog or table could not be registered with the engine.
    #[error("query engine unavailable: {0}")]
    Catalog(Box<dyn std::error::Error + Send + Sync>),
    /// The query needed more memory than the pool has left.
    /// The result would be larger than `query.max_result_bytes`.
    #[error("the result is larger than query.max_result_bytes ({limit} bytes); select fewer rows or columns: {reason}")]
    TooLarge { limit: usize, reason: String },
    #[error("the query needs more memory than query.max_memory_bytes ({limit} bytes, shared by running queries) allows; narrow it with filters, fewer groups or a LIMIT: {reason}")]
    OutOfMemory { limit: usize, reason: String },
}

impl QueryError {
    /// The catalog or table could not be reached or registered.
    pub(super) fn catalog(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        QueryError::Catalog(Box::new(e))
    }
}

/// The `/admin/query` response body.
#[derive(Debug, Serialize)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub row_count: usize,
    pub truncated: bool,
    pub elapsed_ms: u64,
}

pub(super) fn to_json(batches: &[RecordBatch], max_rows: usize) -> Result<QueryResult, QueryError> {
    let columns: Vec<String> = batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    let mut truncated = false;
    for batch in batches {
        // Only the rows kept become JSON.
        let room = max_rows - rows.len();
        if batch.num_rows() > room {
            truncated = true;
        }
        let batch = batch.slice(0, batch.num_rows().min(room));
        let cols: Vec<Vec<Value>> = batch
            .columns()
            .iter()
            .map(|c| column_values(c.as_ref()))
            .collect::<Result<_, _>>()?;
        for i in 0..batch.num_rows() {
            rows.push(cols.iter().map(|c| c[i].clone()).collect());
        }
        if truncated {
            break;
        }
    }
    Ok(QueryResult {
        columns,
        row_count: rows.len(),
        rows,
        truncated,
        elapsed_ms: 0,
    })
}

macro_rules! numbers {
    ($array:expr, $ty:ty) => {
        $array.as_any().downcast_ref::<$ty>().map(|a| {
            a.iter()
                .map(|v| v.map_or(Value::Null, Value::from))
                .collect()
        })
    };
}

/// Numbers, booleans and strings map to JSON natively, maps, lists and
/// structs to objects and arrays ([`nested_values`]); every other type
/// (timestamps, dates, binary) is rendered as Arrow displays it.
fn column_values(array: &dyn Array) -> Result<Vec<Value>, QueryError> {
    let native: Option<Vec<Value>> = match array.data_type() {
        DataType::Int8 => numbers!(array, Int8Array),
        DataType::Int16 => numbers!(array, Int16Array),
        DataType::Int32 => numbers!(array, Int32Array),
        DataType::Int64 => numbers!(array, Int64Array),
        DataType::UInt8 => numbers!(array, UInt8Array),
        DataType::UInt16 => numbers!(array, UInt16Array),
        DataType::UInt32 => numbers!(array, UInt32Array),
        DataType::UInt64 => numbers!(array, UInt64Array),
        DataType::Float32 => numbers!(array, Float32Array),
        DataType::Float64 => numbers!(array, Float64Array),
        DataType::Boolean => numbers!(array, BooleanArray),
        DataType::Utf8 => Some(strings(array.as_string::<i32>().iter())),
        DataType::LargeUtf8 => Some(strings(array.as_string::<i64>().iter())),
        DataType::Utf8View => Some(strings(array.as_string_view().iter())),
        _ => None,
    };
    if let Some(values) = native {
        return Ok(values);
    }
    if let Some(values) = nested_values(array)? {
        return Ok(values);
    }
    let options = FormatOptions::default().with_null("");
    let formatter =
        ArrayFormatter::try_new(array, &options).map_err(|e| QueryError::Execution(e.into()))?;
    Ok((0..array.len())
        .map(|i| {
            if array.is_null(i) {
                Value::Null
            } else {
                Value::String(formatter.value(i).to_string())
            }
        })
        .collect())
}

/// Maps as JSON objects (keys as text), lists as arrays and structs as
/// objects, recursively: attributes and events read as data, not as Arrow's
/// display text. `None` for other types.
fn nested_values(array: &dyn Array) -> Result<Option<Vec<Value>>, QueryError> {
    let rows = |value: &dyn Fn(usize) -> Result<Value, QueryError>| {
        (0..array.len())
            .map(|i| {
                if array.is_null(i) {
                    Ok(Value::Null)
                } else {
                    value(i)
                }
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let values = match array.data_type() {
        DataType::Map(_, _) => {
            let map = array.as_map();
            rows(&|i| {
                let entries = map.value(i);
                let keys = column_values(entries.column(0).as_ref())?;
                let values = column_values(entries.column(1).as_ref())?;
                Ok(Value::Object(
                    keys.into_iter()
                        .map(|k| match k {
                            Value::String(s) => s,
                            other => other.to_string(),
                        })
                        .zip(values)
                        .collect(),
                ))
            })?
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            rows(&|i| Ok(Value::Array(column_values(list.value(i).as_ref())?)))?
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>();
            rows(&|i| Ok(Value::Array(column_values(list.value(i).as_ref())?)))?
        }
        DataType::Struct(fields) => {
            let st = array.as_struct();
            let columns: Vec<Vec<Value>> = st
                .columns()
                .iter()
                .map(|c| column_values(c.as_ref()))
                .collect::<Result<_, _>>()?;
            rows(&|i| {
                Ok(Value::Object(
                    fields
                        .iter()
                        .zip(&columns)
                        .map(|(f, c)| (f.name().clone(), c[i].clone()))
                        .collect(),
                ))
            })?
        }
        _ => return Ok(None),
    };
    Ok(Some(values))
}

fn strings<'a>(it: impl Iterator<Item = Option<&'a str>>) -> Vec<Value> {
    it.map(|v| v.map_or(Value::Null, |s| Value::String(s.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lists_and_structs_read_as_json() {
        use datafusion::arrow::array::{ListBuilder, MapBuilder, StringBuilder, StructBuilder};
        use datafusion::arrow::datatypes::{DataType, Field};
        let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        map.keys().append_value("http.route");
        map.values().append_value("/checkout");
        map.append(true).expect("entry");
        map.append(false).expect("null map");
        let maps = map.finish();
        assert_eq!(
            column_values(&maps).expect("maps"),
            vec![serde_json::json!({"http.route": "/checkout"}), Value::Null]
        );

        let fields = vec![Field::new("name", DataType::Utf8, true)];
        let mut list = ListBuilder::new(StructBuilder::from_fields(fields, 2));
        let events = list.values();
        events
            .field_builder::<StringBuilder>(0)
            .expect("name")
            .append_value("exception");
        events.append(true);
        list.append(true);
        list.append(true);
        let lists = list.finish();
        assert_eq!(
            column_values(&lists).expect("lists"),
            vec![
                serde_json::json!([{"name": "exception"}]),
                serde_json::json!([])
            ]
        );
    }
}
