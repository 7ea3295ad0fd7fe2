//! Faults injected into a running selector, each with what must hold after
//! it: nothing lost, nothing stored twice, and a clear answer. The catalog
//! faults run through a proxy of the tests' own in front of the REST
//! catalog ([`crate::harness::FaultProxy`]); a dead stage through a fault
//! hook of the `testkit` build; cross-site requests from reqwest and from a
//! page of another origin in headless Chromium.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{produce_seed_traces, CommitFault, FaultProxy, Seaweed, Selector};

fn unique_prefix(name: &str) -> String {
    format!("tss-it-{name}-{}:", uuid::Uuid::new_v4().simple())
}

/// A rule that would drop every trace for a day: what a cross-site attacker
/// would send.
fn drop_everything() -> String {
    json!({
        "duration_secs": 86400,
        "priority": 1000,
        "action": "force_drop",
        "match": {"span": [{"key": "name", "op": "regex", "value": ".*"}]}
    })
    .to_string()
}

async fn rule_count(s: &Selector) -> usize {
    let (status, list) = s.get("/admin/force-rules").await;
    assert_eq!(status, 200, "{list}");
    list["rules"].as_array().expect("rules").len()
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_requests_are_refused_and_change_nothing() {
    let prefix = unique_prefix("xsite");
    let s = Selector::start("xsite", &[("TSS__REDIS__KEY_PREFIX", prefix.as_str())]).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/admin/force-rules", s.admin);

    // The bodies a page can send without a preflight: text/plain and a form.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let r = http
            .post(&url)
            .header("content-type", content_type)
            .body(drop_everything())
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status().as_u16(), 415, "{content_type}");
        let body: Value = r.json().await.expect("json error");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("application/json")),
            "{body}"
        );
    }
    let r = http
        .post(format!("http://{}/admin/query", s.admin))
        .body(r#"{"sql":"SELECT 1"}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 415, "a body without a content type");
    assert_eq!(rule_count(&s).await, 0, "no refused request created a rule");

    // DNS rebinding: a name the attacker owns, pointed at 127.0.0.1.
    let r = http
        .post(format!("http://{}/admin/query", s.admin))
        .header("host", "evil.example")
        .json(&json!({"sql": "SELECT 1"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 403);
    let r = http
        .get(format!("http://{}/admin/force-rules", s.admin))
        .header("host", "evil.example:8080")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 403);
    // A foreign Origin, even with the right Host and a JSON body.
    let r = http
        .post(&url)
        .header("origin", "https://evil.example")
        .header("content-type", "application/json")
        .body(drop_everything())
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(rule_count(&s).await, 0);
    let m = s.metrics().await;
    let refused = |reason: &str| {
        m.get(&format!(
            "tail_sampling_admin_requests_refused_total{{reason=\"{reason}\"}}"
        ))
        .copied()
    };
    assert_eq!(
        (refused("content_type"), refused("host"), refused("origin")),
        (Some(4.0), Some(2.0), Some(1.0)),
        "every refusal counted by its reason"
    );

    // The selector's own origin and plain API clients are served, with the
    // security headers on every answer.
    let r = http
        .post(format!("http://{}/admin/query", s.admin))
        .header("origin", format!("http://{}", s.admin))
        .json(&json!({"sql": "SELECT 1 AS one"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 200);
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(
            r.headers().get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name}"
        );
    }
    let r = http
        .get(format!(
            "http://localhost:{}/health",
            s.admin.rsplit(':').next().expect("port")
        ))
        .send()
        .await
        .expect("GET");
    assert!(r.headers().contains_key("x-frame-options"));
    let page = http
        .get(format!("http://{}/", s.admin))
        .send()
        .await
        .expect("GET /");
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("script-src 'self'"),
        "the UI keeps its own policy: {csp}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_another_origin_cannot_create_a_rule() {
    let chromium = crate::ui::browser_prerequisites();
    let prefix = unique_prefix("xsite-browser");
    // No token: the admin API is on loopback, where a local browser reaches it.
    let s = Selector::start(
        "xsite-browser",
        &[("TSS__REDIS__KEY_PREFIX", prefix.as_str())],
    )
    .await;
    let admin = s.admin.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--test", "--test-reporter=spec", "cross_site.test.mjs"])
            .current_dir(crate::ui::browser_dir())
            .env("TSS_XS_URL", format!("http://{admin}"))
            .env("TSS_XS_RULE", drop_everything())
            .env("TSS_TEST_CHROMIUM", &chromium)
            .output()
    })
    .await
    .expect("join")
    .expect("node runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "browser test failed:\n{report}\nselector log:\n{}",
        s.log()
    );
    assert!(
        report.contains("fail 0") && !report.contains("pass 0"),
        "{report}"
    );
    assert_eq!(
        rule_count(&s).await,
        0,
        "the page's requests created no rule\n{report}"
    );
    assert!(
        s.log().contains("refused a cross-site request"),
        "the refusals are logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_stage_stops_the_process_non_zero_and_loses_nothing() {
    let prefix = unique_prefix("dead-writer");
    let mut s = Selector::start(
        "dead-writer",
        &[
            ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
            ("TSS_TESTKIT_FAULT", "writer_panic"),
        ],
    )
    .await;
    produce_seed_traces(&s.topic);
    let code = s.wait_exit(Duration::from_secs(90));
    let log = s.log();
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}\n{log}");
    assert!(
        log.contains("storage writer panicked: testkit fault writer_panic"),
        "{log}"
    );
    assert!(log.contains("a pipeline stage died"), "{log}");

    // Restarted without the fault, the same process stores every kept span
    // once: the dead writer's traces stayed uncommitted in Kafka.
    s.unset_env("TSS_TESTKIT_FAULT");
    s.restart().await;
    s.wait_exported(12.0).await;
    assert_eq!(s.count("SELECT count(*) FROM spans").await, 12);
    assert_eq!(
        s.count("SELECT count(*) FROM (SELECT DISTINCT trace_id, span_id FROM spans)")
            .await,
        12
    );
    let (status, live) = s.try_get("/health/live").await.expect("live answers");
    assert_eq!(status, 200, "{live}");
}

/// The settings of a selector on SeaweedFS's REST catalog, in a namespace of
/// its own, with the catalog reached through `proxy`.
fn rest_through(weed: &Seaweed, proxy: &FaultProxy, namespace: &str) -> Vec<(String, String)> {
    let mut settings = weed.rest_catalog(namespace);
    for (k, v) in settings.iter_mut() {
        if k == "TSS__STORAGE__ICEBERG__CATALOG_URI" {
            *v = proxy.uri();
        }
    }
    settings
}

/// Every span once, as SQL, pyiceberg and DuckDB read the table.
async fn assert_stored_once(s: &Selector, weed: &Seaweed, namespace: &str, total: i64) {
    assert_eq!(
        s.count("SELECT count(*) FROM spans").await,
        total,
        "{}",
        s.log()
    );
    assert_eq!(
        s.count("SELECT count(*) FROM (SELECT DISTINCT trace_id, span_id FROM spans)")
            .await,
        total
    );
    let read = crate::harness::run_python(
        &crate::harness::python_script("scan_table.py"),
        &weed.scan_args(&format!("{namespace}.spans")),
    );
    assert_eq!(
        (read["rows"].as_i64(), read["duckdb_rows"].as_i64()),
        (Some(total), Some(total)),
        "{read}"
    );
}

/// Waits until SQL counts `total` spans and the writer has nothing left to
/// retry, then a few flush intervals more, in which a duplicate would land.
async fn settle(s: &Selector, total: i64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let stored = s.count("SELECT count(*) FROM spans").await;
        let (_, health) = s.get("/health").await;
        if stored >= total && health["storage_writes"]["status"] == "ok" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} of {total} spans stored; health {health}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn writer_commits_of_unknown_outcome_store_every_span_once() {
    let weed = Seaweed::from_env();
    let proxy = FaultProxy::start(&weed.rest_uri).await;
    let namespace = format!("it_unknown_{}", uuid::Uuid::new_v4().simple());
    let prefix = unique_prefix("unknown-commit");
    let mut settings = rest_through(&weed, &proxy, &namespace);
    settings.push(("TSS__REDIS__KEY_PREFIX".into(), prefix));
    let s = Selector::start("unknown-commit", &crate::harness::pairs(&settings)).await;

    // The catalog takes the first commit, and the client hears 504. However
    // the traces fall into flushes, storing them takes at least that commit.
    proxy.set_fault(CommitFault::Answer504, 1);
    produce_seed_traces(&s.topic);
    settle(&s, 12).await;
    assert_eq!(
        proxy.faults_injected(),
        1,
        "commits seen: {}",
        proxy.commits_seen()
    );
    assert!(
        s.metric("tail_sampling_iceberg_commit_failures_total")
            .await
            >= 1.0
    );
    assert_stored_once(&s, &weed, &namespace, 12).await;

    // The catalog takes the next commit and the connection drops unanswered.
    proxy.set_fault(CommitFault::Drop, 1);
    produce_seed_traces(&s.topic);
    settle(&s, 24).await;
    assert_eq!(proxy.faults_injected(), 2);
    assert_stored_once(&s, &weed, &namespace, 24).await;

    // A commit that never gets an answer: the call times out (storage.iceberg.
    // request_timeout_secs, 30 s by default), and the retry stores it once.
    proxy.set_fault(CommitFault::Hang, 1);
    produce_seed_traces(&s.topic);
    settle(&s, 36).await;
    assert_eq!(proxy.faults_injected(), 3);
    // The HTTP client's timeout or the call's own bound ends it, whichever
    // fires first; either way the failed commit is logged and retried.
    let failures = s
        .log()
        .matches("iceberg commit failed; keeping the batch and retrying")
        .count();
    assert!(failures >= 3, "the timeout is logged\n{}", s.log());
    assert_stored_once(&s, &weed, &namespace, 36).await;
}

/// `tail-sampling-selector maintenance` through the proxy; its exit status
/// and everything it printed.
fn maintain_through(s: &Selector, proxy: &FaultProxy, extra: &[(&str, &str)]) -> (bool, String) {
    let out = s
        .command()
        .arg("maintenance")
        .env("TSS__STORAGE__ICEBERG__CATALOG_URI", proxy.uri())
        .env("TSS__MAINTENANCE__MIN_FILES_TO_COMPACT", "2")
        .envs(extra.iter().copied())
        .output()
        .expect("maintenance runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compaction_commit_of_unknown_outcome_deletes_nothing_live() {
    let weed = Seaweed::from_env();
    let proxy = FaultProxy::start(&weed.rest_uri).await;
    let namespace = format!("it_unknown_compact_{}", uuid::Uuid::new_v4().simple());
    let prefix = unique_prefix("unknown-compact");
    let mut settings = weed.rest_catalog(&namespace);
    settings.push(("TSS__REDIS__KEY_PREFIX".into(), prefix));
    let s = Selector::start("unknown-compact", &crate::harness::pairs(&settings)).await;
    const PER_ROUND: u64 = 100;
    let mut round = 0;
    let mut total = 0;
    // After the first compaction its one file, still small, joins the next
    // six in their size tier.
    for (fault, files, landed) in [
        (CommitFault::Answer504, 6, true),
        (CommitFault::Drop, 7, true),
        (CommitFault::Hang, 7, false),
    ] {
        // Six small files: one per append.
        for _ in 0..6 {
            crate::maintenance::send_round(&s, 900 + round, PER_ROUND).await;
            round += 1;
            total += (PER_ROUND * 3) as i64;
            s.wait_exported(total as f64).await;
        }
        proxy.set_fault(fault, 1);
        let (ok, text) = maintain_through(
            &s,
            &proxy,
            &[("TSS__STORAGE__ICEBERG__REQUEST_TIMEOUT_SECS", "3")],
        );
        assert_eq!(proxy.faults_injected(), round as usize / 6, "{text}");
        if landed {
            // The commit landed: a reload finds the snapshot, and the run
            // counts it as done.
            assert!(ok, "{fault:?}: {text}");
            assert!(text.contains("the commit landed"), "{fault:?}: {text}");
            assert!(
                text.contains(&format!("compaction: {files} files")),
                "{fault:?}: {text}"
            );
        } else {
            // Never answered and not in the table: an error, and the
            // rewritten files stay for orphan cleanup.
            assert!(!ok, "{text}");
            assert!(text.contains("commit state unknown"), "{text}");
            assert!(
                text.contains("left to orphan cleanup"),
                "{files} files: {text}"
            );
        }
        assert_stored_once(&s, &weed, &namespace, total).await;
    }
    // With the catalog answering again, the next run compacts.
    let (ok, text) = maintain_through(&s, &proxy, &[]);
    assert!(ok && text.contains("compaction: 7 files"), "{text}");
    assert_stored_once(&s, &weed, &namespace, total).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn results_past_max_result_bytes_are_refused_before_they_are_built() {
    let prefix = unique_prefix("big-result");
    let s = Selector::start(
        "big-result",
        &[
            ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
            ("TSS__QUERY__MAX_RESULT_BYTES", "1048576"),
        ],
    )
    .await;
    let before = crate::harness::rss_kib(s.pid());
    for sql in [
        // Built by one call, outside the memory pool: refused from its arguments.
        "SELECT repeat('x', 2000000000)",
        "SELECT lpad('x', 2000000000, 'y')",
        "SELECT rpad(CAST(value AS VARCHAR), 1000, '-') FROM generate_series(1, 5000)",
        "SELECT repeat('ab', CAST(value AS INT)) FROM generate_series(1, 2000)",
        // Wide rows under the row cap: refused as the result grows.
        "SELECT array_repeat('x', 1000) FROM generate_series(1, 5000)",
    ] {
        let started = Instant::now();
        let (status, body) = s.query_raw(sql).await;
        assert_eq!(status, 400, "{sql}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains("query.max_result_bytes"), "{sql}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{sql} took {:?}",
            started.elapsed()
        );
    }
    // A result under the cap is answered as before.
    let (status, body) = s.query_raw("SELECT repeat('x', 10) AS x").await;
    assert_eq!(
        (status, body["rows"][0][0].as_str()),
        (200, Some("xxxxxxxxxx")),
        "{body}"
    );
    let after = crate::harness::rss_kib(s.pid());
    assert!(
        after < before + 256 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

/// One message of `traces` × `spans_per_trace` error spans under one
/// resource of 64 attributes of 1 KiB (64 KiB); the first span of each
/// message also carries a 20 KiB attribute.
fn expanding_message(first_trace: u64, traces: u64, spans_per_trace: u64) -> Vec<u8> {
    use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span, Status};
    use prost::Message;
    use tail_sampling_selector::testkit::synth::{kv, request, ResourceDef};
    let start = crate::harness::now_nanos() - 1_000_000_000;
    let mut spans = Vec::new();
    for t in 0..traces {
        let trace_id = crate::harness::random_trace_id(first_trace + t).to_vec();
        for n in 0..spans_per_trace {
            spans.push(Span {
                trace_id: trace_id.clone(),
                span_id: (n + 1).to_be_bytes().to_vec(),
                name: "work".into(),
                start_time_unix_nano: start + n * 1_000,
                end_time_unix_nano: start + n * 1_000 + 500,
                status: Some(Status {
                    code: StatusCode::Error as i32,
                    message: String::new(),
                }),
                ..Default::default()
            });
        }
    }
    spans[0]
        .attributes
        .push(kv("payload", &"p".repeat(20 * 1024)));
    let mut req = request(vec![ResourceDef::new("expanding", spans)]);
    if let Some(resource) = req.resource_spans[0].resource.as_mut() {
        resource
            .attributes
            .extend((0..64).map(|a| kv(&format!("k8s.label.{a:02}"), &"l".repeat(1024))));
    }
    req.encode_to_vec()
}

/// 40,000 kept spans under 64 KiB of resource attributes, in four messages
/// of 0.7 MB: every row would repeat the 64 KiB (2.6 GB of Arrow strings).
/// With a count cap of 16 in this test, rows of 16 KiB are written in chunks
/// of `storage.flush_max_bytes`: every span is stored once, every row says
/// what was cut, the 20 KiB values are cut to the value cap, and the peak
/// RSS stays under the RSS at readiness plus the byte budget, the chunk size
/// and the fixed overhead the memory tests allow (librdkafka's buffers, the
/// Parquet writer's open row group, the allocator's slack).
#[tokio::test(flavor = "multi_thread")]
async fn rows_that_expand_are_capped_chunked_and_stored_once() {
    const MIB: u64 = 1 << 20;
    const BUDGET: u64 = 16 * MIB;
    const CHUNK: u64 = 8 * MIB;
    const OVERHEAD: u64 = 160 * MIB;
    const MESSAGES: u64 = 4;
    const TRACES: u64 = 100;
    const SPANS: u64 = 100;
    let prefix = unique_prefix("expanding");
    let (budget, chunk) = (BUDGET.to_string(), CHUNK.to_string());
    let s = Selector::start(
        "expanding",
        &[
            ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
            ("TSS__BUFFER__MAX_BUFFERED_BYTES", &budget),
            ("TSS__STORAGE__FLUSH_MAX_BYTES", &chunk),
            ("TSS__STORAGE__ATTRIBUTE_MAX_COUNT", "16"),
        ],
    )
    .await;
    let ready_kib = crate::harness::rss_kib(s.pid());
    let producer = crate::harness::producer();
    for m in 0..MESSAGES {
        let first = 700_000_000 + m * TRACES;
        let payload = expanding_message(first, TRACES, SPANS);
        assert!(payload.len() < 900_000, "{} bytes", payload.len());
        crate::harness::send(&producer, &s.topic, &format!("m{m}"), &payload).await;
    }
    let total = (MESSAGES * TRACES * SPANS) as i64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while s
        .metric("tail_sampling_spans_exported_total{sink=\"iceberg\"}")
        .await
        < total as f64
    {
        assert!(Instant::now() < deadline, "not stored in time\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let peak_kib = crate::harness::peak_rss_kib(s.pid());
    assert_eq!(s.count("SELECT count(*) FROM spans").await, total);
    assert_eq!(
        s.count("SELECT count(*) FROM (SELECT DISTINCT trace_id, span_id FROM spans)")
            .await,
        total
    );
    assert_eq!(
        s.count(
            "SELECT count(*) FROM spans WHERE span_attributes['tss.truncated'] = 'resource_attributes' \
             AND cardinality(resource_attributes) = 16 \
             AND resource_attributes['service.name'] = 'expanding'"
        )
        .await,
        total - MESSAGES as i64,
        "every other row lost resource attributes to the count cap, service.name kept"
    );
    assert_eq!(
        s.count(
            "SELECT count(*) FROM spans \
             WHERE span_attributes['tss.truncated'] = 'resource_attributes,span_attributes' \
             AND length(span_attributes['payload']) = 16384"
        )
        .await,
        MESSAGES as i64,
        "the 20 KiB values were cut to the 16 KiB cap"
    );
    let metrics = s.metrics().await;
    let truncated = |limit: &str| {
        metrics
            .get(&format!(
                "tail_sampling_attributes_truncated_total{{limit=\"{limit}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(truncated("value_bytes"), MESSAGES as f64);
    // 64 labels + deployment.environment + service.name = 66, cut to 16.
    assert_eq!(truncated("count"), (total * 50) as f64);
    let bound_kib = ready_kib + (BUDGET + CHUNK + OVERHEAD) / 1024;
    println!(
        "expanding rows: ready {} MiB, peak {} MiB, bound {} MiB",
        ready_kib / 1024,
        peak_kib / 1024,
        bound_kib / 1024
    );
    assert!(
        peak_kib < bound_kib,
        "peak RSS {peak_kib} KiB over {bound_kib} KiB"
    );
}

/// One span of trace `seed` as one message: the OK root, or its ERROR child.
fn backlog_span(seed: u64, child: bool, start_ms: i64) -> Vec<u8> {
    use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span, Status};
    use prost::Message;
    use tail_sampling_selector::testkit::synth::{request, ResourceDef};
    let code = if child {
        StatusCode::Error
    } else {
        StatusCode::Ok
    };
    let start = start_ms as u64 * 1_000_000;
    let span = Span {
        trace_id: crate::harness::random_trace_id(seed).to_vec(),
        span_id: [1 + u8::from(child); 8].to_vec(),
        parent_span_id: if child { [1; 8].to_vec() } else { vec![] },
        name: if child { "charge" } else { "checkout" }.into(),
        start_time_unix_nano: start,
        end_time_unix_nano: start + 5_000_000,
        status: Some(Status {
            code: code as i32,
            message: String::new(),
        }),
        ..Default::default()
    };
    request(vec![ResourceDef::new("stalls", vec![span])]).encode_to_vec()
}

/// Produces a backlog of `traces` traces, numbered `seed`, `seed + 1`…
/// and keyed by the trace ids those numbers seed, one every 20 ms of stream
/// time from 10 minutes ago: a message `root(n, ms)` and, `gap_ms` later, a
/// message `child(n, ms)`, stamped and sent in stream-time order.
async fn produce_backlog(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    (seed, traces): (u64, u64),
    gap_ms: i64,
    root: impl Fn(u64, i64) -> Vec<u8>,
    child: impl Fn(u64, i64) -> Vec<u8>,
) {
    let base_ms = (crate::harness::now_nanos() / 1_000_000) as i64 - 600_000;
    let mut messages: Vec<(i64, String, Vec<u8>)> = Vec::new();
    for t in 0..traces {
        let n = seed + t;
        let key = hex::encode(crate::harness::random_trace_id(n));
        let root_ms = base_ms + 20 * t as i64;
        messages.push((root_ms, key.clone(), root(n, root_ms)));
        messages.push((root_ms + gap_ms, key, child(n, root_ms + gap_ms)));
    }
    messages.sort_by_key(|m| m.0);
    for chunk in messages.chunks(2_000) {
        let sends = chunk
            .iter()
            .map(|(ts, key, payload)| crate::harness::send_at(producer, topic, key, payload, *ts));
        futures::future::join_all(sends).await;
    }
}

/// A backlog of 20,000 traces over 400 s of stream time, each an OK root and,
/// 20 s of stream time later, an ERROR child in another message of the same
/// partition (30 s inactivity timeout), drained while Redis is paused for
/// 2.5 s at a time (`CLIENT PAUSE 2500 ALL`), which stalls the workers and
/// so the consumer. A partition that merely went silent must not count as
/// idle while it has messages left to read, and stream time must not run
/// ahead of what the workers have taken: while they stall, their channels
/// fill with more than 10 s of stream time that the consumer has read. Every
/// trace is kept whole, in one decision, and no late error span is dropped.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_drained_through_redis_stalls_keeps_every_trace_whole() {
    const TRACES: u64 = 20_000;
    const SEED: u64 = 800_000_000;
    let redis = crate::harness::OwnRedis::start();
    let topic = format!("tss-it-stalls-{}", uuid::Uuid::new_v4().simple());
    crate::harness::create_topic(&topic, 2).await;
    let producer = crate::harness::producer();
    produce_backlog(
        &producer,
        &topic,
        (SEED, TRACES),
        20_000,
        |n, ms| backlog_span(n, false, ms),
        |n, ms| backlog_span(n, true, ms),
    )
    .await;

    let redis_url = redis.url();
    let mut s = Selector::launch(
        &topic,
        &[
            ("TSS__REDIS__URL", redis_url.as_str()),
            ("TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS", "30"),
        ],
    );
    // Pause Redis again and again while the backlog drains.
    let port = redis.port.to_string();
    let pauses = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1_500));
        for _ in 0..10 {
            let paused = Command::new("redis-cli")
                .args(["-p", &port, "CLIENT", "PAUSE", "2500", "ALL"])
                .output()
                .expect("redis-cli must be installed with redis-server");
            assert!(paused.status.success(), "{paused:?}");
            std::thread::sleep(Duration::from_millis(3_000));
        }
    });
    s.wait_ready().await;
    let total = (2 * TRACES) as f64;
    s.wait_metric(
        "tail_sampling_spans_exported_total{sink=\"iceberg\"}",
        total,
        Duration::from_secs(300),
    )
    .await;
    pauses.join().expect("the pauses ran");
    // Late spans still in flight would land within a few flush intervals.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let m = s.metrics().await;
    let late = |d: &str| {
        m.get(&format!(
            "tail_sampling_late_spans_total{{decision=\"{d}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert_eq!(
        (late("dropped"), late("kept")),
        (0.0, 0.0),
        "no span arrived after its trace was decided\n{}",
        s.log()
    );
    assert_eq!(s.count("SELECT count(*) FROM spans").await, total as i64);
    assert_eq!(
        s.count(
            "SELECT count(*) FROM (SELECT trace_id FROM spans GROUP BY trace_id \
             HAVING count(*) = 2 AND count(DISTINCT sampled_at) = 1)"
        )
        .await,
        TRACES as i64,
        "every trace whole, from one decision"
    );
    s.kill();
}

/// `count` spans of one message under service `service`: each its own
/// trace (`distinct_traces`) or all of trace `seed`, named `name-{n}`.
fn many_spans(seed: u64, first: u64, count: u64, service: &str, error: bool) -> Vec<u8> {
    use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span, Status};
    use prost::Message;
    use tail_sampling_selector::testkit::synth::{request, ResourceDef};
    let start = crate::harness::now_nanos() - 1_000_000_000;
    let spans = (first..first + count)
        .map(|n| Span {
            trace_id: crate::harness::random_trace_id(if error { seed } else { seed + n }).to_vec(),
            span_id: (n + 1).to_be_bytes().to_vec(),
            name: format!("name-{n}"),
            start_time_unix_nano: start + n,
            end_time_unix_nano: start + n + 1_000,
            status: Some(Status {
                code: if error {
                    StatusCode::Error
                } else {
                    StatusCode::Ok
                } as i32,
                message: String::new(),
            }),
            ..Default::default()
        })
        .collect();
    request(vec![ResourceDef::new(service, spans)]).encode_to_vec()
}

/// What input can make the selector hold, each with a clear answer and a
/// bounded resident set: a trace of 1,000,000 spans looked up and searched
/// under a row cap of 500 (both marked truncated), 100,000 distinct span
/// names under `metrics.max_series` = 1,000 (the series stop at the limit,
/// the rest count as overflow), and 10,000 force-rule creates against
/// `rules.max_rules` = 1,000 (the rest get 409).
#[tokio::test(flavor = "multi_thread")]
async fn input_that_grows_memory_gets_capped_answers() {
    use futures::StreamExt;
    const HUGE: u64 = 1_000_000;
    const NAMES: u64 = 100_000;
    const RULES: usize = 10_000;
    const MAX_RULES: usize = 1_000;
    const SEED: u64 = 900_000_000;
    const BUFFER_BYTES: u64 = 128 << 20;
    const POOL_BYTES: u64 = 256 << 20;
    let prefix = unique_prefix("grows");
    let (buffer, pool) = (BUFFER_BYTES.to_string(), POOL_BYTES.to_string());
    let max_rules = MAX_RULES.to_string();
    let s = Selector::start(
        "grows",
        &[
            ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
            ("TSS__QUERY__MAX_ROWS", "500"),
            ("TSS__QUERY__MAX_MEMORY_BYTES", pool.as_str()),
            ("TSS__METRICS__MAX_SERIES", "1000"),
            ("TSS__RULES__MAX_RULES", max_rules.as_str()),
            ("TSS__SAMPLING__MAX_SPANS_PER_TRACE", "50000"),
            ("TSS__BUFFER__MAX_BUFFERED_BYTES", buffer.as_str()),
        ],
    )
    .await;
    let ready_kib = crate::harness::rss_kib(s.pid());
    let producer = crate::harness::producer();
    let key = hex::encode(crate::harness::random_trace_id(SEED));
    for part in 0..HUGE / 10_000 {
        let payload = many_spans(SEED, part * 10_000, 10_000, "huge", true);
        crate::harness::send(&producer, &s.topic, &key, &payload).await;
    }
    for part in 0..NAMES / 10_000 {
        let payload = many_spans(SEED + 1, part * 10_000, 10_000, "names", false);
        crate::harness::send(&producer, &s.topic, &format!("n{part}"), &payload).await;
    }
    s.wait_metric(
        "tail_sampling_spans_exported_total{sink=\"iceberg\"}",
        HUGE as f64,
        Duration::from_secs(600),
    )
    .await;

    let (status, trace) = s.get(&format!("/admin/traces/{key}")).await;
    assert_eq!(status, 200, "{trace}");
    assert_eq!(trace["span_count"], 500);
    assert_eq!(trace["truncated"], true);
    let (status, found) = s.get("/admin/traces?service=huge").await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["count"], 1, "{found}");
    assert_eq!(found["truncated"], true, "{found}");

    // Every span was read (the RED metrics count dropped spans too) ...
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = reqwest::get(format!("http://{}/metrics", s.metrics))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let series = text
            .lines()
            .filter(|l| l.starts_with("tail_sampling_span_calls_total{"))
            .count();
        assert!(series <= 1_001, "{series} series past metrics.max_series");
        let overflow = s
            .metric("tail_sampling_span_metrics_overflow_spans_total")
            .await;
        if overflow >= (HUGE + NAMES - 1_000) as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "overflow counted {overflow}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // ... and force rules stop at rules.max_rules.
    let http = reqwest::Client::new();
    let url = format!("http://{}/admin/force-rules", s.admin);
    let statuses: Vec<(u16, Value)> = futures::stream::iter(0..RULES)
        .map(|n| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let rule = json!({
                    "duration_secs": 600,
                    "action": "force_keep",
                    "match": {"span": [{"key": "name", "op": "eq", "value": format!("never-{n}")}]}
                });
                let r = http.post(&url).json(&rule).send().await.expect("POST");
                let status = r.status().as_u16();
                (status, r.json().await.expect("json"))
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let created = statuses.iter().filter(|(st, _)| *st == 201).count();
    let refused: Vec<&Value> = statuses
        .iter()
        .filter(|(st, _)| *st == 409)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(
        (created, refused.len()),
        (MAX_RULES, RULES - MAX_RULES),
        "every create answered 201 or 409"
    );
    assert!(
        refused.iter().all(|body| body["error"]
            .as_str()
            .is_some_and(|e| e.contains("rules.max_rules"))),
        "{:?}",
        refused.first()
    );
    assert_eq!(rule_count(&s).await, MAX_RULES);

    // Bounded: what the process held over its whole run stays within the
    // buffer's byte budget, the query pool and a margin for the runtime,
    // the Parquet writer's buffers and the allocator.
    let peak_kib = crate::harness::peak_rss_kib(s.pid());
    let bound_kib = ready_kib + (BUFFER_BYTES + POOL_BYTES) / 1024 + 512 * 1024;
    println!(
        "grows: spans={HUGE} names={NAMES} rule_creates={RULES} ready_kib={ready_kib} peak_kib={peak_kib} bound_kib={bound_kib}"
    );
    assert!(
        peak_kib <= bound_kib,
        "peak RSS {peak_kib} KiB past {bound_kib} KiB\n{}",
        s.metrics_summary().await
    );
}

/// The compact buffer's second read against a broker that hangs, then
/// drops its connections. A backlog of 20,000 traces (an OK root and, 1 s
/// of stream time later, a child; every fourth child an ERROR, so 5,000
/// traces are kept) is drained from a broker of the test's own behind a TCP
/// proxy. As the consumer reaches the end, before the last kept traces are
/// read again, the proxy hangs for 25 s: long enough that a reader taking
/// a hung broker's silence for a start inside the last record batch would
/// rewind until their messages counted as gone. Then it drops every
/// connection, twice. Every kept trace is stored whole, once, and the
/// readers counted the fault as errors to retry.
#[tokio::test(flavor = "multi_thread")]
async fn the_second_read_rides_out_a_broker_that_hangs_and_drops_its_connections() {
    const TRACES: u64 = 20_000;
    const KEPT: i64 = (TRACES / 4) as i64;
    const SEED: u64 = 900_000_000;
    let broker = crate::harness::FaultyBroker::start().await;
    let brokers = broker.brokers();
    let topic = format!("tss-it-hung-broker-{}", uuid::Uuid::new_v4().simple());
    crate::harness::create_topic_at(&brokers, &topic, 2).await;
    let producer = crate::harness::producer_at(&brokers);
    // SEED is a multiple of 4: every fourth trace has an ERROR child.
    produce_backlog(
        &producer,
        &topic,
        (SEED, TRACES),
        1_000,
        |n, ms| backlog_span(n, false, ms),
        |n, ms| hung_broker_child(n, n % 4 == 0, ms),
    )
    .await;

    let mut s = Selector::launch(
        &topic,
        &[
            ("TSS__KAFKA__BROKERS", brokers.as_str()),
            ("TSS__KAFKA__TOPIC_PARTITIONS", "2"),
            // The hang must not end the consumer's group session.
            ("TSS__KAFKA__SESSION_TIMEOUT_MS", "45000"),
            ("TSS__BUFFER__MODE", "compact"),
            ("TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS", "10"),
        ],
    );
    s.wait_ready().await;
    let consumed = "tail_sampling_messages_consumed_total";
    s.wait_metric(consumed, (2 * TRACES) as f64, Duration::from_secs(120))
        .await;
    broker.proxy.set(crate::harness::TcpFault::Hang);
    let before = s.metrics().await;
    tokio::time::sleep(Duration::from_secs(25)).await;
    broker.proxy.set(crate::harness::TcpFault::Forward);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        broker.proxy.drop_connections();
    }
    let stored = "tail_sampling_spans_exported_total{sink=\"iceberg\"}";
    let spans = 2 * KEPT;
    s.wait_metric(stored, spans as f64, Duration::from_secs(180))
        .await;
    let m = s.metrics().await;
    let get =
        |m: &std::collections::HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let reread = "tail_sampling_reread_traces_total";
    assert!(
        get(&before, reread) < KEPT as f64,
        "the hang began before every kept trace was read again: {} of {KEPT}",
        get(&before, reread)
    );
    assert_eq!(
        get(&m, "tail_sampling_reread_spans_missing_total"),
        0.0,
        "{}",
        s.log()
    );
    assert!(
        get(&m, "tail_sampling_reread_errors_total") > 0.0,
        "the readers met the hang as errors\n{}",
        s.log()
    );
    assert_eq!(s.count("SELECT count(*) FROM spans").await, spans);
    assert_eq!(
        s.count(
            "SELECT count(*) FROM (SELECT trace_id FROM spans GROUP BY trace_id \
             HAVING count(*) = 2 AND count(DISTINCT span_id) = 2)"
        )
        .await,
        KEPT,
        "every kept trace whole, each span once"
    );
    s.kill();
}

/// A backlog child span, an ERROR when `error`.
fn hung_broker_child(seed: u64, error: bool, start_ms: i64) -> Vec<u8> {
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    use opentelemetry_proto::tonic::trace::v1::TracesData;
    use prost::Message;
    let bytes = backlog_span(seed, true, start_ms);
    if error {
        return bytes;
    }
    let mut request = TracesData::decode(bytes.as_slice()).expect("our own encoding");
    for rs in &mut request.resource_spans {
        for ss in &mut rs.scope_spans {
            for span in &mut ss.spans {
                if let Some(status) = span.status.as_mut() {
                    status.code = StatusCode::Ok as i32;
                }
            }
        }
    }
    request.encode_to_vec()
}
