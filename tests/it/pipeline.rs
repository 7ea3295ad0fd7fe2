//! End-to-end tests: real broker, real Redis, a real selector process, the
//! real Iceberg table, and pyiceberg reading what the selector wrote.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{producer, send, Selector};
use prost::Message;
use tail_sampling_selector::decide::policy::baseline_keeps;
use tail_sampling_selector::testkit::synth::{self, ResourceDef, TraceSpec};

use crate::harness::{now_nanos, trace_id};

fn spec(seed: u64, spans: usize, error: bool, duration_ms: u64) -> TraceSpec {
    TraceSpec {
        trace_id: trace_id(seed),
        service: "it-service".into(),
        spans,
        error,
        start_unix_nano: now_nanos() - duration_ms * 1_000_000,
        duration_ms,
    }
}

fn encode(spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>) -> Vec<u8> {
    synth::request(vec![ResourceDef::new("it-service", spans)]).encode_to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_traces_keep_the_errors_and_pyiceberg_reads_the_table() {
    let s = Selector::start("seed", &[]).await;
    let out = Command::new(env!("CARGO_BIN_EXE_simple_producer"))
        .args(["--brokers", &crate::harness::brokers(), "--topic", &s.topic])
        .output()
        .expect("simple_producer runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[ERROR] Trace 0 -> partition "), "{stdout}");
    assert!(stdout.contains("[OK] Trace 1 -> partition "), "{stdout}");
    assert!(
        stdout.contains("Done! Sent 10 traces (4 with errors)"),
        "{stdout}"
    );

    s.wait_metric(
        "tail_sampling_traces_dropped_total",
        6.0,
        Duration::from_secs(60),
    )
    .await;
    s.wait_exported(12.0).await;
    let m = s.metrics().await;
    assert_eq!(
        m["tail_sampling_traces_sampled_total{reason=\"error\"}"],
        4.0
    );
    assert_eq!(m["tail_sampling_traces_dropped_total"], 6.0);
    assert_eq!(m["tail_sampling_spans_ingested_total"], 30.0);

    let body = s
        .query("SELECT trace_id, status_code, duration_ms, sampling_reason FROM spans WHERE parent_span_id IS NULL ORDER BY trace_id")
        .await;
    assert_eq!(body["row_count"], 4, "{body}");
    assert_eq!(body["columns"][0], "trace_id");
    for row in body["rows"].as_array().expect("rows") {
        assert_eq!(row[1], "ERROR", "{row}");
        assert_eq!(row[3], "error", "{row}");
        assert!(row[2].as_f64().is_some_and(|d| d > 0.0), "{row}");
    }
    assert_eq!(s.count("SELECT count(*) FROM spans").await, 12);

    // One trace by id, through the trace endpoint.
    let id = body["rows"][0][0].as_str().expect("trace id").to_string();
    let (status, trace) = s.get(&format!("/admin/traces/{id}")).await;
    assert_eq!(status, 200, "{trace}");
    assert_eq!(trace["span_count"], 3, "{trace}");
    assert_eq!(s.get("/admin/traces/not-hex").await.0, 400);
    assert_eq!(
        s.get(&format!("/admin/traces/{}", "0".repeat(32))).await.0,
        404
    );

    // A standard reader loads and scans the same table.
    let scan = crate::harness::run_python(
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/scan_table.py"
        )),
        &[
            "--catalog-uri".into(),
            format!("sqlite:///{}", s.catalog_path().display()),
            "--warehouse".into(),
            format!("file://{}", s.warehouse_path().display()),
        ],
    );
    assert_eq!(scan["rows"], 12, "{scan}");
    let ids: BTreeSet<String> = body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r[0].as_str().unwrap_or_default().to_string())
        .collect();
    let py_ids: BTreeSet<String> = scan["trace_ids"]
        .as_array()
        .expect("trace ids")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, py_ids);
    assert!(
        scan["partition_spec"]
            .as_str()
            .unwrap_or_default()
            .contains("day"),
        "{scan}"
    );

    // The data files are ZSTD Parquet under the table's data/ prefix.
    let files = s
        .query("SELECT count(*) FROM spans WHERE sampled_at IS NOT NULL")
        .await;
    assert_eq!(files["rows"][0][0], 12);
    let parquet = find_files(&s.warehouse_path(), ".parquet");
    assert!(!parquet.is_empty());
    assert!(parquet.iter().all(|p| p.contains("/data/")), "{parquet:?}");
}

fn find_files(dir: &Path, suffix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn split_traces_are_decided_once_and_latency_is_kept() {
    let s = Selector::start("split", &[("TSS__SAMPLING__LATENCY_THRESHOLD_MS", "5000")]).await;
    let p = producer();
    // Trace A (6 spans, one error) arrives in 3 messages, interleaved with
    // B (fast, dropped) and C (slow, kept for latency).
    let a = synth::trace(&spec(1, 6, true, 300));
    let b = synth::trace(&spec(2, 2, false, 40));
    let c = synth::trace(&spec(3, 3, false, 6_000));
    let key = |seed| hex::encode(trace_id(seed));
    send(&p, &s.topic, &key(1), &encode(a[0..2].to_vec())).await;
    send(&p, &s.topic, &key(2), &encode(b.clone())).await;
    send(&p, &s.topic, &key(1), &encode(a[2..4].to_vec())).await;
    send(&p, &s.topic, &key(3), &encode(c.clone())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&p, &s.topic, &key(1), &encode(a[4..6].to_vec())).await;

    s.wait_metric(
        "tail_sampling_traces_dropped_total",
        1.0,
        Duration::from_secs(60),
    )
    .await;
    s.wait_exported(9.0).await;
    let m = s.metrics().await;
    assert_eq!(
        m["tail_sampling_traces_sampled_total{reason=\"error\"}"], 1.0,
        "A decided once"
    );
    assert_eq!(
        m["tail_sampling_traces_sampled_total{reason=\"latency\"}"],
        1.0
    );
    assert_eq!(m["tail_sampling_traces_dropped_total"], 1.0);

    let rows = s
        .query("SELECT trace_id, sampling_reason, count(*) AS spans FROM spans GROUP BY trace_id, sampling_reason ORDER BY spans DESC")
        .await;
    assert_eq!(rows["row_count"], 2, "{rows}");
    assert_eq!(rows["rows"][0], serde_json::json!([key(1), "error", 6]));
    assert_eq!(rows["rows"][1], serde_json::json!([key(3), "latency", 3]));
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM spans WHERE trace_id = '{}'",
            key(2)
        ))
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn baseline_keeps_half_and_always_the_same_traces() {
    let s = Selector::start(
        "baseline",
        &[
            ("TSS__SAMPLING__BASELINE_SAMPLE_RATE", "0.5"),
            ("TSS__SAMPLING__MAX_SPANS_PER_TRACE", "10000"),
        ],
    )
    .await;
    let p = producer();
    const TRACES: u64 = 10_000;
    // 100 traces per message, as a collector batch would carry them.
    for chunk in (0..TRACES).collect::<Vec<_>>().chunks(100) {
        let spans: Vec<_> = chunk
            .iter()
            .flat_map(|n| synth::trace(&spec(1_000_000 + n, 1, false, 10)))
            .collect();
        send(&p, &s.topic, &chunk[0].to_string(), &encode(spans)).await;
    }
    let expected: BTreeSet<String> = (0..TRACES)
        .map(|n| trace_id(1_000_000 + n))
        .filter(|id| baseline_keeps(id, 0.5))
        .map(hex::encode)
        .collect();
    s.wait_metric(
        "tail_sampling_traces_dropped_total",
        (TRACES as usize - expected.len()) as f64,
        Duration::from_secs(90),
    )
    .await;
    s.wait_exported(expected.len() as f64).await;
    let kept = expected.len() as i64;
    assert!((4_800..=5_200).contains(&kept), "kept {kept} of 10000");
    let body = s
        .query("SELECT DISTINCT trace_id FROM spans WHERE sampling_reason = 'baseline'")
        .await;
    let stored: BTreeSet<String> = body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r[0].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(stored.len(), expected.len());
    assert!(
        stored == expected,
        "the stored set differs from the deterministic decision"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_messages_are_counted_dead_lettered_and_skipped() {
    let dlq = format!("tss-it-dlq-{}", uuid::Uuid::new_v4().simple());
    let s = Selector::start(
        "garbage",
        &[
            ("TSS__KAFKA__DEAD_LETTER_TOPIC", dlq.as_str()),
            ("TSS__KAFKA__MAX_MESSAGE_BYTES", "65536"),
        ],
    )
    .await;
    let p = producer();
    let good = encode(synth::trace(&spec(50, 2, true, 100)));
    send(
        &p,
        &s.topic,
        "g1",
        b"\xff\xfe garbage bytes that are not protobuf",
    )
    .await;
    send(&p, &s.topic, "g2", &good[..good.len() - 5]).await;
    send(&p, &s.topic, "g3", b"{\"resourceSpans\": [ broken").await;
    send(&p, &s.topic, "g4", b"").await;
    // Valid protobuf, but over kafka.max_message_bytes.
    let big: Vec<_> = (0..400u64)
        .flat_map(|n| synth::trace(&spec(60_000 + n, 3, true, 10)))
        .collect();
    let oversized = encode(big);
    assert!(oversized.len() > 65_536, "{}", oversized.len());
    send(&p, &s.topic, "g5", &oversized).await;
    // Spans with a zero trace id and with absurd times, next to a good one.
    let mut mixed = synth::trace(&spec(52, 3, true, 100));
    mixed[0].trace_id = vec![0; 16];
    mixed[1].start_time_unix_nano = 0;
    let mut future = synth::trace(&spec(53, 1, true, 100));
    future[0].start_time_unix_nano = 5_000_000_000_000_000_000;
    future[0].end_time_unix_nano = 5_000_000_000_000_000_001;
    mixed.extend(future);
    send(&p, &s.topic, &hex::encode(trace_id(52)), &encode(mixed)).await;
    send(&p, &s.topic, &hex::encode(trace_id(50)), &good).await;
    // The same kind of trace as OTLP JSON.
    let json_req = synth::request(vec![ResourceDef::new(
        "json-service",
        synth::trace(&spec(51, 2, true, 100)),
    )]);
    let json = serde_json::to_vec(&json_req).expect("OTLP JSON");
    send(&p, &s.topic, &hex::encode(trace_id(51)), &json).await;
    // Bytes that the OpenTelemetry Python SDK encoded.
    let fixture = std::env::var("TSS_SDK_FIXTURE")
        .expect("TSS_SDK_FIXTURE must name SDK-encoded bytes; run scripts/test.sh");
    let sdk_bytes = std::fs::read(format!("{fixture}.bin")).expect("fixture .bin");
    let sdk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{fixture}.json")).expect("fixture .json"))
            .expect("fixture json");
    send(&p, &s.topic, "sdk", &sdk_bytes).await;

    s.wait_exported(7.0).await;
    let m = s.metrics().await;
    assert!(
        m["tail_sampling_messages_invalid_total{reason=\"protobuf\"}"] >= 2.0,
        "{m:?}"
    );
    assert_eq!(
        m["tail_sampling_messages_invalid_total{reason=\"json\"}"],
        1.0
    );
    assert_eq!(
        m["tail_sampling_messages_invalid_total{reason=\"empty\"}"],
        1.0
    );
    assert_eq!(
        m["tail_sampling_messages_invalid_total{reason=\"too_large\"}"],
        1.0
    );
    assert_eq!(
        m["tail_sampling_spans_invalid_total{reason=\"invalid_trace_id\"}"],
        1.0
    );
    assert_eq!(
        m["tail_sampling_spans_invalid_total{reason=\"invalid_timestamp\"}"],
        2.0
    );
    // The one good span of the mixed message is stored; the rest are not.
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM spans WHERE trace_id = '{}'",
            hex::encode(trace_id(52))
        ))
        .await,
        1
    );
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM spans WHERE trace_id = '{}'",
            hex::encode(trace_id(53))
        ))
        .await,
        0
    );

    // Every undecodable message went to the dead-letter topic, byte for byte,
    // with headers naming the reason and the source.
    let dead = crate::harness::consume_all(&dlq, 5, Duration::from_secs(30)).await;
    let mut reasons: Vec<String> = dead.iter().map(|d| d.header("tss.reason")).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["empty", "json", "protobuf", "protobuf", "too_large"],
        "{reasons:?}"
    );
    let garbage = dead
        .iter()
        .find(|d| d.key == b"g1")
        .expect("g1 dead-lettered");
    assert_eq!(
        garbage.payload,
        b"\xff\xfe garbage bytes that are not protobuf"
    );
    assert_eq!(garbage.header("tss.source.topic"), s.topic);
    assert!(garbage.header("tss.source.offset").parse::<i64>().is_ok());
    let err_trace = sdk["error_trace_id"].as_str().expect("id");
    let ok_trace = sdk["ok_trace_id"].as_str().expect("id");
    let body = s
        .query("SELECT trace_id, count(*) FROM spans GROUP BY trace_id ORDER BY trace_id")
        .await;
    let mut expected = vec![
        serde_json::json!([hex::encode(trace_id(50)), 2]),
        serde_json::json!([hex::encode(trace_id(51)), 2]),
        serde_json::json!([hex::encode(trace_id(52)), 1]),
        serde_json::json!([err_trace, sdk["error_trace_spans"]]),
    ];
    expected.sort_by_key(|v| v[0].as_str().unwrap_or_default().to_string());
    assert_eq!(body["rows"], serde_json::Value::Array(expected), "{body}");
    let svc = s
        .query(&format!(
            "SELECT DISTINCT service_name, scope_name FROM spans WHERE trace_id = '{err_trace}'"
        ))
        .await;
    assert_eq!(svc["rows"][0][0], sdk["service_name"]);
    assert_eq!(svc["rows"][0][1], "fixture-tracer");
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM spans WHERE trace_id = '{ok_trace}'"
        ))
        .await,
        0
    );
    let events = s
        .query(&format!(
            "SELECT events FROM spans WHERE trace_id = '{err_trace}' AND status_code = 'ERROR'"
        ))
        .await;
    // Events read as data: an array of {name, time, attributes}.
    assert!(
        events["rows"][0][0].as_array().is_some_and(|list| list
            .iter()
            .any(|e| e["name"] == "exception" && e["attributes"].is_object())),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_is_read_only_and_admin_needs_the_token() {
    let s = Selector::start(
        "sql",
        &[
            ("TSS__ADMIN__AUTH_TOKEN", "it-secret-token"),
            ("TSS__QUERY__TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    // Without the token.
    let unauth = reqwest::Client::new()
        .post(format!("http://{}/admin/query", s.admin))
        .json(&serde_json::json!({"sql": "SELECT 1"}))
        .send()
        .await
        .expect("request");
    assert_eq!(unauth.status().as_u16(), 401);
    let live = reqwest::get(format!("http://{}/health/live", s.admin))
        .await
        .expect("live");
    assert_eq!(live.status().as_u16(), 200);

    assert_eq!(s.count("SELECT count(*) FROM spans").await, 0);
    for sql in [
        "DROP TABLE spans",
        "INSERT INTO spans (trace_id) VALUES ('x')",
        "COPY (SELECT 1) TO '/tmp/tss-copy.csv'",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/hostname'",
        "SET datafusion.execution.batch_size = 1",
        "SELECT 1 INTO t2",
    ] {
        let (status, body) = s.query_raw(sql).await;
        assert_eq!(status, 400, "{sql} -> {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    let (status, body) = s.query_raw("SELEC count(*) FROM spans").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap_or_default().contains("SELEC"),
        "{body}"
    );
    let (status, body) = s.query_raw("SELECT no_such_column FROM spans").await;
    assert_eq!(status, 400, "{body}");

    // The row cap says when it cut the result.
    let big = s.query("SELECT * FROM generate_series(1, 20000)").await;
    assert_eq!(big["row_count"], 10_000);
    assert_eq!(big["truncated"], true);
    let small = s.query("SELECT * FROM generate_series(1, 5)").await;
    assert_eq!(small["truncated"], false);
    // A query over query.timeout_secs is cancelled; the engine stays usable.
    let started = std::time::Instant::now();
    let (status, body) = s
        .query_raw("SELECT count(*) FROM generate_series(1, 20000000000) AS t(v) WHERE v % 7 = 3")
        .await;
    assert_eq!(status, 408, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        s.count("SELECT count(*) FROM generate_series(1, 10)").await,
        10
    );
    // EXPLAIN ANALYZE runs the query and shows the plan with its metrics.
    let analyzed = s
        .query("EXPLAIN ANALYZE SELECT count(*) FROM generate_series(1, 1000)")
        .await;
    assert!(analyzed.to_string().contains("output_rows"), "{analyzed}");
    let explained = s.query("EXPLAIN SELECT count(*) FROM spans").await;
    assert!(
        explained["row_count"].as_i64().unwrap_or_default() >= 1,
        "{explained}"
    );
    let desc = s.query("DESCRIBE spans").await;
    assert!(
        desc["row_count"].as_i64().unwrap_or_default() >= 19,
        "{desc}"
    );
    let (status, health) = s.get("/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["redis"]["status"], "ok");
    assert_eq!(health["kafka"]["status"], "ok");
}

/// A query that needs more than `query.max_memory_bytes` fails with 503 and
/// says why, the process stays within the pool plus its usual footprint, and
/// the next query runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_over_its_memory_pool_fails_and_the_selector_goes_on() {
    const POOL: u64 = 64 << 20;
    let pool = POOL.to_string();
    let s = Selector::start(
        "sql-memory",
        &[
            ("TSS__QUERY__MAX_MEMORY_BYTES", pool.as_str()),
            ("TSS__QUERY__TIMEOUT_SECS", "120"),
        ],
    )
    .await;
    let before_kib = crate::harness::rss_kib(s.pid());
    // 200 million distinct groups: far more than 64 MiB of hash table.
    let (status, body) = s
        .query_raw("SELECT v % 200000000 AS k, count(*) FROM generate_series(1, 200000000) AS t(v) GROUP BY 1 ORDER BY 2 DESC")
        .await;
    let after_kib = crate::harness::rss_kib(s.pid());
    println!(
        "memory pool {POOL} B: status {status}, RSS {before_kib} KiB before, {after_kib} KiB after"
    );
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("query.max_memory_bytes"), "{body}");
    assert!(
        after_kib * 1024 < POOL + 400 * (1 << 20),
        "RSS {after_kib} KiB"
    );
    assert_eq!(
        s.count("SELECT count(*) FROM generate_series(1, 10)").await,
        10
    );
    let (status, _) = s.get("/health/ready").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn late_spans_get_their_trace_decision() {
    let s = Selector::start("late", &[]).await;
    let p = producer();
    let seed_kept = 700_000;
    let seed_dropped = seed_kept + 1;
    let kept = synth::trace(&spec(seed_kept, 3, true, 50));
    let dropped = synth::trace(&spec(seed_dropped, 3, false, 50));
    let key = |seed| hex::encode(trace_id(seed));
    send(&p, &s.topic, &key(seed_kept), &encode(kept[..2].to_vec())).await;
    send(
        &p,
        &s.topic,
        &key(seed_dropped),
        &encode(dropped[..2].to_vec()),
    )
    .await;
    s.wait_metric(
        "tail_sampling_traces_dropped_total",
        1.0,
        Duration::from_secs(60),
    )
    .await;
    s.wait_exported(2.0).await;

    // The third span of each arrives after its trace was decided.
    send(&p, &s.topic, &key(seed_kept), &encode(kept[2..].to_vec())).await;
    send(
        &p,
        &s.topic,
        &key(seed_dropped),
        &encode(dropped[2..].to_vec()),
    )
    .await;
    s.wait_metric(
        "tail_sampling_late_spans_total{decision=\"dropped\"}",
        1.0,
        Duration::from_secs(60),
    )
    .await;
    s.wait_exported(3.0).await;
    let m = s.metrics().await;
    assert_eq!(m["tail_sampling_late_spans_total{decision=\"kept\"}"], 1.0);
    assert_eq!(
        m["tail_sampling_traces_sampled_total{reason=\"error\"}"], 1.0,
        "not re-decided"
    );
    assert_eq!(
        m["tail_sampling_traces_dropped_total"], 1.0,
        "not re-decided"
    );
    let rows = s
        .query(&format!(
            "SELECT count(*), min(sampling_reason) FROM spans WHERE trace_id = '{}'",
            key(seed_kept)
        ))
        .await;
    assert_eq!(rows["rows"][0], serde_json::json!([3, "error"]));
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM spans WHERE trace_id = '{}'",
            key(seed_dropped)
        ))
        .await,
        0
    );
}

/// The table as the first version created it: every column but `sample_rate`.
async fn create_table_without_sample_rate(uri: &str, warehouse: &str) {
    use iceberg::spec::Schema;
    use iceberg::{NamespaceIdent, TableCreation};
    use tail_sampling_selector::table::{columns, connect_catalog, schema};
    let settings = tail_sampling_selector::config::Settings::load_with_env(
        None,
        [
            (
                "TSS__STORAGE__ICEBERG__CATALOG_URI".to_string(),
                uri.to_string(),
            ),
            (
                "TSS__STORAGE__ICEBERG__WAREHOUSE".to_string(),
                warehouse.to_string(),
            ),
        ],
    )
    .expect("settings");
    let catalog = connect_catalog(&settings.storage.iceberg)
        .await
        .expect("catalog");
    let current = schema::table_schema().expect("schema");
    let fields = current
        .as_struct()
        .fields()
        .iter()
        .filter(|f| f.name != columns::SAMPLE_RATE && f.name != columns::LINKS)
        .cloned()
        .collect::<Vec<_>>();
    let old = Schema::builder()
        .with_schema_id(0)
        .with_fields(fields)
        .build()
        .expect("old schema");
    let ns = NamespaceIdent::new("default".into());
    catalog
        .create_namespace(&ns, Default::default())
        .await
        .expect("namespace");
    let creation = TableCreation::builder()
        .name("spans".into())
        .schema(old)
        .partition_spec(schema::partition_spec().expect("spec"))
        .build();
    catalog
        .create_table(&ns, creation)
        .await
        .expect("old table");
}

/// A table made before `sample_rate` existed gains the column when the
/// selector opens it (schema evolution, no rewrite). Kept traces then record
/// how many traces they stand for: 1 for errors, 1/rate for the baseline,
/// and `sum(sample_rate)` reads the same in SQL, pyiceberg and DuckDB.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_table_gains_sample_rate_and_every_reader_sees_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = format!("sqlite:{}/catalog.db?mode=rwc", dir.path().display());
    let warehouse = dir.path().join("warehouse").display().to_string();
    create_table_without_sample_rate(&uri, &warehouse).await;
    let s = Selector::start(
        "evolve",
        &[
            ("TSS__STORAGE__ICEBERG__CATALOG_URI", &uri),
            ("TSS__STORAGE__ICEBERG__WAREHOUSE", &warehouse),
            ("TSS__SAMPLING__BASELINE_SAMPLE_RATE", "0.5"),
        ],
    )
    .await;
    assert!(
        s.log().contains("added columns to the table"),
        "{}",
        s.log()
    );
    let p = producer();
    let errors: Vec<u64> = (0..5).map(|n| 700_000_000 + n).collect();
    let fast: Vec<u64> = (5..45).map(|n| 700_000_000 + n).collect();
    for seed in errors.iter().chain(&fast) {
        let error = errors.contains(seed);
        send(
            &p,
            &s.topic,
            &hex::encode(trace_id(*seed)),
            &encode(synth::trace(&spec(*seed, 2, error, 10))),
        )
        .await;
    }
    let baseline = fast
        .iter()
        .filter(|n| baseline_keeps(&trace_id(**n), 0.5))
        .count();
    s.wait_exported(((errors.len() + baseline) * 2) as f64)
        .await;
    let body = s
        .query("SELECT sampling_reason, min(sample_rate), max(sample_rate), count(*) FROM spans GROUP BY 1 ORDER BY 1")
        .await;
    let rows = body["rows"].as_array().expect("rows");
    assert_eq!(rows[0][0], "baseline", "{body}");
    assert_eq!(
        (rows[0][1].as_f64(), rows[0][2].as_f64()),
        (Some(2.0), Some(2.0)),
        "{body}"
    );
    assert_eq!(rows[1][0], "error", "{body}");
    assert_eq!(
        (rows[1][1].as_f64(), rows[1][2].as_f64()),
        (Some(1.0), Some(1.0)),
        "{body}"
    );
    let total = s.query("SELECT sum(sample_rate) FROM spans").await["rows"][0][0]
        .as_f64()
        .expect("sum");
    assert_eq!(total, (errors.len() * 2 + baseline * 2 * 2) as f64);
    let scan = crate::harness::run_python(
        &crate::harness::python_script("scan_table.py"),
        &[
            "--catalog-uri".into(),
            format!("sqlite:///{}/catalog.db", dir.path().display()),
            "--warehouse".into(),
            format!("file://{warehouse}"),
            "--duckdb".into(),
        ],
    );
    assert_eq!(scan["sample_rate_sum"].as_f64(), Some(total), "{scan}");
    assert_eq!(
        scan["duckdb_sample_rate_sum"].as_f64(),
        Some(total),
        "{scan}"
    );
    assert_eq!(scan["sample_rate_nulls"], 0, "{scan}");
    // `links` was added too: every row written since has the column.
    let rows = s.count("SELECT count(*) FROM spans").await;
    let with_links = s
        .count("SELECT count(*) FROM spans WHERE links IS NOT NULL")
        .await;
    assert_eq!((with_links, rows > 0), (rows, true));
}
