//! The hot path on one core, with no Kafka and no I/O: decode → buffer →
//! decide → Arrow encoding of the kept spans, over pre-encoded OTLP messages
//! of realistic size (about 70 spans per message, 8 to 15 attributes per
//! span). Prints spans/s for the whole path and for decoding alone, and the
//! memory a buffered span costs next to its encoded size; then the whole
//! path again with ten sampling policies and the RED metrics on, against
//! the same path without them.
//!
//!   cargo bench --bench hot_path            # or: -- --messages 4000 --rounds 7

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use prost::Message;
use tail_sampling_selector::ack::OffsetTracker;
use tail_sampling_selector::config::Settings;
use tail_sampling_selector::decide::completion::{CompletionLimits, TraceBuffer};
use tail_sampling_selector::decide::sketch::Watch;
use tail_sampling_selector::handoff::KeptTrace;
use tail_sampling_selector::metrics::red::{RedRecorder, RedSeries};
use tail_sampling_selector::model::MsgRef;
use tail_sampling_selector::otlp::decode::decode_message;
use tail_sampling_selector::storage::rows::SpanRows;
use tail_sampling_selector::table::schema::table_schema;
use tail_sampling_selector::testkit::loadgen::{Scenario, TraceGenerator};
use tail_sampling_selector::{decide::policy::PolicySet, matching::NoForceRules, model::Decision};

/// Counts live heap bytes, to measure what buffered spans cost.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MAX_MESSAGE_BYTES: usize = 16 << 20;
const FLUSH_ROWS: usize = 50_000;

struct Options {
    messages: usize,
    traces_per_message: usize,
    rounds: usize,
}

fn options() -> Options {
    let mut o = Options {
        messages: 2_000,
        traces_per_message: 9,
        rounds: 5,
    };
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        let n = w[1].parse().unwrap_or(0);
        match w[0].as_str() {
            "--messages" if n > 0 => o.messages = n,
            "--traces-per-message" if n > 0 => o.traces_per_message = n,
            "--rounds" if n > 0 => o.rounds = n,
            _ => {}
        }
    }
    o
}

fn messages(o: &Options) -> Vec<Vec<u8>> {
    let mut g = TraceGenerator::new(Scenario::demo(), 11);
    let end = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    (0..o.messages)
        .map(|_| {
            let traces = (0..o.traces_per_message)
                .map(|_| {
                    let root = g.pick_root();
                    g.trace(root, end, 0.0)
                })
                .collect();
            g.request(traces).encode_to_vec()
        })
        .collect()
}

/// Decoding alone: spans per second.
fn decode_only(msgs: &[Vec<u8>]) -> (usize, Duration) {
    let started = Instant::now();
    let mut spans = 0;
    for m in msgs {
        // The consumer copies each payload out of librdkafka's buffer too.
        let decoded =
            decode_message(Bytes::copy_from_slice(m), MAX_MESSAGE_BYTES).expect("decodes");
        spans += decoded.spans.len();
        std::hint::black_box(&decoded);
    }
    (spans, started.elapsed())
}

/// Decoding alone, but every decoded message is kept until the end, as the
/// buffer keeps them: the same work over memory that is not reused while
/// hot. The gap to `decode_only` is what holding the working set costs.
fn decode_held(msgs: &[Vec<u8>]) -> (usize, Duration) {
    let started = Instant::now();
    let mut held = Vec::with_capacity(msgs.len());
    let mut spans = 0;
    for m in msgs {
        let decoded =
            decode_message(Bytes::copy_from_slice(m), MAX_MESSAGE_BYTES).expect("decodes");
        spans += decoded.spans.len();
        held.push(decoded);
    }
    let elapsed = started.elapsed();
    std::hint::black_box(held);
    (spans, elapsed)
}

struct FullRound {
    spans: usize,
    kept_spans: usize,
    elapsed: Duration,
    /// decode + buffer, expire, decide (and drop), Arrow encoding.
    phases: [Duration; 4],
    buffered_heap_bytes: isize,
    buffered_spans: usize,
}

/// Ten policies as a team might write them: drops and keeps on service,
/// operation and trace fields, a span attribute, a regex, samples, a rate
/// limit and a dynamic sampler at the end that every other trace reaches.
/// With the errors and a baseline of 8% after them, as the plain run has.
const TEN_POLICIES: &str = r#"
[sampling]
baseline_sample_rate = 0.08
[[sampling.policies]]
name = "drop-health"
match = { trace = [{ key = "trace.root.name", op = "eq", value = "GET /healthz" }] }
action = "drop"
[[sampling.policies]]
name = "keep-errors"
match = { trace = [{ key = "trace.has_error", op = "eq", value = true }] }
action = "keep"
[[sampling.policies]]
name = "keep-slow"
match = { trace = [{ key = "trace.duration_ms", op = "gte", value = 2000 }] }
action = "keep"
[[sampling.policies]]
name = "keep-big"
match = { trace = [{ key = "trace.span_count", op = "gte", value = 200 }] }
action = "keep"
[[sampling.policies]]
name = "drop-internal"
match = { resource = [{ key = "deployment.environment", op = "eq", value = "internal" }] }
action = "drop"
[[sampling.policies]]
name = "payments-500"
match = { resource = [{ key = "service.name", op = "eq", value = "payments" }], span = [{ key = "http.response.status_code", op = "gte", value = 500 }] }
action = "keep"
[[sampling.policies]]
name = "admin-routes"
match = { span = [{ key = "name", op = "regex", value = "^(GET|POST) /admin" }] }
action = "keep"
[[sampling.policies]]
name = "mobile-tenth"
match = { trace = [{ key = "trace.root.name", op = "starts_with", value = "GET /v1/" }] }
action = "sample"
rate = 0.1
[[sampling.policies]]
name = "checkout-limit"
match = { resource = [{ key = "service.name", op = "eq", value = "checkout" }], span = [{ key = "kind", op = "eq", value = "CLIENT" }] }
action = "rate_limit"
traces_per_sec = 100
[[sampling.policies]]
name = "per-endpoint"
action = "dynamic"
goal_rate = 0.08
key_fields = ["trace.root.name", "trace.has_error"]
# A round lasts tens of milliseconds: adjust within it, as a live one would
# have long since adjusted.
adjustment_interval_secs = 0.1
"#;

/// The same ten, with the conditions that read span or resource bytes (the
/// regex on span names, the attribute lookups) replaced by conditions on
/// what the ingest scan already read (service, name, kind, status).
fn ten_field_policies() -> PolicySet {
    let toml = TEN_POLICIES
        .replace(
            r#"{ key = "deployment.environment", op = "eq", value = "internal" }"#,
            r#"{ key = "service.name", op = "eq", value = "internal" }"#,
        )
        .replace(
            r#"{ key = "http.response.status_code", op = "gte", value = 500 }"#,
            r#"{ key = "status_code", op = "eq", value = "ERROR" }"#,
        )
        .replace(
            r#"{ key = "name", op = "regex", value = "^(GET|POST) /admin" }"#,
            r#"{ key = "name", op = "eq", value = "GET /admin" }"#,
        );
    policy_set(&toml)
}

fn ten_policies() -> PolicySet {
    policy_set(TEN_POLICIES)
}

fn policy_set(toml: &str) -> PolicySet {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("policies.toml");
    std::fs::write(&path, toml).expect("write");
    let settings = Settings::load_with_env(Some(&path), std::iter::empty()).expect("ten policies");
    let set = PolicySet::build(&settings.sampling, None).expect("compile");
    assert_eq!(set.len(), 10);
    set
}

/// The whole path, as one worker runs it; `red` records RED metrics of
/// every decided trace, as workers do.
fn full_path(
    msgs: &[Vec<u8>],
    policies: &PolicySet,
    arrow: &Arc<datafusion::arrow::datatypes::Schema>,
    red: Option<&mut RedRecorder>,
) -> FullRound {
    run_path(msgs, policies, arrow, red, false)
}

/// The whole path with the compact buffer: traces are held as sketches,
/// and the spans of kept traces are decoded again from the messages that
/// fed them (here from memory, as a broker serves them from its page
/// cache), which counts in the decide phase.
fn compact_path(
    msgs: &[Vec<u8>],
    policies: &PolicySet,
    arrow: &Arc<datafusion::arrow::datatypes::Schema>,
) -> FullRound {
    run_path(msgs, policies, arrow, None, true)
}

fn run_path(
    msgs: &[Vec<u8>],
    policies: &PolicySet,
    arrow: &Arc<datafusion::arrow::datatypes::Schema>,
    mut red: Option<&mut RedRecorder>,
    compact: bool,
) -> FullRound {
    let limits = CompletionLimits {
        inactivity_timeout: Duration::from_secs(60),
        max_trace_duration: Duration::from_secs(300),
        max_spans_per_trace: 10_000,
    };
    let tracker = Arc::new(OffsetTracker::new());
    let heap_before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let now = Instant::now();
    let mut buffer = if compact {
        let (matches, keys) = policies.watched();
        TraceBuffer::compact(limits, Arc::new(Watch::new(matches, keys)))
    } else {
        TraceBuffer::new(limits)
    };
    let mut due = Vec::new();
    let mut spans = 0;
    for (offset, m) in msgs.iter().enumerate() {
        let msg = MsgRef {
            partition: 0,
            offset: offset as i64,
            epoch: 1,
        };
        let decoded =
            decode_message(Bytes::copy_from_slice(m), MAX_MESSAGE_BYTES).expect("decodes");
        spans += decoded.spans.len();
        let mut tickets = tracker.receive(msg, m.len(), 0, [decoded.spans.len()].into_iter());
        let ticket = tickets.pop().expect("one share");
        buffer.push_message(decoded.spans, ticket, now, &mut due);
    }
    let pushed = started.elapsed();
    let buffered_heap_bytes = LIVE.load(Ordering::Relaxed) - heap_before;
    let buffered_spans = buffer.span_count();

    let resumed = Instant::now();
    buffer.expire(
        now + limits.inactivity_timeout + Duration::from_secs(1),
        &mut due,
    );
    let expired = resumed.elapsed();
    let decided_at = SystemTime::now();
    let mut kept = Vec::new();
    for trace in due {
        if let Some(r) = red.as_deref_mut() {
            r.record(&trace.spans);
        }
        match policies.decide_facts(&trace.trace_id, trace.facts().get(), &NoForceRules) {
            Decision::Drop => trace.hold.settle(),
            Decision::Keep {
                reason,
                rule_id,
                sample_rate,
            } => kept.push(KeptTrace {
                trace_id: trace.trace_id,
                spans: trace.spans,
                spans_in_kafka: 0,
                charge: None,
                sample_rate,
                reason,
                rule_id,
                hold: trace.hold,
                decided_at,
            }),
        }
    }
    if let Some(r) = red {
        r.flush();
    }
    if compact {
        reread(msgs, &mut kept);
    }
    let decided = resumed.elapsed() - expired;
    let encoding = Instant::now();
    // Batches of about FLUSH_ROWS spans, each sized up front as the writer does.
    let mut kept_spans = 0;
    let mut first = 0;
    while first < kept.len() {
        let mut end = first;
        let mut rows_in_batch = 0;
        while end < kept.len() && rows_in_batch < FLUSH_ROWS {
            rows_in_batch += kept[end].spans.len();
            end += 1;
        }
        let batch_traces = &kept[first..end];
        let mut rows = SpanRows::for_traces(batch_traces);
        for trace in batch_traces {
            rows.push_trace(trace, |_| false);
        }
        kept_spans += rows.len();
        std::hint::black_box(rows.into_batch(arrow.clone()).expect("batch"));
        first = end;
    }
    for trace in kept {
        trace.hold.settle();
    }
    std::hint::black_box(tracker.take_commits());
    let encoded = encoding.elapsed();
    FullRound {
        spans,
        kept_spans,
        phases: [pushed, expired, decided, encoded],
        elapsed: pushed + resumed.elapsed(),
        buffered_heap_bytes,
        buffered_spans,
    }
}

/// The compact buffer's second pass: each message that fed a kept trace is
/// decoded once more, and the spans of kept traces are picked out of it.
fn reread(msgs: &[Vec<u8>], kept: &mut [KeptTrace]) {
    let index: HashMap<[u8; 16], usize> = kept
        .iter()
        .enumerate()
        .map(|(i, t)| (t.trace_id, i))
        .collect();
    let mut offsets: Vec<i64> = kept
        .iter()
        .flat_map(|t| t.hold.msgs().iter().map(|m| m.offset))
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    for offset in offsets {
        let m = &msgs[offset as usize];
        let decoded =
            decode_message(Bytes::copy_from_slice(m), MAX_MESSAGE_BYTES).expect("decodes");
        for (id, span) in decoded.spans {
            if let Some(&i) = index.get(&id) {
                kept[i].spans.push(span);
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let o = options();
    let msgs = messages(&o);
    let encoded: usize = msgs.iter().map(Vec::len).sum();
    let spans_per_round = decode_only(&msgs).0;
    println!(
        "input: {} messages, {} spans ({:.1} spans/message, {:.0} bytes/span encoded, {:.1} MB)",
        msgs.len(),
        spans_per_round,
        spans_per_round as f64 / msgs.len() as f64,
        encoded as f64 / spans_per_round as f64,
        encoded as f64 / 1e6
    );
    // Errors (about 2% of traces here) plus an 8% baseline: about 10% kept.
    let policies = PolicySet::new(true, 5_000.0, 0.08);
    let arrow = Arc::new(
        iceberg::arrow::schema_to_arrow_schema(&table_schema().expect("schema"))
            .expect("arrow schema"),
    );

    let mut decode_rates = Vec::new();
    let mut held_rates = Vec::new();
    let mut full_rates = Vec::new();
    let mut last = None;
    for _ in 0..o.rounds {
        let (n, t) = decode_only(&msgs);
        decode_rates.push(n as f64 / t.as_secs_f64());
        let (n, t) = decode_held(&msgs);
        held_rates.push(n as f64 / t.as_secs_f64());
        let r = full_path(&msgs, &policies, &arrow, None);
        full_rates.push(r.spans as f64 / r.elapsed.as_secs_f64());
        last = Some(r);
    }
    // The same path with ten policies and RED metrics, rounds interleaved
    // with plain ones so that both see the same machine.
    let ten = ten_policies();
    let overflow = prometheus::IntCounter::new("overflow", "overflow").expect("counter");
    let series = Arc::new(RedSeries::new(5000, overflow).expect("series"));
    let mut red = RedRecorder::new(series.clone());
    // Warm-up: the dynamic sampler learns its keys' rates.
    for _ in 0..3 {
        full_path(&msgs, &ten, &arrow, Some(&mut red));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mut plain_rates, mut policy_rates) = (Vec::new(), Vec::new());
    let mut kept_with_policies = 0.0;
    for _ in 0..o.rounds {
        let r = full_path(&msgs, &policies, &arrow, None);
        plain_rates.push(r.spans as f64 / r.elapsed.as_secs_f64());
        let r = full_path(&msgs, &ten, &arrow, Some(&mut red));
        policy_rates.push(r.spans as f64 / r.elapsed.as_secs_f64());
        kept_with_policies = 100.0 * r.kept_spans as f64 / r.spans as f64;
    }
    // The compact buffer against the same path, rounds interleaved.
    let (mut same_rates, mut compact_rates) = (Vec::new(), Vec::new());
    let mut compact_last = None;
    for _ in 0..o.rounds {
        let r = full_path(&msgs, &policies, &arrow, None);
        same_rates.push(r.spans as f64 / r.elapsed.as_secs_f64());
        let c = compact_path(&msgs, &policies, &arrow);
        compact_rates.push(c.spans as f64 / c.elapsed.as_secs_f64());
        assert_eq!(
            (c.spans, c.kept_spans),
            (r.spans, r.kept_spans),
            "both buffers keep the same spans"
        );
        compact_last = Some(c);
    }
    let Some(r) = last else { return };
    let decode = median(decode_rates);
    let held = median(held_rates);
    let full = median(full_rates);
    println!(
        "decode only:  {:>12.0} spans/s (one core, median of {} rounds)",
        decode, o.rounds
    );
    println!(
        "decode, held: {:>12.0} spans/s (decode only, every message kept until the end)",
        held
    );
    println!(
        "full path:    {:>12.0} spans/s (decode → buffer → decide → Arrow, {:.1}% of spans kept)",
        full,
        100.0 * r.kept_spans as f64 / r.spans as f64
    );
    println!(
        "ratio:        {:>12.1}% of decode-only throughput",
        100.0 * full / decode
    );
    println!(
        "              {:>12.1}% of decode-held throughput",
        100.0 * full / held
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "last round:   decode+buffer {:.1} ms, expire {:.1} ms, decide+drop {:.1} ms, Arrow encoding of kept {:.1} ms",
        ms(r.phases[0]),
        ms(r.phases[1]),
        ms(r.phases[2]),
        ms(r.phases[3])
    );
    let (plain, with) = (median(plain_rates), median(policy_rates));
    println!(
        "policies:     {:>12.0} spans/s with ten policies and RED metrics ({:.1}% of spans kept, {} RED series), {:.0} spans/s without",
        with,
        kept_with_policies,
        series.series_count(),
        plain
    );
    println!(
        "              {:>12.1}% of the throughput without them (goal: at least 85%)",
        100.0 * with / plain
    );
    // Each on its own, to tell their costs apart.
    let (mut red_only, mut policies_only) = (Vec::new(), Vec::new());
    for _ in 0..o.rounds {
        let r = full_path(&msgs, &policies, &arrow, Some(&mut red));
        red_only.push(r.spans as f64 / r.elapsed.as_secs_f64());
        let r = full_path(&msgs, &ten, &arrow, None);
        policies_only.push(r.spans as f64 / r.elapsed.as_secs_f64());
    }
    let fields = ten_field_policies();
    for _ in 0..3 {
        full_path(&msgs, &fields, &arrow, Some(&mut red));
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut field_rates = Vec::new();
    for _ in 0..o.rounds {
        let r = full_path(&msgs, &fields, &arrow, Some(&mut red));
        field_rates.push(r.spans as f64 / r.elapsed.as_secs_f64());
    }
    println!(
        "              RED metrics alone {:.1}%, ten policies alone {:.1}%; ten policies on fields only (no regex, no attribute) with RED {:.1}% of the throughput without them",
        100.0 * median(red_only) / plain,
        100.0 * median(policies_only) / plain,
        100.0 * median(field_rates) / plain
    );
    let per_span = r.buffered_heap_bytes as f64 / r.buffered_spans as f64;
    let encoded_per_span = encoded as f64 / spans_per_round as f64;
    println!(
        "buffered:     {:>12.0} bytes/span in memory for {:.0} bytes/span encoded ({:.2}× the encoded size, {} spans held)",
        per_span,
        encoded_per_span,
        per_span / encoded_per_span,
        r.buffered_spans
    );
    let Some(c) = compact_last else { return };
    // With the ten policies the sketches keep root names, key values and
    // which span conditions held.
    let ten_compact = compact_path(&msgs, &ten, &arrow);
    let ten_spans = full_path(&msgs, &ten, &arrow, None);
    let compact_per_span = c.buffered_heap_bytes as f64 / c.buffered_spans as f64;
    println!(
        "compact:      {:>12.0} bytes/span in memory with buffer.mode = \"compact\" ({:.1}× less, {} spans held)",
        compact_per_span,
        per_span / compact_per_span,
        c.buffered_spans
    );
    let per = |r: &FullRound| r.buffered_heap_bytes as f64 / r.buffered_spans as f64;
    println!(
        "              {:>12.0} bytes/span in compact mode with the ten policies ({:.0} in the spans mode)",
        per(&ten_compact),
        per(&ten_spans)
    );
    let (same, compact) = (median(same_rates), median(compact_rates));
    println!(
        "              {:>12.0} spans/s full path in compact mode, kept spans decoded again ({:.1}% of {:.0} spans/s in spans mode)",
        compact,
        100.0 * compact / same,
        same
    );
    println!(
        "              last round: decode+sketch {:.1} ms, expire {:.1} ms, decide+re-read {:.1} ms, Arrow encoding of kept {:.1} ms",
        ms(c.phases[0]),
        ms(c.phases[1]),
        ms(c.phases[2]),
        ms(c.phases[3])
    );
}
