//! A minimal reader of the protobuf wire format.
//!
//! Both the ingest scan (which reads a handful of fields per span) and the
//! storage encoder (which writes kept spans straight into Arrow columns) walk
//! OTLP messages with it instead of building prost's owned object tree: the
//! tree costs dozens of allocations per span, the walk none.

/// A malformed protobuf message: what is wrong, as data. Only the error
/// path builds one, so the walk itself allocates nothing.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("truncated varint")]
    TruncatedVarint,
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    #[error("field runs past the end of its message")]
    PastEnd,
    #[error("invalid field key {0}")]
    InvalidKey(u64),
    #[error("length overflows")]
    LengthOverflow,
    #[error("unsupported wire type {wire_type} for field {field}")]
    UnsupportedWireType { wire_type: u64, field: u32 },
    #[error("field {field} is not {expected}")]
    WrongType { field: u32, expected: &'static str },
    #[error("string field is not UTF-8: {0}")]
    NotUtf8(std::str::Utf8Error),
    /// Found by a check over several strings at once, which has no position.
    #[error("a string field is not UTF-8")]
    StringsNotUtf8,
    /// A nested value decoded with prost.
    #[error(transparent)]
    Prost(#[from] prost::DecodeError),
}

/// A field's value as the wire format gives it. `Len` is a byte range.
#[derive(Debug, Clone, Copy)]
pub enum Value {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len((usize, usize)),
}

#[derive(Debug)]
pub struct Field {
    pub number: u32,
    pub value: Value,
}

impl Field {
    /// The byte range of a length-delimited field (string, bytes, message).
    pub fn len(&self) -> Result<(usize, usize), WireError> {
        match self.value {
            Value::Len(r) => Ok(r),
            _ => self.mismatch("length-delimited"),
        }
    }

    pub fn varint(&self) -> Result<u64, WireError> {
        match self.value {
            Value::Varint(v) => Ok(v),
            _ => self.mismatch("varint"),
        }
    }

    pub fn fixed64(&self) -> Result<u64, WireError> {
        match self.value {
            Value::Fixed64(v) => Ok(v),
            _ => self.mismatch("fixed64"),
        }
    }

    fn mismatch<T>(&self, expected: &'static str) -> Result<T, WireError> {
        Err(WireError::WrongType {
            field: self.number,
            expected,
        })
    }
}

/// Iterates the fields of one protobuf message held in `buf[pos..end]`.
///
/// Byte ranges it yields are offsets into the whole `buf`, so nested messages
/// are read with `Fields::range` on the same buffer without copying.
pub struct Fields<'a> {
    /// The buffer cut at the message's end: every read is checked against it.
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    /// The fields of the whole of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self::range(buf, (0, buf.len()))
    }

    /// The fields of the message at `buf[start..end]`.
    pub fn range(buf: &'a [u8], (start, end): (usize, usize)) -> Self {
        Self {
            buf: &buf[..end.min(buf.len())],
            pos: start,
            failed: false,
        }
    }

    /// One-byte varints (field keys, small lengths and enums) are most of
    /// them; they take the inlined branch.
    #[inline]
    fn varint(&mut self) -> Result<u64, WireError> {
        match self.buf.get(self.pos) {
            Some(&byte) if byte < 0x80 => {
                self.pos += 1;
                Ok(u64::from(byte))
            }
            _ => self.long_varint(),
        }
    }

    fn long_varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(WireError::TruncatedVarint);
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError::VarintTooLong)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<(usize, usize), WireError> {
        let start = self.pos;
        match start.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                self.pos = end;
                Ok((start, end))
            }
            _ => Err(WireError::PastEnd),
        }
    }

    #[inline(always)]
    fn next_field(&mut self) -> Result<Field, WireError> {
        let key = self.varint()?;
        let number = (key >> 3) as u32;
        if number == 0 || key > u64::from(u32::MAX) {
            return Err(WireError::InvalidKey(key));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                let (s, _) = self.take(8)?;
                Value::Fixed64(u64::from_le_bytes(self.array(s)))
            }
            2 => {
                let Ok(len) = usize::try_from(self.varint()?) else {
                    return Err(WireError::LengthOverflow);
                };
                Value::Len(self.take(len)?)
            }
            5 => {
                let (s, _) = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes(self.array(s)))
            }
            other => {
                return Err(WireError::UnsupportedWireType {
                    wire_type: other,
                    field: number,
                })
            }
        };
        Ok(Field { number, value })
    }

    /// `N` bytes at `at`, which `take` has checked.
    #[inline]
    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.buf.get(at..at + N) {
            out.copy_from_slice(src);
        }
        out
    }
}

impl Iterator for Fields<'_> {
    type Item = Result<Field, WireError>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let field = self.next_field();
        self.failed = field.is_err();
        Some(field)
    }
}

/// `opentelemetry.proto.trace.v1.Status` off the wire, as both the policies
/// (ingest) and the table (storage) read it: when `code` or `message`
/// appears more than once the last one wins, as protobuf merges a message,
/// and a code OTLP does not define reads as unset.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// 0 unset, 1 ok, 2 error.
    pub code: u8,
    /// Where the message lies in the buffer.
    pub message: (usize, usize),
}

/// Reads the `Status` at `range` of `buf`.
pub fn read_status(buf: &[u8], range: (usize, usize)) -> Result<Status, WireError> {
    let mut status = Status::default();
    for field in Fields::range(buf, range) {
        let field = field?;
        match field.number {
            super::fields::status::MESSAGE => status.message = field.len()?,
            super::fields::status::CODE => {
                let code = field.varint()?;
                status.code = if code <= 2 { code as u8 } else { 0 };
            }
            _ => {}
        }
    }
    Ok(status)
}

/// The UTF-8 text of a string field.
pub fn text(buf: &[u8], (start, end): (usize, usize)) -> Result<&str, WireError> {
    Ok(std::str::from_utf8(&buf[start..end])?)
}

impl From<std::str::Utf8Error> for WireError {
    fn from(e: std::str::Utf8Error) -> Self {
        WireError::NotUtf8(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_status_code_and_message_win() {
        // message "a", code OK, message "bc", code ERROR.
        let buf = [0x12, 1, b'a', 0x18, 1, 0x12, 2, b'b', b'c', 0x18, 2];
        let status = read_status(&buf, (0, buf.len())).expect("valid");
        assert_eq!(status.code, 2);
        assert_eq!(&buf[status.message.0..status.message.1], b"bc");
        // A code OTLP does not define reads as unset; a code of the wrong
        // wire type is invalid, as it is for a full decode.
        assert_eq!(read_status(&[0x18, 7], (0, 2)).expect("valid").code, 0);
        assert!(read_status(&[0x1a, 0], (0, 2)).is_err());
    }

    #[test]
    fn reads_every_wire_type_and_rejects_truncation() {
        // 1: varint 150, 2: "hi", 3: fixed64 7, 4: fixed32 9
        let msg = [
            0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x19, 7, 0, 0, 0, 0, 0, 0, 0, 0x25, 9, 0, 0,
            0,
        ];
        let fields: Vec<Field> = Fields::new(&msg).collect::<Result<_, _>>().expect("fields");
        assert_eq!(fields.len(), 4);
        assert_eq!(fields[0].varint().expect("varint"), 150);
        assert_eq!(
            text(&msg, fields[1].len().expect("len")).expect("utf8"),
            "hi"
        );
        assert_eq!(fields[2].fixed64().expect("fixed64"), 7);
        assert!(matches!(fields[3].value, Value::Fixed32(9)));
        assert!(fields[0].len().is_err(), "a varint is not length-delimited");
        for cut in 1..msg.len() {
            let parsed: Result<Vec<Field>, _> = Fields::new(&msg[..cut]).collect();
            let clean_cut = [3, 7, 16].contains(&cut);
            assert_eq!(parsed.is_ok(), clean_cut, "cut at {cut}");
        }
        assert!(text(&[0xff, 0xfe], (0, 2)).is_err());
    }
}
