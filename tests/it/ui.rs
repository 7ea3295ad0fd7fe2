//! The web UI and the APIs behind it: trace search, the services list and
//! the pipeline overview over HTTP, then the UI itself in headless Chromium
//! driven by Playwright (`tests/browser/ui.test.mjs`), against a real
//! selector with stored traces.

use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use serde_json::Value;
use tail_sampling_selector::testkit::synth::{self, ResourceDef, TraceSpec};

use crate::harness::{
    brokers, now_nanos, produce_seed_traces_with, producer, random_trace_id, send, unique, Selector,
};

const TOKEN: &str = "ui-test-token";

async fn start(name: &str) -> Selector {
    let prefix = format!("tss-it-{}:", unique(name));
    // The sampled topic on, so that the overview shows a sink beside the table.
    let sampled = format!("tss-it-{}", unique("ui-sampled"));
    Selector::start(
        name,
        &[
            ("TSS__SAMPLED_TOPIC__ENABLED", "true"),
            ("TSS__SAMPLED_TOPIC__TOPIC", sampled.as_str()),
            ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
            ("TSS__ADMIN__AUTH_TOKEN", TOKEN),
            ("TSS__SAMPLING__BASELINE_SAMPLE_RATE", "0"),
            ("TSS__RULES__MAX_DURATION_SECS", "3600"),
        ],
    )
    .await
}

/// The 10 seed traces of `service`: 4 with errors (kept), 6 without (dropped).
fn seed(s: &Selector, service: &str) {
    produce_seed_traces_with(
        &s.topic,
        &["--brokers", &brokers(), "--service-name", service],
    );
}

/// An error trace of 4 spans in which span 2's parent is not stored and
/// span 3 is span 2's child; returns its id.
async fn orphan_trace(s: &Selector, service: &str) -> String {
    let id = random_trace_id(rand::random());
    let mut spans = synth::trace(&TraceSpec {
        trace_id: id,
        service: service.into(),
        spans: 4,
        error: true,
        start_unix_nano: now_nanos() - 50_000_000,
        duration_ms: 40,
    });
    spans[2].parent_span_id = vec![0xab; 8];
    spans[3].parent_span_id = spans[2].span_id.clone();
    // A name far wider than the waterfall's label column.
    spans[3].name = format!("SELECT {} FROM orders", "a_long_column_name, ".repeat(12));
    let body = synth::request(vec![ResourceDef::new(service, spans)]).encode_to_vec();
    send(&producer(), &s.topic, &hex::encode(id), &body).await;
    hex::encode(id)
}

/// An error trace of 3 spans of `service` that started `ago_secs` ago.
async fn error_trace_ago(s: &Selector, service: &str, ago_secs: u64) -> String {
    let id = random_trace_id(rand::random());
    let spans = synth::trace(&TraceSpec {
        trace_id: id,
        service: service.into(),
        spans: 3,
        error: true,
        start_unix_nano: now_nanos() - ago_secs * 1_000_000_000,
        duration_ms: 30,
    });
    let body = synth::request(vec![ResourceDef::new(service, spans)]).encode_to_vec();
    send(&producer(), &s.topic, &hex::encode(id), &body).await;
    hex::encode(id)
}

async fn search(s: &Selector, query: &str) -> (u16, Value) {
    s.get(&format!("/admin/traces?{query}")).await
}

fn durations_of(body: &Value) -> Vec<f64> {
    body["traces"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|t| t["duration_ms"].as_f64().expect("duration"))
        .collect()
}

fn ids(body: &Value) -> Vec<String> {
    body["traces"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|t| t["trace_id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn search_services_and_overview_answer_over_http() {
    let s = start("search").await;
    let (shop, other) = (unique("shop"), unique("other"));
    seed(&s, &shop);
    seed(&s, &other);
    let orphan = orphan_trace(&s, &other).await;
    // Older traces of a third service: 10 and 40 minutes ago, beyond the
    // first windows a newest-first search scans.
    let old_service = unique("old");
    let ten = error_trace_ago(&s, &old_service, 600).await;
    let forty = error_trace_ago(&s, &old_service, 2_400).await;
    let fresh = error_trace_ago(&s, &old_service, 1).await;
    s.wait_exported((4 * 3 * 2 + 4 + 3 * 3) as f64).await;
    let (_, body) = search(&s, &format!("service={old_service}&limit=2")).await;
    assert_eq!(
        ids(&body),
        vec![fresh.clone(), ten.clone()],
        "the two newest: {body}"
    );
    let (_, body) = search(&s, &format!("service={old_service}")).await;
    assert_eq!(
        ids(&body),
        vec![fresh.clone(), ten.clone(), forty.clone()],
        "{body}"
    );
    let (_, body) = search(&s, &format!("service={old_service}&sort=duration&limit=3")).await;
    assert_eq!(body["count"], 3, "{body}");

    let (status, body) = search(&s, &format!("service={shop}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 4, "{body}");
    let starts: Vec<f64> = body["traces"]
        .as_array()
        .expect("traces")
        .iter()
        .map(|t| t["start_unix_ms"].as_f64().expect("start"))
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {starts:?}"
    );
    for t in body["traces"].as_array().expect("traces") {
        assert_eq!(t["root_service"], shop.as_str(), "{t}");
        assert_eq!(t["root_name"], "POST /checkout", "{t}");
        assert_eq!(t["span_count"], 3, "{t}");
        assert_eq!(t["error_count"], 2, "{t}");
        assert_eq!(t["sampling_reason"], "error", "{t}");
        assert!(t["duration_ms"].as_f64().expect("duration") >= 20.0, "{t}");
    }

    // The orphan trace: its summary counts every span, the root is the parentless one.
    let (_, body) = search(&s, &format!("service={other}&limit=50")).await;
    assert_eq!(body["count"], 5, "{body}");
    let t = body["traces"]
        .as_array()
        .expect("traces")
        .iter()
        .find(|t| t["trace_id"] == orphan.as_str())
        .cloned()
        .expect("orphan trace found");
    assert_eq!(
        (t["span_count"].clone(), t["root_name"].clone()),
        (4.into(), "POST /checkout".into()),
        "{t}"
    );

    // Every condition is on one span: `SELECT orders` never has an error in the seed traces.
    let (_, body) = search(
        &s,
        &format!("service={shop}&name=SELECT%20orders&status=error"),
    )
    .await;
    assert_eq!(body["count"], 0, "{body}");
    let (_, body) = search(
        &s,
        &format!("service={shop}&name=GET%20%2Finventory&status=error"),
    )
    .await;
    assert_eq!(body["count"], 4, "the failing child: {body}");
    // Attributes, span or resource.
    let (_, body) = search(
        &s,
        &format!("attr=service.name%3D{shop}&attr=http.response.status_code%3D500"),
    )
    .await;
    assert_eq!(body["count"], 4, "{body}");
    let (_, body) = search(
        &s,
        &format!("service={shop}&attr=http.response.status_code%3D200"),
    )
    .await;
    assert_eq!(body["count"], 0, "{body}");
    // Reason, duration bounds, sort and limit.
    let (_, body) = search(&s, &format!("service={shop}&reason=latency")).await;
    assert_eq!(body["count"], 0, "{body}");
    let (_, longest) = search(&s, &format!("service={shop}&sort=duration&limit=2")).await;
    assert_eq!(longest["count"], 2, "{longest}");
    let durations = durations_of(&longest);
    let (_, all) = search(&s, &format!("service={shop}")).await;
    let mut every = durations_of(&all);
    every.sort_by(|a, b| b.total_cmp(a));
    assert_eq!(
        durations,
        every[..2].to_vec(),
        "the two longest, longest first"
    );
    let (_, body) = search(
        &s,
        &format!("service={shop}&min_duration_ms={}", every[0] + 1.0),
    )
    .await;
    assert_eq!(body["count"], 0, "{body}");
    let (_, body) = search(
        &s,
        &format!("service={shop}&max_duration_ms={}", every[0] + 1.0),
    )
    .await;
    assert_eq!(body["count"], 4, "{body}");
    // A time range before the traces.
    let hour_ago = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let (_, body) = search(
        &s,
        &format!("service={shop}&from={}&to={}", hour_ago - 60_000, hour_ago),
    )
    .await;
    assert_eq!(body["count"], 0, "{body}");
    assert_eq!(ids(&body), Vec::<String>::new());

    for (query, parameter) in [
        ("limit=0", "limit"),
        ("status=fine", "status"),
        ("from=yesterday", "from"),
        ("min_duration_ms=3&max_duration_ms=2", "min_duration_ms"),
        ("attr=nokey", "attr"),
        ("bogus=1", "bogus"),
    ] {
        let (status, body) = search(&s, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["field"], parameter, "{query}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains(parameter)),
            "{query}: {body}"
        );
    }

    let (status, body) = s.get("/admin/services").await;
    assert_eq!(status, 200, "{body}");
    let listed = body["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|x| x["service"] == shop.as_str())
        .cloned()
        .expect("service listed");
    let names: Vec<&str> = listed["names"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        names,
        ["GET /inventory", "POST /checkout", "SELECT orders"],
        "{listed}"
    );
    assert_eq!(listed["span_count"], 12, "{listed}");

    let (status, doc) = s.get("/admin/overview").await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["decisions"]["kept_by_reason"]["error"], 12.0, "{doc}");
    assert_eq!(doc["decisions"]["dropped_total"], 12, "{doc}");
    assert!(
        doc["iceberg"]["commits_total"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{doc}"
    );
    assert!(
        doc["iceberg"]["commit_duration"]["p99_seconds"]
            .as_f64()
            .is_some(),
        "{doc}"
    );
    assert_eq!(doc["health"]["ready"], true, "{doc}");

    // Behind the token, like every /admin/* route; the page itself is public.
    let client = reqwest::Client::new();
    let denied = client
        .get(format!("http://{}/admin/traces", s.admin))
        .send()
        .await
        .expect("GET");
    assert_eq!(denied.status().as_u16(), 401);
    let page = client
        .get(format!("http://{}/", s.admin))
        .send()
        .await
        .expect("GET /");
    assert_eq!(page.status().as_u16(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page.text().await.expect("html").contains("/ui/app.js"));
    let js = client
        .get(format!("http://{}/ui/app.js", s.admin))
        .send()
        .await
        .expect("GET app.js");
    assert_eq!(
        js.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/javascript; charset=utf-8")
    );
}

pub(crate) fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Node.js, playwright-core and Chromium, or a message that says how to get them.
pub(crate) fn browser_prerequisites() -> String {
    let chromium =
        std::env::var("TSS_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no Chromium at {chromium}: scripts/test.sh installs Debian's chromium (or set TSS_TEST_CHROMIUM)"
    );
    assert!(
        browser_dir()
            .join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is not installed: scripts/test.sh runs `npm ci` in tests/browser"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "Node.js is not installed: scripts/test.sh installs Debian's nodejs"
    );
    chromium
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_in_a_real_browser() {
    let chromium = browser_prerequisites();
    let s = start("ui").await;
    let (shop, other) = (unique("ui-shop"), unique("ui-other"));
    seed(&s, &shop);
    let orphan = orphan_trace(&s, &other).await;
    s.wait_exported((4 * 3 + 4) as f64).await;
    let screenshots = std::env::var("TSS_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots"));
    let produce = serde_json::json!([
        env!("CARGO_BIN_EXE_simple_producer"),
        "--brokers",
        brokers(),
        "--topic",
        s.topic,
        "--service-name",
        shop,
        "--count",
        "3",
        "--error-every",
        "0",
    ]);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--test", "--test-reporter=spec", "ui.test.mjs"])
            .current_dir(browser_dir())
            .env("TSS_UI_URL", format!("http://{}", s.admin))
            .env("TSS_UI_TOKEN", TOKEN)
            .env("TSS_UI_SERVICE", &shop)
            .env("TSS_UI_ORPHAN_TRACE", &orphan)
            .env("TSS_UI_PRODUCE", produce.to_string())
            .env("TSS_UI_SCREENSHOTS", &screenshots)
            .env("TSS_TEST_CHROMIUM", &chromium)
            .output()
            .map(|o| (o, s))
    })
    .await
    .expect("join")
    .expect("node runs");
    let (out, s) = out;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "browser tests failed:\n{report}\nselector log:\n{}",
        s.log()
    );
    assert!(
        report.contains("fail 0") && !report.contains("pass 0"),
        "{report}"
    );
}
