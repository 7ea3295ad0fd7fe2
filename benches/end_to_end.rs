//! The whole pipeline against the local broker, in one run:
//!
//! 1. fills a fresh topic with `--spans` spans of the demo scenario, one
//!    trace per message keyed by trace id (as the Collector's Kafka exporter
//!    writes them), about 10% of traces to be kept;
//! 2. drains it with a plain rdkafka consumer that does nothing (the baseline);
//! 3. drains it with the selector (the release binary) and compares the rates,
//!    and reports the selector's peak RSS;
//! 4. sends live traffic plus probe traces and measures, per probe, the time
//!    from its last span being produced to its rows being visible in SQL.
//!
//! The selector runs with a 2 s inactivity timeout and a 2 s flush interval
//! (`--inactivity-secs`, `--flush-secs`), started and read through the
//! integration tests' harness. Needs the local stack (`scripts/stack.sh up`):
//!
//!   cargo bench --bench end_to_end -- --spans 2000000
//!
//! `TSS_TEST_BUFFER_MODE=compact` runs every selector of the bench with
//! `buffer.mode = "compact"`; the drain line is then followed by the rate
//! to the last kept trace stored, which counts the second read.
//!
//! `--backlog-secs N` makes the topic a backlog instead: every trace and
//! message stamped as if produced over the last N seconds, drained with the
//! default inactivity timeout (60 s) and the default buffer limit, as after
//! an outage; phase 4 is skipped:
//!
//!   cargo bench --bench end_to_end -- --spans 3000000 --backlog-secs 1800
//!
//! `--sinks` drains the topic a second time, in a group of its own, with the
//! sampled topic and an OTLP/HTTP forwarder on (to a receiver in this
//! process that counts spans), and reports that drain rate against the plain
//! consumer's and the forwarder's throughput; phase 4 is skipped:
//!
//!   cargo bench --bench end_to_end -- --spans 1000000 --sinks
//!
//! `--recovery` then measures a recovery job over the whole filled range
//! (a condition matching the slow checkout traces the live path dropped):
//! its read rate against the plain consumer's, and the probe latency of
//! live traffic before and while it runs:
//!
//!   cargo bench --bench end_to_end -- --spans 3000000 --recovery

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tail_sampling_selector::testkit::loadgen::{Scenario, TraceGenerator};
use tail_sampling_selector::testkit::synth::{self, ResourceDef, TraceSpec};

#[path = "../tests/it/harness.rs"]
mod harness;

use harness::{now_nanos, Selector};

struct Options {
    spans: u64,
    brokers: String,
    redis: String,
    inactivity_secs: f64,
    flush_secs: f64,
    /// Stamp the topic as the traffic of the last N seconds.
    backlog_secs: Option<f64>,
    /// Drain again with the sampled topic and a forwarder on.
    sinks: bool,
    /// Then run a recovery job over the filled range.
    recovery: bool,
}

fn options() -> Options {
    let mut o = Options {
        spans: 2_000_000,
        brokers: std::env::var("TSS_BENCH_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        redis: std::env::var("TSS_BENCH_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        inactivity_secs: 2.0,
        flush_secs: 2.0,
        backlog_secs: None,
        sinks: false,
        recovery: false,
    };
    let args: Vec<String> = std::env::args().collect();
    o.sinks = args.iter().any(|a| a == "--sinks");
    o.recovery = args.iter().any(|a| a == "--recovery");
    for w in args.windows(2) {
        match w[0].as_str() {
            "--spans" => o.spans = w[1].parse().unwrap_or(o.spans),
            "--brokers" => o.brokers = w[1].clone(),
            "--inactivity-secs" => o.inactivity_secs = w[1].parse().unwrap_or(o.inactivity_secs),
            "--flush-secs" => o.flush_secs = w[1].parse().unwrap_or(o.flush_secs),
            "--backlog-secs" => o.backlog_secs = w[1].parse().ok(),
            _ => {}
        }
    }
    o
}

#[derive(Default)]
struct Delivered(AtomicU64);
struct Ctx(Arc<Delivered>);
impl ClientContext for Ctx {}
impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if r.is_ok() {
            self.0 .0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn producer(brokers: &str) -> (ThreadedProducer<Ctx>, Arc<Delivered>) {
    let delivered = Arc::new(Delivered::default());
    let p = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", "lz4")
        .create_with_context(Ctx(delivered.clone()))
        .expect("producer");
    (p, delivered)
}

fn send(p: &ThreadedProducer<Ctx>, topic: &str, key: &str, payload: &[u8]) {
    send_at(p, topic, key, payload, None)
}

/// [`send`] with the message's timestamp (Unix milliseconds), when given.
fn send_at(
    p: &ThreadedProducer<Ctx>,
    topic: &str,
    key: &str,
    payload: &[u8],
    timestamp: Option<i64>,
) {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    if let Some(ts) = timestamp {
        record = record.timestamp(ts);
    }
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => panic!("producing: {e}"),
        }
    }
}

/// Phase 1: returns (messages, spans).
fn fill(o: &Options, topic: &str) -> (u64, u64) {
    let (p, _) = producer(&o.brokers);
    let mut g = TraceGenerator::new(Scenario::demo(), 5);
    let (mut messages, mut spans) = (0u64, 0u64);
    let started = Instant::now();
    let now = now_nanos();
    while spans < o.spans {
        let root = g.pick_root();
        // A backlog spreads the traces evenly over its period, by progress.
        let end = match o.backlog_secs {
            Some(secs) => now - ((1.0 - spans as f64 / o.spans as f64) * secs * 1e9) as u64,
            None => now_nanos(),
        };
        let t = g.trace(root, end, 0.0);
        spans += t.span_count() as u64;
        let key = hex::encode(t.trace_id);
        let timestamp = o.backlog_secs.map(|_| (end / 1_000_000) as i64);
        send_at(
            &p,
            topic,
            &key,
            &g.request(vec![t]).encode_to_vec(),
            timestamp,
        );
        messages += 1;
    }
    p.flush(Duration::from_secs(120)).expect("flush");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fill:      {messages} messages, {spans} spans in {secs:.1} s ({:.0} spans/s produced)",
        spans as f64 / secs
    );
    (messages, spans)
}

/// Phase 2: a consumer that only counts. Returns messages/s.
async fn baseline(o: &Options, topic: &str, messages: u64) -> f64 {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &o.brokers)
        .set("group.id", format!("{topic}-baseline"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let mut n = 0u64;
    let mut first = None;
    while n < messages {
        let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .expect("no message for 30 s")
            .expect("consume");
        first.get_or_insert_with(Instant::now);
        std::hint::black_box(m);
        n += 1;
    }
    let secs = first.map_or(1e-9, |f: Instant| f.elapsed().as_secs_f64());
    let rate = n as f64 / secs;
    println!("baseline:  plain rdkafka consumer drained {n} messages in {secs:.2} s ({rate:.0} messages/s)");
    rate
}

fn peak_rss_mib(pid: u32) -> f64 {
    harness::peak_rss_kib(pid) as f64 / 1024.0
}

/// The release selector on `topic`, with the bench's timeouts, a buffer
/// large enough to drain a backlog and decisions of this run's own, plus
/// `extra` settings.
fn start_selector_with(o: &Options, topic: &str, extra: &[(&str, &str)]) -> Selector {
    let (inactivity, flush) = (o.inactivity_secs.to_string(), o.flush_secs.to_string());
    // The fill's traces are the same in every run: decisions a run before
    // left in Redis would make this run's decisions late spans of them.
    let prefix = format!("{topic}:");
    let mut settings = vec![
        ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
        ("TSS__KAFKA__BROKERS", o.brokers.as_str()),
        ("TSS__KAFKA__TOPIC_PARTITIONS", "8"),
        ("TSS__KAFKA__SESSION_TIMEOUT_MS", "45000"),
        ("TSS__REDIS__URL", o.redis.as_str()),
        ("TSS__SAMPLING__WORKERS", "0"),
        ("TSS__SAMPLING__BASELINE_SAMPLE_RATE", "0.08"),
        ("TSS__STORAGE__FLUSH_INTERVAL_SECS", flush.as_str()),
    ];
    if o.backlog_secs.is_none() {
        // Live mode: a short timeout, and a buffer that holds what the drain
        // of a freshly written topic opens within it.
        settings.push((
            "TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS",
            inactivity.as_str(),
        ));
        settings.push(("TSS__BUFFER__MAX_BUFFERED_SPANS", "4000000"));
    }
    // A backlog runs on the defaults: 60 s inactivity, 1,000,000 spans.
    settings.extend_from_slice(extra);
    Selector::launch(topic, &settings)
}

/// Phase 3: returns messages/s.
async fn selector_drain(s: &Selector, messages: u64, base: f64) -> f64 {
    let get = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let mut first = None;
    loop {
        let m = s.metrics().await;
        let consumed = get(&m, "tail_sampling_messages_consumed_total");
        if consumed > 0.0 && first.is_none() {
            first = Some((Instant::now(), consumed));
        }
        if consumed >= messages as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (t0, c0) = first.expect("consumption started");
    let secs = t0.elapsed().as_secs_f64();
    let rate = (messages as f64 - c0) / secs;
    let m = s.metrics().await;
    println!(
        "selector:  drained {messages} messages in {secs:.2} s ({rate:.0} messages/s, {:.0} spans/s), peak RSS {:.0} MiB so far",
        // Spans at the same share of the run as the messages counted.
        get(&m, "tail_sampling_spans_ingested_total") / messages as f64 * rate,
        peak_rss_mib(s.pid())
    );
    reread_caught_up(s, t0, messages as f64 - c0, base, &m).await;
    stored_after_drain(s, t0, messages as f64 - c0).await;
    rate
}

/// In compact mode, waits until the second read has handed on every trace
/// kept by the end of the drain, and prints the rate to that moment: the
/// drain with the re-reads of what it decided counted against it. Unlike
/// the rate to the last stored trace, it leaves out the last inactivity
/// timeout, which a plain consumer does not wait and the spans mode waits too.
async fn reread_caught_up(
    s: &Selector,
    t0: Instant,
    messages: f64,
    base: f64,
    at_drain: &HashMap<String, f64>,
) {
    let get = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    if std::env::var(harness::BUFFER_MODE).as_deref() != Ok("compact") {
        return;
    }
    // Taken again should the page at the drain's end lack the series.
    let mut kept = kept_traces(at_drain);
    while kept.is_none() {
        kept = kept_traces(&s.metrics().await);
    }
    let kept = kept.unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let m = s.metrics().await;
        let reread = get(&m, "tail_sampling_reread_traces_total");
        if reread >= kept || Instant::now() > deadline {
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "re-read:   the {kept:.0} traces kept by the end of the drain were read again {secs:.2} s after the drain began \
                 ({:.0} messages/s to there, {:.0}% of the plain consumer's rate; {reread:.0} re-read by then)",
                messages / secs,
                100.0 * messages / secs / base
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Traces kept so far, by every reason; `None` when the page has no such
/// series.
fn kept_traces(m: &HashMap<String, f64>) -> Option<f64> {
    let kept: Vec<f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with("tail_sampling_traces_sampled_total{"))
        .map(|(_, v)| *v)
        .collect();
    (!kept.is_empty()).then(|| kept.iter().sum())
}

/// Waits until nothing is held (every trace decided, every kept one
/// stored, its offsets committable) and prints the rate to that moment:
/// with `buffer.mode = "compact"` it counts the second read of the kept
/// traces, which the drain rate alone would not. Both modes wait out the
/// inactivity timeout and the last flush here.
async fn stored_after_drain(s: &Selector, t0: Instant, messages: f64) {
    let get = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(300);
    let m = loop {
        let m = s.metrics().await;
        if get(&m, "tail_sampling_held_spans") == 0.0 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "selector:  ...and every kept trace stored {secs:.2} s after the drain began ({:.0} messages/s to there)",
        messages / secs
    );
    let decoded = get(&m, "tail_sampling_reread_messages_decoded_total");
    if decoded > 0.0 {
        println!(
            "re-read:   {:.0} kept traces, {:.0} messages decoded again and {:.0} skipped, {:.1} MB fetched again, {:.0} spans missing, {:.0} consumers started",
            get(&m, "tail_sampling_reread_traces_total"),
            decoded,
            get(&m, "tail_sampling_reread_messages_skipped_total"),
            get(&m, "tail_sampling_reread_bytes_fetched_total") / 1e6,
            get(&m, "tail_sampling_reread_spans_missing_total"),
            get(&m, "tail_sampling_reread_consumer_starts_total"),
        );
    }
}

/// Phase 4: live traffic plus probes; returns the sorted probe latencies.
async fn decision_latency(o: &Options, s: &Selector, topic: &str) -> Vec<f64> {
    decision_latency_until(o, s, topic, Arc::default()).await
}

/// [`decision_latency`], with live traffic that stops after 30 s or once
/// `stop` is set, whichever comes first.
async fn decision_latency_until(
    o: &Options,
    s: &Selector,
    topic: &str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<f64> {
    let probes: Arc<std::sync::Mutex<Vec<(String, Instant)>>> = Arc::default();
    let sender = {
        let (brokers, topic, probes) = (o.brokers.clone(), topic.to_string(), probes.clone());
        std::thread::spawn(move || send_live(&brokers, &topic, &probes, &stop))
    };
    let mut visible: HashMap<String, f64> = HashMap::new();
    let deadline =
        Instant::now() + Duration::from_secs_f64(30.0 + o.inactivity_secs + o.flush_secs + 60.0);
    loop {
        let pending: Vec<String> = probes
            .lock()
            .map(|p| {
                p.iter()
                    .filter(|(id, _)| !visible.contains_key(id))
                    .map(|(id, _)| format!("'{id}'"))
                    .collect()
            })
            .unwrap_or_default();
        let done = sender.is_finished();
        if (done && pending.is_empty()) || Instant::now() > deadline {
            break;
        }
        if !pending.is_empty() {
            let sql = format!(
                "SELECT DISTINCT trace_id FROM spans WHERE trace_id IN ({})",
                pending.join(",")
            );
            let (_, body) = s.query_raw(&sql).await;
            let now = Instant::now();
            let sent: HashMap<String, Instant> = probes
                .lock()
                .map(|p| p.iter().cloned().collect())
                .unwrap_or_default();
            for row in body["rows"].as_array().into_iter().flatten() {
                if let Some((id, at)) = row[0]
                    .as_str()
                    .and_then(|id| sent.get(id).map(|at| (id, at)))
                {
                    visible
                        .entry(id.to_string())
                        .or_insert((now - *at).as_secs_f64());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = probes.lock().map(|p| p.len()).unwrap_or_default();
    let mut latencies: Vec<f64> = visible.into_values().collect();
    latencies.sort_by(f64::total_cmp);
    println!(
        "latency:   {} of {sent} probes visible in SQL",
        latencies.len()
    );
    latencies
}

/// 300 traces/s of demo traffic for 30 s, and an error probe trace every
/// 500 ms whose send time (after delivery) is recorded.
fn send_live(
    brokers: &str,
    topic: &str,
    probes: &std::sync::Mutex<Vec<(String, Instant)>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    let (p, _) = producer(brokers);
    let mut g = TraceGenerator::new(Scenario::demo(), 9);
    let started = Instant::now();
    let (mut sent, mut seq) = (0u64, 0u64);
    while started.elapsed() < Duration::from_secs(30) && !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * 300.0) as u64;
        while sent < due {
            let root = g.pick_root();
            let t = g.trace(root, now_nanos(), 0.0);
            send(
                &p,
                topic,
                &hex::encode(t.trace_id),
                &g.request(vec![t]).encode_to_vec(),
            );
            sent += 1;
        }
        if started.elapsed().as_millis() as u64 / 500 >= seq {
            seq += 1;
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&now_nanos().to_be_bytes());
            id[8..].copy_from_slice(&seq.to_be_bytes());
            let spans = synth::trace(&TraceSpec {
                trace_id: id,
                service: "probe".into(),
                spans: 3,
                error: true,
                start_unix_nano: now_nanos() - 20_000_000,
                duration_ms: 20,
            });
            let req = synth::request(vec![ResourceDef::new("probe", spans)]).encode_to_vec();
            send(&p, topic, &hex::encode(id), &req);
            p.flush(Duration::from_secs(10)).expect("flush");
            if let Ok(mut v) = probes.lock() {
                v.push((hex::encode(id), Instant::now()));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main]
async fn main() {
    let o = options();
    let topic = format!("tss-bench-{}", uuid::Uuid::new_v4().simple());
    let partitions = 8;
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &o.brokers)
            .create()
            .expect("admin");
    admin
        .create_topics(
            [&rdkafka::admin::NewTopic::new(
                &topic,
                partitions,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .expect("create topic");
    println!("topic {topic} ({partitions} partitions) on {}", o.brokers);
    let filled_from = (now_nanos() / 1_000_000) as i64;
    let (messages, _) = fill(&o, &topic);
    let filled_to = (now_nanos() / 1_000_000) as i64;
    let base = baseline(&o, &topic, messages).await;

    // The selector logs warnings only, so logging costs nothing measurable.
    std::env::set_var("TSS_TEST_RUST_LOG", "warn");
    // A recovery here reads as fast as it can: its rate is what is measured.
    let unthrottled = [
        ("TSS__RECOVERY__MAX_MESSAGES_PER_SEC", "10000000"),
        ("TSS__RECOVERY__MAX_BUFFERED_SPANS", "2000000"),
    ];
    let s = start_selector_with(&o, &topic, if o.recovery { &unthrottled } else { &[] });
    s.wait_ready().await;
    let rate = selector_drain(&s, messages, base).await;
    println!(
        "ratio:     selector drains at {:.0}% of the plain consumer's rate",
        100.0 * rate / base
    );

    if o.sinks {
        println!(
            "memory:    selector peak RSS {:.0} MiB",
            peak_rss_mib(s.pid())
        );
        drop(s);
        sinks_run(&o, &topic, messages, rate, base).await;
        return;
    }
    if o.backlog_secs.is_some() {
        println!(
            "memory:    selector peak RSS {:.0} MiB",
            peak_rss_mib(s.pid())
        );
        return;
    }
    if o.recovery {
        recovery_run(&o, &s, &topic, base, (filled_from, filled_to)).await;
        return;
    }
    let lat = decision_latency(&o, &s, &topic).await;
    let bound = o.inactivity_secs + o.flush_secs + 2.0;
    println!(
        "latency:   last span → visible in SQL: p50 {:.2} s, p99 {:.2} s, max {:.2} s (inactivity {} s + flush {} s + 2 s = {bound} s)",
        quantile(&lat, 0.5),
        quantile(&lat, 0.99),
        quantile(&lat, 1.0),
        o.inactivity_secs,
        o.flush_secs
    );
    println!(
        "memory:    selector peak RSS {:.0} MiB",
        peak_rss_mib(s.pid())
    );
}

/// The `--sinks` run: the same topic drained by a selector with the sampled
/// topic and a forwarder to an in-process OTLP/HTTP receiver.
/// Spans in one OTLP/HTTP protobuf request, gunzipped when the forwarder
/// compressed it (its default).
fn received_spans(headers: &axum::http::HeaderMap, body: &[u8]) -> u64 {
    use std::io::Read;
    let gzip = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let mut plain = Vec::new();
    let bytes = if gzip {
        if flate2::read::GzDecoder::new(body)
            .read_to_end(&mut plain)
            .is_err()
        {
            return 0;
        }
        plain.as_slice()
    } else {
        body
    };
    tail_sampling_selector::otlp::encode::count_spans(bytes).map_or(0, |n| n as u64)
}

async fn sinks_run(o: &Options, topic: &str, messages: u64, iceberg_rate: f64, base: f64) {
    use axum::routing::post;
    let received = Arc::new(AtomicU64::new(0));
    let window: Arc<std::sync::Mutex<Option<(Instant, Instant)>>> = Arc::default();
    let app = {
        let (received, window) = (received.clone(), window.clone());
        axum::Router::new().route(
            "/v1/traces",
            post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    let n = received_spans(&headers, &body);
                    received.fetch_add(n, Ordering::Relaxed);
                    if let Ok(mut w) = window.lock() {
                        let now = Instant::now();
                        *w = Some(w.map_or((now, now), |(first, _)| (first, now)));
                    }
                    ""
                },
            ),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sinks.toml");
    let id = uuid::Uuid::new_v4().simple().to_string();
    std::fs::write(
        &config,
        format!(
            "[sampled_topic]\nenabled = true\ntopic = \"tss-bench-sampled-{id}\"\n\n[[forward]]\nname = \"bench\"\nendpoint = \"http://127.0.0.1:{port}/v1/traces\"\ngroup_id = \"tss-bench-forward-{id}\"\nmax_spans_per_sec = 0\n"
        ),
    )
    .expect("config");
    let group = format!("{topic}-sinks");
    let file = config.display().to_string();
    let s = start_selector_with(
        o,
        topic,
        &[
            ("TSS__KAFKA__GROUP_ID", group.as_str()),
            (harness::CONFIG_FILE, file.as_str()),
        ],
    );
    s.wait_ready().await;
    let rate = selector_drain(&s, messages, base).await;
    println!(
        "sinks:     with the sampled topic and a forwarder the selector drains at {:.0}% of the plain consumer's rate ({:.0}% of its Iceberg-only rate)",
        100.0 * rate / base,
        100.0 * rate / iceberg_rate
    );
    // The forwarder is done once it has every span the topic took, and the
    // table has them all too.
    let mut steady = 0;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let m = s.metrics().await;
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        let topic_spans = get("tail_sampling_spans_exported_total{sink=\"sampled_topic\"}");
        let table_spans = get("tail_sampling_spans_exported_total{sink=\"iceberg\"}");
        let got = received.load(Ordering::Relaxed) as f64;
        assert!(
            Instant::now() < deadline,
            "the forwarder did not catch up: {got} spans received, the sampled topic took {topic_spans}, the table {table_spans}"
        );
        let done = topic_spans > 0.0 && got >= topic_spans && table_spans >= topic_spans;
        steady = if done { steady + 1 } else { 0 };
        if steady >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let got = received.load(Ordering::Relaxed);
    let secs = window
        .lock()
        .ok()
        .and_then(|w| *w)
        .map_or(0.0, |(first, last)| (last - first).as_secs_f64());
    println!(
        "forward:   {got} spans to the local OTLP/HTTP receiver in {secs:.2} s ({:.0} spans/s, gzip, batches of 8192)",
        got as f64 / secs.max(1e-9)
    );
    println!(
        "memory:    selector with sinks peak RSS {:.0} MiB",
        peak_rss_mib(s.pid())
    );
}

/// The `--recovery` run: live latency without a recovery, then a recovery
/// over the filled range with live traffic beside it until it ends.
async fn recovery_run(o: &Options, s: &Selector, topic: &str, base: f64, (from, to): (i64, i64)) {
    let summary = |lat: &[f64]| {
        format!(
            "p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} probes)",
            quantile(lat, 0.5),
            quantile(lat, 0.99),
            quantile(lat, 1.0),
            lat.len()
        )
    };
    let without = decision_latency(o, s, topic).await;
    println!(
        "live:      without a recovery, last span → visible in SQL: {}",
        summary(&without)
    );
    // Slow checkout traces (every 50th is 10× slower) that the live path
    // dropped: under the 5 s latency threshold and not sampled.
    let body = serde_json::json!({
        "from": from.to_string(), "to": to.to_string(),
        "match": {"resource": [{"key": "service.name", "op": "eq", "value": "frontend"}],
                  "trace": [{"key": "trace.duration_ms", "op": "gt", "value": 500}]},
    });
    let http = reqwest::Client::new();
    let started: serde_json::Value = http
        .post(format!("http://{}/admin/recoveries", s.admin))
        .json(&body)
        .send()
        .await
        .expect("POST /admin/recoveries")
        .json()
        .await
        .expect("JSON");
    let id = started["id"].as_str().expect("a job id").to_string();
    // Live traffic from the moment the job reads until it ends.
    let report = loop {
        let (_, r) = s.get(&format!("/admin/recoveries/{id}")).await;
        if r["state"] != "planning" && r["state"] != "waiting" {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let live = decision_latency_until(o, s, topic, stop.clone());
    let watch = async {
        let mut r = report;
        while !["done", "failed", "cancelled"].contains(&r["state"].as_str().unwrap_or("")) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            r = s.get(&format!("/admin/recoveries/{id}")).await.1;
        }
        stop.store(true, Ordering::Relaxed);
        r
    };
    let (during, report) = tokio::join!(live, watch);
    assert_eq!(report["state"], "done", "{report}");
    // The reader's own rate (start of the read to its end), and the whole
    // job's (to the last trace stored).
    let rate = report["read_messages_per_sec"].as_f64().unwrap_or(0.0);
    let job_rate = report["messages_per_sec"].as_f64().unwrap_or(0.0);
    println!(
        "recovery:  read {} messages ({} MB) at {rate:.0} messages/s, {:.0}% of the plain consumer's rate \
         ({job_rate:.0} messages/s, {:.0}%, over the whole job); \
         {} traces scanned, {} matched, {} recovered ({} spans), {} already stored; offsets by {}",
        report["messages_read"],
        report["bytes_read"].as_u64().unwrap_or(0) / 1_000_000,
        100.0 * rate / base,
        100.0 * job_rate / base,
        report["traces_scanned"],
        report["traces_matched"],
        report["traces_recovered"],
        report["spans_recovered"],
        report["traces_already_stored"],
        report["offsets_found_by"],
    );
    println!(
        "live:      during the recovery, last span → visible in SQL: {}",
        summary(&during)
    );
    println!(
        "ratio:     live p99 during / without = {:.2}",
        quantile(&during, 0.99) / quantile(&without, 0.99)
    );
    println!(
        "memory:    selector peak RSS {:.0} MiB",
        peak_rss_mib(s.pid())
    );
}
