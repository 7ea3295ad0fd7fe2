//! How OTLP values become the strings the table stores and rules match.

use std::fmt::Write as _;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
use prost::Message;

use super::fields::{any_value as any_field, key_value};
use super::wire::{Field, Fields, Value};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};

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

/// A scalar `AnyValue` member, borrowed from the wire or from a decoded
/// value. Arrays and key-value lists are not scalars: they are written as
/// JSON by [`any_value_string`].
#[derive(Debug, Clone, Copy)]
pub enum Scalar<'a> {
    Str(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
}

/// Where formatted text goes: a buffer, or a column being built.
pub trait TextSink {
    fn push_text(&mut self, bytes: &[u8]);
}

impl TextSink for Vec<u8> {
    fn push_text(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// `write!` into a sink, without an intermediate `String`.
struct Formatted<'a, S>(&'a mut S);

impl<S: TextSink> std::fmt::Write for Formatted<'_, S> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.push_text(s.as_bytes());
        Ok(())
    }
}

impl Scalar<'_> {
    /// Appends the text the table stores and rules match: a string as it
    /// is; a boolean, an integer or a double as its JSON (NaN and the
    /// infinities as `null`); bytes as a JSON string of lowercase hex. The
    /// same text as the member's JSON inside an array or a map, strings
    /// aside, so that one value reads the same wherever it is.
    pub fn write_text(self, out: &mut impl TextSink) {
        match self {
            Scalar::Str(s) => out.push_text(s),
            Scalar::Bool(b) => out.push_text(if b { b"true" } else { b"false" }),
            Scalar::Int(i) => {
                let _ = write!(Formatted(out), "{i}");
            }
            Scalar::Double(d) => match serde_json::Number::from_f64(d) {
                Some(n) => {
                    let _ = write!(Formatted(out), "{n}");
                }
                None => out.push_text(b"null"),
            },
            Scalar::Bytes(b) => {
                out.push_text(b"\"");
                let mut hex = [0u8; 64];
                for chunk in b.chunks(32) {
                    let hex = &mut hex[..chunk.len() * 2];
                    // Cannot fail: the buffer is twice the chunk's length.
                    if hex::encode_to_slice(chunk, hex).is_ok() {
                        out.push_text(hex);
                    }
                }
                out.push_text(b"\"");
            }
        }
    }
}

/// Flattens an attribute value into the string the table stores: a scalar
/// as [`Scalar::write_text`] writes it, arrays and maps as JSON so that no
/// information is lost.
pub fn any_value_string(v: AnyValue) -> String {
    let mut out = Vec::new();
    match v.value {
        Some(any_value::Value::StringValue(s)) => return s,
        Some(any_value::Value::BoolValue(b)) => Scalar::Bool(b).write_text(&mut out),
        Some(any_value::Value::IntValue(i)) => Scalar::Int(i).write_text(&mut out),
        Some(any_value::Value::DoubleValue(d)) => Scalar::Double(d).write_text(&mut out),
        Some(any_value::Value::BytesValue(b)) => Scalar::Bytes(&b).write_text(&mut out),
        Some(nested) => return any_value_json(Some(nested)).to_string(),
        None => return String::new(),
    }
    // Only ASCII was written.
    String::from_utf8(out).unwrap_or_default()
}

fn any_value_json(v: Option<any_value::Value>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Some(any_value::Value::StringValue(s)) => J::String(s),
        Some(any_value::Value::BoolValue(b)) => J::Bool(b),
        Some(any_value::Value::IntValue(i)) => J::from(i),
        Some(any_value::Value::DoubleValue(d)) => J::from(d),
        Some(any_value::Value::BytesValue(b)) => J::String(hex::encode(b)),
        Some(any_value::Value::ArrayValue(a)) => J::Array(
            a.values
                .into_iter()
                .map(|x| any_value_json(x.value))
                .collect(),
        ),
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

/// The value of attribute `key`, as [`any_value_string`] formats it, in the
/// `repeated KeyValue` field number `field` of an encoded message (9 in a
/// `Span`, 1 in a `Resource`). A walk over the wire format: a string value
/// is borrowed from the bytes (`Ok`, unchecked for UTF-8), any other is
/// decoded alone and formatted (`Err`). `None` when the key is absent or the
/// bytes are malformed.
pub fn find_attribute<'a>(
    msg: &'a [u8],
    field: u32,
    key: &str,
) -> Option<Result<&'a [u8], String>> {
    for f in Fields::new(msg) {
        let f = f.ok()?;
        let (true, Value::Len(kv)) = (f.number == field, f.value) else {
            continue;
        };
        let (mut k, mut v) = (None, None);
        for g in Fields::range(msg, kv) {
            match g.ok()? {
                Field {
                    number: key_value::KEY,
                    value: Value::Len(r),
                } => k = Some(r),
                Field {
                    number: key_value::VALUE,
                    value: Value::Len(r),
                } => v = Some(r),
                _ => {}
            }
        }
        if k.is_none_or(|r| &msg[r.0..r.1] != key.as_bytes()) {
            continue;
        }
        let Some(r) = v else { return Some(Ok(&[])) };
        // A lone `AnyValue.string_value`: borrow it.
        let mut inner = Fields::range(msg, r);
        if let Some(Ok(Field {
            number: any_field::STRING,
            value: Value::Len(s),
        })) = inner.next()
        {
            if inner.next().is_none() {
                return Some(Ok(&msg[s.0..s.1]));
            }
        }
        return AnyValue::decode(&msg[r.0..r.1])
            .ok()
            .map(|a| Err(any_value_string(a)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Every scalar reads the same alone as inside an array: the text is
    /// the member's JSON, strings aside.
    #[test]
    fn a_scalar_reads_the_same_alone_and_in_an_array() {
        use any_value::Value as V;
        use opentelemetry_proto::tonic::common::v1::ArrayValue;
        let scalars = [
            V::BoolValue(false),
            V::IntValue(i64::MIN),
            V::IntValue(42),
            V::DoubleValue(0.25),
            V::DoubleValue(3.0),
            V::DoubleValue(1e20),
            V::DoubleValue(f64::NAN),
            V::DoubleValue(f64::INFINITY),
            V::BytesValue(vec![]),
            V::BytesValue((0..=70).collect()),
        ];
        for v in scalars {
            let alone = any_value_string(AnyValue {
                value: Some(v.clone()),
            });
            let in_array = any_value_string(AnyValue {
                value: Some(V::ArrayValue(ArrayValue {
                    values: vec![AnyValue { value: Some(v) }],
                })),
            });
            assert_eq!(format!("[{alone}]"), in_array);
        }
        let s = AnyValue {
            value: Some(V::StringValue("a \"b\"".into())),
        };
        assert_eq!(any_value_string(s), "a \"b\"");
    }
}
