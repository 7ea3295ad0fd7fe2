//! Trace lookups skip what cannot hold the trace: every file the selector
//! writes has a bloom filter on `trace_id`, and `GET /admin/traces/{id}`
//! reads only the files whose filters may hold the id.

use prost::Message;
use serde_json::Value;
use tail_sampling_selector::testkit::synth::{self, ResourceDef, TraceSpec};

use crate::harness::{now_nanos, producer, random_trace_id as trace_id, send, Selector};

#[tokio::test(flavor = "multi_thread")]
async fn a_lookup_reads_only_the_file_that_holds_the_trace() {
    let prefix = format!("tss-it-lookup-{}:", uuid::Uuid::new_v4().simple());
    let s = Selector::start(
        "lookup",
        &[
            ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
            ("TSS__STORAGE__PARQUET_ROW_GROUP_ROWS", "1024"),
        ],
    )
    .await;
    let p = producer();
    // Twelve flushes of 400 error traces (3 spans each): twelve data files
    // in today's partition, each of two row groups of at most 1,024 rows.
    const ROUNDS: u64 = 12;
    const PER_ROUND: u64 = 400;
    for round in 0..ROUNDS {
        let traces: Vec<_> = (0..PER_ROUND)
            .map(|n| TraceSpec {
                trace_id: trace_id(90_000 + round * 1000 + n),
                service: "lookup-svc".into(),
                spans: 3,
                error: true,
                start_unix_nano: now_nanos() - 10_000_000,
                duration_ms: 10,
            })
            .collect();
        let resources = traces
            .iter()
            .map(|t| ResourceDef::new(&t.service, synth::trace(t)))
            .collect();
        send(
            &p,
            &s.topic,
            &round.to_string(),
            &synth::request(resources).encode_to_vec(),
        )
        .await;
        s.wait_exported(((round + 1) * PER_ROUND * 3) as f64).await;
    }
    // count(*) is answered from the snapshot's summary: no file is read.
    assert_eq!(
        s.count("SELECT count(*) FROM spans").await,
        (ROUNDS * PER_ROUND * 3) as i64
    );
    let (_, counted) = s.query_raw("EXPLAIN SELECT count(*) FROM spans").await;
    assert!(
        !counted.to_string().contains("IcebergTableScan"),
        "{counted}"
    );
    let traces = s
        .count("SELECT count(*) FROM (SELECT DISTINCT trace_id FROM spans)")
        .await;
    assert_eq!(traces, (ROUNDS * PER_ROUND) as i64);
    assert!(s.metric("tail_sampling_iceberg_commits_total").await >= ROUNDS as f64);

    let wanted = hex::encode(trace_id(90_000 + 7 * 1000 + 42));
    let (status, body) = s.get(&format!("/admin/traces/{wanted}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["span_count"], 3, "{body}");
    let scan = &body["scan"];
    let planned = scan["files_planned"].as_u64().expect("planned");
    // Random ids give every file nearly the whole id range: manifest pruning
    // by bounds drops a few files at most, the bloom filters the rest.
    assert!(planned >= 2, "{scan}");
    // A bloom filter at 1% false positives: the file holding the trace,
    // and rarely another.
    assert!(scan["files_read"].as_u64().expect("read") <= 2, "{scan}");
    // Min/max of random ids rarely rule a whole file out; the bloom
    // filters do.
    assert_eq!(
        scan["files_read"].as_u64().expect("read")
            + scan["files_skipped_by_bloom"].as_u64().expect("skipped")
            + scan["files_skipped_by_statistics"]
                .as_u64()
                .expect("skipped"),
        planned
    );
    assert!(
        scan["row_groups"].as_u64().expect("row groups") >= 2 * planned,
        "{scan}"
    );
    // The same spans as SQL finds, in start order.
    let sql = s
        .query(&format!(
            "SELECT span_id FROM spans WHERE trace_id = '{wanted}' ORDER BY start_time, span_id"
        ))
        .await;
    let by_sql: Vec<Value> = sql["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r[0].clone())
        .collect();
    let by_lookup: Vec<Value> = body["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .map(|s| s["span_id"].clone())
        .collect();
    assert_eq!(by_lookup, by_sql);
    assert!(
        body["spans"][0]["sample_rate"].is_number(),
        "every column is there: {}",
        body["spans"][0]
    );
    // SQL with `trace_id = '…'` plans through the same lookup: EXPLAIN
    // ANALYZE shows what the bloom filters skipped.
    let (status, explained) = s
        .query_raw(&format!("EXPLAIN ANALYZE SELECT span_id, name FROM spans WHERE trace_id = '{wanted}' AND duration_ms >= 0"))
        .await;
    assert_eq!(status, 200, "{explained}");
    let plan: String = explained["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r[1].as_str().unwrap_or("").to_string())
        .collect();
    let figure = |name: &str| -> u64 {
        plan.split(&format!("{name}="))
            .nth(1)
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the plan:\n{plan}"))
    };
    assert!(plan.contains("TraceLookupExec"), "{plan}");
    println!(
        "{}",
        plan.lines()
            .find(|l| l.contains("TraceLookupExec"))
            .unwrap_or_default()
            .trim()
    );
    assert_eq!(figure("files_planned"), planned, "{plan}");
    assert_eq!(
        figure("files_skipped_by_bloom"),
        scan["files_skipped_by_bloom"].as_u64().expect("n"),
        "{plan}"
    );
    assert!(
        figure("files_read") <= 2 && figure("bytes_read") > 0,
        "{plan}"
    );
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM spans WHERE trace_id = '{wanted}'"
        ))
        .await,
        3
    );
    // Another condition on trace_id is not a lookup: Iceberg's own scan.
    let (_, other) = s
        .query_raw(&format!(
            "EXPLAIN SELECT span_id FROM spans WHERE trace_id > '{wanted}'"
        ))
        .await;
    assert!(!other.to_string().contains("TraceLookupExec"), "{other}");
    let m = s.metrics().await;
    assert_eq!(m["tail_sampling_trace_lookups_total"], 1.0);
    assert_eq!(
        m["tail_sampling_trace_lookup_files_total{outcome=\"skipped_by_bloom\"}"],
        scan["files_skipped_by_bloom"].as_f64().expect("n")
    );
    // A trace that is not there: every file skipped, 404.
    let (status, _) = s
        .get(&format!("/admin/traces/{}", hex::encode(trace_id(1))))
        .await;
    assert_eq!(status, 404);
    // A search page reads its traces back through the same filters, all at
    // once: every trace of the page whole, from twelve files.
    let (status, page) = s
        .get("/admin/traces?service=lookup-svc&limit=50&sort=duration")
        .await;
    assert_eq!(status, 200, "{page}");
    let traces = page["traces"].as_array().expect("traces");
    assert_eq!(traces.len(), 50, "{page}");
    assert!(
        traces
            .iter()
            .all(|t| t["span_count"] == 3 && t["error_count"] == 2),
        "{page}"
    );
    let ids: std::collections::HashSet<&str> = traces
        .iter()
        .filter_map(|t| t["trace_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 50, "no trace twice");
}
