//! The table as it ages: a release selector commits every `--flush-ms`
//! (100) under steady demo traffic (`--rate` traces/s, 600, every trace
//! kept, produced with `--linger-ms` 100), first with maintenance off until
//! `--commits-off` (1,000) snapshots, then with maintenance on until
//! `--commits` (20,000): every 30 s compaction into 128 MiB files,
//! retention, expiry of snapshots older than 30 s keeping 10, and orphan
//! cleanup (with the shortest grace it allows, an hour). At checkpoints (1/40, 1/10, 1/4, 1/2 and all of the commits) it
//! prints, for the stretch since the last one, the commit rate, rows per
//! commit and the commit p50 and p99 (interpolated in the commit
//! histogram's buckets); then the watermark lag, RSS, the newest
//! `metadata.json`'s size, the live data files of the current snapshot and
//! of the newest compaction snapshot, the day partitions and Parquet files
//! on disk, `count(*)` latency, and the p50 and p99 of `--lookups` (200;
//! with maintenance off `--lookups-off`, 20) lookups of trace ids sent at
//! least 10 s before, chosen at random; and the p50 and p99 of 20 calls each
//! of the Jaeger query API: services, operations, a search, one trace.
//!
//! Needs the local stack (`scripts/stack.sh up`):
//!
//!   cargo bench --bench table_soak -- --commits 20000

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rand::seq::IndexedRandom;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tail_sampling_selector::testkit::loadgen::{Scenario, TraceGenerator};

#[path = "../tests/it/harness.rs"]
mod harness;

use harness::{now_nanos, Selector};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

/// Trace ids sent, with when: every 16th trace's.
type Sent = Arc<std::sync::Mutex<Vec<(Instant, String)>>>;

/// Demo traffic at `rate` traces/s until `stop`.
/// `linger_ms` batches the messages of each partition, as an exporter does;
/// it also keeps the broker's record batches few (see `Options::linger_ms`).
fn traffic(
    topic: String,
    rate: u64,
    linger_ms: u64,
    stop: Arc<AtomicBool>,
    ids: Sent,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", harness::brokers())
            .set("linger.ms", linger_ms.to_string())
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

/// What the newest `*.metadata.json` under `dir` (the highest version) says.
#[derive(Debug, Default)]
struct MetadataReading {
    bytes: u64,
    /// The current snapshot's `total-data-files`.
    live: u64,
    /// `total-data-files` of the newest compaction (`replace`) snapshot: what
    /// compaction left, before the flushes since added theirs.
    after_compaction: Option<u64>,
}

fn newest_metadata(dir: &Path) -> MetadataReading {
    let Some(path) = harness::files_under(dir, ".metadata.json")
        .into_iter()
        .max_by(|a, b| a.file_name().cmp(&b.file_name()))
    else {
        return MetadataReading::default();
    };
    let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    let json: serde_json::Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let snapshots: Vec<&serde_json::Value> =
        json["snapshots"].as_array().into_iter().flatten().collect();
    let files = |s: &serde_json::Value| s["summary"]["total-data-files"].as_str()?.parse().ok();
    let current = &json["current-snapshot-id"];
    let live = snapshots
        .iter()
        .find(|s| &s["snapshot-id"] == current)
        .and_then(|s| files(s))
        .unwrap_or(0);
    let after_compaction = snapshots
        .iter()
        .filter(|s| s["summary"]["operation"] == "replace")
        .max_by_key(|s| s["sequence-number"].as_u64())
        .and_then(|s| files(s));
    MetadataReading {
        bytes,
        live,
        after_compaction,
    }
}

/// The `q` quantile of the observations between two readings of a histogram
/// (cumulative bucket counts by upper bound), interpolated in its bucket.
fn histogram_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            (
                *le,
                n - before
                    .iter()
                    .find(|(b, _)| b == le)
                    .map_or(0.0, |(_, m)| *m),
            )
        })
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
            Some((
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                },
                *v,
            ))
        })
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    b
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// The readings of the previous checkpoint.
struct Last {
    buckets: Vec<(f64, f64)>,
    commits: f64,
    spans: f64,
    at: Instant,
}

async fn checkpoint(s: &Selector, last: &mut Last, ids: &Sent, lookups: usize) {
    let m = s.metrics().await;
    let commits = m
        .get("tail_sampling_iceberg_commits_total")
        .copied()
        .unwrap_or(0.0);
    let spans = m
        .get("tail_sampling_spans_exported_total{sink=\"iceberg\"}")
        .copied()
        .unwrap_or(0.0);
    let lag = m
        .get("tail_sampling_watermark_lag_seconds")
        .copied()
        .unwrap_or(f64::NAN);
    let buckets = commit_buckets(&m);
    let (p50, p99) = (
        histogram_quantile(&last.buckets, &buckets, 0.5) * 1e3,
        histogram_quantile(&last.buckets, &buckets, 0.99) * 1e3,
    );
    // The commit rate and batch size of the stretch: a falling rate with
    // growing batches means the input comes in bursts, not that commits slowed.
    let rate = (commits - last.commits) / last.at.elapsed().as_secs_f64();
    let rows_per_commit = (spans - last.spans) / (commits - last.commits).max(1.0);
    *last = Last {
        buckets,
        commits,
        spans,
        at: Instant::now(),
    };
    // Before this checkpoint's own queries and lookups.
    let rss_mib = harness::rss_kib(s.pid()) / 1024;
    let started = Instant::now();
    let rows = s.count("SELECT count(*) FROM spans").await;
    let count_ms = started.elapsed().as_secs_f64() * 1e3;
    let warehouse = s.warehouse_path();
    let parquet = harness::files_under(&warehouse, ".parquet");
    // Day partitions with files on disk, from the partition directories: a
    // query for them would scan the whole table in the process measured.
    let days = parquet
        .iter()
        .filter_map(|p| p.parent())
        .collect::<std::collections::HashSet<_>>()
        .len();
    let candidates: Vec<String> = ids
        .lock()
        .map(|v| {
            v.iter()
                .filter(|(at, _)| at.elapsed() > Duration::from_secs(10))
                .map(|(_, id)| id.clone())
                .collect()
        })
        .unwrap_or_default();
    let mut rng = rand::rng();
    let mut times = Vec::new();
    let (mut found, mut planned, mut read) = (0, 0, 0);
    for _ in 0..lookups {
        let Some(id) = candidates.choose(&mut rng) else {
            break;
        };
        let started = Instant::now();
        let (_, body) = s.get(&format!("/admin/traces/{id}")).await;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        found += usize::from(body["span_count"].as_u64().is_some_and(|n| n > 0));
        planned = planned.max(body["scan"]["files_planned"].as_u64().unwrap_or(0));
        read = read.max(body["scan"]["files_read"].as_u64().unwrap_or(0));
    }
    times.sort_by(f64::total_cmp);
    let search = search_times(s).await;
    let jaeger = jaeger_times(s, &candidates).await;
    let MetadataReading {
        bytes: metadata_bytes,
        live,
        after_compaction,
    } = newest_metadata(&warehouse);
    let after_compaction = after_compaction.map_or("-".to_string(), |n| n.to_string());
    println!(
        "  {commits:>6.0} commits | {rate:>4.1} commits/s, {rows_per_commit:>5.0} rows each, watermark lag {lag:.1} s | commit p50 {p50:>5.1} ms p99 {p99:>6.1} ms | metadata.json {:>7.1} KiB | live data files {live:>5} ({after_compaction:>3} after the last compaction), day partitions on disk {days} | parquet files on disk {:>5} | count(*) {count_ms:>6.0} ms | lookup p50 {:>5.0} ms p99 {:>5.0} ms ({found}/{} found, ≤ {planned} files planned, ≤ {read} read) | rows {rows:>9} | search by service, last hour: {search} | Jaeger API {jaeger} | RSS {:>4} MiB",
        metadata_bytes as f64 / 1024.0,
        parquet.len(),
        quantile(&times, 0.5),
        quantile(&times, 0.99),
        times.len(),
        rss_mib,
    );
}

/// `GET /admin/traces` by service over the last hour, as the UI's search
/// page asks it: the busiest entry service and a downstream one, 3 times
/// each, the first 20 traces.
async fn search_times(s: &Selector) -> String {
    let mut times = Vec::new();
    let (mut found, mut match_ms, mut summarise_ms) = (0, 0, 0);
    for service in ["frontend", "payments"] {
        for _ in 0..3 {
            let now = chrono::Utc::now().timestamp_millis();
            let started = Instant::now();
            let (status, body) = s
                .get(&format!(
                    "/admin/traces?service={service}&from={}&to={now}&limit=20",
                    now - 3_600_000
                ))
                .await;
            times.push(started.elapsed().as_secs_f64() * 1e3);
            assert_eq!(status, 200, "{body}");
            found += body["count"].as_u64().unwrap_or(0);
            match_ms = match_ms.max(body["timing"]["match_ms"].as_u64().unwrap_or(0));
            summarise_ms = summarise_ms.max(body["timing"]["summarise_ms"].as_u64().unwrap_or(0));
        }
    }
    times.sort_by(f64::total_cmp);
    format!(
        "p50 {:>4.0} ms max {:>4.0} ms ({found} traces; passes ≤ {match_ms} + ≤ {summarise_ms} ms)",
        quantile(&times, 0.5),
        times.last().copied().unwrap_or(f64::NAN)
    )
}

/// Calls of the Jaeger query API per checkpoint, each kind.
const JAEGER_CALLS: usize = 20;

/// The Jaeger query API as Grafana calls it when a search form opens and a
/// trace is picked: p50 and p99 of [`JAEGER_CALLS`] calls each of the
/// service list, the operations of `frontend`, a search of its last hour
/// (20 traces), one trace by id and the last hour's dependencies; a call
/// that fails or finds nothing is counted and shown.
async fn jaeger_times(s: &Selector, candidates: &[String]) -> String {
    let mut rng = rand::rng();
    let mut report = Vec::new();
    for (label, path) in [
        ("services", "/api/services".to_string()),
        (
            "operations",
            "/api/services/frontend/operations".to_string(),
        ),
        (
            "search",
            "/api/traces?service=frontend&lookback=1h&limit=20".to_string(),
        ),
        ("trace", String::new()),
        (
            "dependencies (1 h)",
            "/api/dependencies?lookback=3600000".to_string(),
        ),
    ] {
        let (mut times, mut failed, mut last_failure) = (Vec::new(), 0, String::new());
        for _ in 0..JAEGER_CALLS {
            let path = match label {
                "trace" => match candidates.choose(&mut rng) {
                    Some(id) => format!("/api/traces/{id}"),
                    None => break,
                },
                _ => path.clone(),
            };
            let started = Instant::now();
            let (status, body) = s.get(&path).await;
            times.push(started.elapsed().as_secs_f64() * 1e3);
            let answered = status == 200 && body["data"].as_array().is_some_and(|d| !d.is_empty());
            if !answered {
                failed += 1;
                last_failure = format!("{status} {body}");
            }
        }
        times.sort_by(f64::total_cmp);
        let failures = if failed > 0 {
            format!(" ({failed} failed, last: {last_failure:.200})")
        } else {
            String::new()
        };
        report.push(format!(
            "{label} p50 {:.0} ms p99 {:.0} ms{failures}",
            quantile(&times, 0.5),
            quantile(&times, 0.99)
        ));
    }
    report.join(", ")
}

/// The benchmark's settings, from its arguments.
#[derive(Debug, Clone, Copy)]
struct Options {
    commits: u64,
    commits_off: u64,
    flush_ms: u64,
    rate: u64,
    lookups: usize,
    lookups_off: usize,
    /// The producer's `linger.ms`. Tansu's memory storage lists every record
    /// batch of a partition on each fetch, so at 5 ms (a batch per message
    /// or two) its fetches slow down as the topic grows, and the selector
    /// receives, decides and commits in ever larger bursts: the commit rate
    /// fell from 7 to 1.3 a second within 1,500 commits while each commit
    /// stayed fast. At 100 ms the broker holds a twentieth of the batches.
    linger_ms: u64,
}

impl Options {
    fn parse() -> Self {
        Self {
            commits: arg("--commits", 20_000),
            commits_off: arg("--commits-off", 1_000),
            flush_ms: arg("--flush-ms", 100),
            rate: arg("--rate", 600),
            lookups: arg("--lookups", 200) as usize,
            // Without maintenance a lookup opens every file: fewer of them.
            lookups_off: arg("--lookups-off", 20) as usize,
            linger_ms: arg("--linger-ms", 100),
        }
    }
}

async fn soak(maintenance: bool, o: Options) {
    let (commits, lookups) = if maintenance {
        (o.commits, o.lookups)
    } else {
        (o.commits_off, o.lookups_off)
    };
    let (flush_ms, rate) = (o.flush_ms, o.rate);
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
            ("TSS__MAINTENANCE__ORPHAN_FILE_GRACE_SECS", "3600"),
        ],
    )
    .await;
    println!("maintenance {}:", if maintenance { "on" } else { "off" });
    let stop = Arc::new(AtomicBool::new(false));
    let ids: Sent = Arc::default();
    let sender = traffic(topic.clone(), rate, o.linger_ms, stop.clone(), ids.clone());
    let mut last = Last {
        buckets: Vec::new(),
        commits: 0.0,
        spans: 0.0,
        at: Instant::now(),
    };
    for divisor in [40, 10, 4, 2, 1] {
        let target = (commits / divisor) as f64;
        s.wait_metric(
            "tail_sampling_iceberg_commits_total",
            target,
            Duration::from_secs(4 * 3600),
        )
        .await;
        checkpoint(&s, &mut last, &ids, lookups).await;
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap_or(0);
    println!(
        "  sent {sent} traces; peak RSS {} MiB",
        harness::peak_rss_kib(s.pid()) / 1024
    );
}

#[tokio::main]
async fn main() {
    let o = Options::parse();
    println!("{o:?}");
    if o.commits_off > 0 {
        soak(false, o).await;
    }
    if o.commits > 0 {
        soak(true, o).await;
    }
}
