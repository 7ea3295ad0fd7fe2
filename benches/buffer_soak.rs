//! The buffer's memory under a long inactivity timeout: a release selector
//! with `--timeout-secs` (3600) of inactivity takes `--rate` (65) demo
//! traces a second from the load generator for `--run-secs` (4200), in
//! `--mode` (compact) buffer mode. Every `--every-secs` (60) it prints the
//! buffered spans and traces, the selector's RSS, and the bytes per
//! buffered span above its RSS before the traffic began; at the end, the
//! peak RSS and the figure the hot-path bench predicts for that many
//! buffered spans (`--predict-bytes-per-span`, the bench's `compact:` or
//! `buffered:` line).
//!
//! Past the timeout the first traces are decided, so the buffer levels
//! off at `rate × timeout` traces; the RSS must level off with it.
//! Needs the local stack (`scripts/stack.sh up`):
//!
//!   cargo bench --features testkit --bench buffer_soak -- --mode compact

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/it/harness.rs"]
mod harness;

use harness::{brokers, create_topic, peak_rss_kib, redis_url, rss_kib, Selector};

struct Options {
    mode: String,
    timeout_secs: u64,
    run_secs: u64,
    rate: f64,
    every_secs: u64,
    predict_bytes_per_span: f64,
}

fn options() -> Options {
    let mut o = Options {
        mode: "compact".into(),
        timeout_secs: 3600,
        run_secs: 4200,
        rate: 65.0,
        every_secs: 60,
        predict_bytes_per_span: 60.0,
    };
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        let v = &w[1];
        match w[0].as_str() {
            "--mode" => o.mode = v.clone(),
            "--timeout-secs" => o.timeout_secs = v.parse().unwrap_or(o.timeout_secs),
            "--run-secs" => o.run_secs = v.parse().unwrap_or(o.run_secs),
            "--rate" => o.rate = v.parse().unwrap_or(o.rate),
            "--every-secs" => o.every_secs = v.parse().unwrap_or(o.every_secs),
            "--predict-bytes-per-span" => {
                o.predict_bytes_per_span = v.parse().unwrap_or(o.predict_bytes_per_span)
            }
            _ => {}
        }
    }
    o
}

fn load_generator(topic: &str, o: &Options) -> Child {
    Command::new(env!("CARGO_BIN_EXE_load_generator"))
        .args(["--brokers", &brokers(), "--topic", topic])
        .args(["--rate", &o.rate.to_string()])
        .args(["--duration-secs", &o.run_secs.to_string()])
        .args(["--partitions", "8", "--report-every-secs", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("load_generator")
}

#[tokio::main]
async fn main() {
    let o = options();
    let topic = format!("tss-soak-{}", uuid::Uuid::new_v4().simple());
    create_topic(&topic, 8).await;
    let timeout = o.timeout_secs.to_string();
    let longest = (o.timeout_secs * 2).to_string();
    let redis = redis_url();
    let s = Selector::launch(
        &topic,
        &[
            ("TSS__BUFFER__MODE", o.mode.as_str()),
            ("TSS__BUFFER__MAX_BUFFERED_SPANS", "100000000"),
            ("TSS__KAFKA__TOPIC_PARTITIONS", "8"),
            ("TSS__KAFKA__SESSION_TIMEOUT_MS", "45000"),
            ("TSS__REDIS__URL", redis.as_str()),
            ("TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS", timeout.as_str()),
            ("TSS__SAMPLING__MAX_TRACE_DURATION_SECS", longest.as_str()),
            ("TSS__SAMPLING__BASELINE_SAMPLE_RATE", "0.05"),
        ],
    );
    s.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let base_kib = rss_kib(s.pid());
    println!(
        "buffer soak: mode {}, inactivity {} s, {} traces/s for {} s; RSS before traffic {:.0} MiB",
        o.mode,
        o.timeout_secs,
        o.rate,
        o.run_secs,
        base_kib as f64 / 1024.0
    );
    let mut producer = load_generator(&topic, &o);
    let started = Instant::now();
    let mut last = Sample::default();
    while started.elapsed() < Duration::from_secs(o.run_secs) {
        tokio::time::sleep(Duration::from_secs(o.every_secs)).await;
        last = Sample::take(&s, base_kib).await;
        println!(
            "{:>6.0} s  buffered {:>10.0} spans {:>9.0} traces  RSS {:>7.0} MiB  {:>6.1} bytes/buffered span  kept {:>8.0} spans",
            started.elapsed().as_secs_f64(),
            last.spans,
            last.traces,
            last.rss_kib as f64 / 1024.0,
            last.bytes_per_span(),
            last.exported,
        );
    }
    let _ = producer.kill();
    let _ = producer.wait();
    let peak = peak_rss_kib(s.pid()) as f64 / 1024.0;
    let predicted =
        base_kib as f64 / 1024.0 + last.spans * o.predict_bytes_per_span / (1 << 20) as f64;
    println!(
        "end: buffered {:.0} spans, RSS {:.0} MiB, peak {:.0} MiB; predicted {:.0} MiB \
         (RSS before traffic + {:.0} bytes × buffered spans); {:.1} bytes per buffered span above the start",
        last.spans,
        last.rss_kib as f64 / 1024.0,
        peak,
        predicted,
        o.predict_bytes_per_span,
        last.bytes_per_span(),
    );
}

#[derive(Default)]
struct Sample {
    spans: f64,
    traces: f64,
    exported: f64,
    rss_kib: u64,
    base_kib: u64,
}

impl Sample {
    async fn take(s: &Selector, base_kib: u64) -> Sample {
        let m: HashMap<String, f64> = s.metrics().await;
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        Sample {
            spans: get("tail_sampling_buffered_spans"),
            traces: get("tail_sampling_buffered_traces"),
            exported: get("tail_sampling_spans_exported_total{sink=\"iceberg\"}"),
            rss_kib: rss_kib(s.pid()),
            base_kib,
        }
    }

    fn bytes_per_span(&self) -> f64 {
        if self.spans <= 0.0 {
            return 0.0;
        }
        (self.rss_kib.saturating_sub(self.base_kib) * 1024) as f64 / self.spans
    }
}
