//! The `spans` table: its Iceberg schema and how OTLP values become its strings.
//!
//! Rows (`super::rows`) are built by column name against the schema the
//! catalog returns, not against our own field ids, because a catalog may
//! assign fresh ids when it creates the table.

use iceberg::spec::{
    ListType, MapType, NestedField, PrimitiveType, Schema, StructType, Transform, Type,
    UnboundPartitionSpec,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};

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
