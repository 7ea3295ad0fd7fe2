//! Arrow rows of kept spans, written straight from the encoded OTLP bytes.
//!
//! A kept span is read once off the wire and its strings are copied once,
//! into the column buffers. Decoding into prost's `Span` first and copying
//! the result into Arrow allocated every name, key and value twice; on the hot
//! path that made encoding the kept tenth of the spans cost more than decoding
//! and buffering all of them.
//!
//! A span is appended in one pass and checked as it goes (wire types, then
//! UTF-8 over what it appended); a malformed span is cut back out of every
//! column and counted, so it never leaves a partial row.

use crate::table::columns as column;
use std::hash::Hasher as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow_array::{ArrayRef, Float64Array, RecordBatch};
use bytes::Bytes;
use datafusion::arrow::datatypes::Schema as ArrowSchema;
use opentelemetry_proto::tonic::common::v1::AnyValue;
use prost::Message;
use rustc_hash::FxHashMap;

use super::columns::{
    timestamps, EventColumn, EventMark, LinkColumn, LinkMark, MapColumn, MapMark, Packed, StrColumn,
};
use super::error::RowError;
use crate::handoff::KeptTrace;
use crate::model::{AttributeLimits, Origin};
use crate::otlp::fields;
use crate::otlp::format::{any_value_string, kind_name, status_name, Scalar};
use crate::otlp::wire::{read_status, text, Fields, WireError};

/// Columns of kept spans, filled row by row and turned into one RecordBatch.
#[derive(Default)]
pub struct SpanRows {
    trace_id: StrColumn,
    span_id: StrColumn,
    parent_span_id: StrColumn,
    name: StrColumn,
    kind: StrColumn,
    service_name: StrColumn,
    start_us: Vec<i64>,
    end_us: Vec<i64>,
    duration_ms: Vec<f64>,
    status_code: StrColumn,
    status_message: StrColumn,
    resource_attributes: MapColumn,
    span_attributes: MapColumn,
    events: EventColumn,
    links: LinkColumn,
    scope_name: StrColumn,
    scope_version: StrColumn,
    sampling_reason: StrColumn,
    sampling_rule_id: StrColumn,
    sampled_at_us: Vec<i64>,
    sample_rate: Vec<f64>,
    origins: Origins,
    limits: AttributeLimits,
    /// Spans whose bytes did not decode; they are skipped and counted.
    pub undecodable_spans: usize,
    /// Attribute values (and keys) cut to `limits.value_max_bytes`.
    pub values_cut: usize,
    /// Attributes and events dropped past `limits.max_count`.
    pub entries_dropped: usize,
}

/// The attribute a row gets when the caps cut something of it; its value
/// names what was cut (`resource_attributes`, `span_attributes`, `events`,
/// `links`).
pub const TRUNCATED_KEY: &str = "tss.truncated";

/// What the caps cut of the span being appended.
#[derive(Default, Clone, Copy)]
struct Cuts {
    resource: bool,
    attributes: bool,
    events: bool,
    links: bool,
    values: usize,
    dropped: usize,
}

impl Cuts {
    fn any(&self) -> bool {
        self.resource || self.attributes || self.events || self.links
    }

    /// The value of the row's `tss.truncated`.
    fn describe(&self) -> String {
        let parts = [
            (self.resource, column::RESOURCE_ATTRIBUTES),
            (self.attributes, column::SPAN_ATTRIBUTES),
            (self.events, column::EVENTS),
            (self.links, column::LINKS),
        ];
        let names: Vec<&str> = parts.iter().filter(|p| p.0).map(|p| p.1).collect();
        names.join(",")
    }

    /// Records what `part` of the span lost: a value cut or an entry dropped.
    fn note(&mut self, cut: Cut, part: Part) {
        match cut {
            Cut::None => return,
            Cut::Value => self.values += 1,
            Cut::Dropped => self.dropped += 1,
        }
        match part {
            Part::Attributes => self.attributes = true,
            Part::Events => self.events = true,
            Part::Links => self.links = true,
        }
    }
}

/// The part of a span a cut fell in.
#[derive(Clone, Copy)]
enum Part {
    Attributes,
    Events,
    Links,
}

/// What the caps did to one key-value pair.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    None,
    Value,
    Dropped,
}

struct DecodedOrigin {
    service_name: Option<String>,
    /// Values cut and attributes dropped from the resource by the caps.
    values_cut: usize,
    dropped: usize,
    /// The resource attributes' keys and values, appended to every row.
    attribute_keys: Packed,
    attribute_values: Packed,
    scope_name: Option<String>,
    scope_version: Option<String>,
}

/// What a span read off the wire left for the row, besides what it appended.
#[derive(Default)]
struct SpanFields {
    span_id: (usize, usize),
    parent_span_id: (usize, usize),
    name: (usize, usize),
    kind: i32,
    start: u64,
    end: u64,
    status_code: i32,
    status_message: (usize, usize),
}

/// Where the columns a span's wire bytes feed stood before the span.
#[derive(Clone, Copy)]
struct Mark {
    rows: usize,
    span_attributes: MapMark,
    events: EventMark,
    links: LinkMark,
}

impl SpanRows {
    /// Columns sized for `spans` kept spans of `encoded_bytes` in all.
    ///
    /// Growing columns by doubling copies their data and touches fresh pages
    /// on every step; for a batch of thousands of spans that cost as much as
    /// filling them. The sizes are estimates from the encoded size (a span's
    /// attributes are most of its bytes); a miss only means a regrowth.
    fn with_capacity(spans: usize, encoded_bytes: usize) -> Self {
        let strings = |bytes_per_row: usize| StrColumn::with_capacity(spans, spans * bytes_per_row);
        Self {
            trace_id: strings(32),
            span_id: strings(16),
            parent_span_id: strings(16),
            name: strings(24),
            kind: strings(8),
            service_name: strings(16),
            start_us: Vec::with_capacity(spans),
            end_us: Vec::with_capacity(spans),
            duration_ms: Vec::with_capacity(spans),
            status_code: strings(5),
            status_message: strings(0),
            resource_attributes: MapColumn::with_capacity(spans, spans * 8, spans * 128),
            span_attributes: MapColumn::with_capacity(spans, encoded_bytes / 32, encoded_bytes / 2),
            events: EventColumn::with_capacity(spans),
            links: LinkColumn::with_capacity(spans),
            scope_name: strings(24),
            scope_version: strings(8),
            sampling_reason: strings(8),
            sampling_rule_id: strings(0),
            sampled_at_us: Vec::with_capacity(spans),
            sample_rate: Vec::with_capacity(spans),
            ..Self::default()
        }
    }

    /// Caps what each row stores (the default is OpenTelemetry's).
    pub fn with_limits(mut self, limits: AttributeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Bytes the columns hold so far: what the record batch will take.
    pub fn bytes(&self) -> usize {
        let strings = [
            &self.trace_id,
            &self.span_id,
            &self.parent_span_id,
            &self.name,
            &self.kind,
            &self.service_name,
            &self.status_code,
            &self.status_message,
            &self.scope_name,
            &self.scope_version,
            &self.sampling_reason,
            &self.sampling_rule_id,
        ];
        let fixed = 5 * 8 * self.len();
        strings.iter().map(|c| c.bytes()).sum::<usize>()
            + fixed
            + self.resource_attributes.bytes()
            + self.span_attributes.bytes()
            + self.events.bytes()
            + self.links.bytes()
    }

    /// Columns sized for the spans of `traces`.
    pub fn for_traces(traces: &[KeptTrace]) -> Self {
        let spans = traces.iter().map(|t| t.spans.len()).sum();
        let bytes = traces
            .iter()
            .flat_map(|t| &t.spans)
            .map(|s| s.bytes.len())
            .sum();
        Self::with_capacity(spans, bytes)
    }

    pub fn len(&self) -> usize {
        self.start_us.len()
    }

    pub fn is_empty(&self) -> bool {
        self.start_us.is_empty()
    }

    /// Appends the spans of one kept trace, except those whose span id `skip`
    /// names (already stored). Returns how many were skipped.
    pub fn push_trace(&mut self, trace: &KeptTrace, skip: impl Fn(&[u8]) -> bool) -> usize {
        (0..trace.spans.len())
            .filter(|&i| !self.push_span(trace, i, &skip))
            .count()
    }

    /// Appends span `index` of `trace` unless its span id is one `skip`
    /// names; returns false when it was skipped for that. An undecodable
    /// span leaves no row and is counted in `undecodable_spans`.
    pub fn push_span(
        &mut self,
        trace: &KeptTrace,
        index: usize,
        skip: impl Fn(&[u8]) -> bool,
    ) -> bool {
        let Some(record) = trace.spans.get(index) else {
            return true;
        };
        let bytes = &record.bytes[..];
        let origin = self.origins.index(&record.origin, self.limits);
        let resource_cut = {
            let o = &self.origins.decoded[origin];
            o.values_cut + o.dropped > 0
        };
        let mark = self.mark();
        let mut cuts = Cuts {
            resource: resource_cut,
            ..Cuts::default()
        };
        let span = match self.append_wire(bytes, mark, &mut cuts) {
            Ok(span) => span,
            Err(_) => {
                self.truncate(mark);
                self.undecodable_spans += 1;
                return true;
            }
        };
        if skip(&bytes[span.span_id.0..span.span_id.1]) {
            self.truncate(mark);
            return false;
        }
        let o = &self.origins.decoded[origin];
        self.values_cut += cuts.values + o.values_cut;
        self.entries_dropped += cuts.dropped + o.dropped;
        self.append_row(bytes, &span, origin);
        self.trace_id
            .push(HexId::new(&trace.trace_id).as_str().as_bytes());
        self.sampling_reason.push(trace.reason.as_str().as_bytes());
        self.sampling_rule_id.push_option(trace.rule_id.as_deref());
        self.sampled_at_us.push(micros(trace.decided_at));
        self.sample_rate.push(trace.sample_rate);
        true
    }

    fn mark(&self) -> Mark {
        Mark {
            rows: self.len(),
            span_attributes: self.span_attributes.mark(),
            events: self.events.mark(),
            links: self.links.mark(),
        }
    }

    /// Undoes what `append_wire` appended since `mark`.
    fn truncate(&mut self, mark: Mark) {
        self.name.truncate(mark.rows);
        self.status_message.truncate(mark.rows);
        self.span_attributes.truncate(mark.span_attributes);
        self.events.truncate(mark.events);
        self.links.truncate(mark.links);
    }

    /// Reads `opentelemetry.proto.trace.v1.Span`, appending its name, status
    /// message, attributes and events; checks every field the table stores
    /// the way a full decode would (wire types, UTF-8 of what it appended
    /// since `mark`).
    fn append_wire(
        &mut self,
        buf: &[u8],
        mark: Mark,
        cuts: &mut Cuts,
    ) -> Result<SpanFields, WireError> {
        let limits = self.limits;
        let mut span = SpanFields::default();
        for field in Fields::new(buf) {
            let field = field?;
            match field.number {
                fields::span::TRACE_ID => {
                    field.len()?;
                }
                fields::span::SPAN_ID => span.span_id = field.len()?,
                // Only checked to be UTF-8.
                fields::span::TRACE_STATE => {
                    text(buf, field.len()?)?;
                }
                fields::span::PARENT_SPAN_ID => span.parent_span_id = field.len()?,
                fields::span::NAME => span.name = field.len()?,
                fields::span::KIND => span.kind = field.varint()? as i32,
                fields::span::START_TIME_UNIX_NANO => span.start = field.fixed64()?,
                fields::span::END_TIME_UNIX_NANO => span.end = field.fixed64()?,
                fields::span::ATTRIBUTES => {
                    let cut =
                        append_key_value(&mut self.span_attributes, buf, field.len()?, limits)?;
                    cuts.note(cut, Part::Attributes);
                }
                fields::span::EVENTS if self.events.open_row_events() >= limits.max_count => {
                    field.len()?;
                    cuts.note(Cut::Dropped, Part::Events);
                }
                fields::span::EVENTS => self.append_event(buf, field.len()?, cuts)?,
                fields::span::LINKS if self.links.open_row_links() >= limits.max_count => {
                    field.len()?;
                    cuts.note(Cut::Dropped, Part::Links);
                }
                fields::span::LINKS => self.append_link(buf, field.len()?, cuts)?,
                fields::span::STATUS => {
                    let status = read_status(buf, field.len()?)?;
                    span.status_code = i32::from(status.code);
                    span.status_message = status.message;
                }
                _ => {}
            }
        }
        if push_capped(&mut self.name, &buf[span.name.0..span.name.1], limits) {
            cuts.note(Cut::Value, Part::Attributes);
        }
        let message = &buf[span.status_message.0..span.status_message.1];
        if message.is_empty() {
            self.status_message.push_null();
        } else if push_capped(&mut self.status_message, message, limits) {
            cuts.note(Cut::Value, Part::Attributes);
        }
        if cuts.any() {
            self.span_attributes.keys.push(TRUNCATED_KEY.as_bytes());
            self.span_attributes.values.push(cuts.describe().as_bytes());
        }
        self.span_attributes.end_row();
        self.events.end_row();
        self.links.end_row();
        let utf8 = self.name.utf8_since(mark.rows)
            && self.status_message.utf8_since(mark.rows)
            && self.span_attributes.utf8_since(mark.span_attributes)
            && self.events.utf8_since(mark.events)
            && self.links.utf8_since(mark.links);
        if !utf8 {
            return Err(WireError::StringsNotUtf8);
        }
        Ok(span)
    }

    /// Reads `Span.Event`.
    fn append_event(
        &mut self,
        buf: &[u8],
        range: (usize, usize),
        cuts: &mut Cuts,
    ) -> Result<(), WireError> {
        let limits = self.limits;
        let mut time = 0;
        let mut name = (0, 0);
        for field in Fields::range(buf, range) {
            let field = field?;
            match field.number {
                fields::event::TIME_UNIX_NANO => time = field.fixed64()?,
                fields::event::NAME => name = field.len()?,
                fields::event::ATTRIBUTES => {
                    let cut =
                        append_key_value(&mut self.events.attributes, buf, field.len()?, limits)?;
                    cuts.note(cut, Part::Events);
                }
                _ => {}
            }
        }
        self.events.attributes.end_row();
        if push_capped(&mut self.events.names, &buf[name.0..name.1], limits) {
            cuts.note(Cut::Value, Part::Events);
        }
        self.events.times_us.push((time / 1000) as i64);
        Ok(())
    }

    /// Reads `Span.Link`: the linked span's ids as hex, its trace state
    /// (null when empty) and attributes.
    fn append_link(
        &mut self,
        buf: &[u8],
        range: (usize, usize),
        cuts: &mut Cuts,
    ) -> Result<(), WireError> {
        let limits = self.limits;
        let (mut trace_id, mut span_id, mut state) = ((0, 0), (0, 0), (0, 0));
        for field in Fields::range(buf, range) {
            let field = field?;
            match field.number {
                fields::link::TRACE_ID => trace_id = field.len()?,
                fields::link::SPAN_ID => span_id = field.len()?,
                fields::link::TRACE_STATE => state = field.len()?,
                fields::link::ATTRIBUTES => {
                    let cut =
                        append_key_value(&mut self.links.attributes, buf, field.len()?, limits)?;
                    cuts.note(cut, Part::Links);
                }
                _ => {}
            }
        }
        self.links.attributes.end_row();
        let hex = |range: (usize, usize)| HexId::new(&buf[range.0..range.1]);
        self.links.trace_ids.push(hex(trace_id).as_str().as_bytes());
        self.links.span_ids.push(hex(span_id).as_str().as_bytes());
        let state = &buf[state.0..state.1];
        if state.is_empty() {
            self.links.trace_states.push_null();
        } else if push_capped(&mut self.links.trace_states, state, limits) {
            cuts.note(Cut::Value, Part::Links);
        }
        Ok(())
    }

    /// Appends the rest of the row of the span `append_wire` read, whose
    /// resource and scope are `self.origins.decoded[origin]`.
    fn append_row(&mut self, buf: &[u8], s: &SpanFields, origin: usize) {
        let origin = &self.origins.decoded[origin];
        self.span_id.push(
            HexId::new(&buf[s.span_id.0..s.span_id.1])
                .as_str()
                .as_bytes(),
        );
        let parent = &buf[s.parent_span_id.0..s.parent_span_id.1];
        if parent.is_empty() {
            self.parent_span_id.push_null();
        } else {
            self.parent_span_id
                .push(HexId::new(parent).as_str().as_bytes());
        }
        self.kind.push(kind_name(s.kind).as_bytes());
        self.service_name
            .push_option(origin.service_name.as_deref());
        self.start_us.push((s.start / 1000) as i64);
        self.end_us.push((s.end / 1000) as i64);
        self.duration_ms
            .push(s.end.saturating_sub(s.start) as f64 / 1e6);
        self.status_code.push(status_name(s.status_code).as_bytes());
        self.resource_attributes
            .keys
            .push_packed(&origin.attribute_keys);
        self.resource_attributes
            .values
            .push_packed(&origin.attribute_values);
        self.resource_attributes.end_row();
        self.scope_name.push_option(origin.scope_name.as_deref());
        self.scope_version
            .push_option(origin.scope_version.as_deref());
    }

    /// Builds the batch in the column order and types of `schema`.
    pub fn into_batch(mut self, schema: Arc<ArrowSchema>) -> Result<RecordBatch, RowError> {
        let rows = self.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let dt = field.data_type();
            let col: ArrayRef = match field.name().as_str() {
                column::TRACE_ID => Arc::new(self.trace_id.finish()?),
                column::SPAN_ID => Arc::new(self.span_id.finish()?),
                column::PARENT_SPAN_ID => Arc::new(self.parent_span_id.finish()?),
                column::NAME => Arc::new(self.name.finish()?),
                column::KIND => Arc::new(self.kind.finish()?),
                column::SERVICE_NAME => Arc::new(self.service_name.finish()?),
                column::START_TIME => timestamps(std::mem::take(&mut self.start_us), dt)?,
                column::END_TIME => timestamps(std::mem::take(&mut self.end_us), dt)?,
                column::DURATION_MS => {
                    Arc::new(Float64Array::from(std::mem::take(&mut self.duration_ms)))
                }
                column::STATUS_CODE => Arc::new(self.status_code.finish()?),
                column::STATUS_MESSAGE => Arc::new(self.status_message.finish()?),
                column::RESOURCE_ATTRIBUTES => self.resource_attributes.finish(dt)?,
                column::SPAN_ATTRIBUTES => self.span_attributes.finish(dt)?,
                column::EVENTS => self.events.finish(dt)?,
                column::LINKS => self.links.finish(dt)?,
                column::SCOPE_NAME => Arc::new(self.scope_name.finish()?),
                column::SCOPE_VERSION => Arc::new(self.scope_version.finish()?),
                column::SAMPLING_REASON => Arc::new(self.sampling_reason.finish()?),
                column::SAMPLING_RULE_ID => Arc::new(self.sampling_rule_id.finish()?),
                column::SAMPLED_AT => timestamps(std::mem::take(&mut self.sampled_at_us), dt)?,
                column::SAMPLE_RATE => {
                    Arc::new(Float64Array::from(std::mem::take(&mut self.sample_rate)))
                }
                // A column a newer version added: null, so that instances of
                // two versions can share the table during a rolling upgrade.
                _ if field.is_nullable() => arrow_array::new_null_array(dt, rows),
                other => return Err(RowError::UnexpectedColumn(other.to_string())),
            };
            columns.push(col);
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// What building the rows of a flush skipped and cut, over all its chunks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RowStats {
    pub rows: usize,
    /// Spans already stored (see `skip` of [`RowChunks::new`]).
    pub skipped: usize,
    pub undecodable_spans: usize,
    pub values_cut: usize,
    pub entries_dropped: usize,
}

/// Whether a span (its trace, its id) is left out of the rows: stored
/// already by an earlier commit of unknown outcome.
type SkipSpan<'a> = Box<dyn Fn(&KeptTrace, &[u8]) -> bool + Send + Sync + 'a>;

/// Kept traces as record batches of about `max_bytes` or less each, built
/// one at a time as the Parquet writer asks for them: however far a batch's
/// rows expand (every row repeats its resource's attributes), what is built
/// at once is bounded, and no column's offsets come near `i32::MAX`.
pub struct RowChunks<'a> {
    traces: &'a [KeptTrace],
    /// The next span to append: (trace, span) indexes.
    next: (usize, usize),
    schema: Arc<ArrowSchema>,
    limits: AttributeLimits,
    max_bytes: usize,
    skip: SkipSpan<'a>,
    /// Set to the bytes of the chunk being built, for the memory budget.
    building: Arc<std::sync::atomic::AtomicUsize>,
    stats: RowStats,
}

impl<'a> RowChunks<'a> {
    /// `skip` names the spans (trace, span id) to leave out: those stored
    /// already.
    pub fn new(
        traces: &'a [KeptTrace],
        schema: Arc<ArrowSchema>,
        limits: AttributeLimits,
        max_bytes: usize,
        skip: impl Fn(&KeptTrace, &[u8]) -> bool + Send + Sync + 'a,
    ) -> Self {
        Self {
            traces,
            next: (0, 0),
            schema,
            limits,
            max_bytes,
            skip: Box::new(skip),
            building: Arc::default(),
            stats: RowStats::default(),
        }
    }

    /// Reports the bytes of the chunk being built in `building`.
    pub fn reporting_to(mut self, building: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        self.building = building;
        self
    }

    /// What the chunks built so far skipped and cut.
    pub fn stats(&self) -> RowStats {
        self.stats
    }

    /// Appends spans until the chunk is full or the traces end.
    fn fill(&mut self, rows: &mut SpanRows) {
        use std::sync::atomic::Ordering;
        while let Some(trace) = self.traces.get(self.next.0) {
            while self.next.1 < trace.spans.len() {
                let skip = &self.skip;
                if !rows.push_span(trace, self.next.1, |id| skip(trace, id)) {
                    self.stats.skipped += 1;
                }
                self.next.1 += 1;
                let bytes = rows.bytes();
                self.building.store(bytes, Ordering::Relaxed);
                if bytes >= self.max_bytes {
                    return;
                }
            }
            self.next = (self.next.0 + 1, 0);
        }
    }
}

impl Iterator for RowChunks<'_> {
    type Item = Result<RecordBatch, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut rows = SpanRows::default().with_limits(self.limits);
        self.fill(&mut rows);
        self.stats.rows += rows.len();
        self.stats.undecodable_spans += rows.undecodable_spans;
        self.stats.values_cut += rows.values_cut;
        self.stats.entries_dropped += rows.entries_dropped;
        if rows.is_empty() {
            self.building.store(0, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        Some(rows.into_batch(self.schema.clone()))
    }
}

/// Decoded resources and scopes, shared by many spans: every message repeats
/// the resource and scope of its service, so a batch decodes each of them once
/// and finds it again by content.
#[derive(Default)]
struct Origins {
    decoded: Vec<DecodedOrigin>,
    /// The encoded (resource, scope) of each entry of `decoded`.
    encoded: Vec<(Bytes, Bytes)>,
    /// Content hash → entries with that hash.
    by_hash: FxHashMap<u64, Vec<usize>>,
    /// The last origin looked up: spans of one service in one message share
    /// the ingest's `Origin`, so a pointer comparison finds them.
    last: Option<(Arc<Origin>, usize)>,
}

impl Origins {
    /// The index in `decoded` of `origin`'s decoded form.
    fn index(&mut self, origin: &Arc<Origin>, limits: AttributeLimits) -> usize {
        if let Some((last, i)) = &self.last {
            if Arc::ptr_eq(last, origin) {
                return *i;
            }
        }
        let mut hasher = rustc_hash::FxHasher::default();
        hasher.write(&origin.resource);
        hasher.write_usize(origin.resource.len());
        hasher.write(&origin.scope);
        let hash = hasher.finish();
        let encoded = &self.encoded;
        let same = |i: &usize| encoded[*i].0 == origin.resource && encoded[*i].1 == origin.scope;
        let found = self
            .by_hash
            .get(&hash)
            .and_then(|c| c.iter().copied().find(same));
        let i = found.unwrap_or_else(|| {
            self.decoded.push(decode_origin(origin, limits));
            self.encoded
                .push((origin.resource.clone(), origin.scope.clone()));
            let i = self.decoded.len() - 1;
            self.by_hash.entry(hash).or_default().push(i);
            i
        });
        self.last = Some((origin.clone(), i));
        i
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

/// Reads `opentelemetry.proto.common.v1.KeyValue` into one map entry. The
/// value is written as the table stores it (see `any_value_string`), cut to
/// `limits.value_max_bytes`; past `limits.max_count` entries in the row the
/// pair is dropped.
fn append_key_value(
    column: &mut MapColumn,
    buf: &[u8],
    range: (usize, usize),
    limits: AttributeLimits,
) -> Result<Cut, WireError> {
    if column.open_row_entries() >= limits.max_count {
        return Ok(Cut::Dropped);
    }
    let mut key = (0, 0);
    let mut value = None;
    for field in Fields::range(buf, range) {
        let field = field?;
        match field.number {
            fields::key_value::KEY => key = field.len()?,
            fields::key_value::VALUE => value = Some(field.len()?),
            _ => {}
        }
    }
    column.keys.extend(&buf[key.0..key.1]);
    let key_cut = column.keys.cut_open_value(limits.value_max_bytes);
    column.keys.end_value();
    if let Some(range) = value {
        append_any_value(&mut column.values, buf, range)?;
    }
    let value_cut = column.values.cut_open_value(limits.value_max_bytes);
    column.values.end_value();
    Ok(if key_cut || value_cut {
        Cut::Value
    } else {
        Cut::None
    })
}

/// The member of an `AnyValue` that the wire holds last.
enum Member<'a> {
    Empty,
    Scalar(Scalar<'a>),
    /// An array or a key-value list (rare), decoded with prost.
    Nested,
}

/// Reads `opentelemetry.proto.common.v1.AnyValue` and appends it to the open
/// value (the caller ends it), formatted as `otlp::format` formats every
/// value; the last member of the `oneof` on the wire wins, as in any decoder.
fn append_any_value(
    out: &mut StrColumn,
    buf: &[u8],
    range: (usize, usize),
) -> Result<(), WireError> {
    use fields::any_value as member;
    let mut value = Member::Empty;
    for field in Fields::range(buf, range) {
        let field = field?;
        let slice = |r: (usize, usize)| &buf[r.0..r.1];
        value = match field.number {
            member::STRING => Member::Scalar(Scalar::Str(slice(field.len()?))),
            member::BOOL => Member::Scalar(Scalar::Bool(field.varint()? != 0)),
            member::INT => Member::Scalar(Scalar::Int(field.varint()? as i64)),
            member::DOUBLE => Member::Scalar(Scalar::Double(f64::from_bits(field.fixed64()?))),
            member::ARRAY | member::KVLIST => {
                field.len()?;
                Member::Nested
            }
            member::BYTES => Member::Scalar(Scalar::Bytes(slice(field.len()?))),
            _ => value,
        };
    }
    match value {
        Member::Empty => {}
        Member::Scalar(scalar) => scalar.write_text(out),
        Member::Nested => {
            let decoded = AnyValue::decode(&buf[range.0..range.1])?;
            out.extend(any_value_string(decoded).as_bytes());
        }
    }
    Ok(())
}

/// Decodes a resource and scope, with the caps applied: `service.name` is
/// found wherever it is in the list, and kept first when the count is cut.
fn decode_origin(origin: &Origin, limits: AttributeLimits) -> DecodedOrigin {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    let resource = Resource::decode(origin.resource.clone()).unwrap_or_default();
    let scope = InstrumentationScope::decode(origin.scope.clone()).unwrap_or_default();
    let mut attributes: Vec<(String, String)> = resource
        .attributes
        .into_iter()
        .map(|kv| (kv.key, kv.value.map(any_value_string).unwrap_or_default()))
        .collect();
    let mut dropped = 0;
    if attributes.len() > limits.max_count {
        if let Some(i) = attributes.iter().position(|(k, _)| k == "service.name") {
            let service = attributes.remove(i);
            attributes.insert(0, service);
        }
        dropped = attributes.len() - limits.max_count;
        attributes.truncate(limits.max_count);
    }
    let mut values_cut = 0;
    for (k, v) in attributes.iter_mut() {
        let cut = cut_string(k, limits.value_max_bytes) | cut_string(v, limits.value_max_bytes);
        values_cut += usize::from(cut);
    }
    let service_name = attributes
        .iter()
        .find(|(k, _)| k == "service.name")
        .map(|(_, v)| v.clone());
    let (mut scope_name, mut scope_version) = (scope.name, scope.version);
    cut_string(&mut scope_name, limits.value_max_bytes);
    cut_string(&mut scope_version, limits.value_max_bytes);
    DecodedOrigin {
        service_name,
        values_cut,
        dropped,
        attribute_keys: attributes.iter().map(|(k, _)| k.as_str()).collect(),
        attribute_values: attributes.iter().map(|(_, v)| v.as_str()).collect(),
        scope_name: (!scope_name.is_empty()).then_some(scope_name),
        scope_version: (!scope_version.is_empty()).then_some(scope_version),
    }
}

/// Appends `value` as one value cut to `limits.value_max_bytes`; returns
/// whether it was cut.
fn push_capped(column: &mut StrColumn, value: &[u8], limits: AttributeLimits) -> bool {
    column.extend(value);
    let cut = column.cut_open_value(limits.value_max_bytes);
    column.end_value();
    cut
}

/// Cuts `s` to at most `max` bytes on a character boundary; returns whether
/// it was cut.
fn cut_string(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Hold;
    use crate::model::SamplingReason;
    use crate::otlp::decode::decode_message;
    use crate::table::schema::table_schema;
    use crate::testkit::synth::{kv, kv_int, request, span, trace, ResourceDef, TraceSpec};
    use arrow_array::{
        Array, ListArray, MapArray, StringArray, StructArray, TimestampMicrosecondArray,
    };
    use opentelemetry_proto::tonic::common::v1::{any_value, ArrayValue, KeyValue, KeyValueList};
    use opentelemetry_proto::tonic::trace::v1::{
        span::{Event, Link},
        Span,
    };

    fn arrow_schema() -> Arc<ArrowSchema> {
        let schema = table_schema().expect("schema");
        Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema).expect("arrow"))
    }

    fn kept(trace_id: [u8; 16], req_bytes: Vec<u8>) -> KeptTrace {
        let decoded = decode_message(Bytes::from(req_bytes), 1 << 20).expect("decode");
        KeptTrace {
            trace_id,
            spans: decoded.spans.into_iter().map(|(_, s)| s).collect(),
            spans_in_kafka: 0,
            charge: None,
            reason: SamplingReason::Error,
            rule_id: Some("rule-1".into()),
            sample_rate: 1.0,
            hold: Hold::detached(vec![]),
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
                    values: vec![
                        AnyValue {
                            value: Some(V::IntValue(1)),
                        },
                        AnyValue {
                            value: Some(V::StringValue("two".into())),
                        },
                    ],
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
            .map(|kv| {
                (
                    kv.key.clone(),
                    kv.value.clone().map(any_value_string).unwrap_or_default(),
                )
            })
            .collect()
    }

    fn map_row(col: &ArrayRef, row: usize) -> Vec<(String, String)> {
        let map = col.as_any().downcast_ref::<MapArray>().expect("map");
        let entries = map.value(row);
        let keys = entries
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("keys");
        let values = entries
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("values");
        (0..keys.len())
            .map(|i| (keys.value(i).to_string(), values.value(i).to_string()))
            .collect()
    }

    fn string_at(batch: &RecordBatch, name: &str, row: usize) -> Option<String> {
        let col = batch.column_by_name(name).expect(name);
        let col = col.as_any().downcast_ref::<StringArray>().expect("strings");
        col.is_valid(row).then(|| col.value(row).to_string())
    }

    #[test]
    fn rows_match_a_full_protobuf_decode() {
        let mut spans: Vec<Span> = (1..=3)
            .map(|i| span(9, i, 0, 10 * u64::from(i), i == 2))
            .collect();
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
        spans[2].links = vec![
            Link {
                trace_id: vec![0xab; 16],
                span_id: vec![0xcd; 8],
                trace_state: "vendor=2".into(),
                attributes: vec![kv("link.kind", "batch"), kv_int("count", 3)],
                dropped_attributes_count: 0,
                flags: 0,
            },
            Link {
                trace_id: spans[0].trace_id.clone(),
                span_id: spans[0].span_id.clone(),
                ..Link::default()
            },
        ];
        let mut trace_id = [0u8; 16];
        trace_id[15] = 9;
        let trace = kept(
            trace_id,
            request(vec![ResourceDef::new("svc", spans.clone())]).encode_to_vec(),
        );
        let mut rows = SpanRows::default();
        assert_eq!(rows.push_trace(&trace, |_| false), 0);
        assert_eq!(rows.undecodable_spans, 0);
        let batch = rows.into_batch(arrow_schema()).expect("batch");
        assert_eq!(batch.num_rows(), 3);

        let resource = batch
            .column_by_name("resource_attributes")
            .expect("resource");
        let span_attrs = batch.column_by_name("span_attributes").expect("attrs");
        let events = batch.column_by_name("events").expect("events");
        let events = events.as_any().downcast_ref::<ListArray>().expect("list");
        let links = batch.column_by_name("links").expect("links");
        let links = links.as_any().downcast_ref::<ListArray>().expect("list");
        for (row, s) in spans.iter().enumerate() {
            let row_links = links.value(row);
            let row_links = row_links
                .as_any()
                .downcast_ref::<StructArray>()
                .expect("struct");
            assert_eq!(row_links.len(), s.links.len());
            let strings = |i: usize| {
                row_links
                    .column(i)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("strings")
                    .clone()
            };
            let (ids, span_ids, states) = (strings(0), strings(1), strings(2));
            for (i, l) in s.links.iter().enumerate() {
                assert_eq!(ids.value(i), hex::encode(&l.trace_id));
                assert_eq!(span_ids.value(i), hex::encode(&l.span_id));
                let state = states.is_valid(i).then(|| states.value(i).to_string());
                assert_eq!(
                    state,
                    (!l.trace_state.is_empty()).then(|| l.trace_state.clone())
                );
                assert_eq!(map_row(row_links.column(3), i), expected_map(&l.attributes));
            }
            assert_eq!(
                string_at(&batch, "trace_id", row),
                Some(hex::encode(&s.trace_id))
            );
            assert_eq!(
                string_at(&batch, "span_id", row),
                Some(hex::encode(&s.span_id))
            );
            let parent = (!s.parent_span_id.is_empty()).then(|| hex::encode(&s.parent_span_id));
            assert_eq!(string_at(&batch, "parent_span_id", row), parent);
            assert_eq!(string_at(&batch, "name", row), Some(s.name.clone()));
            assert_eq!(
                string_at(&batch, "kind", row).as_deref(),
                Some(kind_name(s.kind))
            );
            let status = s.status.clone().unwrap_or_default();
            assert_eq!(
                string_at(&batch, "status_code", row).as_deref(),
                Some(status_name(status.code))
            );
            let message = (!status.message.is_empty()).then_some(status.message);
            assert_eq!(string_at(&batch, "status_message", row), message);
            assert_eq!(
                string_at(&batch, "service_name", row).as_deref(),
                Some("svc")
            );
            assert_eq!(
                string_at(&batch, "sampling_rule_id", row).as_deref(),
                Some("rule-1")
            );
            assert_eq!(map_row(span_attrs, row), expected_map(&s.attributes));
            assert_eq!(
                map_row(resource, row),
                vec![
                    ("service.name".into(), "svc".into()),
                    ("deployment.environment".into(), "local".into())
                ]
            );
            let row_events = events.value(row);
            let row_events = row_events
                .as_any()
                .downcast_ref::<StructArray>()
                .expect("struct");
            assert_eq!(row_events.len(), s.events.len());
            for (i, e) in s.events.iter().enumerate() {
                let names = row_events
                    .column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("names");
                assert_eq!(names.value(i), e.name);
                let times = row_events
                    .column(1)
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .expect("times");
                assert_eq!(times.value(i), (e.time_unix_nano / 1000) as i64);
                assert_eq!(
                    map_row(row_events.column(2), i),
                    expected_map(&e.attributes)
                );
            }
        }
        // Spot checks of the flattening itself, so the oracle cannot drift.
        let first = map_row(span_attrs, 0);
        let get = |k: &str| {
            first
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
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
        let mut before = span(4, 1, 0, 10, true);
        before.attributes = vec![kv("first", "1")];
        let mut bad = span(4, 2, 0, 10, true);
        bad.attributes = vec![kv("fine", "yes"), kv("broken", "PLACEHOLDER")];
        bad.events = vec![Event {
            time_unix_nano: bad.start_time_unix_nano,
            name: "appended before the bad attribute".into(),
            attributes: vec![kv("e", "v")],
            dropped_attributes_count: 0,
        }];
        let mut after = span(4, 3, 0, 10, false);
        after.attributes = vec![kv("after", "x")];
        let mut bytes = request(vec![ResourceDef::new(
            "svc",
            vec![before.clone(), bad, after.clone()],
        )])
        .encode_to_vec();
        // Make the second span's attribute value invalid UTF-8 in place.
        let at = bytes
            .windows(11)
            .position(|w| w == b"PLACEHOLDER")
            .expect("value");
        bytes[at] = 0xff;
        let mut trace_id = [0u8; 16];
        trace_id[15] = 4;
        let trace = kept(trace_id, bytes);
        assert_eq!(
            trace.spans.len(),
            3,
            "the ingest scan does not read attributes"
        );
        let mut rows = SpanRows::default();
        rows.push_trace(&trace, |_| false);
        assert_eq!(rows.undecodable_spans, 1);
        assert_eq!(rows.len(), 2);
        let batch = rows.into_batch(arrow_schema()).expect("a consistent batch");
        assert_eq!(batch.num_rows(), 2);
        let attrs = batch.column_by_name("span_attributes").expect("attrs");
        assert_eq!(map_row(attrs, 0), expected_map(&before.attributes));
        assert_eq!(map_row(attrs, 1), expected_map(&after.attributes));
        assert_eq!(
            string_at(&batch, "span_id", 1),
            Some(hex::encode(&after.span_id))
        );
        let events = batch.column_by_name("events").expect("events");
        let events = events.as_any().downcast_ref::<ListArray>().expect("list");
        assert_eq!(
            events.values().len(),
            0,
            "the bad span's event was cut back out"
        );
    }

    #[test]
    fn spans_without_attributes_or_events_get_empty_lists() {
        let mut trace_id = [0u8; 16];
        trace_id[15] = 6;
        let trace = kept(
            trace_id,
            request(vec![ResourceDef::new(
                "svc",
                vec![span(6, 1, 0, 10, false)],
            )])
            .encode_to_vec(),
        );
        for mut rows in [
            SpanRows::default(),
            SpanRows::for_traces(std::slice::from_ref(&trace)),
        ] {
            rows.push_trace(&trace, |_| false);
            let batch = rows.into_batch(arrow_schema()).expect("batch");
            assert_eq!(batch.num_rows(), 1);
            let events = batch.column_by_name("events").expect("events");
            assert_eq!(
                events
                    .as_any()
                    .downcast_ref::<ListArray>()
                    .expect("list")
                    .value_length(0),
                0
            );
            assert_eq!(
                map_row(batch.column_by_name("span_attributes").expect("attrs"), 0),
                vec![]
            );
        }
    }

    #[test]
    fn each_resource_is_decoded_once_and_follows_its_spans() {
        let mut trace_id = [0u8; 16];
        trace_id[15] = 8;
        let message = |first_span: u8| {
            request(vec![
                ResourceDef::new("api", vec![span(8, first_span, 0, 10, false)]),
                ResourceDef::new("db", vec![span(8, first_span + 1, 0, 10, false)]),
            ])
            .encode_to_vec()
        };
        // Two messages: the same two resources, under different ingest origins.
        let mut trace = kept(trace_id, message(1));
        trace.spans.extend(kept(trace_id, message(3)).spans);
        let mut rows = SpanRows::default();
        rows.push_trace(&trace, |_| false);
        assert_eq!(rows.origins.decoded.len(), 2);
        let batch = rows.into_batch(arrow_schema()).expect("batch");
        let services: Vec<Option<String>> = (0..4)
            .map(|r| string_at(&batch, "service_name", r))
            .collect();
        let expected = ["api", "db", "api", "db"].map(|s| Some(s.to_string()));
        assert_eq!(services, expected);
        let resource = batch
            .column_by_name("resource_attributes")
            .expect("resource");
        assert_eq!(
            map_row(resource, 3)[0],
            ("service.name".to_string(), "db".to_string())
        );
    }

    #[test]
    fn spans_already_stored_are_skipped() {
        let spans: Vec<Span> = (1..=4).map(|i| span(5, i, 0, 10, false)).collect();
        let mut trace_id = [0u8; 16];
        trace_id[15] = 5;
        let trace = kept(
            trace_id,
            request(vec![ResourceDef::new("svc", spans)]).encode_to_vec(),
        );
        let mut rows = SpanRows::default();
        let skipped = rows.push_trace(&trace, |span_id| span_id[7] % 2 == 0);
        assert_eq!(skipped, 2);
        let batch = rows.into_batch(arrow_schema()).expect("batch");
        let ids: Vec<Option<String>> = (0..batch.num_rows())
            .map(|r| string_at(&batch, "span_id", r))
            .collect();
        assert_eq!(
            ids,
            vec![
                Some("0000000000000001".into()),
                Some("0000000000000003".into())
            ]
        );
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
        spans[1]
            .events
            .push(opentelemetry_proto::tonic::trace::v1::span::Event {
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
            spans_in_kafka: 0,
            charge: None,
            reason: SamplingReason::Error,
            rule_id: None,
            sample_rate: 1.0,
            hold: Hold::detached(vec![]),
            decided_at: SystemTime::now(),
        };
        let mut rows = SpanRows::default();
        rows.push_trace(&kept, |_| false);
        assert_eq!(rows.len(), 3);
        let batch = rows.into_batch(arrow).expect("batch");
        assert_eq!(batch.num_rows(), 3);
        let col = |name: &str| batch.column_by_name(name).expect(name).clone();
        let status = col("status_code");
        let status = status
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings");
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
        let reason = reason
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings");
        assert_eq!(reason.value(0), "error");
        assert_eq!(col("parent_span_id").null_count(), 1);
    }

    /// A trace of `spans` spans under one resource with `resource_attrs`
    /// extra attributes of `value_bytes` each; every span has `span_attrs`
    /// attributes, the first of them `big_value` bytes long.
    fn oversized(
        spans: u8,
        resource_attrs: usize,
        span_attrs: usize,
        big_value: usize,
    ) -> KeptTrace {
        let spans: Vec<Span> = (1..=spans)
            .map(|i| {
                let mut s = span(3, i, 0, 10, true);
                s.attributes = (0..span_attrs)
                    .map(|a| kv(&format!("span.attr.{a}"), if a == 0 { "é" } else { "v" }))
                    .collect();
                s.attributes[0].value =
                    value(any_value::Value::StringValue("é".repeat(big_value / 2)));
                s
            })
            .collect();
        let mut req = request(vec![ResourceDef::new("svc", spans)]);
        let resource = req.resource_spans[0].resource.as_mut().expect("resource");
        let service = resource.attributes.remove(0);
        resource
            .attributes
            .extend((0..resource_attrs).map(|a| kv(&format!("res.attr.{a}"), &"r".repeat(320))));
        // service.name last, past the count cap: it must still be found.
        resource.attributes.push(service);
        let mut trace_id = [0u8; 16];
        trace_id[15] = 3;
        kept(trace_id, req.encode_to_vec())
    }

    #[test]
    fn attributes_past_the_caps_are_cut_and_the_row_says_so() {
        let trace = oversized(2, 200, 200, 20_000);
        let limits = AttributeLimits {
            value_max_bytes: 1_001,
            max_count: 128,
        };
        let mut rows = SpanRows::default().with_limits(limits);
        rows.push_trace(&trace, |_| false);
        assert_eq!(rows.undecodable_spans, 0);
        // Per row: 200 + 1 (deployment.environment) + 1 resource attributes
        // to 128, the 200 span attributes to 128, one value cut each.
        assert_eq!(rows.entries_dropped, 2 * ((202 - 128) + (200 - 128)));
        assert_eq!(rows.values_cut, 2);
        let batch = rows.into_batch(arrow_schema()).expect("batch");
        let span_attrs = map_row(batch.column_by_name("span_attributes").expect("attrs"), 1);
        assert_eq!(span_attrs.len(), 129, "128 kept plus tss.truncated");
        assert_eq!(span_attrs[0].1.len(), 1_000, "cut on a character boundary");
        assert_eq!(
            span_attrs.last().expect("marker"),
            &(
                TRUNCATED_KEY.to_string(),
                "resource_attributes,span_attributes".to_string()
            )
        );
        let resource = map_row(batch.column_by_name("resource_attributes").expect("res"), 0);
        assert_eq!(resource.len(), 128);
        assert_eq!(resource[0], ("service.name".into(), "svc".into()));
        assert_eq!(string_at(&batch, "service_name", 0).as_deref(), Some("svc"));
    }

    #[test]
    fn links_past_the_cap_are_dropped_and_the_row_says_so() {
        let mut spans = vec![span(4, 1, 0, 10, false)];
        spans[0].links = (0..5u8)
            .map(|i| Link {
                trace_id: vec![i; 16],
                span_id: vec![i; 8],
                attributes: vec![kv("a", "1"), kv("b", "2"), kv("c", "3")],
                ..Link::default()
            })
            .collect();
        let mut trace_id = [0u8; 16];
        trace_id[15] = 4;
        let trace = kept(
            trace_id,
            request(vec![ResourceDef::new("svc", spans)]).encode_to_vec(),
        );
        let limits = AttributeLimits {
            value_max_bytes: 1_000,
            max_count: 2,
        };
        let mut rows = SpanRows::default().with_limits(limits);
        rows.push_trace(&trace, |_| false);
        // 3 links dropped, and of the 2 kept one attribute each.
        assert_eq!(rows.entries_dropped, 3 + 2);
        let batch = rows.into_batch(arrow_schema()).expect("batch");
        let links = batch.column_by_name("links").expect("links");
        let links = links.as_any().downcast_ref::<ListArray>().expect("list");
        assert_eq!(links.value(0).len(), 2);
        let attrs = map_row(batch.column_by_name("span_attributes").expect("attrs"), 0);
        assert!(
            attrs.contains(&(TRUNCATED_KEY.to_string(), "links".to_string())),
            "{attrs:?}"
        );
    }

    #[test]
    fn rows_within_the_caps_carry_no_marker() {
        let trace = oversized(1, 10, 10, 100);
        let mut rows = SpanRows::default();
        rows.push_trace(&trace, |_| false);
        assert_eq!((rows.values_cut, rows.entries_dropped), (0, 0));
        let batch = rows.into_batch(arrow_schema()).expect("batch");
        let attrs = map_row(batch.column_by_name("span_attributes").expect("attrs"), 0);
        assert_eq!(attrs.len(), 10);
        assert!(attrs.iter().all(|(k, _)| k != TRUNCATED_KEY));
    }

    #[test]
    fn chunks_are_bounded_by_bytes_and_hold_every_row_once() {
        let traces = vec![oversized(200, 20, 4, 100)];
        let mut one = SpanRows::default();
        one.push_span(&traces[0], 0, |_| false);
        let row_bytes = one.bytes();
        let max_bytes = 10 * row_bytes;
        let mut chunks = RowChunks::new(
            &traces,
            arrow_schema(),
            AttributeLimits::default(),
            max_bytes,
            |_, id| id[7] % 10 == 0,
        );
        let batches: Vec<RecordBatch> = (&mut chunks).map(|b| b.expect("batch")).collect();
        // A row's share of a chunk is a little under a lone row's bytes (the
        // fixed parts are shared): about ten rows a chunk, never twice that.
        assert!(batches.len() >= 12, "{} chunks", batches.len());
        for b in &batches {
            assert!(b.num_rows() <= 20, "{} rows in a chunk", b.num_rows());
            assert!(b.get_array_memory_size() < 3 * max_bytes);
        }
        let ids: std::collections::HashSet<String> = batches
            .iter()
            .flat_map(|b| (0..b.num_rows()).map(|r| string_at(b, "span_id", r).expect("id")))
            .collect();
        let stats = chunks.stats();
        assert_eq!(stats.skipped, 20);
        assert_eq!(stats.rows, 180);
        assert_eq!(ids.len(), 180);
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 180);
    }
}
