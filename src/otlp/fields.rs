//! The field numbers of the OTLP trace messages that the wire-format readers
//! walk, named once, as `opentelemetry/proto/trace/v1/trace.proto` and
//! `common/v1/common.proto` number them.
//!
//! The hot path (the scan in `decode`), the row builder of the storage stage
//! and the rule matcher all read the same bytes without prost; naming the
//! numbers here keeps the three from disagreeing about which field is which.

/// `ExportTraceServiceRequest`.
pub mod request {
    /// `repeated ResourceSpans resource_spans`.
    pub const RESOURCE_SPANS: u32 = 1;
}

/// `ResourceSpans`.
pub mod resource_spans {
    /// `Resource resource`.
    pub const RESOURCE: u32 = 1;
    /// `repeated ScopeSpans scope_spans`.
    pub const SCOPE_SPANS: u32 = 2;
}

/// `ScopeSpans`.
pub mod scope_spans {
    /// `InstrumentationScope scope`.
    pub const SCOPE: u32 = 1;
    /// `repeated Span spans`.
    pub const SPANS: u32 = 2;
}

/// `Resource`.
pub mod resource {
    /// `repeated KeyValue attributes`.
    pub const ATTRIBUTES: u32 = 1;
}

/// `Span`.
pub mod span {
    pub const TRACE_ID: u32 = 1;
    pub const SPAN_ID: u32 = 2;
    pub const TRACE_STATE: u32 = 3;
    pub const PARENT_SPAN_ID: u32 = 4;
    pub const NAME: u32 = 5;
    pub const KIND: u32 = 6;
    pub const START_TIME_UNIX_NANO: u32 = 7;
    pub const END_TIME_UNIX_NANO: u32 = 8;
    /// `repeated KeyValue attributes`.
    pub const ATTRIBUTES: u32 = 9;
    pub const EVENTS: u32 = 11;
    pub const LINKS: u32 = 13;
    pub const STATUS: u32 = 15;
}

/// `Span.Event`.
pub mod event {
    pub const TIME_UNIX_NANO: u32 = 1;
    pub const NAME: u32 = 2;
    pub const ATTRIBUTES: u32 = 3;
}

/// `Span.Link`.
pub mod link {
    pub const TRACE_ID: u32 = 1;
    pub const SPAN_ID: u32 = 2;
    pub const TRACE_STATE: u32 = 3;
    pub const ATTRIBUTES: u32 = 4;
}

/// `Status`.
pub mod status {
    pub const MESSAGE: u32 = 2;
    pub const CODE: u32 = 3;
}

/// `KeyValue`.
pub mod key_value {
    pub const KEY: u32 = 1;
    pub const VALUE: u32 = 2;
}

/// `AnyValue`: one `oneof`, the last member on the wire wins.
pub mod any_value {
    pub const STRING: u32 = 1;
    pub const BOOL: u32 = 2;
    pub const INT: u32 = 3;
    pub const DOUBLE: u32 = 4;
    pub const ARRAY: u32 = 5;
    pub const KVLIST: u32 = 6;
    pub const BYTES: u32 = 7;
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value as V, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{
        span as otlp_span, ResourceSpans, ScopeSpans, Span, Status,
    };
    use prost::Message;

    use crate::otlp::wire::Fields;

    /// The first field's number in `bytes`.
    fn only_field(bytes: &[u8]) -> u32 {
        let mut fields = Fields::new(bytes);
        let first = fields.next().expect("a field").expect("valid");
        assert!(fields.next().is_none(), "one field expected");
        first.number
    }

    /// Each number checked against prost's own encoding of a message with
    /// only that field set, so a typo here fails instead of misreading spans.
    #[test]
    fn the_numbers_are_the_ones_prost_encodes() {
        use super::*;
        let s = |f: fn(&mut Span)| {
            let mut span = Span::default();
            f(&mut span);
            only_field(&span.encode_to_vec())
        };
        assert_eq!(s(|x| x.trace_id = vec![1]), span::TRACE_ID);
        assert_eq!(s(|x| x.span_id = vec![1]), span::SPAN_ID);
        assert_eq!(s(|x| x.trace_state = "a".into()), span::TRACE_STATE);
        assert_eq!(s(|x| x.parent_span_id = vec![1]), span::PARENT_SPAN_ID);
        assert_eq!(s(|x| x.name = "a".into()), span::NAME);
        assert_eq!(s(|x| x.kind = 2), span::KIND);
        assert_eq!(
            s(|x| x.start_time_unix_nano = 1),
            span::START_TIME_UNIX_NANO
        );
        assert_eq!(s(|x| x.end_time_unix_nano = 1), span::END_TIME_UNIX_NANO);
        assert_eq!(
            s(|x| x.attributes.push(KeyValue::default())),
            span::ATTRIBUTES
        );
        assert_eq!(s(|x| x.events.push(Default::default())), span::EVENTS);
        assert_eq!(s(|x| x.links.push(Default::default())), span::LINKS);
        assert_eq!(s(|x| x.status = Some(Status::default())), span::STATUS);

        let e = |f: fn(&mut otlp_span::Event)| {
            let mut ev = otlp_span::Event::default();
            f(&mut ev);
            only_field(&ev.encode_to_vec())
        };
        assert_eq!(e(|x| x.time_unix_nano = 1), event::TIME_UNIX_NANO);
        assert_eq!(e(|x| x.name = "a".into()), event::NAME);
        assert_eq!(
            e(|x| x.attributes.push(KeyValue::default())),
            event::ATTRIBUTES
        );

        let l = |f: fn(&mut otlp_span::Link)| {
            let mut link = otlp_span::Link::default();
            f(&mut link);
            only_field(&link.encode_to_vec())
        };
        assert_eq!(l(|x| x.trace_id = vec![1]), link::TRACE_ID);
        assert_eq!(l(|x| x.span_id = vec![1]), link::SPAN_ID);
        assert_eq!(l(|x| x.trace_state = "a".into()), link::TRACE_STATE);
        assert_eq!(
            l(|x| x.attributes.push(KeyValue::default())),
            link::ATTRIBUTES
        );

        let status_message = Status {
            message: "a".into(),
            ..Default::default()
        };
        assert_eq!(only_field(&status_message.encode_to_vec()), status::MESSAGE);
        let status_code = Status {
            code: 2,
            ..Default::default()
        };
        assert_eq!(only_field(&status_code.encode_to_vec()), status::CODE);

        let key = KeyValue {
            key: "a".into(),
            ..Default::default()
        };
        assert_eq!(only_field(&key.encode_to_vec()), key_value::KEY);
        let value = KeyValue {
            value: Some(AnyValue::default()),
            ..Default::default()
        };
        assert_eq!(only_field(&value.encode_to_vec()), key_value::VALUE);

        let a = |v: V| only_field(&AnyValue { value: Some(v) }.encode_to_vec());
        assert_eq!(a(V::StringValue(String::new())), any_value::STRING);
        assert_eq!(a(V::BoolValue(false)), any_value::BOOL);
        assert_eq!(a(V::IntValue(0)), any_value::INT);
        assert_eq!(a(V::DoubleValue(0.0)), any_value::DOUBLE);
        assert_eq!(a(V::ArrayValue(Default::default())), any_value::ARRAY);
        assert_eq!(a(V::KvlistValue(Default::default())), any_value::KVLIST);
        assert_eq!(a(V::BytesValue(vec![])), any_value::BYTES);

        let resource = Resource {
            attributes: vec![KeyValue::default()],
            ..Default::default()
        };
        assert_eq!(only_field(&resource.encode_to_vec()), resource::ATTRIBUTES);
        let scope = ScopeSpans {
            scope: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(only_field(&scope.encode_to_vec()), scope_spans::SCOPE);
        let spans = ScopeSpans {
            spans: vec![Span::default()],
            ..Default::default()
        };
        assert_eq!(only_field(&spans.encode_to_vec()), scope_spans::SPANS);
        let rs = ResourceSpans {
            resource: Some(Resource::default()),
            ..Default::default()
        };
        assert_eq!(only_field(&rs.encode_to_vec()), resource_spans::RESOURCE);
        let rs = ResourceSpans {
            scope_spans: vec![ScopeSpans::default()],
            ..Default::default()
        };
        assert_eq!(only_field(&rs.encode_to_vec()), resource_spans::SCOPE_SPANS);
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans::default()],
        };
        assert_eq!(only_field(&req.encode_to_vec()), request::RESOURCE_SPANS);
    }
}
