//! Recovery jobs: traces dropped live are re-read from the raw topic and
//! stored, whole and once. Each test produces traces whose live decisions
//! are known (fast and error-free: dropped; with an error: kept), lets the
//! live path decide them, then recovers a condition over a time range and
//! reads the table back.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::harness::{now_nanos, producer, send, trace_id, Selector};
use prost::Message;
use serde_json::{json, Value};
use tail_sampling_selector::testkit::synth::{self, kv, ResourceDef, TraceSpec};

const SPANS_PER_TRACE: usize = 4;

/// Short timeouts, a row cap that fits the table, and a live group that
/// commits often.
const FAST: &[(&str, &str)] = &[
    ("TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS", "2"),
    ("TSS__SAMPLING__MAX_TRACE_DURATION_SECS", "30"),
    ("TSS__STORAGE__FLUSH_INTERVAL_SECS", "1"),
    ("TSS__KAFKA__COMMIT_INTERVAL_MS", "200"),
    ("TSS__QUERY__MAX_ROWS", "200000"),
];

/// One produced trace: its id, its messages, whether it is gold, and
/// whether the live path keeps it (it has an error).
struct Case {
    id: [u8; 16],
    messages: Vec<Vec<u8>>,
    gold: bool,
    kept_live: bool,
}

fn encode(spans: &[opentelemetry_proto::tonic::trace::v1::Span]) -> Vec<u8> {
    synth::request(vec![ResourceDef::new("shop", spans.to_vec())]).encode_to_vec()
}

/// A trace of `SPANS_PER_TRACE` spans that just ended, `customer.tier` on
/// every span, sent in `parts` messages.
fn case(seed: u64, gold: bool, error: bool, parts: usize) -> Case {
    case_at(seed, gold, error, parts, now_nanos() - 40_000_000, 40)
}

/// [`case`] starting at `start_unix_nano` and lasting `duration_ms`.
fn case_at(
    seed: u64,
    gold: bool,
    error: bool,
    parts: usize,
    start_unix_nano: u64,
    duration_ms: u64,
) -> Case {
    let id = trace_id(seed);
    let mut spans = synth::trace(&TraceSpec {
        trace_id: id,
        service: "shop".into(),
        spans: SPANS_PER_TRACE,
        error,
        start_unix_nano,
        duration_ms,
    });
    let tier = if gold { "gold" } else { "silver" };
    for s in &mut spans {
        s.attributes.push(kv("customer.tier", tier));
    }
    let per = SPANS_PER_TRACE.div_ceil(parts);
    Case {
        id,
        messages: spans.chunks(per).map(encode).collect(),
        gold,
        kept_live: error,
    }
}

/// 2,000 traces: 200 gold and dropped live, 50 gold with an error (kept
/// live), the rest silver, every 10th of those with an error.
fn workload(seed_base: u64) -> Vec<Case> {
    (0..2_050u64)
        .map(|i| match i {
            0..200 => case(seed_base + i, true, false, 2),
            200..250 => case(seed_base + i, true, true, 2),
            _ => case(seed_base + i, false, i % 10 == 0, 2),
        })
        .collect()
}

async fn produce(topic: &str, cases: &[Case]) {
    let p = producer();
    for c in cases {
        for m in &c.messages {
            send(&p, topic, &hex::encode(c.id), m).await;
        }
    }
}

/// Every stored `(trace_id, span_id, reason, rule)` of the table.
async fn rows(s: &Selector) -> Vec<(String, String, String, String)> {
    let body = s
        .query(
            "SELECT trace_id, span_id, sampling_reason, coalesce(sampling_rule_id, '') FROM spans",
        )
        .await;
    assert_eq!(body["truncated"], false, "raise query.max_rows");
    body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let col = |i: usize| r[i].as_str().unwrap_or_default().to_string();
            (col(0), col(1), col(2), col(3))
        })
        .collect()
}

/// What the table holds of the gold traces, against what it must.
#[derive(Debug)]
struct Outcome {
    lost: usize,
    duplicated: usize,
    /// Stored spans of traces that are neither gold nor kept live.
    unexpected: usize,
    recovered_traces: usize,
    rule_ids: HashSet<String>,
}

async fn outcome(s: &Selector, cases: &[Case]) -> Outcome {
    let stored = rows(s).await;
    let distinct: HashSet<(&str, &str)> = stored
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str()))
        .collect();
    let wanted: HashSet<String> = cases
        .iter()
        .filter(|c| c.gold || c.kept_live)
        .map(|c| hex::encode(c.id))
        .collect();
    let expected: Vec<(String, String)> = cases
        .iter()
        .filter(|c| c.gold || c.kept_live)
        .flat_map(|c| {
            (0..SPANS_PER_TRACE)
                .map(move |i| (hex::encode(c.id), hex::encode(synth::span_id_for(&c.id, i))))
        })
        .collect();
    let recovered: HashSet<&str> = stored
        .iter()
        .filter(|r| r.2 == "recovered")
        .map(|r| r.0.as_str())
        .collect();
    Outcome {
        lost: expected
            .iter()
            .filter(|(t, sp)| !distinct.contains(&(t.as_str(), sp.as_str())))
            .count(),
        duplicated: stored.len() - distinct.len(),
        unexpected: distinct
            .iter()
            .filter(|(t, _)| !wanted.contains(*t))
            .count(),
        recovered_traces: recovered.len(),
        rule_ids: stored
            .iter()
            .filter(|r| r.2 == "recovered")
            .map(|r| r.3.clone())
            .collect(),
    }
}

/// The outcome once nothing is missing any more (or a minute has passed),
/// and a moment later, so that a late duplicate would show too.
async fn settle(s: &Selector, cases: &[Case]) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(60);
    while outcome(s, cases).await.lost > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    outcome(s, cases).await
}

/// Waits until the live path has decided `traces` traces and committed
/// what it kept.
async fn wait_decided(s: &Selector, traces: usize, kept_spans: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let m = s.metrics().await;
        let decided: f64 = m
            .iter()
            .filter(|(k, _)| {
                k.starts_with("tail_sampling_traces_sampled_total")
                    || k.starts_with("tail_sampling_traces_dropped_total")
            })
            .map(|(_, v)| v)
            .sum();
        let stored = s.count("SELECT count(*) FROM spans").await;
        if decided >= traces as f64 && stored >= kept_spans as i64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the live path decided {decided} of {traces} traces and stored {stored} of {kept_spans} spans\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn request(
    s: &Selector,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new().request(method, format!("http://{}{path}", s.admin));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn gold_request(from_ms: i64, to_ms: i64) -> Value {
    json!({
        "from": from_ms.to_string(),
        "to": to_ms.to_string(),
        "match": {"span": [{"key": "customer.tier", "op": "eq", "value": "gold"}]},
    })
}

/// Starts a recovery and waits for it to end; returns its final report.
async fn recover(s: &Selector, body: Value) -> Value {
    let (status, started) =
        request(s, reqwest::Method::POST, "/admin/recoveries", Some(body)).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("id").to_string();
    wait_job(s, &id, Duration::from_secs(120)).await
}

async fn wait_job(s: &Selector, id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, report) = s.get(&format!("/admin/recoveries/{id}")).await;
        assert_eq!(status, 200, "{report}");
        if ["done", "failed", "cancelled"].contains(&report["state"].as_str().unwrap_or("")) {
            return report;
        }
        assert!(Instant::now() < deadline, "job still {report}\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn unix_ms() -> i64 {
    (now_nanos() / 1_000_000) as i64
}

/// 2,050 traces, 250 of them gold and 50 of those kept live: a recovery of
/// the gold ones over the range stores exactly the 200 dropped ones, every
/// span, with reason `recovered` and the job's id; a rerun stores nothing.
#[tokio::test]
async fn a_recovery_stores_the_dropped_traces_that_match_whole_and_once() {
    let s = Selector::start("recover", FAST).await;
    // The spans' own times decide what is in the range: `from` comes first.
    let from = unix_ms() - 1_000;
    let cases = workload(7_000_000);
    produce(&s.topic, &cases).await;
    let to = unix_ms();
    let kept_live: usize = cases.iter().filter(|c| c.kept_live).count();
    wait_decided(&s, cases.len(), kept_live * SPANS_PER_TRACE).await;
    let before = outcome(&s, &cases).await;
    assert_eq!(before.recovered_traces, 0);
    assert_eq!(
        before.lost,
        200 * SPANS_PER_TRACE,
        "only the dropped gold traces are missing: {before:?}"
    );

    // Live traffic beside the job: 500 more traces over about 10 s, every
    // 5th with an error, none gold.
    let live: Vec<Case> = (0..500u64)
        .map(|i| case(7_050_000 + i, false, i % 5 == 0, 2))
        .collect();
    let sending = {
        let (topic, batch) = (
            s.topic.clone(),
            live.iter()
                .map(|c| (c.id, c.messages.clone()))
                .collect::<Vec<_>>(),
        );
        tokio::spawn(async move {
            let p = producer();
            for (id, messages) in batch {
                for m in &messages {
                    send(&p, &topic, &hex::encode(id), m).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let report = recover(&s, gold_request(from, to)).await;
    assert_eq!(report["state"], "done", "{report}\n{}", s.log());
    sending.await.expect("live producer");
    let mut cases = cases;
    cases.extend(live);
    let kept_live: usize = cases.iter().filter(|c| c.kept_live).count();
    wait_decided(&s, cases.len(), kept_live * SPANS_PER_TRACE).await;
    let o = settle(&s, &cases).await;
    let m = s.metrics().await;
    assert_eq!(
        m.get("tail_sampling_traces_sampled_total{reason=\"error\"}"),
        Some(&(kept_live as f64)),
        "the live path kept the same traces, with a recovery beside it"
    );
    println!(
        "recovery: traces={} gold=250 kept_live_gold=50 recovered={} lost={} duplicated={} unexpected={} report={report}",
        cases.len(),
        o.recovered_traces,
        o.lost,
        o.duplicated,
        o.unexpected
    );
    assert_eq!((o.lost, o.duplicated, o.unexpected), (0, 0, 0), "{o:?}");
    assert_eq!(o.recovered_traces, 200);
    assert_eq!(report["traces_recovered"], 200, "{report}");
    assert_eq!(report["spans_recovered"], 200 * SPANS_PER_TRACE, "{report}");
    assert_eq!(report["traces_already_stored"], 50, "{report}");
    assert_eq!(report["traces_matched"], 250, "{report}");
    assert_eq!(report["progress"], 1.0, "{report}");
    let (read_rate, job_rate) = (
        report["read_messages_per_sec"].as_f64().unwrap_or(0.0),
        report["messages_per_sec"].as_f64().unwrap_or(0.0),
    );
    assert!(
        job_rate > 0.0 && read_rate >= job_rate,
        "the reader's rate leaves out the wait after the read: {report}"
    );
    assert_eq!(
        o.rule_ids,
        HashSet::from([report["id"].as_str().expect("id").to_string()])
    );

    // A rerun finds everything stored.
    let again = recover(&s, gold_request(from, to)).await;
    assert_eq!(again["state"], "done", "{again}");
    assert_eq!(again["traces_recovered"], 0, "{again}");
    assert_eq!(again["traces_already_stored"], 250, "{again}");
    let o = outcome(&s, &cases).await;
    assert_eq!((o.lost, o.duplicated, o.unexpected), (0, 0, 0), "{o:?}");

    // Listed, and counted.
    let (_, list) = s.get("/admin/recoveries").await;
    assert_eq!(
        list["recoveries"].as_array().map(Vec::len),
        Some(2),
        "{list}"
    );
    assert_eq!(list["recoveries"][0]["id"], again["id"], "newest first");
    let m = s.metrics().await;
    assert_eq!(
        m.get("tail_sampling_recovery_traces_recovered_total"),
        Some(&200.0)
    );
    assert_eq!(
        m.get("tail_sampling_recovery_jobs_total{state=\"done\"}"),
        Some(&2.0)
    );
    assert!(m["tail_sampling_recovery_messages_read_total"] >= (2 * 2 * 2_050) as f64);
}

/// Traces that cross the start or the end of the range are read whole: the
/// range is widened by the trace timeouts.
#[tokio::test]
async fn traces_crossing_the_edges_of_the_range_are_recovered_whole() {
    let s = Selector::start("recover-edges", FAST).await;
    let p = producer();
    // Before the range: a trace wholly outside it, and the first half of one
    // that crosses its start (its spans run from before to after it).
    let outside = case(7_100_002, true, false, 1);
    let early = case_at(7_100_000, true, false, 2, now_nanos(), 3_000);
    send(&p, &s.topic, "o", &outside.messages[0]).await;
    send(&p, &s.topic, "e", &early.messages[0]).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let from = unix_ms();
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&p, &s.topic, "e", &early.messages[1]).await;
    let late = case_at(7_100_001, true, false, 2, now_nanos(), 1_500);
    send(&p, &s.topic, "l", &late.messages[0]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let to = unix_ms();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // Within the inactivity timeout after the end: the rest of `late`.
    send(&p, &s.topic, "l", &late.messages[1]).await;
    let cases = [early, late];
    wait_decided(&s, 3, 0).await;

    // The spans' own times put `outside` before the range too.
    let report = recover(&s, gold_request(from, to)).await;
    assert_eq!(report["state"], "done", "{report}\n{}", s.log());
    let stored = rows(&s).await;
    let per_trace: BTreeMap<&str, usize> = stored.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.0.as_str()).or_default() += 1;
        m
    });
    let expected: BTreeMap<String, usize> = cases
        .iter()
        .map(|c| (hex::encode(c.id), SPANS_PER_TRACE))
        .collect();
    let got: BTreeMap<String, usize> = per_trace.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(got, expected, "{report}");
    assert!(!got.contains_key(&hex::encode(outside.id)));
    assert_eq!(report["traces_recovered"], 2, "{report}");
}

/// A job killed with the selector, then run again, ends with every gold
/// trace stored once.
#[tokio::test]
async fn a_job_killed_midway_and_rerun_loses_nothing_and_stores_nothing_twice() {
    // A static member takes its partitions back at once after the kill.
    let instance = format!("recover-kill-{}", uuid::Uuid::new_v4().simple());
    let overrides: Vec<(&str, &str)> = FAST
        .iter()
        .copied()
        .chain([
            ("TSS__KAFKA__GROUP_INSTANCE_ID", instance.as_str()),
            ("TSS__KAFKA__SESSION_TIMEOUT_MS", "45000"),
        ])
        .collect();
    let mut s = Selector::start("recover-kill", &overrides).await;
    let from = unix_ms() - 1_000;
    let cases = workload(7_200_000);
    produce(&s.topic, &cases).await;
    let to = unix_ms();
    let kept_live: usize = cases.iter().filter(|c| c.kept_live).count();
    wait_decided(&s, cases.len(), kept_live * SPANS_PER_TRACE).await;

    // Slow enough to be killed halfway: 4,100 messages at 300 a second.
    let mut slow = gold_request(from, to);
    slow["max_messages_per_sec"] = json!(300);
    let (status, started) =
        request(&s, reqwest::Method::POST, "/admin/recoveries", Some(slow)).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("id").to_string();
    let deadline = Instant::now() + Duration::from_secs(90);
    let at_kill = loop {
        let (_, r) = s.get(&format!("/admin/recoveries/{id}")).await;
        if r["traces_recovered"].as_u64().unwrap_or(0) > 0 {
            break r;
        }
        assert_ne!(
            r["state"], "done",
            "the job ended before it could be killed: {r}"
        );
        assert!(Instant::now() < deadline, "{r}\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    s.kill();
    let partial = at_kill["traces_recovered"].as_u64().unwrap_or(0);
    assert!(partial < 200, "killed after the whole job: {at_kill}");
    s.restart().await;
    let (status, _) = s.get(&format!("/admin/recoveries/{id}")).await;
    assert_eq!(status, 404, "jobs do not outlive the process");

    let report = recover(&s, gold_request(from, to)).await;
    assert_eq!(report["state"], "done", "{report}\n{}", s.log());
    let o = outcome(&s, &cases).await;
    println!(
        "recovery after a kill: recovered_before_kill>={partial} recovered_by_rerun={} lost={} duplicated={} unexpected={}",
        report["traces_recovered"], o.lost, o.duplicated, o.unexpected
    );
    assert_eq!((o.lost, o.duplicated, o.unexpected), (0, 0, 0), "{o:?}");
    assert_eq!(o.recovered_traces, 200);
}

/// Invalid requests are refused with the field at fault; unknown jobs are
/// 404; a job can be cancelled.
#[tokio::test]
async fn bad_requests_are_refused_and_a_job_can_be_cancelled() {
    let s = Selector::start("recover-api", FAST).await;
    let post = |body: Value| request(&s, reqwest::Method::POST, "/admin/recoveries", Some(body));
    let (status, e) = post(json!({"from": "yesterday"})).await;
    assert_eq!((status, e["field"].as_str()), (400, Some("from")), "{e}");
    let (status, e) = post(
        json!({"from": "-1h", "match": {"span": [{"key": "a", "op": "regex", "value": "("}]}}),
    )
    .await;
    assert_eq!(
        (status, e["field"].as_str()),
        (400, Some("match.span[0].value")),
        "{e}"
    );
    let (status, e) = post(json!({"from": "-1h", "until": "now"})).await;
    assert_eq!(status, 400, "{e}");
    let (status, _) = s.get("/admin/recoveries/rec-nope").await;
    assert_eq!(status, 404);

    // Its range ends in the future's past: the job waits for it, and is
    // cancelled while it waits.
    let (status, started) = post(json!({"from": "-1m"})).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("id").to_string();
    let (status, again) = post(json!({"from": "-1m"})).await;
    assert_eq!(status, 409, "one job at a time by default: {again}");
    let (status, _) = request(
        &s,
        reqwest::Method::DELETE,
        &format!("/admin/recoveries/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let report = wait_job(&s, &id, Duration::from_secs(30)).await;
    assert_eq!(report["state"], "cancelled", "{report}");
    let m = s.metrics().await;
    assert_eq!(
        m.get("tail_sampling_recovery_jobs_total{state=\"cancelled\"}"),
        Some(&1.0)
    );
}

const POLICIES: &str = r#"
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

/// `(kept by, service) -> (traces, spans)` of a simulation's summary.
fn simulated(summary: &Value) -> BTreeMap<(String, String), (u64, u64)> {
    summary["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            let n = |k: &str| r[k].as_u64().unwrap_or_default();
            ((s("policy"), s("service")), (n("traces"), n("spans")))
        })
        .collect()
}

/// A simulation of the live list over a range says what the live path kept
/// there, policy by policy and service by service (every policy here is
/// deterministic, `sample` by trace id); a candidate list is counted beside
/// it; nothing is stored.
#[tokio::test]
async fn a_simulation_of_the_live_policies_agrees_with_what_the_live_path_kept() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("policies.toml");
    std::fs::write(&file, POLICIES).expect("config");
    let overrides: Vec<(&str, &str)> = FAST
        .iter()
        .copied()
        .chain([(crate::harness::CONFIG_FILE, file.to_str().expect("path"))])
        .collect();
    let s = Selector::start("simulate", &overrides).await;
    let from = unix_ms() - 1_000;
    let mut traces = Vec::new();
    traces.extend((0..20).map(|n| spec(7_300_000 + n, "noisy", 2, true)));
    traces.extend((0..5).map(|n| spec(7_310_000 + n, "shop", 5, false)));
    traces.extend((0..500).map(|n| spec(7_320_000 + n, "shop", 1, false)));
    traces.extend((0..10).map(|n| spec(7_330_000 + n, "billing", 2, true)));
    let p = producer();
    for chunk in traces.chunks(50) {
        let resources = chunk
            .iter()
            .map(|t| ResourceDef::new(&t.service, synth::trace(t)))
            .collect();
        let payload = synth::request(resources).encode_to_vec();
        send(&p, &s.topic, &hex::encode(chunk[0].trace_id), &payload).await;
    }
    let to = unix_ms();
    wait_decided(&s, traces.len(), (10 * 2 + 5 * 5) as usize).await;
    // The sampled shop traces land with the rest: wait for the whole count.
    let sampled = s
        .metric("tail_sampling_traces_sampled_total{reason=\"policy\"}")
        .await;
    s.wait_exported(20.0 + 25.0 + (sampled - 5.0)).await;
    let body = s
        .query(
            "SELECT CASE WHEN sampling_reason = 'policy' THEN sampling_rule_id ELSE sampling_reason END, \
             service_name, count(DISTINCT trace_id), count(*) FROM spans GROUP BY 1, 2",
        )
        .await;
    let table: BTreeMap<(String, String), (u64, u64)> = body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let s = |i: usize| r[i].as_str().unwrap_or_default().to_string();
            let n = |i: usize| r[i].as_u64().unwrap_or_default();
            ((s(0), s(1)), (n(2), n(3)))
        })
        .collect();
    let rows_before = s.count("SELECT count(*) FROM spans").await;

    let post = |body: Value| {
        request(
            &s,
            reqwest::Method::POST,
            "/admin/sampling/simulate",
            Some(body),
        )
    };
    let (status, started) = post(json!({"from": from.to_string(), "to": to.to_string()})).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("sim-"), "{id}");
    let report = wait_job(&s, &id, Duration::from_secs(90)).await;
    assert_eq!(report["state"], "done", "{report}\n{}", s.log());
    let sim = &report["simulation"];
    println!(
        "simulation of the live list: table={table:?} simulated={:?}",
        simulated(&sim["live"])
    );
    assert_eq!(sim["traces"], traces.len(), "{report}");
    assert_eq!(simulated(&sim["live"]), table, "{report}");
    assert_eq!(
        simulated(&sim["candidate"]),
        table,
        "no list given: the live one"
    );
    let shop_sampled = &sim["live"]["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["policy"] == "tenth-of-shop")
        .cloned()
        .expect("a sampled row");
    let n = shop_sampled["traces"].as_f64().expect("n");
    assert_eq!(shop_sampled["sum_sample_rate"].as_f64(), Some(n * 10.0));

    // A candidate list that keeps the noisy errors and samples nothing.
    let (status, started) = post(json!({
        "from": from.to_string(), "to": to.to_string(),
        "policies": [{"name": "keep-noisy", "action": "keep",
                      "match": {"resource": [{"key": "service.name", "op": "eq", "value": "noisy"}]}}]
    }))
    .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("id").to_string();
    let report = wait_job(&s, &id, Duration::from_secs(90)).await;
    assert_eq!(report["state"], "done", "{report}");
    let candidate = simulated(&report["simulation"]["candidate"]);
    assert_eq!(
        candidate,
        BTreeMap::from([
            (("error".into(), "billing".into()), (10, 20)),
            (("keep-noisy".into(), "noisy".into()), (20, 40)),
        ]),
        "{report}"
    );
    assert_eq!(simulated(&report["simulation"]["live"]), table);
    assert_eq!(
        s.count("SELECT count(*) FROM spans").await,
        rows_before,
        "a simulation stores nothing"
    );
    let (_, list) = s.get("/admin/sampling/simulations").await;
    assert_eq!(
        list["simulations"].as_array().map(Vec::len),
        Some(2),
        "{list}"
    );

    // An invalid candidate names its field.
    let (status, e) =
        post(json!({"from": "-5m", "policies": [{"name": "s", "action": "sample", "rate": 2}]}))
            .await;
    assert_eq!(
        (status, e["field"].as_str()),
        (400, Some("policies[0].rate")),
        "{e}"
    );
}
