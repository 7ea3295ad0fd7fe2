//! Kept traces leaving the island: the sampled topic and the OTLP
//! forwarders, against a real OTLP/HTTP receiver that decodes with the
//! official OpenTelemetry protobuf classes (tests/python/otlp_receiver.py),
//! through the faults a backend has: 503s, 429 with `Retry-After`, a hang,
//! a refused connection, and a forwarder killed during an outage.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use serde_json::{json, Value};
use tail_sampling_selector::testkit::synth::{self, kv, kv_int, ResourceDef, TraceSpec};

use crate::harness::{
    free_port, now_nanos, producer, python, send, trace_id, Certs, Selector, CONFIG_FILE,
};

/// The test receiver, a Python process on a port of its own.
struct Receiver {
    port: u16,
    grpc_port: u16,
    /// Where `/control` and `/stats` answer: the trace port, or a plain
    /// port of its own when the trace ports speak TLS.
    control_port: u16,
    /// A folder with ca.pem, server.pem and server.key: mutual TLS.
    tls_dir: Option<PathBuf>,
    out: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        Self::start_with(dir, None)
    }

    /// Both trace ports speak TLS and require a client certificate signed
    /// by `tls_dir`'s ca.pem.
    fn start_with(dir: &Path, tls_dir: Option<&Path>) -> Receiver {
        let port = free_port();
        let mut r = Receiver {
            port,
            grpc_port: free_port(),
            control_port: if tls_dir.is_some() { free_port() } else { port },
            tls_dir: tls_dir.map(Path::to_path_buf),
            out: dir.join("received.jsonl"),
            child: None,
            http: reqwest::Client::new(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/otlp_receiver.py");
        let mut cmd = Command::new(python());
        cmd.arg(script)
            .arg(self.port.to_string())
            .arg(&self.out)
            .arg(self.grpc_port.to_string());
        if let Some(tls) = &self.tls_dir {
            cmd.arg(tls).arg(self.control_port.to_string());
        }
        let child = cmd
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the OTLP receiver");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", self.grpc_port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", self.control_port)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the OTLP receiver did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it: connections are refused until [`Receiver::spawn`].
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls_dir.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}/v1/traces", self.scheme(), self.port)
    }

    fn grpc_endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.grpc_port)
    }

    async fn set(&self, mode: Value) {
        let r = self
            .http
            .post(format!("http://127.0.0.1:{}/control", self.control_port))
            .body(mode.to_string())
            .send()
            .await
            .expect("receiver control");
        assert!(r.status().is_success());
    }

    async fn stats(&self) -> Value {
        self.http
            .get(format!("http://127.0.0.1:{}/stats", self.control_port))
            .send()
            .await
            .expect("receiver stats")
            .json()
            .await
            .expect("stats json")
    }

    /// Every span received, duplicates included.
    fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// Waits until every one of `expected` (trace id, span id) arrived.
    async fn wait_for(
        &self,
        expected: &BTreeSet<(String, String)>,
        timeout: Duration,
        s: &Selector,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = ids(&self.spans());
            if expected.is_subset(&got) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} of {} kept spans reached the receiver\nreceiver: {}\n{}\n{}",
                    expected.intersection(&got).count(),
                    expected.len(),
                    self.stats().await,
                    s.metrics_summary().await,
                    s.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every kept span arrived with every field as it was produced.
fn assert_arrived_as_produced(received: &[Value], kept: &[Span]) {
    let by_id: BTreeMap<(String, String), &Value> = received
        .iter()
        .map(|v| {
            (
                ids(std::slice::from_ref(v))
                    .into_iter()
                    .next()
                    .unwrap_or_default(),
                v,
            )
        })
        .collect();
    for span in kept {
        let id = (hex::encode(&span.trace_id), hex::encode(&span.span_id));
        assert_eq!(
            *by_id[&id],
            expected_json(span),
            "span {id:?} arrived changed"
        );
    }
}

fn ids(spans: &[Value]) -> BTreeSet<(String, String)> {
    spans
        .iter()
        .map(|s| {
            (
                s["trace_id"].as_str().unwrap_or_default().to_string(),
                s["span_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// How many spans arrived more than once (at least once allows it).
fn duplicates(spans: &[Value]) -> usize {
    spans.len() - ids(spans).len()
}

/// A sampled topic of the test's own: a forwarder reads all of its topic.
fn sampled_topic() -> String {
    format!("tss-it-sampled-{}", uuid::Uuid::new_v4().simple())
}

/// A config file with the sampled topic on and the given forwarders.
fn config_file(dir: &Path, topic: &str, forward: &str, storage: bool) -> PathBuf {
    let path = dir.join("forward.toml");
    let text = format!(
        "[storage]\nenabled = {storage}\n\n[sampled_topic]\nenabled = true\ntopic = \"{topic}\"\n\n{forward}\n"
    );
    std::fs::write(&path, text).expect("config file");
    path
}

/// A `[[forward]]` entry with short timeouts and a consumer group of its
/// own: a group reused across runs would keep the killed members of
/// earlier runs, which Tansu does not evict reliably (STACK-NOTES).
fn forwarder(name: &str, endpoint: &str, extra: &str) -> String {
    let group = format!("tss-it-forward-{}", uuid::Uuid::new_v4().simple());
    format!(
        "[[forward]]\nname = \"{name}\"\nendpoint = \"{endpoint}\"\ngroup_id = \"{group}\"\ntimeout_ms = 2000\nretry_initial_backoff_ms = 200\nretry_max_backoff_ms = 2000\nlinger_ms = 100\n{extra}\n"
    )
}

/// A span with every kind of field a backend shows: typed attributes, an
/// event with attributes, a link, and a status with its message.
fn rich_span(spec: &TraceSpec, i: usize, parent: Option<[u8; 8]>) -> Span {
    let span_id = synth::span_id_for(&spec.trace_id, i);
    let start = spec.start_unix_nano + i as u64 * 1_000_000;
    Span {
        trace_id: spec.trace_id.to_vec(),
        span_id: span_id.to_vec(),
        parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: format!("op-{i}"),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + spec.duration_ms * 1_000_000,
        attributes: vec![
            kv("http.route", &format!("/route/{i}")),
            kv_int("http.status_code", if spec.error { 500 } else { 200 }),
            KeyValue {
                key: "cache.hit".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::BoolValue(i % 2 == 0)),
                }),
                ..Default::default()
            },
            KeyValue {
                key: "ratio".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::DoubleValue(0.25 * i as f64)),
                }),
                ..Default::default()
            },
            KeyValue {
                key: "tags".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(any_value::Value::StringValue("a".into())),
                        }],
                    })),
                }),
                ..Default::default()
            },
        ],
        events: vec![Event {
            time_unix_nano: start + 500,
            name: "exception".into(),
            attributes: vec![kv("exception.type", "TimeoutError")],
            dropped_attributes_count: 0,
        }],
        links: vec![Link {
            trace_id: trace_id(9_999).to_vec(),
            span_id: [7u8; 8].to_vec(),
            attributes: vec![kv("link.kind", "retry-of")],
            ..Default::default()
        }],
        status: Some(opentelemetry_proto::tonic::trace::v1::Status {
            message: if spec.error {
                "boom".into()
            } else {
                String::new()
            },
            code: if spec.error { 2 } else { 0 },
        }),
        ..Default::default()
    }
}

/// Sends `count` traces of `spans` spans from seed `first`; the error ones
/// are kept, the others dropped (no baseline). Returns the kept spans.
async fn send_traces(topic: &str, first: u64, count: u64, spans: usize) -> Vec<Span> {
    let p = producer();
    let mut kept = Vec::new();
    for seed in first..first + count {
        let spec = TraceSpec {
            // Seeds of their own: the decision cache in Redis is shared by
            // every test of this binary, which share `trace_id`'s salt.
            trace_id: trace_id(FORWARD_SEEDS + seed),
            service: "fwd-service".into(),
            spans,
            error: seed % 2 == 0,
            start_unix_nano: now_nanos() - 50_000_000,
            duration_ms: 20,
        };
        let root = synth::span_id_for(&spec.trace_id, 0);
        let trace: Vec<Span> = (0..spans)
            .map(|i| rich_span(&spec, i, (i > 0).then_some(root)))
            .collect();
        let payload =
            synth::request(vec![ResourceDef::new("fwd-service", trace.clone())]).encode_to_vec();
        send(&p, topic, &hex::encode(spec.trace_id), &payload).await;
        if spec.error {
            kept.extend(trace);
        }
    }
    kept
}

fn expected_ids(kept: &[Span]) -> BTreeSet<(String, String)> {
    kept.iter()
        .map(|s| (hex::encode(&s.trace_id), hex::encode(&s.span_id)))
        .collect()
}

/// Where this module's trace seeds start.
const FORWARD_SEEDS: u64 = 1 << 40;

const NO_BASELINE: (&str, &str) = ("TSS__SAMPLING__BASELINE_SAMPLE_RATE", "0.0");

fn value_json(v: &AnyValue) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(value_json).collect())
        }
        _ => Value::Null,
    }
}

fn attrs_json(kvs: &[KeyValue]) -> Value {
    let map: BTreeMap<String, Value> = kvs
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map_or(Value::Null, value_json),
            )
        })
        .collect();
    json!(map)
}

/// What the receiver must have decoded for a span we produced.
fn expected_json(s: &Span) -> Value {
    let status = s.status.clone().unwrap_or_default();
    json!({
        "trace_id": hex::encode(&s.trace_id),
        "span_id": hex::encode(&s.span_id),
        "parent_span_id": hex::encode(&s.parent_span_id),
        "name": s.name,
        "kind": s.kind,
        "start_time_unix_nano": s.start_time_unix_nano,
        "end_time_unix_nano": s.end_time_unix_nano,
        "status_code": status.code,
        "status_message": status.message,
        "resource": {"service.name": "fwd-service", "deployment.environment": "local"},
        "scope_name": "tail-sampling-selector.synth",
        "scope_version": env!("CARGO_PKG_VERSION"),
        "attributes": attrs_json(&s.attributes),
        "events": s.events.iter().map(|e| json!({"name": e.name, "time_unix_nano": e.time_unix_nano, "attributes": attrs_json(&e.attributes)})).collect::<Vec<_>>(),
        "links": s.links.iter().map(|l| json!({"trace_id": hex::encode(&l.trace_id), "span_id": hex::encode(&l.span_id), "attributes": attrs_json(&l.attributes)})).collect::<Vec<_>>(),
    })
}

/// Every kept span, with every field, arrived as it was produced: through
/// the table (SQL sees the same ids), the sampled topic (one record set a
/// plain consumer decodes to exactly the kept spans) and the forwarder.
#[tokio::test(flavor = "multi_thread")]
async fn kept_spans_reach_the_sampled_topic_and_an_otlp_receiver_exactly_as_produced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(dir.path());
    let sampled = sampled_topic();
    let cfg = config_file(
        dir.path(),
        &sampled,
        &forwarder("it", &receiver.endpoint(), ""),
        true,
    );
    let file = cfg.display().to_string();
    let s = Selector::start("fwd", &[(CONFIG_FILE, &file), NO_BASELINE]).await;
    let kept = send_traces(&s.topic, 0, 40, 4).await;
    let expected = expected_ids(&kept);
    assert_eq!(expected.len(), 80);
    receiver
        .wait_for(&expected, Duration::from_secs(60), &s)
        .await;
    s.wait_exported(80.0).await;

    let received = receiver.spans();
    assert_eq!(ids(&received), expected, "only kept spans are forwarded");
    assert_arrived_as_produced(&received, &kept);
    let stats = receiver.stats().await;
    assert!(
        stats["content_types"]["application/x-protobuf+gzip"].as_u64() > Some(0),
        "{stats}"
    );

    // The table holds the same spans.
    let rows = s.query("SELECT trace_id, span_id FROM spans").await;
    let stored: BTreeSet<(String, String)> = rows["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or_default().to_string(),
                r[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(stored, expected);

    // The sampled topic, read back by a plain consumer: OTLP requests keyed
    // by trace id, holding each kept span once, with the sampling reason.
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", crate::harness::brokers())
        .set("group.id", format!("{}-reader", s.topic))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[sampled.as_str()]).expect("subscribe");
    let mut on_topic = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ids_of_spans(&on_topic).intersection(&expected).count() < expected.len() {
        assert!(
            Instant::now() < deadline,
            "the sampled topic holds {} of the kept spans",
            on_topic.len()
        );
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.expect("record");
        let req = ExportTraceServiceRequest::decode(m.payload().unwrap_or_default())
            .expect("an OTLP request");
        let spans: Vec<Span> = req
            .resource_spans
            .into_iter()
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans)
            .collect();
        let key = std::str::from_utf8(m.key().unwrap_or_default())
            .unwrap_or_default()
            .to_string();
        if spans.iter().all(|sp| hex::encode(&sp.trace_id) == key)
            && expected.iter().any(|(t, _)| *t == key)
        {
            let headers = m.headers().expect("headers");
            let reason = headers
                .iter()
                .find(|h| h.key == "tss.sampling.reason")
                .and_then(|h| h.value)
                .unwrap_or_default();
            assert_eq!(reason, b"error");
            on_topic.extend(spans);
        }
    }
    let topic_ids = ids_of_spans(&on_topic);
    assert_eq!(topic_ids.intersection(&expected).count(), expected.len());
    assert_eq!(
        on_topic
            .iter()
            .filter(|sp| expected.contains(&(hex::encode(&sp.trace_id), hex::encode(&sp.span_id))))
            .count(),
        expected.len(),
        "each kept span once"
    );
    let m = s.metrics().await;
    assert_eq!(
        m["tail_sampling_spans_exported_total{sink=\"sampled_topic\"}"],
        80.0
    );
    assert_eq!(
        m["tail_sampling_spans_exported_total{sink=\"otlp/it\"}"],
        80.0
    );
    let (_, health) = s.get("/health").await;
    assert_eq!(health["sinks"]["otlp/it"]["status"], "ok", "{health}");
}

fn ids_of_spans(spans: &[Span]) -> BTreeSet<(String, String)> {
    spans
        .iter()
        .map(|s| (hex::encode(&s.trace_id), hex::encode(&s.span_id)))
        .collect()
}

/// Waits until the forwarder `faults` counted a failure for `reason`.
async fn wait_failure(s: &Selector, reason: &str) {
    wait_failure_of(s, "faults", reason).await
}

async fn wait_failure_of(s: &Selector, forwarder: &str, reason: &str) {
    s.wait_metric(
        &format!(
            "tail_sampling_export_failures_total{{reason=\"{reason}\",sink=\"otlp/{forwarder}\"}}"
        ),
        1.0,
        Duration::from_secs(60),
    )
    .await;
}

/// A backend that answers 503 for 30 s, then 429 with `Retry-After`, then
/// hangs, then refuses connections: the forwarder keeps every kept span,
/// delivers all of it once the backend is back, and sampling and the table
/// go on meanwhile. OTLP/JSON without gzip, the other encoding.
#[tokio::test(flavor = "multi_thread")]
async fn the_forwarder_delivers_everything_through_503s_429s_a_hang_and_refused_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut receiver = Receiver::start(dir.path());
    let fwd = forwarder(
        "faults",
        &receiver.endpoint(),
        "protocol = \"http/json\"\ncompression = \"none\"",
    );
    let file = config_file(dir.path(), &sampled_topic(), &fwd, true)
        .display()
        .to_string();
    let s = Selector::start("fwd-faults", &[(CONFIG_FILE, &file), NO_BASELINE]).await;
    let mut kept = Vec::new();

    // 503 for 30 s: the table keeps committing while the backend is down.
    receiver.set(json!({"mode": "status", "status": 503})).await;
    let outage = Instant::now();
    kept.extend(send_traces(&s.topic, 100, 20, 3).await);
    s.wait_exported(kept.len() as f64).await;
    wait_failure(&s, "http_503").await;
    let (_, health) = s.get("/health").await;
    assert_eq!(
        health["ready"], true,
        "a backend that is down never makes it unready: {health}"
    );
    assert_eq!(health["degraded"], true, "{health}");
    assert_eq!(health["sinks"]["otlp/faults"]["status"], "down", "{health}");
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed())).await;
    receiver.set(json!({"mode": "ok"})).await;
    receiver
        .wait_for(&expected_ids(&kept), Duration::from_secs(60), &s)
        .await;

    // 429 with Retry-After: 2.
    receiver
        .set(json!({"mode": "status", "status": 429, "retry_after": "2"}))
        .await;
    kept.extend(send_traces(&s.topic, 200, 10, 3).await);
    wait_failure(&s, "http_429").await;
    receiver.set(json!({"mode": "ok"})).await;
    receiver
        .wait_for(&expected_ids(&kept), Duration::from_secs(60), &s)
        .await;

    // A hang: each request times out (timeout_ms = 2000) and is retried.
    receiver.set(json!({"mode": "hang"})).await;
    kept.extend(send_traces(&s.topic, 300, 10, 3).await);
    wait_failure(&s, "timeout").await;
    receiver.set(json!({"mode": "ok"})).await;
    receiver
        .wait_for(&expected_ids(&kept), Duration::from_secs(60), &s)
        .await;

    // Refused connections while the receiver is gone.
    receiver.stop();
    kept.extend(send_traces(&s.topic, 400, 10, 3).await);
    wait_failure(&s, "connect").await;
    receiver.spawn();
    receiver
        .wait_for(&expected_ids(&kept), Duration::from_secs(60), &s)
        .await;

    let received = receiver.spans();
    assert_eq!(
        ids(&received),
        expected_ids(&kept),
        "every kept span, and only those"
    );
    s.wait_exported(kept.len() as f64).await;
    let m = s.metrics().await;
    let retries = m["tail_sampling_export_retries_total{sink=\"otlp/faults\"}"];
    eprintln!(
        "faults: {} kept spans delivered, {} duplicates, {retries} retries",
        kept.len(),
        duplicates(&received)
    );
    assert!(retries >= 4.0, "{retries}");
    let (_, health) = s.get("/health").await;
    assert_eq!(health["sinks"]["otlp/faults"]["status"], "ok", "{health}");
}

/// OTLP/gRPC with gzip: every field arrives as produced, through
/// UNAVAILABLE, RESOURCE_EXHAUSTED with a RetryInfo, and a hang past the
/// deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_backend_gets_every_kept_span_through_unavailable_resource_exhausted_and_a_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(dir.path());
    let fwd = forwarder("grpc", &receiver.grpc_endpoint(), "protocol = \"grpc\"");
    let file = config_file(dir.path(), &sampled_topic(), &fwd, true)
        .display()
        .to_string();
    let s = Selector::start("fwd-grpc", &[(CONFIG_FILE, &file), NO_BASELINE]).await;
    let mut kept = send_traces(&s.topic, 800, 10, 3).await;
    receiver
        .wait_for(&expected_ids(&kept), Duration::from_secs(60), &s)
        .await;

    receiver.set(json!({"mode": "status", "status": 503})).await;
    kept.extend(send_traces(&s.topic, 900, 10, 3).await);
    wait_failure_of(&s, "grpc", "grpc_unavailable").await;
    receiver
        .set(json!({"mode": "status", "status": 429, "retry_after": "1"}))
        .await;
    wait_failure_of(&s, "grpc", "grpc_resourceexhausted").await;
    receiver.set(json!({"mode": "hang"})).await;
    wait_failure_of(&s, "grpc", "timeout").await;
    receiver.set(json!({"mode": "ok"})).await;
    receiver
        .wait_for(&expected_ids(&kept), Duration::from_secs(60), &s)
        .await;

    let received = receiver.spans();
    assert_eq!(ids(&received), expected_ids(&kept));
    assert_arrived_as_produced(&received, &kept);
    eprintln!(
        "grpc: {} kept spans delivered, {} duplicates",
        kept.len(),
        duplicates(&received)
    );
}

/// A backend that refuses a batch for good (400) gets it no more: the
/// batch goes to the dead-letter topic with the reason, and the forwarder
/// moves on. A `partial_success` is accepted and its rejected spans counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_batch_goes_to_the_dead_letter_topic_and_partial_success_is_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(dir.path());
    let dlq = format!("tss-it-dlq-{}", uuid::Uuid::new_v4().simple());
    let fwd = forwarder(
        "dlq",
        &receiver.endpoint(),
        &format!("dead_letter_topic = \"{dlq}\""),
    );
    let file = config_file(dir.path(), &sampled_topic(), &fwd, true)
        .display()
        .to_string();
    let s = Selector::start("fwd-dlq", &[(CONFIG_FILE, &file), NO_BASELINE]).await;

    receiver.set(json!({"mode": "status", "status": 400})).await;
    let refused = send_traces(&s.topic, 1000, 6, 3).await;
    s.wait_metric(
        "tail_sampling_export_spans_dead_lettered_total{reason=\"http_400\",sink=\"otlp/dlq\"}",
        refused.len() as f64,
        Duration::from_secs(60),
    )
    .await;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", crate::harness::brokers())
        .set("group.id", format!("{dlq}-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[dlq.as_str()]).expect("subscribe");
    let mut dead = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead.len() < refused.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} refused spans on the dead-letter topic",
            dead.len(),
            refused.len()
        );
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.expect("record");
        let headers = m.headers().expect("headers");
        let header = |k: &str| {
            headers
                .iter()
                .find(|h| h.key == k)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).to_string())
                .unwrap_or_default()
        };
        assert_eq!(header("tss.forward.sink"), "otlp/dlq");
        assert!(
            header("tss.forward.reason").starts_with("http_400"),
            "{}",
            header("tss.forward.reason")
        );
        let req = ExportTraceServiceRequest::decode(m.payload().unwrap_or_default())
            .expect("an OTLP request");
        for sp in req
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
        {
            dead.insert((hex::encode(&sp.trace_id), hex::encode(&sp.span_id)));
        }
    }
    assert_eq!(
        dead,
        expected_ids(&refused),
        "every refused span, on the dead-letter topic"
    );

    // The forwarder moved on: the next traces arrive, with part rejected.
    receiver
        .set(json!({"mode": "partial", "rejected": 1}))
        .await;
    let later = send_traces(&s.topic, 1100, 6, 3).await;
    receiver
        .wait_for(&expected_ids(&later), Duration::from_secs(60), &s)
        .await;
    assert!(
        s.metric("tail_sampling_export_spans_rejected_total{sink=\"otlp/dlq\"}")
            .await
            >= 1.0
    );
    assert!(ids(&receiver.spans()).is_disjoint(&expected_ids(&refused)));
}

/// A backend down for two minutes while traffic flows: every round of kept
/// traces is committed to the table meanwhile, and once the backend is back
/// the backlog arrives paced by the catch-up limit, not all at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_down_for_two_minutes_holds_nothing_up_and_is_caught_up_at_the_limit() {
    const RATE: f64 = 20.0;
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(dir.path());
    let fwd = forwarder(
        "catchup",
        &receiver.endpoint(),
        "max_spans_per_sec = 20\nmax_batch_spans = 10",
    );
    let file = config_file(dir.path(), &sampled_topic(), &fwd, true)
        .display()
        .to_string();
    let s = Selector::start("fwd-catchup", &[(CONFIG_FILE, &file), NO_BASELINE]).await;
    receiver.set(json!({"mode": "status", "status": 503})).await;
    let outage = Instant::now();
    let mut kept = Vec::new();
    let mut round = 0;
    while outage.elapsed() < Duration::from_secs(120) {
        kept.extend(send_traces(&s.topic, 700 + round * 100, 20, 4).await);
        // The table takes every round while the backend is down.
        s.wait_exported(kept.len() as f64).await;
        round += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    assert!(
        s.metric("tail_sampling_spans_exported_total{sink=\"otlp/catchup\"}")
            .await
            == 0.0
    );
    let back = Instant::now();
    receiver.set(json!({"mode": "ok"})).await;
    receiver
        .wait_for(&expected_ids(&kept), Duration::from_secs(180), &s)
        .await;
    let caught_up = back.elapsed();
    // No second of the catch-up got more than the limit and its burst
    // (one second's worth): retries take their share of the limit too.
    let deliveries: Vec<(f64, f64)> = receiver.stats().await["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| (d[0].as_f64().unwrap_or(0.0), d[1].as_f64().unwrap_or(0.0)))
        .collect();
    let busiest = deliveries
        .iter()
        .map(|(t, _)| {
            deliveries
                .iter()
                .filter(|(u, _)| *u >= *t && *u < t + 1.0)
                .map(|(_, n)| n)
                .sum::<f64>()
        })
        .fold(0.0, f64::max);
    let backlog = kept.len() as f64;
    eprintln!("catch-up: {backlog} spans after a {:.0} s outage in {:.1} s; busiest second {busiest} spans (limit {RATE}/s)", back.duration_since(outage).as_secs_f64(), caught_up.as_secs_f64());
    assert!(busiest <= 2.0 * RATE, "{busiest} spans in one second");
    assert!(
        caught_up.as_secs_f64() >= (backlog - 2.0 * RATE) / RATE,
        "{backlog} spans in {caught_up:?}: faster than the limit"
    );
}

/// No table, no SQL: the sampled topic and a forwarder alone. The input
/// offsets still commit once the broker confirmed the kept spans.
#[tokio::test(flavor = "multi_thread")]
async fn forwarding_alone_works_without_the_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(dir.path());
    let cfg = config_file(
        dir.path(),
        &sampled_topic(),
        &forwarder("alone", &receiver.endpoint(), ""),
        false,
    );
    let file = cfg.display().to_string();
    let s = Selector::start("fwd-alone", &[(CONFIG_FILE, &file), NO_BASELINE]).await;
    let kept = send_traces(&s.topic, 500, 30, 3).await;
    receiver
        .wait_for(&expected_ids(&kept), Duration::from_secs(60), &s)
        .await;
    let (_, health) = s.get("/health").await;
    assert_eq!(health["catalog"]["status"], "off", "{health}");
    assert_eq!(health["ready"], true, "{health}");
    let (status, body) = s.query_raw("SELECT count(*) FROM spans").await;
    assert_eq!(status, 503, "{body}");
    // Every input message committed: nothing waits on a table.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = s.metrics().await;
        let lag: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("tail_sampling_consumer_lag_messages"))
            .map(|(_, v)| v)
            .sum();
        let held = m["tail_sampling_held_spans"];
        if lag == 0.0 && held == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag {lag}, held {held}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        s.metric("tail_sampling_spans_exported_total{sink=\"iceberg\"}")
            .await,
        0.0
    );
}

/// A backend behind mutual TLS, over OTLP/HTTP and OTLP/gRPC: with the CA
/// and a client certificate every kept span arrives; a forwarder without a
/// client certificate is turned away at the handshake, counts the failure,
/// and delivers nothing.
#[tokio::test(flavor = "multi_thread")]
async fn forwarders_reach_a_backend_behind_mutual_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = Certs::generate();
    let receiver = Receiver::start_with(dir.path(), Some(certs.dir.path()));
    let (ca, cert, key) = (
        certs.path("ca.pem"),
        certs.path("client.pem"),
        certs.path("client.key"),
    );
    let mutual =
        format!("tls_ca_file = \"{ca}\"\ntls_cert_file = \"{cert}\"\ntls_key_file = \"{key}\"");
    let forwarders = [
        forwarder("mtls-http", &receiver.endpoint(), &mutual),
        forwarder(
            "mtls-grpc",
            &receiver.grpc_endpoint(),
            &format!("protocol = \"grpc\"\n{mutual}"),
        ),
        forwarder(
            "no-client-cert",
            &receiver.endpoint(),
            &format!("tls_ca_file = \"{ca}\""),
        ),
    ]
    .join("\n");
    let file = config_file(dir.path(), &sampled_topic(), &forwarders, true)
        .display()
        .to_string();
    let s = Selector::start("fwd-tls", &[(CONFIG_FILE, &file), NO_BASELINE]).await;
    let kept = send_traces(&s.topic, 1200, 10, 3).await;
    // Each of the two forwarders with a certificate delivers every span once
    // or more; their copies are told apart by the receiver's content types.
    receiver
        .wait_for(&expected_ids(&kept), Duration::from_secs(60), &s)
        .await;
    for name in ["mtls-http", "mtls-grpc"] {
        s.wait_metric(
            &format!("tail_sampling_spans_exported_total{{sink=\"otlp/{name}\"}}"),
            kept.len() as f64,
            Duration::from_secs(60),
        )
        .await;
    }
    let received = receiver.spans();
    assert_arrived_as_produced(&received, &kept);
    let stats = receiver.stats().await;
    let by_type = &stats["content_types"];
    assert!(
        by_type["grpc"].as_u64().unwrap_or(0) > 0
            && by_type["application/x-protobuf+gzip"].as_u64().unwrap_or(0) > 0,
        "both protocols delivered over TLS: {stats}"
    );
    // Turned away at the handshake: with TLS 1.3 the client learns it at
    // connect time or on its first read, so either reason will do.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = s.metrics().await;
        let refused: f64 = ["connect", "transport"]
            .iter()
            .filter_map(|r| {
                m.get(&format!(
                    "tail_sampling_export_failures_total{{reason=\"{r}\",sink=\"otlp/no-client-cert\"}}"
                ))
            })
            .sum();
        if refused > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no handshake failure counted\n{}",
            s.metrics_summary().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        s.metric("tail_sampling_spans_exported_total{sink=\"otlp/no-client-cert\"}")
            .await,
        0.0,
        "a client without a certificate must deliver nothing"
    );
}

/// The forwarder as a process of its own (`forward`), SIGKILLed three
/// times while the backend is down: once the backend is back, every kept
/// span arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_forwarder_killed_three_times_during_an_outage_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(dir.path());
    // The selector produces to the sampled topic; the forwarder runs apart.
    let sampled = sampled_topic();
    let selector_cfg = config_file(dir.path(), &sampled, "", true)
        .display()
        .to_string();
    let s = Selector::start("fwd-kill", &[(CONFIG_FILE, &selector_cfg), NO_BASELINE]).await;
    let fwd_dir = dir.path().join("forwarder");
    std::fs::create_dir_all(&fwd_dir).expect("dir");
    // Static membership: a restarted forwarder takes its partitions back at
    // once (Tansu does not reliably evict a killed member, STACK-NOTES).
    let fwd = forwarder(
        "killed",
        &receiver.endpoint(),
        "group_instance_id = \"forwarder-1\"",
    );
    let fwd_cfg = config_file(&fwd_dir, &sampled, &fwd, true);
    let metrics_port = free_port();
    let spawn_forwarder = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(fwd_dir.join("forward.log"))
            .expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tail-sampling-selector"));
        cmd.arg("--config")
            .arg(&fwd_cfg)
            .arg("forward")
            .env("TSS__KAFKA__BROKERS", crate::harness::brokers())
            .env(
                "TSS__SERVER__METRICS_ADDR",
                format!("127.0.0.1:{metrics_port}"),
            )
            .env("RUST_LOG", "info")
            .current_dir(&fwd_dir)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log));
        cmd.spawn().expect("forward runs")
    };
    receiver.set(json!({"mode": "status", "status": 503})).await;
    let mut kept = Vec::new();
    for round in 0..3u64 {
        let mut child = spawn_forwarder();
        kept.extend(send_traces(&s.topic, 600 + round * 100, 10, 3).await);
        s.wait_exported(kept.len() as f64).await;
        // Let it read and fail at least once, then kill it.
        let before = receiver.stats().await["by_status"]["503"]
            .as_u64()
            .unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while receiver.stats().await["by_status"]["503"]
            .as_u64()
            .unwrap_or(0)
            <= before
        {
            assert!(
                Instant::now() < deadline,
                "the forwarder sent nothing\n{}",
                std::fs::read_to_string(fwd_dir.join("forward.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    receiver.set(json!({"mode": "ok"})).await;
    let mut child = spawn_forwarder();
    receiver
        .wait_for(&expected_ids(&kept), Duration::from_secs(90), &s)
        .await;
    let _ = child.kill();
    let _ = child.wait();
    let received = receiver.spans();
    assert_eq!(ids(&received), expected_ids(&kept), "lost=0");
    eprintln!(
        "forwarder kill loop: {} kept spans delivered after 3 SIGKILLs, {} duplicates",
        kept.len(),
        duplicates(&received)
    );
}
