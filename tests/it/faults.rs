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

    // The catalog takes the first two commits, and the client hears 504.
    proxy.set_fault(CommitFault::Answer504, 2);
    produce_seed_traces(&s.topic);
    settle(&s, 12).await;
    assert_eq!(
        proxy.faults_injected(),
        2,
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
    assert_eq!(proxy.faults_injected(), 3);
    assert_stored_once(&s, &weed, &namespace, 24).await;

    // A commit that never gets an answer: the call times out (storage.iceberg.
    // request_timeout_secs, 30 s by default), and the retry stores it once.
    proxy.set_fault(CommitFault::Hang, 1);
    produce_seed_traces(&s.topic);
    settle(&s, 36).await;
    assert_eq!(proxy.faults_injected(), 4);
    assert!(
        s.log().contains("took longer than"),
        "the timeout is logged\n{}",
        s.log()
    );
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
