//! Arrow rows of kept spans, written straight from the encoded OTLP bytes.
//!
//! A kept span is read once off the wire and its strings are copied once,
//! into the column builders. Decoding into prost's `Span` first and copying
//! the result into Arrow would allocate every name, key and value twice; on
//! the hot path that made encoding the kept tenth of the spans cost more than
//! decoding and buffering all of them.
//!
//! A span is checked completely before any of it is appended, so a malformed
//! span is skipped (and counted) without leaving a partial row behind.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow_array::builder::{ArrayBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, Float64Array, ListArray, MapArray, RecordBatch, StructArray,
    TimestampMicrosecondArray,
};
use bytes::Bytes;
use datafusion::arrow::buffer::{OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Schema as ArrowSchema};
use opentelemetry_proto::tonic::common::v1::AnyValue;
use prost::Message;

use super::schema::{any_value_string, kind_name, status_name, RowError};
use crate::buffer::worker::KeptTrace;
use crate::ingest::decode::Origin;
use crate::ingest::wire::{text, Fields, WireError};

/// Columns of kept spans, filled row by row and turned into one RecordBatch.
#[derive(Default)]
pub struct SpanRows {
    trace_id: StringBuilder,
    span_id: StringBuilder,
    parent_span_id: StringBuilder,
    name: StringBuilder,
    kind: StringBuilder,
    service_name: StringBuilder,
    start_us: Vec<i64>,
    end_us: Vec<i64>,
    duration_ms: Vec<f64>,
    status_code: StringBuilder,
    status_message: StringBuilder,
    resource_attributes: MapColumn,
    span_attributes: MapColumn,
    events: EventColumn,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
    sampling_reason: StringBuilder,
    sampling_rule_id: StringBuilder,
    sampled_at_us: Vec<i64>,
    /// Decoded resources and scopes, shared by many spans: every message
    /// repeats the resource and scope of its service, so a batch decodes each
    /// of them once.
    origins: HashMap<(Bytes, Bytes), Arc<DecodedOrigin>>,
    /// The origin of the previous span, which is usually the next one's too.
    last_origin: Option<(Arc<Origin>, Arc<DecodedOrigin>)>,
    /// Where a span is read into before it is appended; reused across spans.
    scratch: SpanScratch,
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
        self.start_us.len()
    }

    pub fn is_empty(&self) -> bool {
        self.start_us.is_empty()
    }

    /// Appends the spans of one kept trace, except those whose span id `skip`
    /// names (already stored). Returns how many were skipped.
    pub fn push_trace(&mut self, trace: &KeptTrace, skip: impl Fn(&[u8]) -> bool) -> usize {
        let trace_hex = HexId::new(&trace.trace_id);
        let sampled_at = micros(trace.decided_at);
        let mut skipped = 0;
        for record in &trace.spans {
            let bytes = &record.bytes;
            if self.scratch.read(bytes).is_err() {
                self.undecodable_spans += 1;
                continue;
            }
            if skip(&bytes[self.scratch.span_id.0..self.scratch.span_id.1]) {
                skipped += 1;
                continue;
            }
            let origin = self.origin(&record.origin);
            self.trace_id.append_value(trace_hex.as_str());
            self.append_span(bytes, &origin);
            self.sampling_reason.append_value(trace.reason.as_str());
            self.sampling_rule_id.append_option(trace.rule_id.as_deref());
            self.sampled_at_us.push(sampled_at);
        }
        skipped
    }

    /// Appends the span `self.scratch` holds, read from `bytes`.
    fn append_span(&mut self, bytes: &[u8], origin: &DecodedOrigin) {
        let s = &self.scratch;
        let str_at = |r: (usize, usize)| std::str::from_utf8(&bytes[r.0..r.1]).unwrap_or_default();
        self.span_id.append_value(HexId::new(&bytes[s.span_id.0..s.span_id.1]).as_str());
        let parent = &bytes[s.parent_span_id.0..s.parent_span_id.1];
        self.parent_span_id
            .append_option((!parent.is_empty()).then(|| HexId::new(parent)).as_ref().map(HexId::as_str));
        self.name.append_value(str_at(s.name));
        self.kind.append_value(kind_name(s.kind));
        self.service_name.append_option(origin.service_name.as_deref());
        self.start_us.push((s.start / 1000) as i64);
        self.end_us.push((s.end / 1000) as i64);
        self.duration_ms.push(s.end.saturating_sub(s.start) as f64 / 1e6);
        self.status_code.append_value(status_name(s.status_code));
        let message = str_at(s.status_message);
        self.status_message.append_option((!message.is_empty()).then_some(message));
        for (k, v) in &origin.attributes {
            self.resource_attributes.keys.append_value(k);
            self.resource_attributes.values.append_value(v);
        }
        self.resource_attributes.end_row();
        append_attributes(&mut self.span_attributes, bytes, &s.attributes);
        self.span_attributes.end_row();
        let mut first_attr = 0;
        for event in &s.events {
            self.events.names.append_value(str_at(event.name));
            self.events.times_us.push((event.time / 1000) as i64);
            let attrs = &s.event_attributes[first_attr..first_attr + event.attributes];
            first_attr += event.attributes;
            append_attributes(&mut self.events.attributes, bytes, attrs);
            self.events.attributes.end_row();
        }
        self.events.end_row();
        self.scope_name.append_option(origin.scope_name.as_deref());
        self.scope_version.append_option(origin.scope_version.as_deref());
    }

    fn origin(&mut self, origin: &Arc<Origin>) -> Arc<DecodedOrigin> {
        if let Some((last, decoded)) = &self.last_origin {
            if Arc::ptr_eq(last, origin) {
                return decoded.clone();
            }
        }
        let decoded = self
            .origins
            .entry((origin.resource.clone(), origin.scope.clone()))
            .or_insert_with(|| Arc::new(decode_origin(origin)))
            .clone();
        self.last_origin = Some((origin.clone(), decoded.clone()));
        decoded
    }

    /// Builds the batch in the column order and types of `schema`.
    pub fn into_batch(mut self, schema: Arc<ArrowSchema>) -> Result<RecordBatch, RowError> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let dt = field.data_type();
            let col: ArrayRef = match field.name().as_str() {
                "trace_id" => Arc::new(self.trace_id.finish()),
                "span_id" => Arc::new(self.span_id.finish()),
                "parent_span_id" => Arc::new(self.parent_span_id.finish()),
                "name" => Arc::new(self.name.finish()),
                "kind" => Arc::new(self.kind.finish()),
                "service_name" => Arc::new(self.service_name.finish()),
                "start_time" => timestamps(std::mem::take(&mut self.start_us), dt)?,
                "end_time" => timestamps(std::mem::take(&mut self.end_us), dt)?,
                "duration_ms" => Arc::new(Float64Array::from(std::mem::take(&mut self.duration_ms))),
                "status_code" => Arc::new(self.status_code.finish()),
                "status_message" => Arc::new(self.status_message.finish()),
                "resource_attributes" => self.resource_attributes.finish(dt)?,
                "span_attributes" => self.span_attributes.finish(dt)?,
                "events" => self.events.finish(dt)?,
                "scope_name" => Arc::new(self.scope_name.finish()),
                "scope_version" => Arc::new(self.scope_version.finish()),
                "sampling_reason" => Arc::new(self.sampling_reason.finish()),
                "sampling_rule_id" => Arc::new(self.sampling_rule_id.finish()),
                "sampled_at" => timestamps(std::mem::take(&mut self.sampled_at_us), dt)?,
                other => return Err(RowError::UnexpectedColumn(other.to_string())),
            };
            columns.push(col);
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// A trace or span id as lowercase hex, without allocating.
struct HexId {
    buf: [u8; 64],
    len: usize,
}

impl HexId {
    /// Ids longer than 32 bytes (never valid OTLP) are cut there.
    fn new(id: &[u8]) -> Self {
        let id = &id[..id.len().min(32)];
        let mut buf = [0u8; 64];
        let len = id.len() * 2;
        // Cannot fail: the buffer is exactly twice the input.
        let _ = hex::encode_to_slice(id, &mut buf[..len]);
        Self { buf, len }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// One attribute of the span in `SpanScratch`, as byte ranges.
#[derive(Clone, Copy)]
struct Attribute {
    key: (usize, usize),
    value: AttrValue,
}

/// An `AnyValue` as the wire holds it.
#[derive(Clone, Copy)]
enum AttrValue {
    Empty,
    Str((usize, usize)),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes((usize, usize)),
    /// An array or key-value list: the whole encoded `AnyValue`, decoded with
    /// prost (they are rare) and written as JSON.
    Nested((usize, usize)),
}

#[derive(Clone, Copy)]
struct EventRef {
    time: u64,
    name: (usize, usize),
    /// How many of `SpanScratch::event_attributes` are this event's.
    attributes: usize,
}

/// One span read off the wire, checked, as ranges into its bytes.
#[derive(Default)]
struct SpanScratch {
    span_id: (usize, usize),
    parent_span_id: (usize, usize),
    name: (usize, usize),
    kind: i32,
    start: u64,
    end: u64,
    status_code: i32,
    status_message: (usize, usize),
    attributes: Vec<Attribute>,
    events: Vec<EventRef>,
    event_attributes: Vec<Attribute>,
}

impl SpanScratch {
    /// Reads `opentelemetry.proto.trace.v1.Span`, checking every field the
    /// table stores (wire types, UTF-8) the way a full decode would.
    fn read(&mut self, buf: &[u8]) -> Result<(), WireError> {
        *self = SpanScratch {
            attributes: std::mem::take(&mut self.attributes),
            events: std::mem::take(&mut self.events),
            event_attributes: std::mem::take(&mut self.event_attributes),
            ..SpanScratch::default()
        };
        self.attributes.clear();
        self.events.clear();
        self.event_attributes.clear();
        for field in Fields::new(buf) {
            let field = field?;
            match field.number {
                1 => {
                    field.len()?;
                }
                3 => {
                    checked_text(buf, field.len()?)?;
                }
                2 => self.span_id = field.len()?,
                4 => self.parent_span_id = field.len()?,
                5 => self.name = checked_text(buf, field.len()?)?,
                6 => self.kind = field.varint()? as i32,
                7 => self.start = field.fixed64()?,
                8 => self.end = field.fixed64()?,
                9 => self.attributes.push(read_key_value(buf, field.len()?)?),
                11 => self.read_event(buf, field.len()?)?,
                15 => self.read_status(buf, field.len()?)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn read_status(&mut self, buf: &[u8], range: (usize, usize)) -> Result<(), WireError> {
        for field in Fields::range(buf, range) {
            let field = field?;
            match field.number {
                2 => self.status_message = checked_text(buf, field.len()?)?,
                3 => self.status_code = field.varint()? as i32,
                _ => {}
            }
        }
        Ok(())
    }

    fn read_event(&mut self, buf: &[u8], range: (usize, usize)) -> Result<(), WireError> {
        let mut event = EventRef {
            time: 0,
            name: (0, 0),
            attributes: 0,
        };
        for field in Fields::range(buf, range) {
            let field = field?;
            match field.number {
                1 => event.time = field.fixed64()?,
                2 => event.name = checked_text(buf, field.len()?)?,
                3 => {
                    self.event_attributes.push(read_key_value(buf, field.len()?)?);
                    event.attributes += 1;
                }
                _ => {}
            }
        }
        self.events.push(event);
        Ok(())
    }
}

fn checked_text(buf: &[u8], range: (usize, usize)) -> Result<(usize, usize), WireError> {
    text(buf, range).map(|_| range)
}

/// Reads `opentelemetry.proto.common.v1.KeyValue`.
fn read_key_value(buf: &[u8], range: (usize, usize)) -> Result<Attribute, WireError> {
    let mut attr = Attribute {
        key: (0, 0),
        value: AttrValue::Empty,
    };
    for field in Fields::range(buf, range) {
        let field = field?;
        match field.number {
            1 => attr.key = checked_text(buf, field.len()?)?,
            2 => attr.value = read_any_value(buf, field.len()?)?,
            _ => {}
        }
    }
    Ok(attr)
}

/// Reads `opentelemetry.proto.common.v1.AnyValue`; the last member of the
/// `oneof` on the wire wins, as in any protobuf decoder.
fn read_any_value(buf: &[u8], range: (usize, usize)) -> Result<AttrValue, WireError> {
    let mut value = AttrValue::Empty;
    for field in Fields::range(buf, range) {
        let field = field?;
        value = match field.number {
            1 => AttrValue::Str(checked_text(buf, field.len()?)?),
            2 => AttrValue::Bool(field.varint()? != 0),
            3 => AttrValue::Int(field.varint()? as i64),
            4 => AttrValue::Double(f64::from_bits(field.fixed64()?)),
            5 | 6 => {
                field.len()?;
                decode_nested(buf, range)?;
                AttrValue::Nested(range)
            }
            7 => AttrValue::Bytes(field.len()?),
            _ => value,
        };
    }
    Ok(value)
}

fn decode_nested(buf: &[u8], (start, end): (usize, usize)) -> Result<AnyValue, WireError> {
    AnyValue::decode(&buf[start..end]).map_err(|e| WireError(e.to_string()))
}

/// Appends attributes as the strings the table stores (see `any_value_string`).
fn append_attributes<'a>(
    column: &mut MapColumn,
    buf: &[u8],
    attrs: impl IntoIterator<Item = &'a Attribute>,
) {
    let str_at = |r: (usize, usize)| std::str::from_utf8(&buf[r.0..r.1]).unwrap_or_default();
    for attr in attrs {
        column.keys.append_value(str_at(attr.key));
        let values = &mut column.values;
        match attr.value {
            AttrValue::Empty => values.append_value(""),
            AttrValue::Str(r) => values.append_value(str_at(r)),
            AttrValue::Bool(b) => values.append_value(if b { "true" } else { "false" }),
            AttrValue::Int(i) => {
                let _ = write!(values, "{i}");
                values.append_value("");
            }
            AttrValue::Double(d) => {
                match serde_json::Number::from_f64(d) {
                    Some(n) => {
                        let _ = write!(values, "{n}");
                    }
                    None => values.write_str("null").unwrap_or_default(),
                }
                values.append_value("");
            }
            AttrValue::Bytes(r) => {
                values.write_char('"').unwrap_or_default();
                for chunk in buf[r.0..r.1].chunks(32) {
                    values.write_str(HexId::new(chunk).as_str()).unwrap_or_default();
                }
                values.append_value("\"");
            }
            AttrValue::Nested(r) => {
                let decoded = decode_nested(buf, r).unwrap_or_default();
                values.append_value(any_value_string(decoded));
            }
        }
    }
}

/// Keys, values and row offsets of one `map<string, string>` column.
struct MapColumn {
    keys: StringBuilder,
    values: StringBuilder,
    offsets: Vec<i32>,
}

impl Default for MapColumn {
    fn default() -> Self {
        Self {
            keys: StringBuilder::new(),
            values: StringBuilder::new(),
            offsets: vec![0],
        }
    }
}

impl MapColumn {
    fn end_row(&mut self) {
        self.offsets.push(self.keys.len() as i32);
    }

    /// The column as a `MapArray` of type `dt`, whose field names and ids come
    /// from the table.
    fn finish(&mut self, dt: &DataType) -> Result<ArrayRef, RowError> {
        let DataType::Map(entries, sorted) = dt else {
            return Err(RowError::UnexpectedColumn(format!("map as {dt}")));
        };
        let DataType::Struct(kv_fields) = entries.data_type() else {
            return Err(RowError::UnexpectedColumn(format!("map entries as {dt}")));
        };
        let entries_array = StructArray::try_new(
            kv_fields.clone(),
            vec![
                Arc::new(self.keys.finish()) as ArrayRef,
                Arc::new(self.values.finish()) as ArrayRef,
            ],
            None,
        )?;
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        Ok(Arc::new(MapArray::try_new(
            entries.clone(),
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            entries_array,
            None,
            *sorted,
        )?))
    }
}

/// The `events` column: a list of (name, time, attributes) per row.
struct EventColumn {
    names: StringBuilder,
    times_us: Vec<i64>,
    attributes: MapColumn,
    offsets: Vec<i32>,
}

impl Default for EventColumn {
    fn default() -> Self {
        Self {
            names: StringBuilder::new(),
            times_us: Vec::new(),
            attributes: MapColumn::default(),
            offsets: vec![0],
        }
    }
}

impl EventColumn {
    fn end_row(&mut self) {
        self.offsets.push(self.times_us.len() as i32);
    }

    fn finish(&mut self, dt: &DataType) -> Result<ArrayRef, RowError> {
        let DataType::List(item) = dt else {
            return Err(RowError::UnexpectedColumn(format!("events as {dt}")));
        };
        let DataType::Struct(fields) = item.data_type() else {
            return Err(RowError::UnexpectedColumn(format!("event as {dt}")));
        };
        let mut children = Vec::with_capacity(fields.len());
        for f in fields.iter() {
            let child: ArrayRef = match f.name().as_str() {
                "name" => Arc::new(self.names.finish()),
                "time" => timestamps(std::mem::take(&mut self.times_us), f.data_type())?,
                "attributes" => self.attributes.finish(f.data_type())?,
                other => return Err(RowError::UnexpectedColumn(format!("events.{other}"))),
            };
            children.push(child);
        }
        let structs = StructArray::try_new(fields.clone(), children, None)?;
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        Ok(Arc::new(ListArray::try_new(
            item.clone(),
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Arc::new(structs) as ArrayRef,
            None,
        )?))
    }
}

fn decode_origin(origin: &Origin) -> DecodedOrigin {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    let resource = Resource::decode(origin.resource.clone()).unwrap_or_default();
    let scope = InstrumentationScope::decode(origin.scope.clone()).unwrap_or_default();
    let attributes: Vec<(String, String)> = resource
        .attributes
        .into_iter()
        .map(|kv| (kv.key, kv.value.map(any_value_string).unwrap_or_default()))
        .collect();
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

fn timestamps(v: Vec<i64>, dt: &DataType) -> Result<ArrayRef, RowError> {
    let DataType::Timestamp(_, tz) = dt else {
        return Err(RowError::UnexpectedColumn(format!("timestamp as {dt}")));
    };
    Ok(Arc::new(TimestampMicrosecondArray::from(v).with_timezone_opt(tz.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::decode_message;
    use crate::sampling::SamplingReason;
    use crate::storage::schema::table_schema;
    use crate::synth::{kv, kv_int, request, span, trace, ResourceDef, TraceSpec};
    use arrow_array::{Array, StringArray};
    use opentelemetry_proto::tonic::common::v1::{any_value, ArrayValue, KeyValue, KeyValueList};
    use opentelemetry_proto::tonic::trace::v1::{span::Event, Span};

    fn arrow_schema() -> Arc<ArrowSchema> {
        let schema = table_schema().expect("schema");
        Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema).expect("arrow"))
    }

    fn kept(trace_id: [u8; 16], req_bytes: Vec<u8>) -> KeptTrace {
        let decoded = decode_message(Bytes::from(req_bytes), 1 << 20).expect("decode");
        KeptTrace {
            trace_id,
            spans: decoded.spans.into_iter().map(|(_, s)| s).collect(),
            reason: SamplingReason::Error,
            rule_id: Some("rule-1".into()),
            msgs: vec![],
            decided_at: SystemTime::now(),
        }
    }

    fn value(v: any_value::Value) -> Option<AnyValue> {
        Some(AnyValue { value: Some(v) })
    }

    fn attr(key: &str, v: Option<AnyValue>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: v,
            ..Default::default()
        }
    }

    /// Attributes of every `AnyValue` kind, including the awkward ones.
    fn every_kind_of_attribute() -> Vec<KeyValue> {
        use any_value::Value as V;
        vec![
            kv("http.route", "/checkout/{id}"),
            kv("unicode", "grüße 🚀"),
            kv_int("http.status_code", 503),
            kv_int("negative", -42),
            attr("ok", value(V::BoolValue(true))),
            attr("not", value(V::BoolValue(false))),
            attr("ratio", value(V::DoubleValue(0.25))),
            attr("whole", value(V::DoubleValue(3.0))),
            attr("huge", value(V::DoubleValue(1e20))),
            attr("nan", value(V::DoubleValue(f64::NAN))),
            attr("raw", value(V::BytesValue(vec![0xde, 0xad, 0xbe, 0xef]))),
            attr(
                "list",
                value(V::ArrayValue(ArrayValue {
                    values: vec![AnyValue { value: Some(V::IntValue(1)) }, AnyValue { value: Some(V::StringValue("two".into())) }],
                })),
            ),
            attr(
                "nested",
                value(V::KvlistValue(KeyValueList {
                    values: vec![kv("inner", "x")],
                })),
            ),
            attr("unset", Some(AnyValue { value: None })),
            attr("missing", None),
            kv("", ""),
        ]
    }

    /// What decoding the span with prost and flattening it gives: the oracle.
    fn expected_map(attrs: &[KeyValue]) -> Vec<(String, String)> {
        attrs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone().map(any_value_string).unwrap_or_default()))
            .collect()
    }

    fn map_row(col: &ArrayRef, row: usize) -> Vec<(String, String)> {
        let map = col.as_any().downcast_ref::<MapArray>().expect("map");
        let entries = map.value(row);
        let keys = entries.column(0).as_any().downcast_ref::<StringArray>().expect("keys");
        let values = entries.column(1).as_any().downcast_ref::<StringArray>().expect("values");
        (0..keys.len()).map(|i| (keys.value(i).to_string(), values.value(i).to_string())).collect()
    }

    fn string_at(batch: &RecordBatch, name: &str, row: usize) -> Option<String> {
        let col = batch.column_by_name(name).expect(name);
        let col = col.as_any().downcast_ref::<StringArray>().expect("strings");
        col.is_valid(row).then(|| col.value(row).to_string())
    }

    #[test]
    fn rows_match_a_full_protobuf_decode() {
        let mut spans: Vec<Span> = (1..=3).map(|i| span(9, i, 0, 10 * u64::from(i), i == 2)).collect();
        spans[0].attributes = every_kind_of_attribute();
        spans[0].trace_state = "vendor=1".into();
        spans[1].parent_span_id = spans[0].span_id.clone();
        spans[1].events = vec![
            Event {
                time_unix_nano: spans[1].start_time_unix_nano + 1_500,
                name: "exception".into(),
                attributes: every_kind_of_attribute(),
                dropped_attributes_count: 0,
            },
            Event {
                time_unix_nano: spans[1].start_time_unix_nano + 2_000,
                name: "retry".into(),
                attributes: vec![],
                dropped_attributes_count: 0,
            },
        ];
        spans[2].attributes = vec![kv("only", "one")];
        let mut trace_id = [0u8; 16];
        trace_id[15] = 9;
        let trace = kept(trace_id, request(vec![ResourceDef::new("svc", spans.clone())]).encode_to_vec());
        let mut rows = SpanRows::default();
        assert_eq!(rows.push_trace(&trace, |_| false), 0);
        assert_eq!(rows.undecodable_spans, 0);
        let batch = rows.into_batch(arrow_schema()).expect("batch");
        assert_eq!(batch.num_rows(), 3);

        let resource = batch.column_by_name("resource_attributes").expect("resource");
        let span_attrs = batch.column_by_name("span_attributes").expect("attrs");
        let events = batch.column_by_name("events").expect("events");
        let events = events.as_any().downcast_ref::<ListArray>().expect("list");
        for (row, s) in spans.iter().enumerate() {
            assert_eq!(string_at(&batch, "trace_id", row), Some(hex::encode(&s.trace_id)));
            assert_eq!(string_at(&batch, "span_id", row), Some(hex::encode(&s.span_id)));
            let parent = (!s.parent_span_id.is_empty()).then(|| hex::encode(&s.parent_span_id));
            assert_eq!(string_at(&batch, "parent_span_id", row), parent);
            assert_eq!(string_at(&batch, "name", row), Some(s.name.clone()));
            assert_eq!(string_at(&batch, "kind", row).as_deref(), Some(kind_name(s.kind)));
            let status = s.status.clone().unwrap_or_default();
            assert_eq!(string_at(&batch, "status_code", row).as_deref(), Some(status_name(status.code)));
            let message = (!status.message.is_empty()).then_some(status.message);
            assert_eq!(string_at(&batch, "status_message", row), message);
            assert_eq!(string_at(&batch, "service_name", row).as_deref(), Some("svc"));
            assert_eq!(string_at(&batch, "sampling_rule_id", row).as_deref(), Some("rule-1"));
            assert_eq!(map_row(span_attrs, row), expected_map(&s.attributes));
            assert_eq!(
                map_row(resource, row),
                vec![("service.name".into(), "svc".into()), ("deployment.environment".into(), "local".into())]
            );
            let row_events = events.value(row);
            let row_events = row_events.as_any().downcast_ref::<StructArray>().expect("struct");
            assert_eq!(row_events.len(), s.events.len());
            for (i, e) in s.events.iter().enumerate() {
                let names = row_events.column(0).as_any().downcast_ref::<StringArray>().expect("names");
                assert_eq!(names.value(i), e.name);
                let times = row_events.column(1).as_any().downcast_ref::<TimestampMicrosecondArray>().expect("times");
                assert_eq!(times.value(i), (e.time_unix_nano / 1000) as i64);
                assert_eq!(map_row(row_events.column(2), i), expected_map(&e.attributes));
            }
        }
        // Spot checks of the flattening itself, so the oracle cannot drift.
        let first = map_row(span_attrs, 0);
        let get = |k: &str| first.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("huge"), Some("1e+20"));
        assert_eq!(get("whole"), Some("3.0"));
        assert_eq!(get("nan"), Some("null"));
        assert_eq!(get("raw"), Some("\"deadbeef\""));
        assert_eq!(get("list"), Some(r#"[1,"two"]"#));
        assert_eq!(get("nested"), Some(r#"{"inner":"x"}"#));
        assert_eq!(get("negative"), Some("-42"));
        assert_eq!(get("missing"), Some(""));
    }

    #[test]
    fn a_malformed_span_is_counted_and_leaves_no_partial_row() {
        let good = span(4, 1, 0, 10, true);
        let mut bad = span(4, 2, 0, 10, true);
        bad.attributes = vec![kv("fine", "yes")];
        bad.name = "PLACEHOLDER".into();
        let mut bytes = request(vec![ResourceDef::new("svc", vec![good, bad])]).encode_to_vec();
        // Make the second span's name invalid UTF-8 in place (same length).
        let at = bytes.windows(11).position(|w| w == b"PLACEHOLDER").expect("name");
        bytes[at] = 0xff;
        let mut trace_id = [0u8; 16];
        trace_id[15] = 4;
        let trace = kept(trace_id, bytes);
        assert_eq!(trace.spans.len(), 2, "the ingest scan does not read names");
        let mut rows = SpanRows::default();
        rows.push_trace(&trace, |_| false);
        assert_eq!(rows.undecodable_spans, 1);
        assert_eq!(rows.len(), 1);
        let batch = rows.into_batch(arrow_schema()).expect("a consistent batch");
        assert_eq!(batch.num_rows(), 1);
        let attrs = batch.column_by_name("span_attributes").expect("attrs");
        assert_eq!(map_row(attrs, 0), expected_map(&span(4, 1, 0, 10, true).attributes));
    }

    #[test]
    fn spans_already_stored_are_skipped() {
        let spans: Vec<Span> = (1..=4).map(|i| span(5, i, 0, 10, false)).collect();
        let mut trace_id = [0u8; 16];
        trace_id[15] = 5;
        let trace = kept(trace_id, request(vec![ResourceDef::new("svc", spans)]).encode_to_vec());
        let mut rows = SpanRows::default();
        let skipped = rows.push_trace(&trace, |span_id| span_id[7] % 2 == 0);
        assert_eq!(skipped, 2);
        let batch = rows.into_batch(arrow_schema()).expect("batch");
        let ids: Vec<Option<String>> = (0..batch.num_rows()).map(|r| string_at(&batch, "span_id", r)).collect();
        assert_eq!(ids, vec![Some("0000000000000001".into()), Some("0000000000000003".into())]);
    }

    #[test]
    fn kept_spans_become_rows_of_the_table_schema() {
        let arrow = arrow_schema();
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

}
