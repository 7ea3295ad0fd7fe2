//! Sampling policies on a real selector: their order against the real
//! broker, what the table records, reloads (file change, SIGHUP, a bad
//! file), explain, and RED metrics that count dropped traces too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::{json, Value};
use tail_sampling_selector::testkit::synth::{self, ResourceDef, TraceSpec};

use crate::harness::{now_nanos, producer, send, trace_id, Selector, CONFIG_FILE};

fn spec(seed: u64, service: &str, spans: usize, error: bool) -> TraceSpec {
    TraceSpec {
        trace_id: trace_id(seed),
        service: service.into(),
        spans,
        error,
        start_unix_nano: now_nanos() - 10_000_000,
        duration_ms: 10,
    }
}

/// Sends traces, 50 to a message, each message keyed by its first trace.
async fn send_traces(s: &Selector, traces: &[TraceSpec]) {
    let p = producer();
    for chunk in traces.chunks(50) {
        let resources = chunk
            .iter()
            .map(|t| ResourceDef::new(&t.service, synth::trace(t)))
            .collect();
        let payload = synth::request(resources).encode_to_vec();
        send(&p, &s.topic, &hex::encode(chunk[0].trace_id), &payload).await;
    }
}

/// Waits until `n` traces more than `before` have been decided.
async fn wait_decided(s: &Selector, before: f64, n: usize) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let decided = decided(s).await;
        if decided >= before + n as f64 {
            return decided;
        }
        assert!(
            Instant::now() < deadline,
            "decided {decided}, expected {}\n{}",
            before + n as f64,
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn decided(s: &Selector) -> f64 {
    s.metrics()
        .await
        .iter()
        .filter(|(k, _)| {
            k.starts_with("tail_sampling_traces_sampled_total{")
                || *k == "tail_sampling_traces_dropped_total"
        })
        .map(|(_, v)| v)
        .sum()
}

/// A selector with a Redis key prefix of its own, so that no decision
/// cached by another test (or an earlier run) answers for these traces.
async fn start(name: &str, overrides: &[(&str, &str)]) -> Selector {
    let prefix = format!("tss-it-{name}-{}:", uuid::Uuid::new_v4().simple());
    let mut all = vec![("TSS__REDIS__KEY_PREFIX", prefix.as_str())];
    all.extend_from_slice(overrides);
    Selector::start(name, &all).await
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("policies.toml");
    // Write then rename, as editors and ConfigMaps do, so that no reader
    // ever sees half a file.
    let tmp = dir.join("policies.toml.tmp");
    std::fs::write(&tmp, body).expect("write config");
    std::fs::rename(&tmp, &path).expect("rename config");
    path
}

/// Kept traces by reason and rule id: `[reason, rule, traces, spans, min rate, max rate]`.
async fn kept(s: &Selector, service: &str) -> Vec<Value> {
    let body = s
        .query(&format!(
            "SELECT sampling_reason, sampling_rule_id, count(DISTINCT trace_id), count(*), min(sample_rate), max(sample_rate) \
             FROM spans WHERE service_name = '{service}' GROUP BY 1, 2 ORDER BY 1, 2"
        ))
        .await;
    body["rows"].as_array().cloned().unwrap_or_default()
}

const ORDERED: &str = r#"
[sampling]
baseline_sample_rate = 0.0

[[sampling.policies]]
name = "drop-noisy"
match = { resource = [{ key = "service.name", op = "eq", value = "noisy" }] }
action = "drop"

[[sampling.policies]]
name = "keep-big"
match = { trace = [{ key = "trace.span_count", op = "gte", value = 4 }] }
action = "keep"

[[sampling.policies]]
name = "tenth-of-shop"
match = { resource = [{ key = "service.name", op = "eq", value = "shop" }] }
action = "sample"
rate = 0.1
"#;

#[tokio::test(flavor = "multi_thread")]
async fn policies_decide_in_order_and_the_table_records_name_and_rate() {
    let dir = tempfile::tempdir().expect("dir");
    let file = write_config(dir.path(), ORDERED);
    let s = start("policies", &[(CONFIG_FILE, file.to_str().expect("path"))]).await;
    assert_eq!(s.metric("tail_sampling_policies_loaded").await, 3.0);

    let mut traces = Vec::new();
    // Errors of `noisy`: the drop policy decides before the error fallback.
    traces.extend((0..20).map(|n| spec(10_000 + n, "noisy", 2, true)));
    // Big traces of `shop`: kept whole by `keep-big`, before the sample.
    traces.extend((0..5).map(|n| spec(20_000 + n, "shop", 5, false)));
    // Small traces of `shop`: a tenth of them.
    traces.extend((0..1000).map(|n| spec(30_000 + n, "shop", 1, false)));
    // Errors elsewhere: no policy matches, the error fallback keeps them.
    traces.extend((0..10).map(|n| spec(40_000 + n, "billing", 2, true)));
    send_traces(&s, &traces).await;
    wait_decided(&s, 0.0, traces.len()).await;
    let m = s.metrics().await;
    let policy_kept = m["tail_sampling_traces_sampled_total{reason=\"policy\"}"];
    // Billing's 20 spans, keep-big's 25 and one span per sampled trace.
    s.wait_exported(20.0 + 25.0 + (policy_kept - 5.0)).await;

    assert!(
        kept(&s, "noisy").await.is_empty(),
        "drop-noisy dropped every noisy trace"
    );
    assert_eq!(
        kept(&s, "billing").await,
        vec![json!(["error", null, 10, 20, 1.0, 1.0])],
        "the error fallback comes after the policies"
    );
    let shop = kept(&s, "shop").await;
    assert_eq!(shop.len(), 2, "{shop:?}");
    assert_eq!(shop[0], json!(["policy", "keep-big", 5, 25, 1.0, 1.0]));
    let (reason, rule, sampled) = (
        &shop[1][0],
        &shop[1][1],
        shop[1][2].as_i64().expect("count"),
    );
    assert_eq!(
        (reason.as_str(), rule.as_str()),
        (Some("policy"), Some("tenth-of-shop"))
    );
    // 4 standard deviations of 1000 draws at 0.1 is 38.
    assert!(
        (62..=138).contains(&sampled),
        "kept {sampled} of 1000 at 0.1"
    );
    assert_eq!(
        (&shop[1][4], &shop[1][5]),
        (&json!(10.0), &json!(10.0)),
        "each stands for 10"
    );
    assert_eq!(policy_kept, (5 + sampled) as f64);

    // sum(sample_rate) estimates the traces sent: 5 whole plus 10 × sampled.
    let estimate = s
        .query("SELECT sum(sample_rate) FROM (SELECT DISTINCT trace_id, sample_rate FROM spans WHERE service_name = 'shop')")
        .await;
    assert_eq!(estimate["rows"][0][0], json!((5 + 10 * sampled) as f64));

    explain_names_the_deciding_policy_and_stores_nothing(&s).await;
}

async fn explain(s: &Selector, body: Vec<u8>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/admin/sampling/explain", s.admin))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST explain");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn otlp_json(traces: &[TraceSpec]) -> Vec<u8> {
    let resources = traces
        .iter()
        .map(|t| ResourceDef::new(&t.service, synth::trace(t)))
        .collect();
    serde_json::to_vec(&synth::request(resources)).expect("OTLP JSON")
}

async fn explain_names_the_deciding_policy_and_stores_nothing(s: &Selector) {
    let before = decided(s).await;
    let traces = [
        spec(50_000, "noisy", 2, true),
        spec(50_001, "shop", 6, false),
        spec(50_002, "billing", 1, false),
    ];
    let (status, body) = explain(s, otlp_json(&traces)).await;
    assert_eq!(status, 200, "{body}");
    let answers = body["traces"].as_array().expect("traces");
    assert_eq!(answers.len(), 3, "{body}");
    assert_eq!(answers[0]["trace_id"], hex::encode(trace_id(50_000)));
    assert_eq!(answers[0]["decision"], "drop");
    assert_eq!(answers[0]["decided_by"]["name"], "drop-noisy", "{body}");
    assert_eq!(answers[1]["decision"], "keep");
    assert_eq!(answers[1]["sampling_reason"], "policy");
    assert_eq!(answers[1]["sampling_rule_id"], "keep-big");
    assert_eq!(answers[1]["span_count"], 6);
    // Nothing matches a healthy billing trace: every step is listed.
    let stages: Vec<&str> = answers[2]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["stage"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        stages,
        [
            "force_rules",
            "policy",
            "policy",
            "policy",
            "error",
            "latency",
            "baseline",
            "default"
        ]
    );
    assert_eq!(answers[2]["decision"], "drop");

    let (status, body) = explain(s, b"{\"resourceSpans\": 5}".to_vec()).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("body")),
        "{body}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(decided(s).await, before, "explain decided nothing");
    let explained = hex::encode(trace_id(50_001));
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM spans WHERE trace_id = '{explained}'"
        ))
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_reload_when_the_file_changes_and_a_bad_file_keeps_the_old_list() {
    let dir = tempfile::tempdir().expect("dir");
    let keep = |name: &str, service: &str| {
        format!(
            "[[sampling.policies]]\nname = \"{name}\"\naction = \"keep\"\nmatch = {{ resource = [{{ key = \"service.name\", op = \"eq\", value = \"{service}\" }}] }}\n"
        )
    };
    let file = write_config(dir.path(), &keep("keep-a", "reload-a"));
    let s = start(
        "reload",
        &[
            (CONFIG_FILE, file.to_str().expect("path")),
            ("TSS__SAMPLING__POLICY_WATCH_INTERVAL_SECS", "0.5"),
        ],
    )
    .await;
    let batch = |seed: u64, service: &str| {
        (0..3)
            .map(|n| spec(seed + n, service, 2, false))
            .collect::<Vec<_>>()
    };
    send_traces(
        &s,
        &[batch(100, "reload-a"), batch(200, "reload-b")].concat(),
    )
    .await;
    let mut seen = wait_decided(&s, 0.0, 6).await;
    assert_eq!(
        s.metric("tail_sampling_traces_sampled_total{reason=\"policy\"}")
            .await,
        3.0
    );

    // A new list: b is kept, a no longer.
    write_config(dir.path(), &keep("keep-b", "reload-b"));
    s.wait_metric(
        "tail_sampling_policy_reloads_total{result=\"ok\"}",
        1.0,
        Duration::from_secs(20),
    )
    .await;
    send_traces(
        &s,
        &[batch(300, "reload-a"), batch(400, "reload-b")].concat(),
    )
    .await;
    seen = wait_decided(&s, seen, 6).await;
    assert_eq!(
        s.metric("tail_sampling_traces_sampled_total{reason=\"policy\"}")
            .await,
        6.0
    );

    // A bad file: refused, logged, and keep-b stays in force.
    write_config(
        dir.path(),
        "[[sampling.policies]]\nname = \"broken\"\naction = \"sample\"\nrate = 5\n",
    );
    s.wait_metric(
        "tail_sampling_policy_reloads_total{result=\"error\"}",
        1.0,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        s.log().contains("sampling.policies[0].rate"),
        "the log names the field\n{}",
        s.log()
    );
    send_traces(&s, &batch(500, "reload-b")).await;
    wait_decided(&s, seen, 3).await;
    assert_eq!(
        s.metric("tail_sampling_traces_sampled_total{reason=\"policy\"}")
            .await,
        9.0
    );
    assert_eq!(
        s.metric("tail_sampling_policy_reloads_total{result=\"ok\"}")
            .await,
        1.0
    );
    s.wait_exported(18.0).await;
    let rows = s
        .query("SELECT sampling_rule_id, count(DISTINCT trace_id) FROM spans GROUP BY 1 ORDER BY 1")
        .await;
    assert_eq!(
        rows["rows"],
        json!([["keep-a", 3], ["keep-b", 6]]),
        "{rows}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_policies() {
    let dir = tempfile::tempdir().expect("dir");
    let file = write_config(dir.path(), "");
    // A watch interval of an hour: only the signal can reload.
    let s = start(
        "sighup",
        &[
            (CONFIG_FILE, file.to_str().expect("path")),
            ("TSS__SAMPLING__POLICY_WATCH_INTERVAL_SECS", "3600"),
        ],
    )
    .await;
    assert_eq!(s.metric("tail_sampling_policies_loaded").await, 0.0);
    write_config(
        dir.path(),
        "[[sampling.policies]]\nname = \"everything\"\naction = \"keep\"\n",
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    s.wait_metric(
        "tail_sampling_policy_reloads_total{result=\"ok\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(s.metric("tail_sampling_policies_loaded").await, 1.0);
    send_traces(&s, &[spec(600, "sighup", 2, false)]).await;
    wait_decided(&s, 0.0, 1).await;
    assert_eq!(
        s.metric("tail_sampling_traces_sampled_total{reason=\"policy\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn red_metrics_count_every_span_dropped_or_kept() {
    let s = start("red", &[]).await;
    // 30 healthy traces (dropped) and 5 errors (kept), 3 spans each.
    let traces: Vec<_> = (0..30)
        .map(|n| spec(700 + n, "red-svc", 3, false))
        .chain((0..5).map(|n| spec(800 + n, "red-svc", 3, true)))
        .collect();
    send_traces(&s, &traces).await;
    wait_decided(&s, 0.0, 35).await;
    assert_eq!(s.metric("tail_sampling_traces_dropped_total").await, 30.0);
    // Workers merge their series once per tick.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (calls, errors, durations) = loop {
        let m = s.metrics().await;
        let sum = |prefix: &str, needle: &str| -> f64 {
            m.iter()
                .filter(|(k, _)| k.starts_with(prefix) && k.contains(needle))
                .map(|(_, v)| v)
                .sum()
        };
        let calls = sum("tail_sampling_span_calls_total{", "service=\"red-svc\"");
        let errors = sum("tail_sampling_span_calls_total{", "status_code=\"ERROR\"");
        let durations = sum(
            "tail_sampling_span_duration_seconds_count{",
            "service=\"red-svc\"",
        );
        if calls >= 105.0 || Instant::now() > deadline {
            break (calls, errors, durations);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        calls, 105.0,
        "every span of the 35 traces, dropped ones included"
    );
    assert_eq!(durations, 105.0);
    // The synthetic error sits on the root and the last child.
    assert_eq!(errors, 10.0);
    assert_eq!(
        s.metric("tail_sampling_span_metrics_overflow_spans_total")
            .await,
        0.0
    );
}
