//! The table as it ages: a release selector commits every `--flush-ms`
//! (100) under steady demo traffic (`--rate` traces/s, 600, every trace
//! kept), first with maintenance off until `--commits-off` (1,000)
//! snapshots, then with maintenance on until `--commits` (20,000): every
//! 30 s compaction into 128 MiB files, retention, expiry of snapshots older
//! than 30 s keeping 10, and orphan cleanup. At checkpoints (1/40, 1/10,
//! 1/4, 1/2 and all of the commits) it prints the commit p50 and p99 of the
//! stretch since the last one (interpolated in the commit histogram's
//! buckets), the newest `metadata.json`'s size, the live data files of the
//! current snapshot and the day partitions they span, the Parquet files on
//! disk, `count(*)` latency, the p50 and p99 of `--lookups` (200; with
//! maintenance off `--lookups-off`, 20) lookups of trace ids sent at least
//! 10 s before, chosen at random, and RSS.
//!
//! Needs the local stack (`scripts/stack.sh up`):
//!
//!   cargo bench --bench table_soak -- --commits 20000

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer, DefaultProducerContext};
use rand::seq::IndexedRandom;
use tail_sampling_selector::testkit::loadgen::{Scenario, TraceGenerator};

#[path = "../tests/it/harness.rs"]
mod harness;

use harness::{now_nanos, Selector};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}

/// Trace ids sent, with when: every 16th trace's.
type Sent = Arc<std::sync::Mutex<Vec<(Instant, String)>>>;

/// Demo traffic at `rate` traces/s until `stop`.
fn traffic(topic: String, rate: u64, stop: Arc<AtomicBool>, ids: Sent) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", harness::brokers())
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .expect("producer");
        let mut g = TraceGenerator::new(Scenario::demo(), 31);
        let started = Instant::now();
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                let root = g.pick_root();
                let t = g.trace(root, now_nanos(), 0.0);
                let key = hex::encode(t.trace_id);
                let payload = g.request(vec![t]).encode_to_vec();
                let _ = p.send(BaseRecord::to(&topic).key(&key).payload(&payload));
                if sent % 16 == 0 {
                    if let Ok(mut ids) = ids.lock() {
                        ids.push((Instant::now(), key));
                    }
                }
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = p.flush(Duration::from_secs(10));
        sent
    })
}

/// The newest `*.metadata.json` under `dir` (the highest version): its size
/// in bytes and its current snapshot's `total-data-files`.
fn newest_metadata(dir: &Path) -> (u64, u64) {
    let Some(path) = harness::files_under(dir, ".metadata.json").into_iter().max_by(|a, b| a.file_name().cmp(&b.file_name()))
    else {
        return (0, 0);
    };
    let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    let json: serde_json::Value = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let current = &json["current-snapshot-id"];
    let live = json["snapshots"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| &s["snapshot-id"] == current)
        .and_then(|s| s["summary"]["total-data-files"].as_str()?.parse().ok())
        .unwrap_or(0);
    (bytes, live)
}

/// The `q` quantile of the observations between two readings of a histogram
/// (cumulative bucket counts by upper bound), interpolated in its bucket.
fn histogram_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| (*le, n - before.iter().find(|(b, _)| b == le).map_or(0.0, |(_, m)| *m)))
        .collect();
    let total = counts.last().map_or(0.0, |(_, n)| *n);
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, n) in counts {
        if n >= rank {
            if le.is_infinite() {
                return lower;
            }
            return lower + (le - lower) * (rank - below) / (n - below).max(1e-9);
        }
        (lower, below) = (le, n);
    }
    lower
}

/// The commit histogram's buckets.
fn commit_buckets(m: &std::collections::HashMap<String, f64>) -> Vec<(f64, f64)> {
    let prefix = "tail_sampling_iceberg_commit_duration_seconds_bucket{le=\"";
    let mut b: Vec<(f64, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(prefix)?.strip_suffix("\"}")?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, *v))
        })
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    b
}

fn files_with(dir: &Path, ext: &str) -> usize {
    harness::files_under(dir, &format!(".{ext}")).len()
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
}

async fn checkpoint(s: &Selector, last: &mut Vec<(f64, f64)>, ids: &Sent, lookups: usize) {
    let m = s.metrics().await;
    let commits = m.get("tail_sampling_iceberg_commits_total").copied().unwrap_or(0.0);
    let buckets = commit_buckets(&m);
    let (p50, p99) = (histogram_quantile(last, &buckets, 0.5) * 1e3, histogram_quantile(last, &buckets, 0.99) * 1e3);
    *last = buckets;
    let started = Instant::now();
    let rows = s.count("SELECT count(*) FROM spans").await;
    let count_ms = started.elapsed().as_secs_f64() * 1e3;
    let days = s.count("SELECT count(DISTINCT date_trunc('day', start_time)) FROM spans").await;
    let candidates: Vec<String> = ids
        .lock()
        .map(|v| v.iter().filter(|(at, _)| at.elapsed() > Duration::from_secs(10)).map(|(_, id)| id.clone()).collect())
        .unwrap_or_default();
    let mut rng = rand::rng();
    let mut times = Vec::new();
    let (mut found, mut planned, mut read) = (0, 0, 0);
    for _ in 0..lookups {
        let Some(id) = candidates.choose(&mut rng) else { break };
        let started = Instant::now();
        let (_, body) = s.get(&format!("/admin/traces/{id}")).await;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        found += usize::from(body["span_count"].as_u64().is_some_and(|n| n > 0));
        planned = planned.max(body["scan"]["files_planned"].as_u64().unwrap_or(0));
        read = read.max(body["scan"]["files_read"].as_u64().unwrap_or(0));
    }
    times.sort_by(f64::total_cmp);
    let warehouse = s.warehouse_path();
    let (metadata_bytes, live) = newest_metadata(&warehouse);
    println!(
        "  {commits:>6.0} commits | commit p50 {p50:>5.1} ms p99 {p99:>6.1} ms | metadata.json {:>7.1} KiB | live data files {live:>5} in {days} day partitions | parquet files on disk {:>5} | count(*) {count_ms:>6.0} ms | lookup p50 {:>5.0} ms p99 {:>5.0} ms ({found}/{} found, ≤ {planned} files planned, ≤ {read} read) | rows {rows:>9} | RSS {:>4} MiB",
        metadata_bytes as f64 / 1024.0,
        files_with(&warehouse, "parquet"),
        quantile(&times, 0.5),
        quantile(&times, 0.99),
        times.len(),
        harness::rss_kib(s.pid()) / 1024,
    );
}

async fn soak(maintenance: bool, commits: u64, flush_ms: u64, rate: u64, lookups: usize) {
    let topic = format!("tss-bench-soak-{}", uuid::Uuid::new_v4().simple());
    let prefix = format!("tss-bench-soak-{}:", uuid::Uuid::new_v4().simple());
    let flush = format!("{}ms", flush_ms);
    let enabled = maintenance.to_string();
    let s = Selector::start_on(
        &topic,
        &[
            ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
            ("TSS__STORAGE__FLUSH_INTERVAL_SECS", flush.as_str()),
            ("TSS__SAMPLING__BASELINE_SAMPLE_RATE", "1.0"),
            ("TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS", "1"),
            ("TSS__MAINTENANCE__ENABLED", enabled.as_str()),
            ("TSS__MAINTENANCE__INTERVAL_SECS", "30"),
            ("TSS__MAINTENANCE__SNAPSHOT_MAX_AGE_SECS", "30"),
            ("TSS__MAINTENANCE__ORPHAN_FILE_GRACE_SECS", "600"),
        ],
    )
    .await;
    println!("maintenance {}:", if maintenance { "on" } else { "off" });
    let stop = Arc::new(AtomicBool::new(false));
    let ids: Sent = Arc::default();
    let sender = traffic(topic.clone(), rate, stop.clone(), ids.clone());
    let mut last = Vec::new();
    for divisor in [40, 10, 4, 2, 1] {
        let target = (commits / divisor) as f64;
        s.wait_metric("tail_sampling_iceberg_commits_total", target, Duration::from_secs(4 * 3600)).await;
        checkpoint(&s, &mut last, &ids, lookups).await;
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap_or(0);
    println!("  sent {sent} traces; peak RSS {} MiB", harness::peak_rss_kib(s.pid()) / 1024);
}

#[tokio::main]
async fn main() {
    let commits = arg("--commits", 20_000);
    let commits_off = arg("--commits-off", 1_000);
    let flush_ms = arg("--flush-ms", 100);
    let rate = arg("--rate", 600);
    let lookups = arg("--lookups", 200) as usize;
    // Without maintenance a lookup opens every file: fewer of them.
    let lookups_off = arg("--lookups-off", 20) as usize;
    if commits_off > 0 {
        soak(false, commits_off, flush_ms, rate, lookups_off).await;
    }
    soak(true, commits, flush_ms, rate, lookups).await;
}
