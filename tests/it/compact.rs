//! The compact buffer (`buffer.mode = "compact"`) against the spans mode on
//! the same traffic: two selectors in groups of their own read one topic
//! of seeded load-generator traces, and keep the same traces, for the same
//! reasons, with every span. The rest of the suite runs in compact mode
//! too: `scripts/test.sh` runs the modules that touch decisions, durability
//! and policies again with `TSS_TEST_BUFFER_MODE=compact`.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{load_generator, now_nanos, Selector, CONFIG_FILE};

/// Every kind of condition the sketches must answer: a root name and a
/// trace field together, a resource and a span condition on one span,
/// trace aggregates, a sampled span condition; then the errors, latency
/// and baseline steps. No step depends on the clock, so both selectors
/// must agree trace by trace.
const POLICIES: &str = r#"
[sampling]
baseline_sample_rate = 0.05
latency_threshold_ms = 1500

[[sampling.policies]]
name = "drop-quick-mobile"
match = { trace = [{ key = "trace.root.name", op = "eq", value = "GET /v1/products" }, { key = "trace.duration_ms", op = "lt", value = 45 }] }
action = "drop"

[[sampling.policies]]
name = "payment-errors"
match = { resource = [{ key = "service.name", op = "eq", value = "payments" }], span = [{ key = "status_code", op = "eq", value = "ERROR" }] }
action = "keep"

[[sampling.policies]]
name = "big-and-slow"
match = { trace = [{ key = "trace.span_count", op = "gte", value = 9 }, { key = "trace.duration_ms", op = "gte", value = 600 }] }
action = "keep"

[[sampling.policies]]
name = "slow-clients"
match = { span = [{ key = "kind", op = "eq", value = "CLIENT" }, { key = "duration_ms", op = "gte", value = 400 }] }
action = "sample"
rate = 0.5
"#;

/// Kept traces as `(trace id, reason, rule or policy, spans)`.
async fn kept(s: &Selector) -> BTreeSet<(String, String, String, i64)> {
    let body = s
        .query(
            "SELECT trace_id, sampling_reason, coalesce(sampling_rule_id, ''), count(*) \
             FROM spans GROUP BY 1, 2, 3",
        )
        .await;
    body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r: &Value| {
            (
                r[0].as_str().unwrap_or_default().to_string(),
                r[1].as_str().unwrap_or_default().to_string(),
                r[2].as_str().unwrap_or_default().to_string(),
                r[3].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits until `traces` traces are decided and nothing is held.
async fn wait_decided(s: &Selector, traces: f64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = s.metrics().await;
        let decided: f64 = m
            .iter()
            .filter(|(k, _)| {
                k.starts_with("tail_sampling_traces_sampled_total{")
                    || *k == "tail_sampling_traces_dropped_total"
            })
            .map(|(_, v)| v)
            .sum();
        let held = m.get("tail_sampling_held_spans").copied().unwrap_or(1.0);
        if decided >= traces && held == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{decided} of {traces} traces decided, {held} spans held\n{}",
            s.metrics_summary().await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn force_keep_slow_mobile(s: &Selector) -> String {
    let r = reqwest::Client::new()
        .post(format!("http://{}/admin/force-rules", s.admin))
        .json(&json!({
            "description": "slow mobile product lists",
            "duration_secs": 600,
            "priority": 10,
            "match": {
                "resource": [{"key": "service.name", "op": "eq", "value": "mobile-api"}],
                "trace": [{"key": "trace.duration_ms", "op": "gte", "value": 52}]
            },
            "action": "force_keep"
        }))
        .send()
        .await
        .expect("POST rule");
    assert_eq!(r.status().as_u16(), 201, "rule refused");
    let body: Value = r.json().await.expect("rule json");
    body["id"].as_str().expect("rule id").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn both_buffer_modes_keep_the_same_traces_for_the_same_reasons_with_every_span() {
    compare_modes(&[], &[]).await;
}

/// The same on traffic as services instrumented with an SDK send it: each
/// service exports its ended spans every second, so a trace's spans come in
/// several messages, between other traces' messages, and the second read
/// must gather them from all. The inactivity timeout (8 s) outlasts any
/// demo trace (under 3 s) plus the export interval, so no trace is split.
#[tokio::test(flavor = "multi_thread")]
async fn both_buffer_modes_agree_on_traces_whose_spans_come_in_several_messages() {
    let m = compare_modes(
        &["--export-interval-ms", "1000"],
        &[("TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS", "8")],
    )
    .await;
    let (traces, decoded) = (
        m["tail_sampling_reread_traces_total"],
        m["tail_sampling_reread_messages_decoded_total"],
    );
    assert!(
        decoded > 1.5 * traces,
        "{decoded} messages decoded again for {traces} kept traces: the traces did not span messages"
    );
    assert!(
        m["tail_sampling_messages_consumed_total"] > 2.0 * 1500.0,
        "the load generator sent each trace whole"
    );
}

/// Runs both modes on one topic of 1,500 seeded load-generator traces sent
/// with `loadgen` arguments, the selectors configured with `env` too, and
/// returns the compact selector's metrics.
async fn compare_modes(loadgen: &[&str], env: &[(&str, &str)]) -> HashMap<String, f64> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("tss-it-modes-{run}");
    let dir = std::env::temp_dir().join(format!("tss-it-modes-{run}"));
    std::fs::create_dir_all(&dir).expect("config dir");
    let file = dir.join("policies.toml");
    std::fs::write(&file, POLICIES).expect("write policies");
    let file = file.to_str().expect("path").to_string();
    let start = |mode: &'static str| {
        let (topic, file, run) = (topic.clone(), file.clone(), run.clone());
        async move {
            let group = format!("tss-it-modes-{mode}-{run}");
            let prefix = format!("tss-it-modes-{mode}-{run}:");
            let mut settings = vec![
                (CONFIG_FILE, file.as_str()),
                ("TSS__BUFFER__MODE", mode),
                ("TSS__KAFKA__GROUP_ID", group.as_str()),
                ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
            ];
            settings.extend_from_slice(env);
            Selector::start_on(&topic, &settings).await
        }
    };
    let spans = start("spans").await;
    let compact = start("compact").await;
    // Rule ids are the rule's own; the reason and the span count compare.
    force_keep_slow_mobile(&spans).await;
    force_keep_slow_mobile(&compact).await;
    // The rules reach the workers within the contract's 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let seed = (now_nanos() % 1_000_000_000).to_string();
    let mut args = vec![
        "--seed",
        &seed,
        "--rate",
        "300",
        "--count",
        "1500",
        "--partitions",
        "4",
    ];
    args.extend_from_slice(loadgen);
    let out = load_generator(&topic, &args);
    assert!(out.contains("0 failed"), "{out}");
    wait_decided(&spans, 1500.0).await;
    wait_decided(&compact, 1500.0).await;

    let strip_rule = |set: BTreeSet<(String, String, String, i64)>| -> BTreeSet<_> {
        set.into_iter()
            .map(|(id, reason, rule, n)| {
                let rule = if reason == "force_rule" {
                    String::new()
                } else {
                    rule
                };
                (id, reason, rule, n)
            })
            .collect()
    };
    let (a, b) = (
        strip_rule(kept(&spans).await),
        strip_rule(kept(&compact).await),
    );
    let reasons: BTreeSet<&str> = a.iter().map(|(_, r, _, _)| r.as_str()).collect();
    let count = |reason: &str| a.iter().filter(|(_, r, _, _)| r == reason).count();
    println!(
        "kept by reason: {:?}",
        reasons.iter().map(|r| (*r, count(r))).collect::<Vec<_>>()
    );
    println!(
        "spans mode kept {} traces, compact mode {}; reasons {reasons:?}",
        a.len(),
        b.len()
    );
    let only_spans: Vec<_> = a.difference(&b).take(10).collect();
    let only_compact: Vec<_> = b.difference(&a).take(10).collect();
    if a != b {
        let log = compact.log();
        let reread: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("reread") || l.contains("re-read") || l.contains("second read"))
            .take(20)
            .collect();
        panic!(
            "the modes disagree: only in the spans mode {only_spans:?}, only in compact mode {only_compact:?}\n{}\n{reread:#?}",
            compact.metrics_summary().await
        );
    }

    for reason in ["force_rule", "policy", "baseline"] {
        assert!(
            reasons.contains(reason),
            "no trace kept for `{reason}`: the comparison would not cover it ({reasons:?})"
        );
    }
    let m = compact.metrics().await;
    let reread = m["tail_sampling_reread_traces_total"];
    assert!(
        reread >= a.len() as f64,
        "{reread} traces re-read for {} kept",
        a.len()
    );
    assert_eq!(m["tail_sampling_reread_spans_missing_total"], 0.0);
    assert!(m["tail_sampling_reread_messages_decoded_total"] > 0.0);
    let in_spans_mode = spans.metrics().await;
    assert_eq!(
        in_spans_mode["tail_sampling_reread_traces_total"], 0.0,
        "the spans mode reads nothing twice"
    );
    m
}
