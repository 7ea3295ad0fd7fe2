//! The `spans` table's column names, named once. The schema declares them,
//! the storage stage builds rows by them, and the query engine and the API
//! read results by them; a name spelled in one place cannot drift.

pub const TRACE_ID: &str = "trace_id";
pub const SPAN_ID: &str = "span_id";
pub const PARENT_SPAN_ID: &str = "parent_span_id";
pub const NAME: &str = "name";
pub const KIND: &str = "kind";
pub const SERVICE_NAME: &str = "service_name";
pub const START_TIME: &str = "start_time";
pub const END_TIME: &str = "end_time";
pub const DURATION_MS: &str = "duration_ms";
pub const STATUS_CODE: &str = "status_code";
pub const STATUS_MESSAGE: &str = "status_message";
pub const RESOURCE_ATTRIBUTES: &str = "resource_attributes";
pub const SPAN_ATTRIBUTES: &str = "span_attributes";
pub const EVENTS: &str = "events";
pub const SCOPE_NAME: &str = "scope_name";
pub const SCOPE_VERSION: &str = "scope_version";
pub const SAMPLING_REASON: &str = "sampling_reason";
pub const SAMPLING_RULE_ID: &str = "sampling_rule_id";
pub const SAMPLED_AT: &str = "sampled_at";
/// How many traces a kept trace stands for, so that `sum(sample_rate)`
/// estimates the traffic before sampling. Optional, so that it can be added
/// to a table made before it existed; those rows read null.
pub const SAMPLE_RATE: &str = "sample_rate";
/// The span's links to spans of other traces (or of its own), as OTLP
/// carries them; Jaeger shows them as `FOLLOWS_FROM` references. Optional,
/// so that it can be added to a table made before it existed.
pub const LINKS: &str = "links";

/// The fields of an `events` element.
pub mod event {
    pub const NAME: &str = "name";
    pub const TIME: &str = "time";
    pub const ATTRIBUTES: &str = "attributes";
}

/// The fields of a `links` element.
pub mod link {
    pub const TRACE_ID: &str = "trace_id";
    pub const SPAN_ID: &str = "span_id";
    pub const TRACE_STATE: &str = "trace_state";
    pub const ATTRIBUTES: &str = "attributes";
}
