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
//!
//! Storing has a working set of its own (the table writer's files, the
//! table's metadata, the second read's fetches) that does not depend on
//! the timeout. So beside the soak a control selector runs the same mode
//! and the same traffic on a topic of its own with a short timeout
//! (`--control-timeout-secs`, 60; 0 runs none): its RSS is what storing
//! costs with an almost empty buffer, and the prediction once storing is
//! the control's RSS plus the predicted bytes for the spans the soak
//! buffers beyond the control's.
//!
//! At the end it prints, per selector in compact mode, what the second
//! read cost. `--export-interval-ms N` makes the load generator send spans
//! as an SDK's batch exporter per service does, every N ms, so a trace's
//! spans come in several messages up to N ms apart (0: each trace whole).
//!
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
    control_timeout_secs: u64,
    /// Passed to the load generator: spans sent as an SDK's batch exporter
    /// per service sends them (0: each trace whole, in one message).
    export_interval_ms: u64,
    /// The load generator's seed; the control's is this + 4200.
    seed: u64,
}

fn options() -> Options {
    let mut o = Options {
        mode: "compact".into(),
        timeout_secs: 3600,
        run_secs: 4200,
        rate: 65.0,
        every_secs: 60,
        predict_bytes_per_span: 60.0,
        control_timeout_secs: 60,
        export_interval_ms: 0,
        seed: 42,
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
            "--control-timeout-secs" => {
                o.control_timeout_secs = v.parse().unwrap_or(o.control_timeout_secs)
            }
            "--seed" => o.seed = v.parse().unwrap_or(o.seed),
            "--export-interval-ms" => {
                o.export_interval_ms = v.parse().unwrap_or(o.export_interval_ms)
            }
            "--predict-bytes-per-span" => {
                o.predict_bytes_per_span = v.parse().unwrap_or(o.predict_bytes_per_span)
            }
            _ => {}
        }
    }
    o
}

/// Its own `seed` per selector: both share Redis, where a trace id's
/// decision is shared.
fn load_generator(topic: &str, o: &Options, seed: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_load_generator"))
        .args(["--brokers", &brokers(), "--topic", topic])
        .args(["--seed", &seed.to_string()])
        .args(["--rate", &o.rate.to_string()])
        .args(["--duration-secs", &o.run_secs.to_string()])
        .args(["--partitions", "8", "--report-every-secs", "60"])
        .args(["--export-interval-ms", &o.export_interval_ms.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("load_generator")
}

/// A selector in `o.mode` on a fresh topic of 8 partitions, deciding
/// after `timeout_secs` of inactivity.
async fn launch(o: &Options, timeout_secs: u64) -> Selector {
    let topic = format!("tss-soak-{}", uuid::Uuid::new_v4().simple());
    create_topic(&topic, 8).await;
    let timeout = timeout_secs.to_string();
    let longest = (timeout_secs * 2).to_string();
    let redis = redis_url();
    // Decisions of its own: a run with a seed used before would otherwise
    // find its traces decided in Redis.
    let prefix = format!("{topic}:");
    let s = Selector::launch(
        &topic,
        &[
            ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
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
    s
}

#[tokio::main]
async fn main() {
    let o = options();
    let s = launch(&o, o.timeout_secs).await;
    let control = match o.control_timeout_secs {
        0 => None,
        secs => Some(launch(&o, secs).await),
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let base_kib = rss_kib(s.pid());
    let control_base_kib = control.as_ref().map_or(0, |c| rss_kib(c.pid()));
    println!(
        "buffer soak: mode {}, inactivity {} s (control {} s), {} traces/s for {} s; \
         RSS before traffic {:.0} MiB (control {:.0} MiB)",
        o.mode,
        o.timeout_secs,
        o.control_timeout_secs,
        o.rate,
        o.run_secs,
        base_kib as f64 / 1024.0,
        control_base_kib as f64 / 1024.0,
    );
    let mut producers = vec![load_generator(&s.topic, &o, o.seed)];
    if let Some(c) = &control {
        producers.push(load_generator(&c.topic, &o, o.seed + 4200));
    }
    let started = Instant::now();
    let mut last = Sample::default();
    let mut last_control = Sample::default();
    while started.elapsed() < Duration::from_secs(o.run_secs) {
        tokio::time::sleep(Duration::from_secs(o.every_secs)).await;
        last = Sample::take(&s, base_kib).await;
        if let Some(c) = &control {
            last_control = Sample::take(c, control_base_kib).await;
        }
        println!(
            "{:>6.0} s  buffered {:>10.0} spans {:>9.0} traces  RSS {:>7.0} MiB  {:>6.1} bytes/buffered span  kept {:>8.0} spans  \
             | control: buffered {:>8.0} spans  RSS {:>7.0} MiB  predicted {:>7.0} MiB",
            started.elapsed().as_secs_f64(),
            last.spans,
            last.traces,
            mib(last.rss_kib),
            last.bytes_per_span(),
            last.exported,
            last_control.spans,
            mib(last_control.rss_kib),
            predicted(&o, &last, &last_control),
        );
    }
    for mut p in producers {
        let _ = p.kill();
        let _ = p.wait();
    }
    let peak = mib(peak_rss_kib(s.pid()));
    println!(
        "end: buffered {:.0} spans, RSS {:.0} MiB, peak {:.0} MiB; {:.1} bytes per buffered span above the start; \
         predicted from the start {:.0} MiB (RSS before traffic + {:.0} bytes × buffered spans)",
        last.spans,
        mib(last.rss_kib),
        peak,
        last.bytes_per_span(),
        mib(base_kib) + last.spans * o.predict_bytes_per_span / (1 << 20) as f64,
        o.predict_bytes_per_span,
    );
    if let Some(c) = &control {
        println!(
            "end: control buffered {:.0} spans, RSS {:.0} MiB, peak {:.0} MiB; predicted while storing {:.0} MiB \
             (the control's RSS + {:.0} bytes × the spans buffered beyond the control's)",
            last_control.spans,
            mib(last_control.rss_kib),
            mib(peak_rss_kib(c.pid())),
            predicted(&o, &last, &last_control),
            o.predict_bytes_per_span,
        );
    }
    second_read("soak", &s).await;
    if let Some(c) = &control {
        second_read("control", c).await;
    }
}

/// What the second read cost a selector in compact mode: how often a
/// reader went back (a consumer started), and the messages and bytes it
/// read against what the consumer read once.
async fn second_read(name: &str, s: &Selector) {
    let m: HashMap<String, f64> = s.metrics().await;
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let traces = get("tail_sampling_reread_traces_total");
    if traces == 0.0 {
        return;
    }
    println!(
        "end: {name} second read: {traces:.0} kept traces, {:.0} consumers started, {:.0} messages decoded again and \
         {:.0} skipped of {:.0} consumed, {:.1} MB fetched again, {:.0} spans missing",
        get("tail_sampling_reread_consumer_starts_total"),
        get("tail_sampling_reread_messages_decoded_total"),
        get("tail_sampling_reread_messages_skipped_total"),
        get("tail_sampling_messages_consumed_total"),
        get("tail_sampling_reread_bytes_fetched_total") / 1e6,
        get("tail_sampling_reread_spans_missing_total"),
    );
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The control's RSS, storing the same traffic with an almost empty
/// buffer, plus the predicted bytes for the spans the soak holds beyond
/// the control's; 0 without a control.
fn predicted(o: &Options, soak: &Sample, control: &Sample) -> f64 {
    if control.rss_kib == 0 {
        return 0.0;
    }
    let beyond = (soak.spans - control.spans).max(0.0);
    mib(control.rss_kib) + beyond * o.predict_bytes_per_span / (1 << 20) as f64
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
