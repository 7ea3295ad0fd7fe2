//! The `spans` table's Iceberg schema and partition spec.
//!
//! Rows (the storage stage) are built by column name against the schema the
//! catalog returns, not against our own field ids, because a catalog may
//! assign fresh ids when it creates the table.

use iceberg::spec::{
    ListType, MapType, NestedField, PrimitiveType, Schema, StructType, Transform, Type,
    UnboundPartitionSpec,
};

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

/// The table schema docs/api.md ("The spans table") describes.
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
            sample_rate_field(30).into(),
            NestedField::optional(31, LINKS, links_type(32, 33)).into(),
        ])
        .build()
}

/// `links`: the span's links to spans of other traces (or of its own), as
/// OTLP carries them; Jaeger shows them as `FOLLOWS_FROM` references.
/// Optional, so that it can be added to a table made before it existed.
pub const LINKS: &str = "links";

/// `list<struct<trace_id, span_id, trace_state, attributes>>`, the nested
/// field ids from `first_id` on (schema evolution assigns fresh ones).
fn links_type(element_id: i32, first_id: i32) -> Type {
    let link = StructType::new(vec![
        NestedField::required(first_id, "trace_id", string()).into(),
        NestedField::required(first_id + 1, "span_id", string()).into(),
        NestedField::optional(first_id + 2, "trace_state", string()).into(),
        NestedField::optional(
            first_id + 3,
            "attributes",
            string_map(first_id + 4, first_id + 5),
        )
        .into(),
    ]);
    Type::List(ListType::new(
        NestedField::list_element(element_id, Type::Struct(link), true).into(),
    ))
}

/// `sample_rate`: how many traces a kept trace stands for, so that
/// `sum(sample_rate)` estimates the traffic before sampling. Optional, so that
/// it can be added to a table made before it existed; those rows read null.
pub const SAMPLE_RATE: &str = "sample_rate";

fn sample_rate_field(id: i32) -> NestedField {
    NestedField::optional(id, SAMPLE_RATE, Type::Primitive(PrimitiveType::Double))
}

/// The columns added since the first schema, for schema evolution of older
/// tables: (name, type).
pub fn added_columns() -> Vec<(&'static str, Type)> {
    vec![
        (SAMPLE_RATE, Type::Primitive(PrimitiveType::Double)),
        (LINKS, links_type(0, 0)),
    ]
}

/// `day(start_time)`.
pub fn partition_spec() -> iceberg::Result<UnboundPartitionSpec> {
    UnboundPartitionSpec::builder()
        .add_partition_field(7, "start_time_day", Transform::Day)
        .map(|b| b.build())
}
