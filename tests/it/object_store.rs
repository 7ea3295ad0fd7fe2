//! The production storage paths against real servers on loopback: the
//! Iceberg REST catalog with its S3 warehouse (SeaweedFS), an S3 warehouse
//! under the SQL catalog, and the SQL catalog on PostgreSQL. Each runs the
//! full path: Kafka, the selector, Parquet objects, then SQL, and readers no
//! one here wrote (pyiceberg, DuckDB) read the same table back.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::{Seaweed, Selector};
use serde_json::Value;

fn trace_ids(rows: &Value, column: usize) -> BTreeSet<String> {
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|r| r[column].as_str().unwrap_or_default().to_string())
        .collect()
}

fn py_ids(scan: &Value) -> BTreeSet<String> {
    ids_of(scan, "trace_ids")
}

fn ids_of(scan: &Value, field: &str) -> BTreeSet<String> {
    scan[field]
        .as_array()
        .expect("trace ids")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Produces the seed traces and waits until the 4 error traces (12 spans)
/// are committed; returns the kept trace ids as SQL sees them.
async fn seed_and_wait(s: &Selector) -> BTreeSet<String> {
    crate::harness::produce_seed_traces(&s.topic);
    s.wait_metric(
        "tail_sampling_traces_dropped_total",
        6.0,
        Duration::from_secs(60),
    )
    .await;
    s.wait_exported(12.0).await;
    assert_eq!(s.count("SELECT count(*) FROM spans").await, 12);
    let body = s
        .query(
            "SELECT DISTINCT trace_id FROM spans WHERE sampling_reason = 'error' ORDER BY trace_id",
        )
        .await;
    assert_eq!(body["row_count"], 4, "{body}");
    trace_ids(&body["rows"], 0)
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_catalog_with_s3_warehouse_round_trip() {
    let weed = Seaweed::from_env();
    let namespace = format!("it_rest_{}", uuid::Uuid::new_v4().simple());
    let settings = weed.rest_catalog(&namespace);
    let s = Selector::start("rest", &crate::harness::pairs(&settings)).await;
    let sql_ids = seed_and_wait(&s).await;

    // pyiceberg and DuckDB, through the same catalog and S3, read the rows SQL saw.
    let scan = crate::harness::run_python(
        &crate::harness::python_script("scan_table.py"),
        &weed.scan_args(&format!("{namespace}.spans")),
    );
    assert_eq!(scan["rows"], 12, "{scan}");
    assert_eq!(py_ids(&scan), sql_ids);
    assert_eq!(scan["duckdb_rows"], 12, "{scan}");
    assert_eq!(ids_of(&scan, "duckdb_trace_ids"), sql_ids);
    assert!(
        scan["partition_spec"]
            .as_str()
            .unwrap_or_default()
            .contains("day"),
        "{scan}"
    );
    let location = scan["location"].as_str().unwrap_or_default();
    assert!(
        location.starts_with(&format!("s3://{}/", weed.warehouse)),
        "{scan}"
    );

    // The data files are Parquet objects in the table bucket, under the table.
    let prefix = location.trim_start_matches(&format!("s3://{}/", weed.warehouse));
    let keys = weed.list(&weed.warehouse, prefix);
    assert!(
        keys.iter()
            .any(|k| k.contains("/data/") && k.ends_with(".parquet")),
        "no Parquet data files under {location}: {keys:?}"
    );

    // Neither the OAuth2 secret nor the S3 secret reaches /health or the log.
    let (_, health) = s.get("/health").await;
    assert!(!health.to_string().contains(&weed.secret_key), "{health}");
    assert!(
        !s.log().contains(&weed.secret_key),
        "a secret leaked into the log"
    );

    // A restarted selector finds the table in the catalog and serves it.
    drop(s);
    let again = Selector::start("rest2", &crate::harness::pairs(&settings)).await;
    assert!(
        !again.log().contains("created table"),
        "the existing table must be reused"
    );
    assert_eq!(again.count("SELECT count(*) FROM spans").await, 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_warehouse_round_trip() {
    let s3 = Seaweed::from_env();
    let bucket = format!("tss-it-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket(&bucket);
    let secret = s3.secret_key.clone();
    let warehouse = format!("s3://{bucket}/warehouse");
    let endpoint = s3.endpoint.clone();
    let s = Selector::start(
        "s3",
        &[
            ("TSS__STORAGE__ICEBERG__WAREHOUSE", warehouse.as_str()),
            ("TSS__STORAGE__ICEBERG__S3_ENDPOINT", endpoint.as_str()),
            (
                "TSS__STORAGE__ICEBERG__S3_ACCESS_KEY_ID",
                s3.access_key.as_str(),
            ),
            (
                "TSS__STORAGE__ICEBERG__S3_SECRET_ACCESS_KEY",
                secret.as_str(),
            ),
            ("TSS__STORAGE__ICEBERG__S3_REGION", "us-east-1"),
            ("TSS__STORAGE__ICEBERG__S3_PATH_STYLE", "true"),
        ],
    )
    .await;
    let sql_ids = seed_and_wait(&s).await;

    // A real S3 client sees ZSTD Parquet data files and the table metadata.
    let keys = s3.list(&bucket, "warehouse/");
    let data: Vec<&String> = keys.iter().filter(|k| k.ends_with(".parquet")).collect();
    assert!(!data.is_empty(), "no .parquet objects in {keys:?}");
    assert!(
        data.iter()
            .all(|k| k.starts_with("warehouse/default/spans/data/")),
        "data files outside the table's data/ prefix: {data:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.starts_with("warehouse/default/spans/metadata/")
                && k.ends_with(".metadata.json")),
        "no table metadata in {keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.starts_with("warehouse/default/spans/metadata/") && k.ends_with(".avro")),
        "no manifests in {keys:?}"
    );

    // pyiceberg, with the same S3 settings, reads the same rows.
    let scan = crate::harness::run_python(
        &crate::harness::python_script("scan_table.py"),
        &[
            "--catalog-uri".into(),
            format!("sqlite:///{}", s.catalog_path().display()),
            "--warehouse".into(),
            warehouse.clone(),
            "--s3-endpoint".into(),
            endpoint.clone(),
            "--s3-access-key-id".into(),
            s3.access_key.clone(),
            "--s3-secret-access-key".into(),
            secret.clone(),
            "--duckdb".into(),
        ],
    );
    assert_eq!(scan["rows"], 12, "{scan}");
    assert_eq!(py_ids(&scan), sql_ids);
    assert_eq!(scan["duckdb_rows"], 12, "{scan}");
    assert_eq!(ids_of(&scan, "duckdb_trace_ids"), sql_ids);
    assert!(
        scan["location"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&warehouse),
        "{scan}"
    );

    // The secret appears neither in /health nor in any log line.
    let (_, health) = s.get("/health").await;
    assert!(!health.to_string().contains(&secret), "{health}");
    let log = s.log();
    assert!(
        log.contains("s3_secret_access_key"),
        "the settings are logged at startup"
    );
    assert!(!log.contains(&secret), "the S3 secret leaked into the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_sql_catalog_round_trip() {
    let base = std::env::var("TSS_TEST_POSTGRES_URL").expect(
        "TSS_TEST_POSTGRES_URL must name a PostgreSQL database; run scripts/test.sh (it starts one)",
    );
    // Trust authentication accepts any password, which lets the test check
    // that the one in the URI is never logged.
    let password = format!("pg-secret-{}", uuid::Uuid::new_v4().simple());
    let uri = base.replacen("://tss@", &format!("://tss:{password}@"), 1);
    assert_ne!(
        uri, base,
        "TSS_TEST_POSTGRES_URL must be postgres://tss@host:port/db"
    );
    let namespace = format!("it_{}", uuid::Uuid::new_v4().simple());
    // The warehouse outlives the first selector, so a second one can read it.
    let warehouse_dir = tempfile::tempdir().expect("tempdir");
    let warehouse = warehouse_dir.path().display().to_string();
    let overrides = [
        ("TSS__STORAGE__ICEBERG__CATALOG_URI", uri.as_str()),
        ("TSS__STORAGE__ICEBERG__NAMESPACE", namespace.as_str()),
        ("TSS__STORAGE__ICEBERG__WAREHOUSE", warehouse.as_str()),
    ];
    let s = Selector::start("pg", &overrides).await;
    let sql_ids = seed_and_wait(&s).await;

    let scan = crate::harness::run_python(
        &crate::harness::python_script("scan_table.py"),
        &[
            "--catalog-uri".into(),
            base.replacen("postgres://", "postgresql+psycopg2://", 1),
            "--warehouse".into(),
            format!("file://{warehouse}"),
            "--table".into(),
            format!("{namespace}.spans"),
            "--duckdb".into(),
        ],
    );
    assert_eq!(scan["rows"], 12, "{scan}");
    assert_eq!(py_ids(&scan), sql_ids);
    assert_eq!(ids_of(&scan, "duckdb_trace_ids"), sql_ids);
    assert!(
        scan["partition_spec"]
            .as_str()
            .unwrap_or_default()
            .contains("day"),
        "{scan}"
    );
    assert!(
        !s.log().contains(&password),
        "the catalog password leaked into the log"
    );

    // A second selector on the same catalog finds the table and reads it.
    drop(s);
    let again = Selector::start("pg2", &overrides).await;
    assert!(
        !again.log().contains("created table"),
        "the existing table must be reused"
    );
    assert_eq!(again.count("SELECT count(*) FROM spans").await, 12);
}
