//! Trace completion by stream time: a backlog is decided as fast as it is
//! read, idle partitions don't hold it back, and decisions are the same as
//! on live traffic.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use prost::Message;
use rdkafka::producer::FutureRecord;
use serde_json::Value;
use tail_sampling_selector::testkit::synth::{self, ResourceDef, TraceSpec};

use crate::harness::{create_topic, load_generator, now_nanos, producer, trace_id, Selector};

/// Trace-id seeds of this module (decisions live in the shared Redis).
const SEEDS: u64 = 600_000_000;

/// 200 error traces stamped over the last ten minutes, all on partition 0 of
/// four, read with a 30 s inactivity timeout. By the wall clock nothing
/// could be decided for 30 s; by stream time every trace more than 30 s
/// older than the newest is decided as soon as it is read, although three
/// partitions have no data at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_is_decided_as_it_is_read_and_idle_partitions_do_not_stall_it() {
    const TRACES: u64 = 200;
    const STEP_MS: u64 = 3_000;
    let topic = format!("tss-it-backlog-{}", uuid::Uuid::new_v4().simple());
    create_topic(&topic, 4).await;
    let p = producer();
    let start_ms = now_nanos() / 1_000_000 - TRACES * STEP_MS;
    for n in 0..TRACES {
        let ts_ms = start_ms + n * STEP_MS;
        let spans = synth::trace(&TraceSpec {
            trace_id: trace_id(SEEDS + n),
            service: "backlog".into(),
            spans: 2,
            error: true,
            start_unix_nano: (ts_ms - 20) * 1_000_000,
            duration_ms: 20,
        });
        let payload = synth::request(vec![ResourceDef::new("backlog", spans)]).encode_to_vec();
        let key = hex::encode(trace_id(SEEDS + n));
        let record = FutureRecord::to(&topic)
            .partition(0)
            .key(&key)
            .payload(&payload)
            .timestamp(ts_ms as i64);
        p.send(record, Duration::from_secs(15))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    let s = Selector::start_on(&topic, &[("TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS", "30")]).await;
    let started = Instant::now();
    // The newest ten traces are within 30 s of the end of the backlog.
    let expected = (TRACES - 10) as f64;
    s.wait_metric(
        "tail_sampling_traces_sampled_total{reason=\"error\"}",
        expected,
        Duration::from_secs(20),
    )
    .await;
    let waited = started.elapsed();
    println!(
        "stream time: {expected} traces decided {:.1} s after readiness",
        waited.as_secs_f64()
    );
    assert!(waited < Duration::from_secs(25), "decided after {waited:?}");
    let lag = s.metric("tail_sampling_watermark_lag_seconds").await;
    assert!(lag < 10.0, "caught up, yet the watermark is {lag} s behind");
}

/// The kept traces of a selector, with their reason and span count.
async fn kept(s: &Selector) -> BTreeSet<(String, String, i64)> {
    let body = s
        .query("SELECT trace_id, sampling_reason, count(*) FROM spans GROUP BY trace_id, sampling_reason")
        .await;
    body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r: &Value| {
            (
                r[0].as_str().unwrap_or_default().to_string(),
                r[1].as_str().unwrap_or_default().to_string(),
                r[2].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits until a selector has decided `traces` traces.
async fn wait_decided(s: &Selector, traces: f64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let m = s.metrics().await;
        let decided: f64 = m
            .iter()
            .filter(|(k, _)| {
                k.starts_with("tail_sampling_traces_sampled_total{")
                    || *k == "tail_sampling_traces_dropped_total"
            })
            .map(|(_, v)| v)
            .sum();
        let exported = m
            .get("tail_sampling_spans_exported_total{sink=\"iceberg\"}")
            .copied()
            .unwrap_or(0.0);
        let held = m.get("tail_sampling_held_spans").copied().unwrap_or(1.0);
        if decided >= traces && held == 0.0 && exported > 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{decided} of {traces} traces decided\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each selector has its own key prefix, so neither sees the other's decisions.
fn settings(prefix: &str) -> [(&str, &str); 3] {
    [
        ("TSS__REDIS__KEY_PREFIX", prefix),
        ("TSS__SAMPLING__BASELINE_SAMPLE_RATE", "0.2"),
        ("TSS__SAMPLING__LATENCY_THRESHOLD_MS", "1500"),
    ]
}

/// The same seeded traffic, once live (200 traces over 5 s) and once as a
/// backlog stamped over the last 5 s: the same traces are kept, for the
/// same reasons, with the same spans.
#[tokio::test(flavor = "multi_thread")]
async fn live_and_backlog_traffic_get_the_same_decisions() {
    let seed = (now_nanos() % 1_000_000_000).to_string();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let common = [
        "--seed",
        seed.as_str(),
        "--rate",
        "40",
        "--count",
        "200",
        "--partitions",
        "4",
        "--compression",
        "none",
    ];
    let (live_topic, backlog_topic) = (
        format!("tss-it-live-{run}"),
        format!("tss-it-backlog-{run}"),
    );
    let (live_prefix, backlog_prefix) = (format!("tss-live-{run}:"), format!("tss-backlog-{run}:"));
    let live = Selector::start_on(&live_topic, &settings(&live_prefix)).await;
    let out = load_generator(&live_topic, &common);
    assert!(out.contains("0 failed"), "{out}");
    let out = load_generator(
        &backlog_topic,
        &[&common[..], &["--backlog-secs", "5"]].concat(),
    );
    assert!(out.contains("backlog of 200 traces"), "{out}");
    let backlog = Selector::start_on(&backlog_topic, &settings(&backlog_prefix)).await;
    wait_decided(&live, 200.0).await;
    wait_decided(&backlog, 200.0).await;
    let (a, b) = (kept(&live).await, kept(&backlog).await);
    println!("live and backlog: {} and {} kept traces", a.len(), b.len());
    assert!(a.len() >= 10, "too few kept traces to compare: {a:?}");
    assert_eq!(a, b, "the backlog was decided differently");
}
