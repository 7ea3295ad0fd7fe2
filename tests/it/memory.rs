//! Memory stays bounded by the configured limits, whatever the input.

use std::time::{Duration, Instant};

use prost::Message;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tail_sampling_selector::testkit::synth::{self, kv, ResourceDef, TraceSpec};

use crate::harness::{brokers, create_topic, now_nanos, peak_rss_kib, rss_kib, trace_id, Selector};

const MIB: u64 = 1 << 20;
/// Trace-id seeds of this module: decisions live in the shared Redis, so the
/// ids must not meet another test's.
const SEEDS: u64 = 500_000_000;

/// One trace of one span carrying a 1 MiB attribute, as one message.
fn big_trace(seed: u64) -> Vec<u8> {
    let mut spans = synth::trace(&TraceSpec {
        trace_id: trace_id(seed),
        service: "big".into(),
        spans: 1,
        error: false,
        start_unix_nano: now_nanos() - 5_000_000,
        duration_ms: 5,
    });
    let filler: String = (0..MIB).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    spans[0].attributes.push(kv("payload", &filler));
    synth::request(vec![ResourceDef::new("big", spans)]).encode_to_vec()
}

/// Writes `count` traces of 1 MiB to a new topic, uncompressed, as the
/// Collector's Kafka exporter does by default.
async fn fill(topic: &str, count: u64) {
    create_topic(topic, 4).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("message.max.bytes", (4 * MIB).to_string())
        .set("message.timeout.ms", "120000")
        .create()
        .expect("producer");
    for chunk in (0..count).collect::<Vec<_>>().chunks(50) {
        let messages: Vec<_> = chunk
            .iter()
            .map(|n| (hex::encode(trace_id(SEEDS + n)), big_trace(SEEDS + n)))
            .collect();
        let sends = messages.iter().map(|(key, payload)| {
            producer.send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(120),
            )
        });
        for sent in futures::future::join_all(sends).await {
            sent.map_err(|(e, _)| e).expect("producing a 1 MiB trace");
        }
    }
}

/// A backlog of 2,000 traces of 1 MiB spans (2 GiB, as after an outage) is
/// drained by a selector whose byte limit is 32 MiB. Each trace stays open
/// for the 2 s inactivity timeout, so without the limit the selector would
/// hold what it reads in 2 s (about 50 MiB from the local broker, far more
/// from a real one); with it, the consumer pauses at the limit, and the
/// peak RSS stays under the RSS at readiness plus the limit plus a fixed
/// overhead (librdkafka's prefetch queue, capped at 16 MiB here, its fetch
/// buffers and the allocator's slack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bytes_bound_memory_with_large_spans() {
    const TRACES: u64 = 2_000;
    const LIMIT: u64 = 32 * MIB;
    const OVERHEAD: u64 = 160 * MIB;
    let topic = format!("tss-it-membytes-{}", uuid::Uuid::new_v4().simple());
    fill(&topic, TRACES).await;
    let limit = LIMIT.to_string();
    let s = Selector::start_on(
        &topic,
        &[
            ("TSS__BUFFER__MAX_BUFFERED_BYTES", &limit),
            // The budget of held messages: in the spans mode every open
            // trace's spans keep their message. A compact buffer keeps no
            // message and need not pause here (peak RSS 117 MiB measured,
            // well inside the bound), so the test pins the mode.
            ("TSS__BUFFER__MODE", "spans"),
            ("TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS", "2"),
            (
                "TSS__KAFKA__PROPERTIES__QUEUED_MAX_MESSAGES_KBYTES",
                "16384",
            ),
        ],
    )
    .await;
    let ready_kib = rss_kib(s.pid());
    let (mut max_held_bytes, mut paused) = (0.0f64, false);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let m = s.metrics().await;
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        max_held_bytes = max_held_bytes.max(get("tail_sampling_held_bytes"));
        paused |= get("tail_sampling_consumer_paused") == 1.0;
        let consumed = get("tail_sampling_messages_consumed_total");
        if consumed >= TRACES as f64 && get("tail_sampling_held_bytes") == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{consumed} of {TRACES} messages handled in time\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak_kib = peak_rss_kib(s.pid());
    drop(s);
    // A broker that keeps topics in memory may give the 2 GiB back.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let _ = admin
        .delete_topics(&[topic.as_str()], &AdminOptions::new())
        .await;
    let bound_kib = ready_kib + (LIMIT + OVERHEAD) / 1024;
    println!(
        "memory: ready {} MiB, peak {} MiB, bound {} MiB, largest held {:.0} MiB",
        ready_kib / 1024,
        peak_kib / 1024,
        bound_kib / 1024,
        max_held_bytes / MIB as f64
    );
    assert!(
        paused,
        "a 2 GiB backlog through a 32 MiB limit must pause the consumer"
    );
    assert!(
        max_held_bytes <= (LIMIT + 17 * MIB) as f64,
        "held {max_held_bytes} bytes"
    );
    assert!(
        peak_kib < bound_kib,
        "peak RSS {peak_kib} KiB over {bound_kib} KiB"
    );
}
