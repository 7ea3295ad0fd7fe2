//! Column buffers for kept spans that can be cut back to an earlier row.
//!
//! Kept spans are written into these straight from their wire bytes in one
//! pass (see `rows`). A span that turns out to be malformed halfway through
//! must leave nothing behind, which Arrow's builders cannot do (they have no
//! truncate), so the columns are plain vectors turned into Arrow arrays at
//! the end. UTF-8 is checked per span over the bytes it appended, not per
//! string, which is what made the per-attribute cost small.

use crate::table::columns as column;
use std::fmt;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, ListArray, MapArray, StringArray, StructArray, TimestampMicrosecondArray,
};
use datafusion::arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::DataType;

use super::error::RowError;

/// A `Utf8` column: concatenated values, row offsets and the rows that are
/// null. Nulls are rare, so they are listed instead of flagging every row.
pub(super) struct StrColumn {
    values: Vec<u8>,
    offsets: Vec<i32>,
    null_rows: Vec<usize>,
}

impl Default for StrColumn {
    fn default() -> Self {
        Self::with_capacity(0, 0)
    }
}

impl StrColumn {
    pub fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            values: Vec::with_capacity(bytes),
            offsets,
            null_rows: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Appends to the value being written; `end_value` closes it.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.values.extend_from_slice(bytes);
    }

    pub fn end_value(&mut self) {
        // Past 2 GiB the offsets stop growing and `finish` reports the batch
        // as invalid instead of wrapping around.
        self.offsets
            .push(i32::try_from(self.values.len()).unwrap_or(i32::MAX));
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.extend(bytes);
        self.end_value();
    }

    /// Cuts the value being written (since the last `end_value`) to at most
    /// `max` bytes, on a character boundary; returns whether it was cut.
    /// Bytes that are not UTF-8 are cut as they are and refused later by
    /// `utf8_since`, as uncut ones would be.
    pub fn cut_open_value(&mut self, max: usize) -> bool {
        let start = self.offsets.last().copied().unwrap_or(0) as usize;
        if self.values.len() - start <= max {
            return false;
        }
        let mut end = start + max;
        // Back off continuation bytes (0b10xx_xxxx) to a character's start.
        while end > start && (self.values[end] as i8) < -0x40 {
            end -= 1;
        }
        self.values.truncate(end);
        true
    }

    /// Bytes held: the values and their offsets.
    pub fn bytes(&self) -> usize {
        self.values.len() + 4 * self.offsets.len()
    }

    pub fn push_null(&mut self) {
        self.null_rows.push(self.len());
        self.offsets.push(self.offsets.last().copied().unwrap_or(0));
    }

    /// Appends every string of `packed` as rows of their own.
    pub fn push_packed(&mut self, packed: &Packed) {
        let base = self.values.len();
        self.values.extend_from_slice(&packed.bytes);
        let offset = |end: &usize| i32::try_from(base + end).unwrap_or(i32::MAX);
        self.offsets.extend(packed.ends.iter().map(offset));
    }

    pub fn push_option(&mut self, value: Option<&str>) {
        match value {
            Some(v) => self.push(v.as_bytes()),
            None => self.push_null(),
        }
    }

    /// Drops every row from `rows` on.
    pub fn truncate(&mut self, rows: usize) {
        if rows < self.len() {
            self.values.truncate(self.offsets[rows] as usize);
            self.offsets.truncate(rows + 1);
            while self.null_rows.last().is_some_and(|r| *r >= rows) {
                self.null_rows.pop();
            }
        }
    }

    /// Whether the rows from `row` on are valid UTF-8 each: the bytes they
    /// span decode, and every value starts on a character boundary (a valid
    /// whole could still split a character between two values).
    pub fn utf8_since(&self, row: usize) -> bool {
        let offsets = &self.offsets[row.min(self.len())..];
        let is_boundary = |o: &i32| {
            self.values
                .get(*o as usize)
                .is_none_or(|b| (*b as i8) >= -0x40)
        };
        std::str::from_utf8(&self.values[offsets[0] as usize..]).is_ok()
            && offsets.iter().all(is_boundary)
    }

    /// The Arrow array; the column is empty afterwards.
    pub fn finish(&mut self) -> Result<StringArray, RowError> {
        let taken = std::mem::take(self);
        let nulls = (!taken.null_rows.is_empty()).then(|| {
            let mut valid = vec![true; taken.len()];
            for row in &taken.null_rows {
                valid[*row] = false;
            }
            NullBuffer::from(valid)
        });
        Ok(StringArray::try_new(
            OffsetBuffer::new(ScalarBuffer::from(taken.offsets)),
            Buffer::from_vec(taken.values),
            nulls,
        )?)
    }
}

/// Strings laid out as a column stores them, appended to one with a single
/// copy: the resource attributes every span of a service repeats.
#[derive(Default)]
pub(super) struct Packed {
    bytes: Vec<u8>,
    /// Where each string ends in `bytes`.
    ends: Vec<usize>,
}

impl<'a> FromIterator<&'a str> for Packed {
    fn from_iter<I: IntoIterator<Item = &'a str>>(strings: I) -> Self {
        let mut packed = Packed::default();
        for s in strings {
            packed.bytes.extend_from_slice(s.as_bytes());
            packed.ends.push(packed.bytes.len());
        }
        packed
    }
}

impl crate::otlp::format::TextSink for StrColumn {
    fn push_text(&mut self, bytes: &[u8]) {
        self.extend(bytes);
    }
}

impl fmt::Write for StrColumn {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.extend(s.as_bytes());
        Ok(())
    }
}

/// Where each row of a nested column (map entries, events) ends among its
/// children; the leading 0 is always there, as Arrow requires.
struct RowOffsets(Vec<i32>);

impl RowOffsets {
    fn with_capacity(rows: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self(offsets)
    }

    fn rows(&self) -> usize {
        self.0.len() - 1
    }

    /// Closes a row whose children end at `children`.
    fn end_row(&mut self, children: usize) {
        self.0.push(i32::try_from(children).unwrap_or(i32::MAX));
    }

    fn truncate(&mut self, rows: usize) {
        self.0.truncate(rows + 1);
    }

    /// The offsets as Arrow's; the column starts over.
    fn take(&mut self) -> OffsetBuffer<i32> {
        OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(&mut self.0, vec![0])))
    }
}

/// Keys, values and row offsets of one `map<string, string>` column.
pub(super) struct MapColumn {
    pub keys: StrColumn,
    pub values: StrColumn,
    offsets: RowOffsets,
}

/// Where a map column stood before a span was appended.
#[derive(Clone, Copy)]
pub(super) struct MapMark {
    rows: usize,
    entries: usize,
}

impl Default for MapColumn {
    fn default() -> Self {
        Self::with_capacity(0, 0, 0)
    }
}

impl MapColumn {
    pub fn with_capacity(rows: usize, entries: usize, bytes: usize) -> Self {
        Self {
            keys: StrColumn::with_capacity(entries, bytes),
            values: StrColumn::with_capacity(entries, bytes),
            offsets: RowOffsets::with_capacity(rows),
        }
    }

    pub fn end_row(&mut self) {
        self.offsets.end_row(self.keys.len());
    }

    /// Entries of the row being written.
    pub fn open_row_entries(&self) -> usize {
        self.keys.len() - self.offsets.0.last().copied().unwrap_or(0) as usize
    }

    pub fn bytes(&self) -> usize {
        self.keys.bytes() + self.values.bytes() + 4 * self.offsets.0.len()
    }

    pub fn mark(&self) -> MapMark {
        MapMark {
            rows: self.offsets.rows(),
            entries: self.keys.len(),
        }
    }

    pub fn truncate(&mut self, mark: MapMark) {
        self.offsets.truncate(mark.rows);
        self.keys.truncate(mark.entries);
        self.values.truncate(mark.entries);
    }

    pub fn utf8_since(&self, mark: MapMark) -> bool {
        self.keys.utf8_since(mark.entries) && self.values.utf8_since(mark.entries)
    }

    /// The column as a `MapArray` of type `dt`, whose field names and ids come
    /// from the table.
    pub fn finish(&mut self, dt: &DataType) -> Result<ArrayRef, RowError> {
        let DataType::Map(entries, sorted) = dt else {
            return Err(RowError::UnexpectedColumn(format!("map as {dt}")));
        };
        let DataType::Struct(kv_fields) = entries.data_type() else {
            return Err(RowError::UnexpectedColumn(format!("map entries as {dt}")));
        };
        let entries_array = StructArray::try_new(
            kv_fields.clone(),
            vec![
                Arc::new(self.keys.finish()?) as ArrayRef,
                Arc::new(self.values.finish()?) as ArrayRef,
            ],
            None,
        )?;
        Ok(Arc::new(MapArray::try_new(
            entries.clone(),
            self.offsets.take(),
            entries_array,
            None,
            *sorted,
        )?))
    }
}

/// The `events` column: a list of (name, time, attributes) per row.
pub(super) struct EventColumn {
    pub names: StrColumn,
    pub times_us: Vec<i64>,
    pub attributes: MapColumn,
    offsets: RowOffsets,
}

/// Where the events column stood before a span was appended.
#[derive(Clone, Copy)]
pub(super) struct EventMark {
    rows: usize,
    events: usize,
    attributes: MapMark,
}

impl Default for EventColumn {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl EventColumn {
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            names: StrColumn::default(),
            times_us: Vec::new(),
            attributes: MapColumn::default(),
            offsets: RowOffsets::with_capacity(rows),
        }
    }

    pub fn end_row(&mut self) {
        self.offsets.end_row(self.times_us.len());
    }

    /// Events of the row being written.
    pub fn open_row_events(&self) -> usize {
        self.times_us.len() - self.offsets.0.last().copied().unwrap_or(0) as usize
    }

    pub fn bytes(&self) -> usize {
        self.names.bytes()
            + 8 * self.times_us.len()
            + self.attributes.bytes()
            + 4 * self.offsets.0.len()
    }

    pub fn mark(&self) -> EventMark {
        EventMark {
            rows: self.offsets.rows(),
            events: self.times_us.len(),
            attributes: self.attributes.mark(),
        }
    }

    pub fn truncate(&mut self, mark: EventMark) {
        self.offsets.truncate(mark.rows);
        self.names.truncate(mark.events);
        self.times_us.truncate(mark.events);
        self.attributes.truncate(mark.attributes);
    }

    pub fn utf8_since(&self, mark: EventMark) -> bool {
        self.names.utf8_since(mark.events) && self.attributes.utf8_since(mark.attributes)
    }

    pub fn finish(&mut self, dt: &DataType) -> Result<ArrayRef, RowError> {
        let DataType::List(item) = dt else {
            return Err(RowError::UnexpectedColumn(format!("events as {dt}")));
        };
        let DataType::Struct(fields) = item.data_type() else {
            return Err(RowError::UnexpectedColumn(format!("event as {dt}")));
        };
        let mut children = Vec::with_capacity(fields.len());
        for f in fields.iter() {
            let child: ArrayRef = match f.name().as_str() {
                column::event::NAME => Arc::new(self.names.finish()?),
                column::event::TIME => {
                    timestamps(std::mem::take(&mut self.times_us), f.data_type())?
                }
                column::event::ATTRIBUTES => self.attributes.finish(f.data_type())?,
                other => return Err(RowError::UnexpectedColumn(format!("events.{other}"))),
            };
            children.push(child);
        }
        let structs = StructArray::try_new(fields.clone(), children, None)?;
        Ok(Arc::new(ListArray::try_new(
            item.clone(),
            self.offsets.take(),
            Arc::new(structs) as ArrayRef,
            None,
        )?))
    }
}

/// The `links` column: a list of (trace_id, span_id, trace_state,
/// attributes) per row, ids in lowercase hex.
pub(super) struct LinkColumn {
    pub trace_ids: StrColumn,
    pub span_ids: StrColumn,
    pub trace_states: StrColumn,
    pub attributes: MapColumn,
    offsets: RowOffsets,
}

/// Where the links column stood before a span was appended.
#[derive(Clone, Copy)]
pub(super) struct LinkMark {
    rows: usize,
    links: usize,
    attributes: MapMark,
}

impl Default for LinkColumn {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl LinkColumn {
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            trace_ids: StrColumn::default(),
            span_ids: StrColumn::default(),
            trace_states: StrColumn::default(),
            attributes: MapColumn::default(),
            offsets: RowOffsets::with_capacity(rows),
        }
    }

    pub fn end_row(&mut self) {
        self.offsets.end_row(self.trace_ids.len());
    }

    /// Links of the row being written.
    pub fn open_row_links(&self) -> usize {
        self.trace_ids.len() - self.offsets.0.last().copied().unwrap_or(0) as usize
    }

    pub fn bytes(&self) -> usize {
        self.trace_ids.bytes()
            + self.span_ids.bytes()
            + self.trace_states.bytes()
            + self.attributes.bytes()
            + 4 * self.offsets.0.len()
    }

    pub fn mark(&self) -> LinkMark {
        LinkMark {
            rows: self.offsets.rows(),
            links: self.trace_ids.len(),
            attributes: self.attributes.mark(),
        }
    }

    pub fn truncate(&mut self, mark: LinkMark) {
        self.offsets.truncate(mark.rows);
        self.trace_ids.truncate(mark.links);
        self.span_ids.truncate(mark.links);
        self.trace_states.truncate(mark.links);
        self.attributes.truncate(mark.attributes);
    }

    /// The ids are hex written here; the trace state and the attributes
    /// come from the wire.
    pub fn utf8_since(&self, mark: LinkMark) -> bool {
        self.trace_states.utf8_since(mark.links) && self.attributes.utf8_since(mark.attributes)
    }

    pub fn finish(&mut self, dt: &DataType) -> Result<ArrayRef, RowError> {
        let DataType::List(item) = dt else {
            return Err(RowError::UnexpectedColumn(format!("links as {dt}")));
        };
        let DataType::Struct(fields) = item.data_type() else {
            return Err(RowError::UnexpectedColumn(format!("link as {dt}")));
        };
        let mut children = Vec::with_capacity(fields.len());
        for f in fields.iter() {
            let child: ArrayRef = match f.name().as_str() {
                column::link::TRACE_ID => Arc::new(self.trace_ids.finish()?),
                column::link::SPAN_ID => Arc::new(self.span_ids.finish()?),
                column::link::TRACE_STATE => Arc::new(self.trace_states.finish()?),
                column::link::ATTRIBUTES => self.attributes.finish(f.data_type())?,
                other => return Err(RowError::UnexpectedColumn(format!("links.{other}"))),
            };
            children.push(child);
        }
        let structs = StructArray::try_new(fields.clone(), children, None)?;
        Ok(Arc::new(ListArray::try_new(
            item.clone(),
            self.offsets.take(),
            Arc::new(structs) as ArrayRef,
            None,
        )?))
    }
}

/// A `timestamptz` column (microseconds) of the table's type `dt`.
pub(super) fn timestamps(v: Vec<i64>, dt: &DataType) -> Result<ArrayRef, RowError> {
    let DataType::Timestamp(_, tz) = dt else {
        return Err(RowError::UnexpectedColumn(format!("timestamp as {dt}")));
    };
    Ok(Arc::new(
        TimestampMicrosecondArray::from(v).with_timezone_opt(tz.clone()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    #[test]
    fn truncation_and_utf8_checks() {
        let mut c = StrColumn::default();
        c.push(b"keep");
        c.push_null();
        let mark = c.len();
        let _ = write!(c, "{}", 42);
        c.end_value();
        c.push("grüße".as_bytes());
        assert!(c.utf8_since(mark));
        // Two halves of one character are valid together but not apart.
        let e_acute = "é".as_bytes();
        c.push(&e_acute[..1]);
        c.push(&e_acute[1..]);
        assert!(!c.utf8_since(mark));
        c.truncate(mark);
        assert_eq!(c.len(), 2);
        c.push(b"after");
        c.push_null();
        c.push_packed(&["x", "", "yz"].into_iter().collect());
        let array = c.finish().expect("valid");
        let values: Vec<Option<&str>> = array.iter().collect();
        assert_eq!(
            values,
            vec![
                Some("keep"),
                None,
                Some("after"),
                None,
                Some("x"),
                Some(""),
                Some("yz")
            ]
        );
    }

    #[test]
    fn a_cut_value_ends_on_a_character_boundary() {
        let mut c = StrColumn::default();
        c.push(b"before");
        c.extend("aé€".as_bytes()); // 1 + 2 + 3 bytes
        assert!(!c.cut_open_value(6));
        assert!(c.cut_open_value(5), "inside the euro sign");
        c.end_value();
        c.extend(b"abc");
        assert!(c.cut_open_value(2));
        c.end_value();
        assert!(c.utf8_since(0));
        let array = c.finish().expect("valid");
        let values: Vec<Option<&str>> = array.iter().collect();
        assert_eq!(values, vec![Some("before"), Some("aé"), Some("ab")]);
    }
}
