//! The `spans` table: its Iceberg schema and the Arrow rows of kept spans.
//!
//! Rows are built by column name against the schema the catalog returns, not
//! against our own field ids, because a catalog may assign fresh ids when it
//! creates the table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use arrow_array::{
    ArrayRef, Float64Array, ListArray, MapArray, RecordBatch, StringArray, StructArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::buffer::{OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Fields, Schema as ArrowSchema};
use iceberg::spec::{
    ListType, MapType, NestedField, PrimitiveType, Schema, StructType, Transform, Type,
    UnboundPartitionSpec,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use prost::Message;

use crate::buffer::worker::KeptTrace;
use crate::ingest::decode::Origin;

fn string() -> Type {
    Type::Primitive(PrimitiveType::String)
}

fn timestamptz() -> Type {
    Type::Primitive(PrimitiveType::Timestamptz)
}

fn string_map(key_id: i32, value_id: i32) -> Type {
    Type::Map(MapType::new(
        NestedField::map_key_element(key_id, string()).into(),
        NestedField::map_value_element(value_id, string(), false).into(),
    ))
}

/// The table schema of DESIGN.md.
pub fn table_schema() -> iceberg::Result<Schema> {
    let event = StructType::new(vec![
        NestedField::required(25, "name", string()).into(),
        NestedField::required(26, "time", timestamptz()).into(),
        NestedField::optional(27, "attributes", string_map(28, 29)).into(),
    ]);
    Schema::builder()
        .with_schema_id(0)
        .with_identifier_field_ids(vec![])
        .with_fields(vec![
            NestedField::required(1, "trace_id", string()).into(),
            NestedField::required(2, "span_id", string()).into(),
            NestedField::optional(3, "parent_span_id", string()).into(),
            NestedField::required(4, "name", string()).into(),
            NestedField::required(5, "kind", string()).into(),
            NestedField::optional(6, "service_name", string()).into(),
            NestedField::required(7, "start_time", timestamptz()).into(),
            NestedField::required(8, "end_time", timestamptz()).into(),
            NestedField::required(9, "duration_ms", Type::Primitive(PrimitiveType::Double)).into(),
            NestedField::required(10, "status_code", string()).into(),
            NestedField::optional(11, "status_message", string()).into(),
            NestedField::optional(12, "resource_attributes", string_map(20, 21)).into(),
            NestedField::optional(13, "span_attributes", string_map(22, 23)).into(),
            NestedField::optional(
                14,
                "events",
                Type::List(ListType::new(
                    NestedField::list_element(24, Type::Struct(event), true).into(),
                )),
            )
            .into(),
            NestedField::optional(15, "scope_name", string()).into(),
            NestedField::optional(16, "scope_version", string()).into(),
            NestedField::required(17, "sampling_reason", string()).into(),
            NestedField::optional(18, "sampling_rule_id", string()).into(),
            NestedField::required(19, "sampled_at", timestamptz()).into(),
        ])
        .build()
}

/// `day(start_time)`.
pub fn partition_spec() -> iceberg::Result<UnboundPartitionSpec> {
    UnboundPartitionSpec::builder()
        .add_partition_field(7, "start_time_day", Transform::Day)
        .map(|b| b.build())
}

/// Why kept spans could not be turned into Arrow rows.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("the table has column `{0}` of an unexpected type")]
    UnexpectedColumn(String),
}

#[derive(Default)]
struct Event {
    name: String,
    time_us: i64,
    attributes: Vec<(String, String)>,
}

/// Columns of kept spans, filled row by row and turned into one RecordBatch.
#[derive(Default)]
pub struct SpanRows {
    trace_id: Vec<String>,
    span_id: Vec<String>,
    parent_span_id: Vec<Option<String>>,
    name: Vec<String>,
    kind: Vec<String>,
    service_name: Vec<Option<String>>,
    start_us: Vec<i64>,
    end_us: Vec<i64>,
    duration_ms: Vec<f64>,
    status_code: Vec<String>,
    status_message: Vec<Option<String>>,
    /// Shared per resource: a batch holds few distinct resources.
    resource_attributes: Vec<Arc<DecodedOrigin>>,
    span_attributes: Vec<Vec<(String, String)>>,
    events: Vec<Vec<Event>>,
    scope_name: Vec<Option<String>>,
    scope_version: Vec<Option<String>>,
    sampling_reason: Vec<&'static str>,
    sampling_rule_id: Vec<Option<String>>,
    sampled_at_us: Vec<i64>,
    /// Decoded resources and scopes, shared by many spans.
    origins: HashMap<(Bytes, Bytes), Arc<DecodedOrigin>>,
    /// Spans whose bytes did not decode; they are skipped and counted.
    pub undecodable_spans: usize,
}

struct DecodedOrigin {
    service_name: Option<String>,
    attributes: Vec<(String, String)>,
    scope_name: Option<String>,
    scope_version: Option<String>,
}

impl SpanRows {
    pub fn len(&self) -> usize {
        self.trace_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trace_id.is_empty()
    }

    /// Decodes the spans of one kept trace fully and appends them, except
    /// those whose span id `skip` names (already stored). Returns how many
    /// were skipped.
    pub fn push_trace(&mut self, trace: &KeptTrace, skip: impl Fn(&[u8]) -> bool) -> usize {
        let trace_hex = hex::encode(trace.trace_id);
        let sampled_at = micros(trace.decided_at);
        let rule_id = trace.rule_id.as_deref().map(str::to_string);
        let mut skipped = 0;
        for record in &trace.spans {
            let Ok(span) = Span::decode(record.bytes.clone()) else {
                self.undecodable_spans += 1;
                continue;
            };
            if skip(&span.span_id) {
                skipped += 1;
                continue;
            }
            let origin = self.origin(&record.origin);
            self.trace_id.push(trace_hex.clone());
            self.push_span(span, &origin);
            self.sampling_reason.push(trace.reason.as_str());
            self.sampling_rule_id.push(rule_id.clone());
            self.sampled_at_us.push(sampled_at);
        }
        skipped
    }

    fn push_span(&mut self, span: Span, origin: &Arc<DecodedOrigin>) {
        let start = (span.start_time_unix_nano / 1000) as i64;
        let end = (span.end_time_unix_nano / 1000) as i64;
        self.span_id.push(hex::encode(&span.span_id));
        self.parent_span_id
            .push((!span.parent_span_id.is_empty()).then(|| hex::encode(&span.parent_span_id)));
        self.name.push(span.name);
        self.kind.push(kind_name(span.kind).to_string());
        self.service_name.push(origin.service_name.clone());
        self.start_us.push(start);
        self.end_us.push(end);
        self.duration_ms.push(
            span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano) as f64 / 1e6,
        );
        let status = span.status.unwrap_or_default();
        self.status_code.push(status_name(status.code).to_string());
        self.status_message
            .push((!status.message.is_empty()).then_some(status.message));
        self.resource_attributes.push(origin.clone());
        self.span_attributes.push(attributes(span.attributes));
        self.events.push(
            span.events
                .into_iter()
                .map(|e| Event {
                    name: e.name,
                    time_us: (e.time_unix_nano / 1000) as i64,
                    attributes: attributes(e.attributes),
                })
                .collect(),
        );
        self.scope_name.push(origin.scope_name.clone());
        self.scope_version.push(origin.scope_version.clone());
    }

    fn origin(&mut self, origin: &Arc<Origin>) -> Arc<DecodedOrigin> {
        // Keyed by the encoded bytes: every message repeats the resource and
        // scope of its service, so a batch decodes each of them once.
        self.origins
            .entry((origin.resource.clone(), origin.scope.clone()))
            .or_insert_with(|| Arc::new(decode_origin(origin)))
            .clone()
    }

    /// Builds the batch in the column order and types of `schema`.
    pub fn into_batch(self, schema: Arc<ArrowSchema>) -> Result<RecordBatch, RowError> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let dt = field.data_type();
            let col: ArrayRef = match field.name().as_str() {
                "trace_id" => strings(&self.trace_id),
                "span_id" => strings(&self.span_id),
                "parent_span_id" => opt_strings(&self.parent_span_id),
                "name" => strings(&self.name),
                "kind" => strings(&self.kind),
                "service_name" => opt_strings(&self.service_name),
                "start_time" => timestamps(&self.start_us, dt)?,
                "end_time" => timestamps(&self.end_us, dt)?,
                "duration_ms" => Arc::new(Float64Array::from(self.duration_ms.clone())),
                "status_code" => strings(&self.status_code),
                "status_message" => opt_strings(&self.status_message),
                "resource_attributes" => {
                    let rows: Vec<&[(String, String)]> =
                        self.resource_attributes.iter().map(|o| o.attributes.as_slice()).collect();
                    map_array(&rows, dt)?
                }
                "span_attributes" => map_array(&self.span_attributes, dt)?,
                "events" => events_array(&self.events, dt)?,
                "scope_name" => opt_strings(&self.scope_name),
                "scope_version" => opt_strings(&self.scope_version),
                "sampling_reason" => Arc::new(StringArray::from(self.sampling_reason.clone())),
                "sampling_rule_id" => opt_strings(&self.sampling_rule_id),
                "sampled_at" => timestamps(&self.sampled_at_us, dt)?,
                other => return Err(RowError::UnexpectedColumn(other.to_string())),
            };
            columns.push(col);
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

fn decode_origin(origin: &Origin) -> DecodedOrigin {
    let resource = Resource::decode(origin.resource.clone()).unwrap_or_default();
    let scope = InstrumentationScope::decode(origin.scope.clone()).unwrap_or_default();
    let attributes = attributes(resource.attributes);
    let service_name = attributes
        .iter()
        .find(|(k, _)| k == "service.name")
        .map(|(_, v)| v.clone());
    DecodedOrigin {
        service_name,
        attributes,
        scope_name: (!scope.name.is_empty()).then_some(scope.name),
        scope_version: (!scope.version.is_empty()).then_some(scope.version),
    }
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// OTLP span kind as the name the table stores.
pub fn kind_name(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Internal) => "INTERNAL",
        Ok(SpanKind::Server) => "SERVER",
        Ok(SpanKind::Client) => "CLIENT",
        Ok(SpanKind::Producer) => "PRODUCER",
        Ok(SpanKind::Consumer) => "CONSUMER",
        _ => "UNSPECIFIED",
    }
}

/// OTLP status code as the name the table stores.
pub fn status_name(code: i32) -> &'static str {
    match StatusCode::try_from(code) {
        Ok(StatusCode::Ok) => "OK",
        Ok(StatusCode::Error) => "ERROR",
        _ => "UNSET",
    }
}

fn attributes(kvs: Vec<KeyValue>) -> Vec<(String, String)> {
    kvs.into_iter()
        .map(|kv| (kv.key, kv.value.map(any_value_string).unwrap_or_default()))
        .collect()
}

/// Flattens an attribute value into the string the table stores. Arrays and
/// maps become JSON so that no information is lost.
pub fn any_value_string(v: AnyValue) -> String {
    match v.value {
        Some(any_value::Value::StringValue(s)) => s,
        Some(other) => any_value_json(Some(other)).to_string(),
        None => String::new(),
    }
}

fn any_value_json(v: Option<any_value::Value>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Some(any_value::Value::StringValue(s)) => J::String(s),
        Some(any_value::Value::BoolValue(b)) => J::Bool(b),
        Some(any_value::Value::IntValue(i)) => J::from(i),
        Some(any_value::Value::DoubleValue(d)) => J::from(d),
        Some(any_value::Value::BytesValue(b)) => J::String(hex::encode(b)),
        Some(any_value::Value::ArrayValue(a)) => {
            J::Array(a.values.into_iter().map(|x| any_value_json(x.value)).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => J::Object(
            kv.values
                .into_iter()
                .map(|x| (x.key, any_value_json(x.value.and_then(|v| v.value))))
                .collect(),
        ),
        #[allow(unreachable_patterns)]
        Some(_) | None => J::Null,
    }
}

fn strings(v: &[String]) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}

fn opt_strings(v: &[Option<String>]) -> ArrayRef {
    Arc::new(StringArray::from_iter(v.iter().map(|s| s.as_deref())))
}

fn timestamps(v: &[i64], dt: &DataType) -> Result<ArrayRef, RowError> {
    let DataType::Timestamp(_, tz) = dt else {
        return Err(RowError::UnexpectedColumn(format!("timestamp as {dt}")));
    };
    Ok(Arc::new(
        TimestampMicrosecondArray::from(v.to_vec()).with_timezone_opt(tz.clone()),
    ))
}

fn map_array<R: AsRef<[(String, String)]>>(rows: &[R], dt: &DataType) -> Result<ArrayRef, RowError> {
    let DataType::Map(entries, sorted) = dt else {
        return Err(RowError::UnexpectedColumn(format!("map as {dt}")));
    };
    let DataType::Struct(kv_fields) = entries.data_type() else {
        return Err(RowError::UnexpectedColumn(format!("map entries as {dt}")));
    };
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    offsets.push(0i32);
    let total: usize = rows.iter().map(|r| r.as_ref().len()).sum();
    let mut keys = Vec::with_capacity(total);
    let mut values = Vec::with_capacity(total);
    for row in rows {
        for (k, v) in row.as_ref() {
            keys.push(k.as_str());
            values.push(v.as_str());
        }
        offsets.push(keys.len() as i32);
    }
    let entries_array = StructArray::try_new(
        kv_fields.clone(),
        vec![
            Arc::new(StringArray::from(keys)) as ArrayRef,
            Arc::new(StringArray::from(values)) as ArrayRef,
        ],
        None,
    )?;
    Ok(Arc::new(MapArray::try_new(
        entries.clone(),
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        entries_array,
        None,
        *sorted,
    )?))
}

fn events_array(rows: &[Vec<Event>], dt: &DataType) -> Result<ArrayRef, RowError> {
    let DataType::List(item) = dt else {
        return Err(RowError::UnexpectedColumn(format!("events as {dt}")));
    };
    let DataType::Struct(fields) = item.data_type() else {
        return Err(RowError::UnexpectedColumn(format!("event as {dt}")));
    };
    let all: Vec<&Event> = rows.iter().flatten().collect();
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    offsets.push(0i32);
    let mut n = 0i32;
    for row in rows {
        n += row.len() as i32;
        offsets.push(n);
    }
    let children = event_children(&all, fields)?;
    let structs = StructArray::try_new(fields.clone(), children, None)?;
    Ok(Arc::new(ListArray::try_new(
        item.clone(),
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Arc::new(structs) as ArrayRef,
        None,
    )?))
}

fn event_children(events: &[&Event], fields: &Fields) -> Result<Vec<ArrayRef>, RowError> {
    fields
        .iter()
        .map(|f| -> Result<ArrayRef, RowError> {
            match f.name().as_str() {
                "name" => Ok(Arc::new(StringArray::from_iter_values(
                    events.iter().map(|e| e.name.as_str()),
                ))),
                "time" => timestamps(
                    &events.iter().map(|e| e.time_us).collect::<Vec<_>>(),
                    f.data_type(),
                ),
                "attributes" => {
                    let attrs: Vec<Vec<(String, String)>> =
                        events.iter().map(|e| e.attributes.clone()).collect();
                    map_array(&attrs, f.data_type())
                }
                other => Err(RowError::UnexpectedColumn(format!("events.{other}"))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use crate::ingest::decode::decode_message;
    use crate::sampling::SamplingReason;
    use crate::synth::{kv, request, trace, ResourceDef, TraceSpec};
    use bytes::Bytes;

    #[test]
    fn kept_spans_become_rows_of_the_table_schema() {
        let schema = table_schema().expect("schema");
        let arrow = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema).expect("arrow"));
        let spec = TraceSpec {
            trace_id: [7; 16],
            service: "checkout".into(),
            spans: 3,
            error: true,
            start_unix_nano: 1_700_000_000_000_000_000,
            duration_ms: 250,
        };
        let mut spans = trace(&spec);
        spans[1].events.push(opentelemetry_proto::tonic::trace::v1::span::Event {
            time_unix_nano: 1_700_000_000_100_000_000,
            name: "exception".into(),
            attributes: vec![kv("exception.type", "Timeout")],
            dropped_attributes_count: 0,
        });
        let req = request(vec![ResourceDef::new("checkout", spans)]);
        let decoded = decode_message(Bytes::from(req.encode_to_vec()), 1 << 20).expect("decode");
        let kept = KeptTrace {
            trace_id: [7; 16],
            spans: decoded.spans.into_iter().map(|(_, s)| s).collect(),
            reason: SamplingReason::Error,
            rule_id: None,
            msgs: vec![],
            decided_at: SystemTime::now(),
        };
        let mut rows = SpanRows::default();
        rows.push_trace(&kept, |_| false);
        assert_eq!(rows.len(), 3);
        let batch = rows.into_batch(arrow).expect("batch");
        assert_eq!(batch.num_rows(), 3);
        let col = |name: &str| batch.column_by_name(name).expect(name).clone();
        let status = col("status_code");
        let status = status.as_any().downcast_ref::<StringArray>().expect("strings");
        assert_eq!(status.value(0), "ERROR");
        assert_eq!(status.value(1), "OK");
        let dur = col("duration_ms");
        let dur = dur.as_any().downcast_ref::<Float64Array>().expect("f64");
        assert_eq!(dur.value(0), 250.0);
        let svc = col("service_name");
        let svc = svc.as_any().downcast_ref::<StringArray>().expect("strings");
        assert_eq!(svc.value(2), "checkout");
        let events = col("events");
        let events = events.as_any().downcast_ref::<ListArray>().expect("list");
        assert_eq!(events.value_length(1), 1);
        assert_eq!(events.value_length(0), 0);
        let reason = col("sampling_reason");
        let reason = reason.as_any().downcast_ref::<StringArray>().expect("strings");
        assert_eq!(reason.value(0), "error");
        assert_eq!(col("parent_span_id").null_count(), 1);
    }

    #[test]
    fn attribute_values_keep_their_information() {
        use opentelemetry_proto::tonic::common::v1::ArrayValue;
        let arr = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(any_value::Value::IntValue(3)),
                    },
                    AnyValue {
                        value: Some(any_value::Value::StringValue("x".into())),
                    },
                ],
            })),
        };
        assert_eq!(any_value_string(arr), r#"[3,"x"]"#);
        let b = AnyValue {
            value: Some(any_value::Value::BoolValue(true)),
        };
        assert_eq!(any_value_string(b), "true");
    }
}
