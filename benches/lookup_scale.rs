//! Trace lookups in a large table. Writes `--spans` (20,000,000) spans of the
//! demo scenario into a selector's table through the writer's own row and
//! file path (`SpanRows`, `write_data_files`, one fast append per
//! `--commit-rows`, 100,000, as flushes would commit them), runs the
//! `maintenance` subcommand until compaction finds nothing more to merge,
//! then times `--lookups` (500) `GET /admin/traces/{id}` against the
//! running selector, of trace ids chosen at random among those written, and
//! prints p50, p99 and max with the files and row groups they read. Every
//! lookup must find its trace with the number of spans written.
//!
//! Needs Redis (the maintenance lease) and the broker (the selector starts
//! its consumer on an empty topic): `scripts/stack.sh up`, then
//!
//!   cargo bench --bench lookup_scale -- --spans 20000000

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use prost::Message;
use rand::seq::IndexedRandom;
use tail_sampling_selector::ack::Hold;
use tail_sampling_selector::config::Settings;
use tail_sampling_selector::handoff::KeptTrace;
use tail_sampling_selector::model::SamplingReason;
use tail_sampling_selector::otlp::decode::decode_message;
use tail_sampling_selector::storage::rows::SpanRows;
use tail_sampling_selector::table::layout::ParquetLayout;
use tail_sampling_selector::table::write::write_data_files;
use tail_sampling_selector::table::TableHandle;
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

/// One generated trace, decoded as the consumer decodes it.
fn kept_trace(g: &mut TraceGenerator, end_unix_nano: u64) -> KeptTrace {
    let root = g.pick_root();
    let t = g.trace(root, end_unix_nano, 0.0);
    let payload = Bytes::from(g.request(vec![t]).encode_to_vec());
    let decoded = decode_message(payload, 16 << 20).expect("generated traces decode");
    let trace_id = decoded
        .spans
        .first()
        .map(|(id, _)| *id)
        .expect("a trace has spans");
    KeptTrace {
        trace_id,
        spans: decoded.spans.into_iter().map(|(_, s)| s).collect(),
        spans_in_kafka: 0,
        charge: None,
        reason: SamplingReason::Baseline,
        rule_id: None,
        sample_rate: 1.0,
        hold: Hold::detached(Vec::new()),
        decided_at: SystemTime::now(),
    }
}

/// Writes `spans` spans in commits of `commit_rows`; returns the trace ids
/// with their span counts.
async fn fill(
    table: &TableHandle,
    settings: &Settings,
    spans: u64,
    commit_rows: u64,
) -> Vec<(String, usize)> {
    let layout = ParquetLayout::of(&settings.storage);
    let mut g = TraceGenerator::new(Scenario::demo(), 7);
    let mut ids = Vec::new();
    let (mut written, mut commits) = (0u64, 0u64);
    let started = Instant::now();
    // Traces end over the last hour, so that start times spread as a day's do.
    let end_base = now_nanos() - 3_600_000_000_000;
    while written < spans {
        let mut batch = Vec::new();
        let mut rows = 0u64;
        while rows < commit_rows && written + rows < spans {
            let at = end_base + (written + rows) * 3_600_000_000_000 / spans;
            let t = kept_trace(&mut g, at);
            rows += t.spans.len() as u64;
            batch.push(t);
        }
        let loaded = table.load().await.expect("table loads");
        let schema = Arc::new(
            schema_to_arrow_schema(loaded.metadata().current_schema()).expect("arrow schema"),
        );
        let mut span_rows = SpanRows::for_traces(&batch);
        for t in &batch {
            span_rows.push_trace(t, |_| false);
            ids.push((hex::encode(t.trace_id), t.spans.len()));
        }
        let files = write_data_files(
            &loaded,
            span_rows.into_batch(schema).expect("batch"),
            &layout,
            512 << 20,
        )
        .await
        .expect("data files written");
        let tx = Transaction::new(&loaded);
        let tx = tx
            .fast_append()
            .with_check_duplicate(false)
            .add_data_files(files)
            .apply(tx)
            .expect("append");
        tx.commit(table.catalog.as_ref()).await.expect("commit");
        written += rows;
        commits += 1;
        if commits % 20 == 0 {
            println!(
                "  written {written} spans in {commits} commits ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "written {written} spans of {} traces in {commits} commits, {:.0} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    ids
}

/// Runs the `maintenance` subcommand until a run rewrites nothing.
fn maintain(s: &Selector) {
    for run in 1..=20 {
        let started = Instant::now();
        let out = s
            .command()
            .arg("maintenance")
            .output()
            .expect("maintenance runs");
        assert!(
            out.status.success(),
            "maintenance failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // The summary's first line; log lines may come before it.
        let compaction = text
            .lines()
            .find(|l| l.starts_with("compaction:"))
            .unwrap_or_default()
            .to_string();
        println!(
            "maintenance run {run} ({:.0} s): {compaction}",
            started.elapsed().as_secs_f64()
        );
        if compaction.starts_with("compaction: 0 files") {
            return;
        }
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() {
    let spans = arg("--spans", 20_000_000);
    let commit_rows = arg("--commit-rows", 100_000);
    let lookups = arg("--lookups", 500) as usize;
    let topic = format!("tss-bench-lookup-{}", uuid::Uuid::new_v4().simple());
    let prefix = format!("tss-bench-lookup-{}:", uuid::Uuid::new_v4().simple());
    let s = Selector::start_on(&topic, &[("TSS__REDIS__KEY_PREFIX", prefix.as_str())]).await;
    let env: HashMap<String, String> = [
        "TSS__STORAGE__ICEBERG__CATALOG_URI",
        "TSS__STORAGE__ICEBERG__WAREHOUSE",
        "TSS__REDIS__URL",
        "TSS__REDIS__KEY_PREFIX",
    ]
    .into_iter()
    .filter_map(|k| Some((k.to_string(), s.env(k)?.to_string())))
    .collect();
    let settings = Settings::load_with_env(None, env).expect("settings");
    let table = TableHandle::open(&settings.storage.iceberg)
        .await
        .expect("table opens");
    let ids = fill(&table, &settings, spans, commit_rows).await;
    maintain(&s);
    let parquet: Vec<_> = harness::files_under(&s.warehouse_path(), ".parquet");
    let bytes: u64 = parquet
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let rows = s.count("SELECT count(*) FROM spans").await;
    println!(
        "table: {rows} rows; {} Parquet files on disk, {:.1} GiB",
        parquet.len(),
        bytes as f64 / (1u64 << 30) as f64
    );

    let mut rng = rand::rng();
    let mut times = Vec::new();
    let (mut planned, mut read, mut groups, mut by_bloom, mut by_statistics) = (0, 0, 0, 0, 0);
    for _ in 0..lookups {
        let (id, expected) = ids.choose(&mut rng).expect("ids written");
        let started = Instant::now();
        let (status, body) = s.get(&format!("/admin/traces/{id}")).await;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(status, 200, "lookup of {id}: {body}");
        assert_eq!(
            body["span_count"].as_u64(),
            Some(*expected as u64),
            "lookup of {id}: {body}"
        );
        let scan = &body["scan"];
        planned = planned.max(scan["files_planned"].as_u64().unwrap_or(0));
        read = read.max(scan["files_read"].as_u64().unwrap_or(0));
        groups += scan["row_groups"].as_u64().unwrap_or(0);
        by_bloom += scan["row_groups_skipped_by_bloom"].as_u64().unwrap_or(0);
        by_statistics += scan["row_groups_skipped_by_statistics"]
            .as_u64()
            .unwrap_or(0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "lookups: {} of {} found with every span | p50 {:.0} ms p99 {:.0} ms max {:.0} ms | ≤ {planned} files planned, ≤ {read} read | of {groups} row groups, {by_statistics} skipped by min/max and {by_bloom} by bloom filter",
        times.len(),
        lookups,
        quantile(&times, 0.5),
        quantile(&times, 0.99),
        times.last().copied().unwrap_or(f64::NAN),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}
