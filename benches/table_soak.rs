//! The table as it ages: a release selector commits every `--flush-ms`
//! (200) under steady demo traffic (`--rate` traces/s, 150, half of them
//! kept) until `--commits` (1,000) snapshots, once with maintenance off and
//! once on (every 20 s: compaction, snapshot expiry after 60 s keeping 10).
//! At five checkpoints it prints the mean commit time of the last stretch,
//! the newest `metadata.json`'s size, the Parquet files on disk, the files a
//! trace lookup plans, `count(*)` latency, the p50 and p99 of 40 lookups of
//! kept traces chosen at random, and RSS.
//!
//! Needs the local stack (`scripts/stack.sh up`):
//!
//!   cargo bench --bench table_soak -- --commits 1000

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer, DefaultProducerContext};
use tail_sampling_selector::testkit::loadgen::{Scenario, TraceGenerator};

#[path = "../tests/it/harness.rs"]
mod harness;

use harness::{now_nanos, Selector};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}

/// Demo traffic at `rate` traces/s until `stop`.
fn traffic(topic: String, rate: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", harness::brokers())
            .set("linger.ms", "5")
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
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = p.flush(Duration::from_secs(10));
        sent
    })
}

/// The newest `*.metadata.json` under `dir` (the highest version), in bytes.
fn newest_metadata_bytes(dir: &Path) -> u64 {
    harness::files_under(dir, ".metadata.json")
        .into_iter()
        .max_by(|a, b| a.file_name().cmp(&b.file_name()))
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len())
}

fn files_with(dir: &Path, ext: &str) -> usize {
    harness::files_under(dir, &format!(".{ext}")).len()
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
}

async fn checkpoint(s: &Selector, last: &mut (f64, f64)) {
    let m = s.metrics().await;
    let commits = m.get("tail_sampling_iceberg_commits_total").copied().unwrap_or(0.0);
    let sum = m.get("tail_sampling_iceberg_commit_duration_seconds_sum").copied().unwrap_or(0.0);
    let count = m.get("tail_sampling_iceberg_commit_duration_seconds_count").copied().unwrap_or(0.0);
    let mean_ms = if count > last.1 { 1e3 * (sum - last.0) / (count - last.1) } else { f64::NAN };
    *last = (sum, count);
    let started = Instant::now();
    let rows = s.count("SELECT count(*) FROM spans").await;
    let count_ms = started.elapsed().as_secs_f64() * 1e3;
    let ids = s.query("SELECT DISTINCT trace_id FROM spans ORDER BY trace_id LIMIT 4000").await;
    let ids: Vec<String> = ids["rows"].as_array().into_iter().flatten().filter_map(|r| r[0].as_str().map(String::from)).collect();
    let mut lookups = Vec::new();
    let mut planned = 0;
    for i in 0..40 {
        let Some(id) = ids.get((i * 97 + 13) % ids.len().max(1)) else { break };
        let started = Instant::now();
        let (_, body) = s.get(&format!("/admin/traces/{id}")).await;
        lookups.push(started.elapsed().as_secs_f64() * 1e3);
        planned = planned.max(body["scan"]["files_planned"].as_u64().unwrap_or(0));
    }
    lookups.sort_by(f64::total_cmp);
    let warehouse = s.warehouse_path();
    println!(
        "  {commits:>6.0} commits | commit mean {mean_ms:>6.1} ms | metadata.json {:>8.1} KiB | parquet files {:>5} | manifests {:>5} | lookup plans ≤ {planned:>4} files | count(*) {count_ms:>6.0} ms | lookup p50 {:>6.0} ms p99 {:>6.0} ms | rows {rows:>8} | RSS {:>4} MiB",
        newest_metadata_bytes(&warehouse) as f64 / 1024.0,
        files_with(&warehouse, "parquet"),
        files_with(&warehouse, "avro"),
        quantile(&lookups, 0.5),
        quantile(&lookups, 0.99),
        harness::rss_kib(s.pid()) / 1024,
    );
}

async fn soak(maintenance: bool, commits: u64, flush_ms: u64, rate: u64) {
    let topic = format!("tss-bench-soak-{}", uuid::Uuid::new_v4().simple());
    let prefix = format!("tss-bench-soak-{}:", uuid::Uuid::new_v4().simple());
    let flush = format!("{}ms", flush_ms);
    let enabled = maintenance.to_string();
    let s = Selector::start_on(
        &topic,
        &[
            ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
            ("TSS__STORAGE__FLUSH_INTERVAL_SECS", flush.as_str()),
            ("TSS__SAMPLING__BASELINE_SAMPLE_RATE", "0.5"),
            ("TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS", "1"),
            ("TSS__MAINTENANCE__ENABLED", enabled.as_str()),
            ("TSS__MAINTENANCE__INTERVAL_SECS", "20"),
            ("TSS__MAINTENANCE__SNAPSHOT_MAX_AGE_SECS", "60"),
        ],
    )
    .await;
    println!("maintenance {}:", if maintenance { "on" } else { "off" });
    let stop = Arc::new(AtomicBool::new(false));
    let sender = traffic(topic.clone(), rate, stop.clone());
    let mut last = (0.0, 0.0);
    for step in 1..=5 {
        let target = (commits * step / 5) as f64;
        s.wait_metric("tail_sampling_iceberg_commits_total", target, Duration::from_secs(3600)).await;
        checkpoint(&s, &mut last).await;
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap_or(0);
    println!("  sent {sent} traces");
}

#[tokio::main]
async fn main() {
    let commits = arg("--commits", 1000);
    let flush_ms = arg("--flush-ms", 200);
    let rate = arg("--rate", 150);
    soak(false, commits, flush_ms, rate).await;
    soak(true, commits, flush_ms, rate).await;
}
