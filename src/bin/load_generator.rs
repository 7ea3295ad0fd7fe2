//! Realistic OTLP traffic into Kafka: a scenario of services at target rates,
//! with latency jitter, fan-out, errors, latency spikes and error bursts.
//!
//! Each message is one OTLP protobuf `ExportTraceServiceRequest` keyed by the
//! hex trace id of its first trace, as the Collector's Kafka exporter with
//! `partition_traces_by_id` writes it. The rate is held by a ticker; the
//! achieved rate is printed every few seconds. `--rate 0` sends as fast as
//! the broker takes it.
//!
//! `--export-interval-ms N` sends each trace as its services' SDKs would,
//! through batch span processors that export every N ms, each service on a
//! phase of its own: one message per trace and service and export, so a
//! trace's spans reach Kafka in several messages up to N ms apart.
//!
//! `--backlog-secs N` writes a backlog instead: the traffic of the last N
//! seconds at `--rate`, every trace and every message timestamp stamped as if
//! it had been produced then, sent as fast as the broker takes it. The traces
//! depend only on the seed, so the same seed gives the same traces live and
//! as a backlog.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use prost::Message;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tail_sampling_selector::ingest;
use tail_sampling_selector::testkit::loadgen::{
    BatchExporters, ErrorBurst, GeneratedTrace, LatencySpike, Scenario, TraceGenerator,
};

#[derive(Debug, Parser)]
#[command(version, about = "Send realistic OTLP trace traffic to a Kafka topic")]
struct Args {
    #[command(flatten)]
    kafka: ingest::client::ToolArgs,
    /// Partitions when the topic has to be created.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// A TOML scenario (see config/loadgen-demo.toml); the built-in demo otherwise.
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Traces per second over all entry points; 0 = as fast as the broker
    /// takes them. Default: the scenario's own rates.
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Stop after this many traces.
    #[arg(long)]
    count: Option<u64>,
    /// Traces per Kafka message (a batch exporter sends several).
    #[arg(long, default_value_t = 1)]
    traces_per_message: usize,
    /// Every Nth trace that reaches --spike-service (as its entry point or
    /// downstream) has that service's calls take 10× their latency.
    #[arg(long)]
    spike_every: Option<u64>,
    #[arg(long)]
    spike_service: Option<String>,
    /// Switch on an error burst: SERVICE:START_SECS:DURATION_SECS:RATE,
    /// for example `payments:30:20:0.5`.
    #[arg(long, value_name = "SPEC")]
    error_burst: Option<String>,
    /// Seconds between two rate reports.
    #[arg(long, default_value_t = 5.0)]
    report_every_secs: f64,
    /// Producer compression: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "lz4")]
    compression: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Send spans as SDK batch exporters, one per service, every N ms
    /// (5000 is the SDKs' default); 0 sends each trace whole.
    #[arg(long, default_value_t = 0)]
    export_interval_ms: u64,
    /// Write the traffic of the last N seconds at --rate as a backlog.
    #[arg(long, value_name = "N")]
    backlog_secs: Option<f64>,
}

/// Counts deliveries from librdkafka's delivery reports.
#[derive(Default)]
struct Delivery {
    ok: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
}

struct Counting(Arc<Delivery>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, size: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                self.0.ok.fetch_add(1, Ordering::Relaxed);
                self.0.bytes.fetch_add(*size as u64, Ordering::Relaxed);
            }
            Err((e, _)) => {
                if self.0.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("delivery failed: {e}");
                }
            }
        }
    }
}

fn scenario(args: &Args) -> anyhow::Result<Scenario> {
    let mut s = match &args.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Scenario::from_toml(&text)?
        }
        None => Scenario::demo(),
    };
    if let Some(every) = args.spike_every {
        let service = args
            .spike_service
            .clone()
            .or_else(|| s.latency_spike.as_ref().map(|l| l.service.clone()))
            .context("--spike-every needs --spike-service")?;
        s.latency_spike = Some(LatencySpike { service, every });
    }
    if let Some(spec) = &args.error_burst {
        let parts: Vec<&str> = spec.split(':').collect();
        let [service, start, duration, rate] = parts[..] else {
            anyhow::bail!("--error-burst wants SERVICE:START_SECS:DURATION_SECS:RATE, got {spec}");
        };
        s.error_burst = Some(ErrorBurst {
            service: service.to_string(),
            start_secs: start.parse().context("--error-burst START_SECS")?,
            duration_secs: duration.parse().context("--error-burst DURATION_SECS")?,
            error_rate: rate.parse().context("--error-burst RATE")?,
        });
    }
    s.validate()?;
    Ok(s)
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scenario = scenario(&args)?;
    let rate = args.rate.unwrap_or_else(|| scenario.total_rate());
    anyhow::ensure!(rate >= 0.0, "--rate must not be negative");
    anyhow::ensure!(
        args.traces_per_message >= 1,
        "--traces-per-message must be at least 1"
    );
    anyhow::ensure!(
        args.export_interval_ms == 0 || (args.traces_per_message == 1 && args.backlog_secs.is_none()),
        "--export-interval-ms sends one trace's spans per message, live: not with --traces-per-message or --backlog-secs"
    );
    let backlog = match args.backlog_secs {
        Some(secs) => {
            anyhow::ensure!(
                secs > 0.0 && rate > 0.0,
                "--backlog-secs needs a positive N and a positive --rate"
            );
            let count = ((secs * rate) as u64).min(args.count.unwrap_or(u64::MAX));
            Some(Backlog {
                start_nanos: now_nanos().saturating_sub((secs * 1e9) as u64),
                rate,
                count,
            })
        }
        None => None,
    };

    let (mut kafka, topic) = args.kafka.resolve()?;
    kafka.topic_partitions = args.partitions;
    ingest::ensure_topics(&kafka, &[(topic.as_str(), kafka.topic_partitions)])
        .await
        .with_context(|| format!("creating topic {topic} at {}", kafka.brokers))?;

    let delivery = Arc::new(Delivery::default());
    let producer: ThreadedProducer<Counting> = ingest::client::client_config(&kafka)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", &args.compression)
        .set("message.timeout.ms", "30000")
        .create_with_context(Counting(delivery.clone()))
        .context("creating the producer")?;

    let services = scenario.services.len();
    let mut generator = TraceGenerator::new(scenario, args.seed);
    let exporters = (args.export_interval_ms > 0)
        .then(|| BatchExporters::new(services, args.export_interval_ms, args.seed));
    let mut exports = Exports::default();
    println!(
        "sending to {} topic {}: {} traces/s, {} trace(s) per message{}{}",
        kafka.brokers,
        topic,
        if rate > 0.0 {
            format!("{rate:.0}")
        } else {
            "unlimited".into()
        },
        args.traces_per_message,
        args.duration_secs
            .map(|d| format!(", for {d} s"))
            .unwrap_or_default(),
        args.count
            .map(|c| format!(", {c} traces"))
            .unwrap_or_default(),
    );

    if let Some(backlog) = backlog {
        return send_backlog(
            &producer,
            &topic,
            &mut generator,
            &backlog,
            &args,
            &delivery,
        )
        .await;
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut traces, mut spans, mut errors, mut spikes, mut messages) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut last_report = (Instant::now(), 0u64, 0u64);
    loop {
        let elapsed = started.elapsed().as_secs_f64();
        if args.duration_secs.is_some_and(|d| elapsed >= d)
            || args.count.is_some_and(|c| traces >= c)
        {
            break;
        }
        // The ticker holds the rate: send what is due since the start.
        let due = if rate > 0.0 {
            ((elapsed * rate) as u64).saturating_sub(traces)
        } else {
            1_000
        };
        let due = args.count.map_or(due, |c| due.min(c - traces));
        let mut batch = Vec::with_capacity(args.traces_per_message);
        for i in 0..due {
            let root = generator.pick_root();
            let t = generator.trace(root, now_nanos(), elapsed);
            spans += t.span_count() as u64;
            errors += u64::from(t.error);
            spikes += u64::from(t.spike);
            if let Some(exporters) = &exporters {
                exports.schedule(&generator, exporters.split(t, now_nanos()));
                traces += 1;
                continue;
            }
            batch.push(t);
            if batch.len() == args.traces_per_message || i + 1 == due {
                let key = hex::encode(batch[0].trace_id);
                let payload = generator
                    .request(std::mem::take(&mut batch))
                    .encode_to_vec();
                send(&producer, &topic, &key, payload).await;
                messages += 1;
            }
            traces += 1;
        }
        messages += exports.send_due(&producer, &topic, now_nanos()).await;
        if last_report.0.elapsed().as_secs_f64() >= args.report_every_secs {
            let secs = last_report.0.elapsed().as_secs_f64();
            println!(
                "{:>6.1}s  {:>9.0} traces/s  {:>10.0} spans/s  delivered {} msgs ({:.1} MB)  errors {errors}  spikes {spikes}",
                elapsed,
                (traces - last_report.1) as f64 / secs,
                (spans - last_report.2) as f64 / secs,
                delivery.ok.load(Ordering::Relaxed),
                delivery.bytes.load(Ordering::Relaxed) as f64 / 1e6,
            );
            last_report = (Instant::now(), traces, spans);
        }
        if rate > 0.0 {
            tick.tick().await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    // The exports still to come go out on their schedule.
    while let Some(at) = exports.next_at() {
        tokio::time::sleep(Duration::from_nanos(at.saturating_sub(now_nanos()))).await;
        messages += exports.send_due(&producer, &topic, now_nanos()).await;
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the producer")?;
    let secs = started.elapsed().as_secs_f64();
    let failed = delivery.failed.load(Ordering::Relaxed);
    println!(
        "done: {traces} traces, {spans} spans, {messages} messages in {secs:.1} s ({:.0} traces/s, {:.0} spans/s); {errors} with errors, {spikes} latency spikes; {} delivered, {failed} failed",
        traces as f64 / secs,
        spans as f64 / secs,
        delivery.ok.load(Ordering::Relaxed),
    );
    anyhow::ensure!(failed == 0, "{failed} messages were not delivered");
    Ok(())
}

/// A message waiting for its export: (when, order, key, payload).
type Export = (u64, u64, String, Vec<u8>);

/// Messages waiting for their export, earliest first.
#[derive(Default)]
struct Exports {
    queue: BinaryHeap<Reverse<Export>>,
    scheduled: u64,
}

impl Exports {
    fn schedule(&mut self, generator: &TraceGenerator, parts: Vec<(u64, GeneratedTrace)>) {
        for (at, part) in parts {
            let key = hex::encode(part.trace_id);
            let payload = generator.request(vec![part]).encode_to_vec();
            self.scheduled += 1;
            self.queue.push(Reverse((at, self.scheduled, key, payload)));
        }
    }

    fn next_at(&self) -> Option<u64> {
        self.queue.peek().map(|Reverse((at, ..))| *at)
    }

    /// Sends every message due by `now`; returns how many.
    async fn send_due(
        &mut self,
        producer: &ThreadedProducer<Counting>,
        topic: &str,
        now: u64,
    ) -> u64 {
        let mut sent = 0;
        while self.next_at().is_some_and(|at| at <= now) {
            if let Some(Reverse((_, _, key, payload))) = self.queue.pop() {
                send(producer, topic, &key, payload).await;
                sent += 1;
            }
        }
        sent
    }
}

/// The traffic of a past period, at a steady rate.
struct Backlog {
    start_nanos: u64,
    rate: f64,
    count: u64,
}

impl Backlog {
    /// When trace `n` ends: its place in the period.
    fn end_nanos(&self, n: u64) -> u64 {
        self.start_nanos + (n as f64 / self.rate * 1e9) as u64
    }
}

/// Writes the backlog as fast as the broker takes it. Each message carries the
/// timestamp its traces would have been produced at, and each trace's time
/// in the period drives the scenario's error burst, so the traces depend only
/// on the seed.
async fn send_backlog(
    producer: &ThreadedProducer<Counting>,
    topic: &str,
    generator: &mut TraceGenerator,
    backlog: &Backlog,
    args: &Args,
    delivery: &Delivery,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let (mut spans, mut messages) = (0u64, 0u64);
    let mut n = 0u64;
    while n < backlog.count {
        let mut batch = Vec::with_capacity(args.traces_per_message);
        while batch.len() < args.traces_per_message && n < backlog.count {
            let root = generator.pick_root();
            let t = generator.trace(root, backlog.end_nanos(n), n as f64 / backlog.rate);
            spans += t.span_count() as u64;
            batch.push(t);
            n += 1;
        }
        let key = hex::encode(batch[0].trace_id);
        let timestamp_ms = (backlog.end_nanos(n - 1) / 1_000_000) as i64;
        let payload = generator.request(batch).encode_to_vec();
        send_at(producer, topic, &key, payload, Some(timestamp_ms)).await;
        messages += 1;
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flushing the producer")?;
    let failed = delivery.failed.load(Ordering::Relaxed);
    println!(
        "done: backlog of {} traces, {spans} spans, {messages} messages, stamped over {:.0} s, written in {:.1} s; {} delivered, {failed} failed",
        backlog.count,
        backlog.count as f64 / backlog.rate,
        started.elapsed().as_secs_f64(),
        delivery.ok.load(Ordering::Relaxed),
    );
    anyhow::ensure!(failed == 0, "{failed} messages were not delivered");
    Ok(())
}

/// Enqueues one message, waiting while librdkafka's queue is full.
async fn send(producer: &ThreadedProducer<Counting>, topic: &str, key: &str, payload: Vec<u8>) {
    send_at(producer, topic, key, payload, None).await
}

/// [`send`] with the message's timestamp (Unix milliseconds), when given.
async fn send_at(
    producer: &ThreadedProducer<Counting>,
    topic: &str,
    key: &str,
    payload: Vec<u8>,
    timestamp_ms: Option<i64>,
) {
    let size = Box::new(payload.len());
    let mut record = BaseRecord::with_opaque_to(topic, size)
        .key(key)
        .payload(&payload);
    if let Some(ts) = timestamp_ms {
        record = record.timestamp(ts);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => {
                eprintln!("producing failed: {e}");
                return;
            }
        }
    }
}
