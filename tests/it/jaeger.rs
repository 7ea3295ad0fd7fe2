//! Jaeger's legacy query API over the spans table, called as Grafana's
//! Jaeger data source calls it (grafana-jaeger-datasource, `pkg/jaeger/
//! client.go`): services, operations, search, one trace, dependencies; and
//! bytes encoded by the OpenTelemetry Python SDK round-tripped through
//! `/api/traces/{id}`.

use std::collections::{BTreeMap, BTreeSet};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use serde_json::{json, Value};
use tail_sampling_selector::testkit::synth::{self, ResourceDef, TraceSpec};

use crate::harness::{now_nanos, producer, random_trace_id, send, unique, Selector};

const TOKEN: &str = "jaeger-test-token";

async fn start(name: &str) -> Selector {
    let prefix = format!("tss-it-{}:", unique(name));
    Selector::start(
        name,
        &[
            ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
            ("TSS__ADMIN__AUTH_TOKEN", TOKEN),
            ("TSS__SAMPLING__BASELINE_SAMPLE_RATE", "0"),
        ],
    )
    .await
}

/// An error trace of 4 spans: the root in `front`, its 3 children in
/// `back`. Returns its id.
async fn two_service_trace(s: &Selector, front: &str, back: &str) -> String {
    let id = random_trace_id(rand::random());
    let mut spans = synth::trace(&TraceSpec {
        trace_id: id,
        service: front.into(),
        spans: 4,
        error: true,
        start_unix_nano: now_nanos() - 60_000_000,
        duration_ms: 40,
    });
    let children = spans.split_off(1);
    let body = synth::request(vec![
        ResourceDef::new(front, spans),
        ResourceDef::new(back, children),
    ])
    .encode_to_vec();
    send(&producer(), &s.topic, &hex::encode(id), &body).await;
    hex::encode(id)
}

/// The keys of a JSON object.
fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// The upstream shapes (jaegertracing/jaeger `internal/uimodel`, and the
/// structured response of its HTTP handler), checked on every answer.
fn assert_structured(body: &Value) {
    assert_eq!(
        keys(body),
        BTreeSet::from(["data", "total", "limit", "offset", "errors"]),
        "{body}"
    );
}

fn assert_trace_shape(trace: &Value) {
    assert_eq!(
        keys(trace),
        BTreeSet::from(["traceID", "spans", "processes", "warnings"]),
        "{trace}"
    );
    let id = trace["traceID"].as_str().expect("traceID");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    for span in trace["spans"].as_array().expect("spans") {
        assert_eq!(
            keys(span),
            BTreeSet::from([
                "traceID",
                "spanID",
                "operationName",
                "references",
                "startTime",
                "duration",
                "tags",
                "logs",
                "processID",
                "warnings",
            ]),
            "{span}"
        );
        assert_eq!(span["traceID"], trace["traceID"]);
        assert!(span["startTime"].is_u64() && span["duration"].is_u64());
        let pid = span["processID"].as_str().expect("processID");
        let process = &trace["processes"][pid];
        assert_eq!(
            keys(process),
            BTreeSet::from(["serviceName", "tags"]),
            "{trace}"
        );
        for tag in span["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .chain(process["tags"].as_array().expect("process tags"))
        {
            assert_eq!(keys(tag), BTreeSet::from(["key", "type", "value"]));
            let ok = match tag["type"].as_str() {
                Some("string") => tag["value"].is_string(),
                Some("bool") => tag["value"].is_boolean(),
                Some("int64") => tag["value"].is_i64(),
                Some("float64") => tag["value"].is_f64(),
                _ => false,
            };
            assert!(ok, "a typed tag: {tag}");
        }
        for r in span["references"].as_array().expect("references") {
            assert_eq!(keys(r), BTreeSet::from(["refType", "traceID", "spanID"]));
        }
        for log in span["logs"].as_array().expect("logs") {
            assert_eq!(keys(log), BTreeSet::from(["timestamp", "fields"]));
        }
    }
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_legacy_jaeger_api_answers_as_grafanas_data_source_calls_it() {
    let s = start("jaeger").await;
    let (front, back) = (unique("front"), unique("back"));
    let id = two_service_trace(&s, &front, &back).await;
    s.wait_exported(4.0).await;

    // The data source's health check and service list.
    let (status, body) = s.get("/api/services").await;
    assert_eq!(status, 200, "{body}");
    assert_structured(&body);
    assert_eq!(
        strings(&body["data"]),
        BTreeSet::from([front.clone(), back.clone()])
    );
    assert_eq!(body["total"], 2);

    // Operations: as SQL lists them.
    let (status, body) = s.get(&format!("/api/services/{back}/operations")).await;
    assert_eq!(status, 200, "{body}");
    assert_structured(&body);
    let sql = s
        .query(&format!(
            "SELECT DISTINCT name FROM spans WHERE service_name = '{back}'"
        ))
        .await;
    let from_sql: BTreeSet<String> = sql["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r[0].as_str().expect("name").to_string())
        .collect();
    assert_eq!(strings(&body["data"]), from_sql);
    let (status, body) = s.get(&format!("/api/operations?service={front}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!([{"name": "POST /checkout", "spanKind": "server"}])
    );
    let (status, body) = s.get("/api/operations").await;
    assert_eq!(status, 400, "service is required: {body}");

    // Search as Grafana sends it: service, tags as JSON, a duration range,
    // start and end in microseconds, a limit.
    let now_us = now_nanos() / 1_000;
    let range = format!(
        "start={}&end={}",
        now_us - 3_600_000_000,
        now_us + 1_000_000
    );
    let tags = "%7B%22error%22%3A%22true%22%7D";
    let (status, body) = s
        .get(&format!(
            "/api/traces?service={back}&tags={tags}&minDuration=1us&maxDuration=1h&limit=20&{range}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_structured(&body);
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "{body}");
    let trace = &data[0];
    assert_trace_shape(trace);
    assert_eq!(trace["traceID"], id.as_str());
    assert_eq!(trace["spans"].as_array().expect("spans").len(), 4);
    // Grafana sorts on spans[0]: the root.
    let root = &trace["spans"][0];
    assert_eq!(root["references"], json!([]));
    assert_eq!(root["operationName"], "POST /checkout");
    assert_eq!(
        trace["processes"][root["processID"].as_str().expect("pid")]["serviceName"],
        front.as_str()
    );
    assert_eq!(tag(root, "error"), Some(&json!(true)));
    assert_eq!(tag(root, "span.kind"), Some(&json!("server")));
    assert_eq!(tag(root, "http.response.status_code"), Some(&json!(500)));
    assert_eq!(tag(root, "sampling.reason"), Some(&json!("error")));
    for child in &trace["spans"].as_array().expect("spans")[1..] {
        assert_eq!(
            child["references"],
            json!([{"refType": "CHILD_OF", "traceID": id, "spanID": root["spanID"]}])
        );
    }
    // Repeated tag=k:v and an operation.
    let (_, body) = s
        .get(&format!(
            "/api/traces?service={back}&operation=SELECT%20orders&tag=db.system:postgresql&{range}"
        ))
        .await;
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1), "{body}");
    // Nothing matches: 200 with an empty list.
    for miss in [
        format!("service={back}&minDuration=1h&{range}"),
        format!("service={back}&tag=db.system:mysql&{range}"),
        format!("service=nobody&{range}"),
    ] {
        let (status, body) = s.get(&format!("/api/traces?{miss}")).await;
        assert_eq!(status, 200, "{miss}: {body}");
        assert_eq!(body["data"], json!([]), "{miss}");
    }
    let (status, body) = s.get("/api/traces?minDuration=5").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["code"], 400, "{body}");
    assert!(
        body["errors"][0]["msg"]
            .as_str()
            .is_some_and(|m| m.contains("minDuration")),
        "{body}"
    );

    // One trace, with start and end as Grafana sends them (milliseconds).
    let now_ms = now_nanos() / 1_000_000;
    let (status, body) = s
        .get(&format!(
            "/api/traces/{id}?start={}&end={}",
            now_ms - 3_600_000,
            now_ms
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_structured(&body);
    assert_trace_shape(&body["data"][0]);
    let spans_of = |t: &Value| -> BTreeMap<String, Value> {
        t["spans"]
            .as_array()
            .expect("spans")
            .iter()
            .map(|s| (s["spanID"].as_str().expect("id").to_string(), s.clone()))
            .collect()
    };
    assert_eq!(spans_of(&body["data"][0]), spans_of(trace));
    let stored = s
        .query(&format!(
            "SELECT span_id, parent_span_id FROM spans WHERE trace_id = '{id}'"
        ))
        .await;
    for row in stored["rows"].as_array().expect("rows") {
        let span = &spans_of(trace)[row[0].as_str().expect("id")];
        let parent = span["references"][0]["spanID"].clone();
        assert_eq!(
            if row[1].is_null() {
                Value::Null
            } else {
                parent
            },
            row[1]
        );
    }
    // The upper-case id, and a 64-bit id padded as Jaeger pads it.
    let (status, _) = s.get(&format!("/api/traces/{}", id.to_uppercase())).await;
    assert_eq!(status, 200);
    let (status, body) = s.get("/api/traces/00ff").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errors"][0]["code"], 404, "{body}");
    let (status, body) = s.get("/api/traces/not-hex").await;
    assert_eq!(status, 400, "{body}");

    // Dependencies: 3 calls from the front to the back.
    let (status, body) = s
        .get(&format!(
            "/api/dependencies?endTs={}&lookback=3600000",
            now_ms + 1_000
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_structured(&body);
    assert_eq!(
        body["data"],
        json!([{"parent": front, "child": back, "callCount": 3}])
    );

    // The dashboard's links to Explore, sent as the data source sends a
    // search (logfmt tags as a JSON object), with the series labels of a
    // red bar filled in: each finds the error trace, or rules it out.
    let report = crate::deploy::check_deploy();
    let links = report["trace_links"].as_array().expect("trace_links");
    assert!(links.len() >= 3, "{report}");
    for link in links {
        let fill = |v: &Value| {
            v.as_str().map(|t| {
                t.replace("${__field.labels.service}", &back)
                    .replace("${__field.labels.reason}", "error")
            })
        };
        let q = &link["query"];
        let mut params = vec![
            ("limit".to_string(), q["limit"].to_string()),
            ("start".into(), (now_us - 3_600_000_000).to_string()),
        ];
        for key in ["service", "operation", "minDuration", "maxDuration"] {
            if let Some(v) = fill(&q[key]) {
                params.push((key.to_string(), v));
            }
        }
        if let Some(tags) = fill(&q["tags"]) {
            let object: serde_json::Map<String, Value> = tags
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            params.push(("tags".into(), Value::Object(object).to_string()));
        }
        let url = reqwest::Url::parse_with_params("http://x/api/traces", &params).expect("url");
        let path = format!("/api/traces?{}", url.query().unwrap_or_default());
        let (status, body) = s.get(&path).await;
        assert_eq!(status, 200, "{link}: {body}");
        let found = body["data"]
            .as_array()
            .expect("data")
            .iter()
            .any(|t| t["traceID"] == id.as_str());
        let slow_only = q["minDuration"].is_string();
        assert_eq!(found, !slow_only, "{link}: {path}: {body}");
    }

    // Behind the admin token.
    let anonymous = reqwest::get(format!("http://{}/api/services", s.admin))
        .await
        .expect("GET");
    assert_eq!(anonymous.status().as_u16(), 401);
}

fn value_text(v: &AnyValue) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        other => panic!("the fixture holds no {other:?}"),
    }
}

fn expected_tags(attributes: &[KeyValue]) -> Vec<(String, Value)> {
    attributes
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                value_text(kv.value.as_ref().expect("a value")),
            )
        })
        .collect()
}

/// A trace the OpenTelemetry Python SDK encoded, fetched back through
/// `/api/traces/{id}`: ids, parents, times, attributes, events and status
/// as the SDK wrote them.
#[tokio::test(flavor = "multi_thread")]
async fn an_sdk_trace_round_trips_through_the_jaeger_api() {
    let fixture = std::env::var("TSS_SDK_FIXTURE")
        .expect("TSS_SDK_FIXTURE must name SDK-encoded bytes; run scripts/test.sh");
    let bytes = std::fs::read(format!("{fixture}.bin")).expect("fixture .bin");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(format!("{fixture}.json")).expect("fixture .json"))
            .expect("fixture json");
    let request = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("SDK bytes");
    let s = start("jaeger-sdk").await;
    send(&producer(), &s.topic, "sdk", &bytes).await;
    let id = expected["error_trace_id"].as_str().expect("id");
    s.wait_exported(expected["error_trace_spans"].as_f64().expect("n"))
        .await;

    let (status, body) = s.get(&format!("/api/traces/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let trace = &body["data"][0];
    assert_trace_shape(trace);
    let got: BTreeMap<String, &Value> = trace["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .map(|s| (s["spanID"].as_str().expect("id").to_string(), s))
        .collect();
    let rs = &request.resource_spans[0];
    let scope = rs.scope_spans[0].scope.as_ref().expect("scope");
    let mut compared = 0;
    for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
        if hex::encode(&span.trace_id) != id {
            continue;
        }
        compared += 1;
        let j = got[&hex::encode(&span.span_id)];
        assert_eq!(
            trace["processes"][j["processID"].as_str().expect("pid")]["serviceName"],
            expected["service_name"]
        );
        assert_eq!(j["operationName"], span.name.as_str());
        // The parent as CHILD_OF, then the links as FOLLOWS_FROM.
        let parent = hex::encode(&span.parent_span_id);
        let mut refs = Vec::new();
        if !parent.is_empty() {
            refs.push(json!({"refType": "CHILD_OF", "traceID": id, "spanID": parent}));
        }
        for link in &span.links {
            refs.push(json!({
                "refType": "FOLLOWS_FROM",
                "traceID": hex::encode(&link.trace_id),
                "spanID": hex::encode(&link.span_id),
            }));
        }
        assert_eq!(j["references"], json!(refs));
        // The table keeps microseconds, as Jaeger does.
        let start = (span.start_time_unix_nano / 1_000) as i64;
        let end = (span.end_time_unix_nano / 1_000) as i64;
        assert_eq!(j["startTime"], start);
        assert_eq!(j["duration"], end - start);
        for (key, value) in expected_tags(&span.attributes) {
            assert_eq!(tag(j, &key), Some(&value), "{key}: {j}");
        }
        assert_eq!(tag(j, "otel.scope.name"), Some(&json!(scope.name)));
        assert_eq!(tag(j, "otel.scope.version"), Some(&json!(scope.version)));
        let logs: Vec<Value> = span
            .events
            .iter()
            .map(|e| {
                let mut fields = vec![json!({"key": "event", "type": "string", "value": e.name})];
                fields.extend(
                    expected_tags(&e.attributes)
                        .into_iter()
                        .map(|(k, v)| json!({"key": k, "type": "string", "value": v})),
                );
                json!({"timestamp": e.time_unix_nano / 1_000, "fields": fields})
            })
            .collect();
        assert_eq!(j["logs"], json!(logs));
        let status = span.status.clone().unwrap_or_default();
        if status.code == 2 {
            assert_eq!(tag(j, "otel.status_code"), Some(&json!("ERROR")));
            assert_eq!(tag(j, "error"), Some(&json!(true)));
            assert_eq!(
                tag(j, "otel.status_description"),
                Some(&json!(status.message))
            );
        } else {
            assert_eq!(tag(j, "error"), None);
        }
        let kind = ["", "internal", "server", "client", "producer", "consumer"][span.kind as usize];
        assert_eq!(tag(j, "span.kind"), Some(&json!(kind)));
    }
    assert_eq!(compared, got.len(), "every stored span compared");
    assert_eq!(
        compared as u64,
        expected["error_trace_spans"].as_u64().expect("n")
    );
    let linked: usize = rs
        .scope_spans
        .iter()
        .flat_map(|ss| &ss.spans)
        .map(|s| s.links.len())
        .sum();
    assert_eq!(linked, 1, "the SDK trace carries a link");

    // api_v3: the link as OTLP JSON, with its attributes.
    let (status, body) = s.get(&format!("/api/v3/traces/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let links: Vec<&Value> = body["result"]["resourceSpans"]
        .as_array()
        .expect("resourceSpans")
        .iter()
        .flat_map(|rs| rs["scopeSpans"].as_array().into_iter().flatten())
        .flat_map(|ss| ss["spans"].as_array().into_iter().flatten())
        .flat_map(|span| span["links"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(links.len(), 1, "{body}");
    assert_eq!(links[0]["traceId"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(links[0]["spanId"], "b7ad6b7169203331");
    let attrs = links[0]["attributes"].as_array().expect("attributes");
    assert!(
        attrs.contains(&json!({"key": "messaging.batch.index", "value": {"intValue": "3"}})),
        "{body}"
    );
}

/// An upstream api_v3 answer (`tests/fixtures/jaeger-apiv3/`).
fn upstream(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jaeger-apiv3")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).expect("snapshot");
    serde_json::from_str(&text).expect("snapshot JSON")
}

/// Whether `ours` has every field of `theirs`, at the same place and of the
/// same JSON type; in a list, some element of ours has every field of their
/// first one, and every element agrees on the types of the fields it has.
fn conforms(ours: &Value, theirs: &Value, path: &str) -> Result<(), String> {
    match (ours, theirs) {
        (Value::Object(o), Value::Object(t)) => t.iter().try_for_each(|(k, v)| {
            let at = format!("{path}.{k}");
            o.get(k)
                .ok_or(format!("{at} is missing"))
                .and_then(|mine| conforms(mine, v, &at))
        }),
        (Value::Array(o), Value::Array(t)) => {
            let Some(first) = t.first() else {
                return Ok(());
            };
            o.iter()
                .enumerate()
                .try_for_each(|(i, e)| types_agree(e, first, &format!("{path}[{i}]")))?;
            if o.iter().any(|e| conforms(e, first, path).is_ok()) {
                Ok(())
            } else {
                o.first().map_or(Err(format!("{path} is empty")), |e| {
                    conforms(e, first, path)
                })
            }
        }
        (o, t) if std::mem::discriminant(o) == std::mem::discriminant(t) => Ok(()),
        (o, t) => Err(format!("{path} is {o}, upstream has {t}")),
    }
}

/// Whether the fields `ours` shares with `theirs` have the same JSON types.
fn types_agree(ours: &Value, theirs: &Value, path: &str) -> Result<(), String> {
    match (ours, theirs) {
        (Value::Object(o), Value::Object(t)) => o.iter().try_for_each(|(k, v)| match t.get(k) {
            Some(tv) => types_agree(v, tv, &format!("{path}.{k}")),
            None => Ok(()),
        }),
        (Value::Array(o), Value::Array(t)) => match t.first() {
            Some(first) => o
                .iter()
                .enumerate()
                .try_for_each(|(i, e)| types_agree(e, first, &format!("{path}[{i}]"))),
            None => Ok(()),
        },
        (o, t) if std::mem::discriminant(o) == std::mem::discriminant(t) => Ok(()),
        (o, t) => Err(format!("{path} is {o}, upstream has {t}")),
    }
}

fn assert_conforms(body: &Value, snapshot: &str) {
    if let Err(e) = conforms(body, &upstream(snapshot), snapshot) {
        panic!("not {snapshot}'s shape: {e}\n{body}");
    }
}

#[test]
fn the_conformance_check_can_fail() {
    let theirs = json!({"a": [{"b": 1, "c": "x"}]});
    assert!(conforms(&json!({"a": [{"b": 2, "c": "y", "d": true}]}), &theirs, "").is_ok());
    assert!(conforms(&json!({"a": [{"b": "2", "c": "y"}]}), &theirs, "").is_err());
    assert!(conforms(&json!({"a": [{"b": 2}]}), &theirs, "").is_err());
    assert!(conforms(&json!({"a": []}), &theirs, "").is_err());
    assert!(conforms(&json!({"a": [{"b": 2, "c": "y"}, {"b": "3"}]}), &theirs, "").is_err());
    assert!(conforms(&json!({"a": [{"b": 2, "c": "y"}, {"b": 3}]}), &theirs, "").is_ok());
}

/// api_v3 as the current Jaeger UI calls it (jaeger-ui `src/api/v3/
/// client.ts`), checked against the rules its schemas enforce
/// (`schemas.ts`: 32-hex trace ids, decimal nanosecond strings, a
/// `spanKind` on every operation) and the upstream snapshots' shapes.
#[tokio::test(flavor = "multi_thread")]
async fn api_v3_answers_as_the_jaeger_ui_calls_it() {
    let s = start("jaeger-v3").await;
    let (front, back) = (unique("front"), unique("back"));
    let id = two_service_trace(&s, &front, &back).await;
    s.wait_exported(4.0).await;

    let (status, body) = s.get("/api/v3/services").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), BTreeSet::from(["services"]));
    assert_conforms(&body, "GetServices");
    assert_eq!(
        strings(&body["services"]),
        BTreeSet::from([front.clone(), back.clone()])
    );

    let (status, body) = s.get(&format!("/api/v3/operations?service={back}")).await;
    assert_eq!(status, 200, "{body}");
    assert_conforms(&body, "GetOperations");
    let ops = body["operations"].as_array().expect("operations");
    assert!(!ops.is_empty(), "{body}");
    for op in ops {
        assert_eq!(keys(op), BTreeSet::from(["name", "spanKind"]), "{op}");
        assert_eq!(op["spanKind"], "client", "{op}");
    }
    let (_, body) = s
        .get(&format!(
            "/api/v3/operations?service={front}&spanKind=server"
        ))
        .await;
    assert_eq!(
        body,
        json!({"operations": [{"name": "POST /checkout", "spanKind": "server"}]})
    );

    let now = chrono::Utc::now();
    let range = format!(
        "query.startTimeMin={}&query.startTimeMax={}",
        (now - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        (now + chrono::Duration::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    let (status, body) = s
        .get(&format!(
            "/api/v3/trace-summaries?query.serviceName={back}&query.searchDepth=20&query.durationMin=1us&{range}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_conforms(&body, "FindTraceSummaries");
    let summaries = body["summaries"].as_array().expect("summaries");
    assert_eq!(summaries.len(), 1, "{body}");
    let sum = &summaries[0];
    assert_eq!(sum["traceId"], id.as_str());
    assert_eq!(sum["rootServiceName"], front.as_str());
    assert_eq!(sum["rootOperationName"], "POST /checkout");
    assert_eq!(sum["spanCount"], 4);
    assert_eq!(sum["errorSpanCount"], 2);
    let start: u128 = sum["minStartTimeUnixNano"]
        .as_str()
        .expect("a decimal string")
        .parse()
        .expect("decimal");
    let end: u128 = sum["maxEndTimeUnixNano"]
        .as_str()
        .expect("a decimal string")
        .parse()
        .expect("decimal");
    assert!(end > start, "{sum}");
    // Per service, by name ("back-…" before "front-…").
    assert_eq!(
        sum["services"],
        json!([
            {"name": back, "spanCount": 3, "errorSpanCount": 1},
            {"name": front, "spanCount": 1, "errorSpanCount": 1},
        ])
    );

    // One trace as OTLP JSON: every span once, ids as stored, under its
    // resource, with the snapshot's field names.
    let (status, body) = s.get(&format!("/api/v3/traces/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_conforms(&body, "GetTrace");
    assert_eq!(keys(&body), BTreeSet::from(["result"]));
    let resources = body["result"]["resourceSpans"]
        .as_array()
        .expect("resourceSpans");
    assert_eq!(resources.len(), 2, "one per service: {body}");
    let mut span_ids = BTreeSet::new();
    for rs in resources {
        assert_eq!(keys(rs), BTreeSet::from(["resource", "scopeSpans"]));
        for ss in rs["scopeSpans"].as_array().expect("scopeSpans") {
            for span in ss["spans"].as_array().expect("spans") {
                assert_eq!(span["traceId"], id.as_str());
                let span_id = span["spanId"].as_str().expect("spanId");
                assert_eq!(span_id.len(), 16);
                span_ids.insert(span_id.to_string());
                for field in ["startTimeUnixNano", "endTimeUnixNano"] {
                    assert!(
                        span[field]
                            .as_str()
                            .is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit())),
                        "{field}: {span}"
                    );
                }
                assert!(span["kind"].is_u64(), "{span}");
            }
        }
    }
    let stored = s
        .count(&format!(
            "SELECT count(DISTINCT span_id) FROM spans WHERE trace_id = '{id}'"
        ))
        .await;
    assert_eq!(span_ids.len() as i64, stored);
    let (status, search) = s
        .get(&format!("/api/v3/traces?query.serviceName={front}&{range}"))
        .await;
    assert_eq!(status, 200, "{search}");
    assert_conforms(&search, "FindTraces");
    assert_eq!(
        search["result"]["resourceSpans"].as_array().map(Vec::len),
        Some(2)
    );

    // Errors in the gateway's shape.
    let (status, body) = s
        .get("/api/v3/traces/00000000000000000000000000abcdef")
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body,
        json!({"error": {"httpCode": 404, "message": "No traces found"}})
    );
    let (status, body) = s.get("/api/v3/trace-summaries?query.serviceName=x").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["httpCode"], 400, "{body}");
    let (status, body) = s.get("/api/v3/traces/zz").await;
    assert_eq!(status, 400, "{body}");
}

/// The distinct values of a one-column SQL answer.
async fn sql_set(s: &Selector, sql: &str) -> BTreeSet<String> {
    s.query(sql).await["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r[0].as_str().expect("a string").to_string())
        .collect()
}

/// The `key` of each object in `list` (a jaeger-mcp answer), as strings.
fn field_set(list: &Value, key: &str) -> BTreeSet<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|v| v[key].as_str().expect("a string").to_string())
        .collect()
}

/// jaeger-mcp (PyPI), a client of the legacy API that no one here wrote,
/// started over stdio by the MCP client library as an agent starts it: its
/// service list, operations, searches, trace fetch and dependency graph
/// agree with what SQL says the table holds.
#[tokio::test(flavor = "multi_thread")]
async fn jaeger_mcp_lists_searches_and_fetches_what_sql_holds() {
    let s = start("jaeger-mcp").await;
    let (front, back) = (unique("front"), unique("back"));
    let first = two_service_trace(&s, &front, &back).await;
    let second = two_service_trace(&s, &front, &back).await;
    // A trace the sampler drops (no error, baseline 0): no client may see it.
    let dropped = random_trace_id(rand::random());
    let body = synth::request(vec![ResourceDef::new(
        &front,
        synth::trace(&TraceSpec {
            trace_id: dropped,
            service: front.clone(),
            spans: 3,
            error: false,
            start_unix_nano: now_nanos() - 60_000_000,
            duration_ms: 10,
        }),
    )])
    .encode_to_vec();
    send(&producer(), &s.topic, &hex::encode(dropped), &body).await;
    s.wait_exported(8.0).await;

    let answers = crate::harness::run_python(
        &crate::harness::python_script("jaeger_mcp_client.py"),
        &[
            format!("http://{}", s.admin),
            TOKEN.to_string(),
            front.clone(),
            back.clone(),
            first.clone(),
        ],
    );

    let services: BTreeSet<String> = answers["services"]["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|v| v.as_str().expect("name").to_string())
        .collect();
    assert_eq!(
        services,
        sql_set(&s, "SELECT DISTINCT service_name FROM spans").await
    );
    assert_eq!(services, BTreeSet::from([front.clone(), back.clone()]));

    let operations: BTreeSet<String> = answers["operations"]["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .map(|v| v.as_str().expect("name").to_string())
        .collect();
    assert_eq!(
        operations,
        sql_set(
            &s,
            &format!("SELECT DISTINCT name FROM spans WHERE service_name = '{back}'")
        )
        .await
    );

    let search = &answers["search"];
    let found = field_set(&search["traces"], "trace_id");
    assert_eq!(
        found,
        sql_set(
            &s,
            &format!("SELECT DISTINCT trace_id FROM spans WHERE service_name = '{front}'")
        )
        .await
    );
    assert_eq!(found, BTreeSet::from([first.clone(), second.clone()]));
    assert!(!found.contains(&hex::encode(dropped)));
    for t in search["traces"].as_array().expect("traces") {
        assert_eq!(t["span_count"], 4, "{t}");
        assert_eq!(t["service_count"], 2, "{t}");
        assert_eq!(t["root_service"], front.as_str(), "{t}");
        assert_eq!(t["root_operation"], "POST /checkout", "{t}");
    }
    // By duration: every trace with a span of `back`.
    assert_eq!(
        field_set(&answers["durations"]["traces"], "trace_id"),
        sql_set(
            &s,
            &format!("SELECT DISTINCT trace_id FROM spans WHERE service_name = '{back}'")
        )
        .await
    );
    let trace = &answers["trace"];
    assert_eq!(trace["trace_id"], first.as_str());
    let spans = s
        .count(&format!(
            "SELECT count(*) FROM spans WHERE trace_id = '{first}'"
        ))
        .await;
    let errors = s
        .count(&format!(
            "SELECT count(*) FROM spans WHERE trace_id = '{first}' AND status_code = 'ERROR'"
        ))
        .await;
    assert_eq!(trace["span_count"], spans, "{trace}");
    assert_eq!(trace["errors_count"], errors, "{trace}");
    assert!(errors > 0, "the trace has an error span");
    assert_eq!(trace["root_service"], front.as_str());
    assert_eq!(trace["service_count"], 2);
    let duration = s
        .count(&format!(
            "SELECT arrow_cast(max(end_time), 'Int64') - arrow_cast(min(start_time), 'Int64') \
             FROM spans WHERE trace_id = '{first}'"
        ))
        .await;
    assert_eq!(trace["total_duration_us"], duration, "{trace}");

    // Every child of the front's root is one call from front to back.
    let edges = answers["dependencies"]["edges"]
        .as_array()
        .expect("edges")
        .clone();
    assert_eq!(
        edges,
        vec![json!({"parent": front, "child": back, "call_count": 6})]
    );
}
