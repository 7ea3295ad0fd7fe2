//! How OTLP values become the strings the table stores and rules match.

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
use prost::Message;

use super::wire::{Fields, Value};
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
                super::wire::Field {
                    number: 1,
                    value: Value::Len(r),
                } => k = Some(r),
                super::wire::Field {
                    number: 2,
                    value: Value::Len(r),
                } => v = Some(r),
                _ => {}
            }
        }
        if k.is_none_or(|r| &msg[r.0..r.1] != key.as_bytes()) {
            continue;
        }
        let Some(r) = v else { return Some(Ok(&[])) };
        // `AnyValue.string_value` is field 1: borrow it.
        let mut inner = Fields::range(msg, r);
        if let Some(Ok(super::wire::Field {
            number: 1,
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
}
