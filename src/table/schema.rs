//! The `spans` table's Iceberg schema and partition spec.
//!
//! Rows (the storage stage) are built by column name against the schema the
//! catalog returns, not against our own field ids, because a catalog may
//! assign fresh ids when it creates the table.

use super::columns as c;
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
        NestedField::required(25, c::event::NAME, string()).into(),
        NestedField::required(26, c::event::TIME, timestamptz()).into(),
        NestedField::optional(27, c::event::ATTRIBUTES, string_map(28, 29)).into(),
    ]);
    Schema::builder()
        .with_schema_id(0)
        .with_identifier_field_ids(vec![])
        .with_fields(vec![
            NestedField::required(1, c::TRACE_ID, string()).into(),
            NestedField::required(2, c::SPAN_ID, string()).into(),
            NestedField::optional(3, c::PARENT_SPAN_ID, string()).into(),
            NestedField::required(4, c::NAME, string()).into(),
            NestedField::required(5, c::KIND, string()).into(),
            NestedField::optional(6, c::SERVICE_NAME, string()).into(),
            NestedField::required(7, c::START_TIME, timestamptz()).into(),
            NestedField::required(8, c::END_TIME, timestamptz()).into(),
            NestedField::required(9, c::DURATION_MS, Type::Primitive(PrimitiveType::Double)).into(),
            NestedField::required(10, c::STATUS_CODE, string()).into(),
            NestedField::optional(11, c::STATUS_MESSAGE, string()).into(),
            NestedField::optional(12, c::RESOURCE_ATTRIBUTES, string_map(20, 21)).into(),
            NestedField::optional(13, c::SPAN_ATTRIBUTES, string_map(22, 23)).into(),
            NestedField::optional(
                14,
                c::EVENTS,
                Type::List(ListType::new(
                    NestedField::list_element(24, Type::Struct(event), true).into(),
                )),
            )
            .into(),
            NestedField::optional(15, c::SCOPE_NAME, string()).into(),
            NestedField::optional(16, c::SCOPE_VERSION, string()).into(),
            NestedField::required(17, c::SAMPLING_REASON, string()).into(),
            NestedField::optional(18, c::SAMPLING_RULE_ID, string()).into(),
            NestedField::required(19, c::SAMPLED_AT, timestamptz()).into(),
            sample_rate_field(30).into(),
            NestedField::optional(31, c::LINKS, links_type(32, 33)).into(),
        ])
        .build()
}

/// `list<struct<trace_id, span_id, trace_state, attributes>>`, the nested
/// field ids from `first_id` on (schema evolution assigns fresh ones).
fn links_type(element_id: i32, first_id: i32) -> Type {
    let link = StructType::new(vec![
        NestedField::required(first_id, c::link::TRACE_ID, string()).into(),
        NestedField::required(first_id + 1, c::link::SPAN_ID, string()).into(),
        NestedField::optional(first_id + 2, c::link::TRACE_STATE, string()).into(),
        NestedField::optional(
            first_id + 3,
            c::link::ATTRIBUTES,
            string_map(first_id + 4, first_id + 5),
        )
        .into(),
    ]);
    Type::List(ListType::new(
        NestedField::list_element(element_id, Type::Struct(link), true).into(),
    ))
}

fn sample_rate_field(id: i32) -> NestedField {
    NestedField::optional(id, c::SAMPLE_RATE, Type::Primitive(PrimitiveType::Double))
}

/// The columns added since the first schema, for schema evolution of older
/// tables: (name, type).
pub fn added_columns() -> Vec<(&'static str, Type)> {
    vec![
        (c::SAMPLE_RATE, Type::Primitive(PrimitiveType::Double)),
        (c::LINKS, links_type(0, 0)),
    ]
}

/// `day(start_time)`.
pub fn partition_spec() -> iceberg::Result<UnboundPartitionSpec> {
    UnboundPartitionSpec::builder()
        .add_partition_field(7, "start_time_day", Transform::Day)
        .map(|b| b.build())
}
