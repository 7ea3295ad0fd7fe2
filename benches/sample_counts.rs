//! Honest counts: does `sum(sample_rate)` in SQL estimate the traffic before
//! sampling? Sends `--traces` traces of the demo scenario (seeded) to a
//! fresh topic, through a selector whose policies sample `mobile-api` at
//! `sample` 0.1 and everything else with a `dynamic` policy (goal 0.1, keyed
//! by root operation and error), then compares, per service, the traces
//! that touched it with `sum(sample_rate)` over its distinct kept traces.
//! Also reports how much more often the dynamic policy kept its rare key
//! (traces with an error) than its frequent one.
//!
//! Then a `rate_limit` policy of 20 traces/s under ten times that load, live
//! for `--limit-secs` (30): kept traces per second against the limit, and
//! `sum(sample_rate)` against the traces sent.
//!
//! Needs the local stack (`scripts/stack.sh up`):
//!
//!   cargo bench --bench sample_counts -- --traces 100000 --rate 2000

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tail_sampling_selector::testkit::loadgen::{Scenario, TraceGenerator};

#[path = "../tests/it/harness.rs"]
mod harness;

use harness::{now_nanos, Selector, CONFIG_FILE};

const POLICIES: &str = r#"
[[sampling.policies]]
name = "mobile-tenth"
match = { trace = [{ key = "trace.root.name", op = "starts_with", value = "GET /v1/" }] }
action = "sample"
rate = 0.1

[[sampling.policies]]
name = "dynamic-rest"
action = "dynamic"
goal_rate = 0.1
adjustment_interval_secs = 5
key_fields = ["trace.root.name", "trace.has_error"]
"#;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

const LIMIT_PER_SEC: u64 = 20;

/// Traces kept and decided so far.
async fn decided(s: &Selector) -> (f64, f64) {
    let m = s.metrics().await;
    let kept: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("tail_sampling_traces_sampled_total{"))
        .map(|(_, v)| v)
        .sum();
    (
        kept,
        kept + m
            .get("tail_sampling_traces_dropped_total")
            .copied()
            .unwrap_or(0.0),
    )
}

/// A `rate_limit` of 20/s under 200 traces/s of live traffic.
async fn rate_limit(secs: u64) {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("limit.toml");
    std::fs::write(
        &config,
        format!("[[sampling.policies]]\nname = \"limit\"\naction = \"rate_limit\"\ntraces_per_sec = {LIMIT_PER_SEC}\n"),
    )
    .expect("config");
    let topic = format!("tss-bench-limit-{}", uuid::Uuid::new_v4().simple());
    let prefix = format!("tss-bench-{}:", uuid::Uuid::new_v4().simple());
    let s = Selector::start_on(
        &topic,
        &[
            (CONFIG_FILE, config.to_str().expect("path")),
            ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
        ],
    )
    .await;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", harness::brokers())
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut g = TraceGenerator::new(Scenario::demo(), 23);
    let rate = 10 * LIMIT_PER_SEC;
    let started = Instant::now();
    let mut sent = 0u64;
    // Kept count after the first second, when the limiter has seen a second of traffic.
    let mut window_start = None;
    while started.elapsed() < Duration::from_secs(secs) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let root = g.pick_root();
            let t = g.trace(root, now_nanos(), 0.0);
            let key = hex::encode(t.trace_id);
            let payload = g.request(vec![t]).encode_to_vec();
            p.send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
            sent += 1;
        }
        if window_start.is_none() && started.elapsed() > Duration::from_secs(5) {
            window_start = Some((Instant::now(), decided(&s).await.0));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (t0, k0) = window_start.expect("window");
    let (k1, t1) = (decided(&s).await.0, Instant::now());
    let per_sec = (k1 - k0) / (t1 - t0).as_secs_f64();
    // Wait for the rest to be decided and stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    while decided(&s).await.1 < sent as f64 {
        assert!(
            Instant::now() < deadline,
            "not every trace was decided\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kept = decided(&s).await.0;
    while (s.count("SELECT count(DISTINCT trace_id) FROM spans").await as f64) < kept {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = s
        .query("SELECT sum(sample_rate) FROM (SELECT DISTINCT trace_id, sample_rate FROM spans)")
        .await;
    let estimate = body["rows"][0][0].as_f64().unwrap_or(0.0);
    println!(
        "limit:     {rate} traces/s for {secs} s against a limit of {LIMIT_PER_SEC}/s: kept {per_sec:.1}/s in steady state ({:+.1}% of the limit); {kept} kept of {sent}, sum(sample_rate) {estimate:.0} ({:+.2}% of the traces sent)",
        100.0 * (per_sec / LIMIT_PER_SEC as f64 - 1.0),
        100.0 * (estimate / sent as f64 - 1.0)
    );
}

#[tokio::main]
async fn main() {
    let n = arg("--traces", 100_000);
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("policies.toml");
    std::fs::write(&config, POLICIES).expect("config");
    let topic = format!("tss-bench-counts-{}", uuid::Uuid::new_v4().simple());
    let prefix = format!("tss-bench-{}:", uuid::Uuid::new_v4().simple());
    let s = Selector::start_on(
        &topic,
        &[
            (CONFIG_FILE, config.to_str().expect("path")),
            ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
            ("TSS__SAMPLING__WORKERS", "0"),
            ("TSS__KAFKA__TOPIC_PARTITIONS", "8"),
            ("TSS__BUFFER__MAX_BUFFERED_SPANS", "4000000"),
        ],
    )
    .await;

    // The truth: traces per service (a trace counts once for each service it touches).
    let mut g = TraceGenerator::new(Scenario::demo(), 17);
    let names: Vec<String> = g
        .scenario()
        .services
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let mut truth: BTreeMap<String, u64> = BTreeMap::new();
    let (mut errors, mut spans) = (0u64, 0u64);
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", harness::brokers())
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()
        .expect("producer");
    // Live traffic at `--rate` traces/s, so that the dynamic sampler sees
    // many adjustment intervals, as it would in production.
    let rate = arg("--rate", 2000) as f64;
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in 0..n {
        if i % 100 == 0 {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let root = g.pick_root();
        let t = g.trace(root, now_nanos(), 0.0);
        let touched: BTreeSet<usize> = t.spans_by_service.iter().map(|(svc, _)| *svc).collect();
        for svc in touched {
            *truth.entry(names[svc].clone()).or_default() += 1;
        }
        errors += t.error as u64;
        spans += t.span_count() as u64;
        let key = hex::encode(t.trace_id);
        let payload = g.request(vec![t]).encode_to_vec();
        let p = p.clone();
        let topic = topic.clone();
        pending.push(tokio::spawn(async move {
            p.send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
        }));
        if pending.len() >= 2000 {
            for h in pending.drain(..) {
                h.await.expect("join").expect("produce");
            }
        }
    }
    for h in pending.drain(..) {
        h.await.expect("join").expect("produce");
    }
    println!(
        "sent:      {n} traces, {spans} spans, {errors} with an error, in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Every trace decided, every kept one in the table.
    let deadline = Instant::now() + Duration::from_secs(600);
    let kept = loop {
        let m = s.metrics().await;
        let kept: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("tail_sampling_traces_sampled_total{"))
            .map(|(_, v)| v)
            .sum();
        let dropped = m
            .get("tail_sampling_traces_dropped_total")
            .copied()
            .unwrap_or(0.0);
        if kept + dropped >= n as f64 {
            let stored = s.count("SELECT count(DISTINCT trace_id) FROM spans").await;
            if stored as f64 >= kept {
                break kept;
            }
        }
        assert!(
            Instant::now() < deadline,
            "decided {} of {n}\n{}",
            kept + dropped,
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("kept:      {kept} traces ({:.1}%)", 100.0 * kept / n as f64);

    let body = s
        .query(
            "SELECT service_name, count(*), sum(sample_rate) FROM \
             (SELECT DISTINCT trace_id, service_name, sample_rate FROM spans) GROUP BY 1 ORDER BY 1",
        )
        .await;
    println!(
        "{:<12} {:>9} {:>9} {:>11} {:>8}",
        "service", "traces", "kept", "estimate", "error"
    );
    let mut worst: f64 = 0.0;
    for row in body["rows"].as_array().expect("rows") {
        let service = row[0].as_str().unwrap_or("");
        let kept = row[1].as_f64().unwrap_or(0.0);
        let estimate = row[2].as_f64().unwrap_or(0.0);
        let actual = truth.get(service).copied().unwrap_or(0) as f64;
        let err = (estimate - actual) / actual;
        worst = worst.max(err.abs());
        println!(
            "{service:<12} {actual:>9} {kept:>9} {estimate:>11.0} {:>7.2}%",
            100.0 * err
        );
    }
    let rates = s
        .query(
            "SELECT sampling_rule_id, status_code = 'ERROR' AS error, count(*), avg(sample_rate) FROM spans \
             WHERE parent_span_id IS NULL GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .await;
    for row in rates["rows"].as_array().expect("rows") {
        println!(
            "policy:    {} root error={} kept {} mean sample_rate {:.2}",
            row[0],
            row[1],
            row[2],
            row[3].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "worst per-service error of sum(sample_rate): {:.2}% (goal: within 5%)",
        100.0 * worst
    );
    drop(s);
    rate_limit(arg("--limit-secs", 30)).await;
}
