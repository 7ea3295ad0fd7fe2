//! The production storage paths against real servers on loopback: an Iceberg
//! warehouse on S3 (moto's server), and the SQL catalog on PostgreSQL. Both
//! run the full path: Kafka, the selector, Parquet objects, then SQL, and a
//! second reader (pyiceberg) reads the same table back.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{OwnS3, Selector};
use serde_json::Value;

fn trace_ids(rows: &Value, column: usize) -> BTreeSet<String> {
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|r| r[column].as_str().unwrap_or_default().to_string())
        .collect()
}

fn py_ids(scan: &Value) -> BTreeSet<String> {
    scan["trace_ids"]
        .as_array()
        .expect("trace ids")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Produces the seed traces and waits until the 4 error traces (12 spans)
/// are committed; returns the kept trace ids as SQL sees them.
async fn seed_and_wait(s: &Selector) -> BTreeSet<String> {
    common::produce_seed_traces(&s.topic);
    s.wait_metric("tail_sampling_traces_dropped_total", 6.0, Duration::from_secs(60))
        .await;
    s.wait_exported(12.0).await;
    assert_eq!(s.count("SELECT count(*) FROM spans").await, 12);
    let body = s
        .query("SELECT DISTINCT trace_id FROM spans WHERE sampling_reason = 'error' ORDER BY trace_id")
        .await;
    assert_eq!(body["row_count"], 4, "{body}");
    trace_ids(&body["rows"], 0)
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_warehouse_round_trip() {
    let s3 = OwnS3::start();
    let bucket = format!("tss-it-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket(&bucket);
    let secret = format!("s3-secret-{}", uuid::Uuid::new_v4().simple());
    let warehouse = format!("s3://{bucket}/warehouse");
    let endpoint = s3.endpoint();
    let s = Selector::start(
        "s3",
        &[
            ("TSS__STORAGE__ICEBERG__WAREHOUSE", warehouse.as_str()),
            ("TSS__STORAGE__ICEBERG__S3_ENDPOINT", endpoint.as_str()),
            ("TSS__STORAGE__ICEBERG__S3_ACCESS_KEY_ID", "it-access-key"),
            ("TSS__STORAGE__ICEBERG__S3_SECRET_ACCESS_KEY", secret.as_str()),
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
        data.iter().all(|k| k.starts_with("warehouse/default/spans/data/")),
        "data files outside the table's data/ prefix: {data:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with("warehouse/default/spans/metadata/") && k.ends_with(".metadata.json")),
        "no table metadata in {keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with("warehouse/default/spans/metadata/") && k.ends_with(".avro")),
        "no manifests in {keys:?}"
    );

    // pyiceberg, with the same S3 settings, reads the same rows.
    let scan = common::run_python(
        &common::python_script("scan_table.py"),
        &[
            "--catalog-uri".into(),
            format!("sqlite:///{}", s.catalog_path().display()),
            "--warehouse".into(),
            warehouse.clone(),
            "--s3-endpoint".into(),
            endpoint.clone(),
            "--s3-access-key-id".into(),
            "it-access-key".into(),
            "--s3-secret-access-key".into(),
            secret.clone(),
        ],
    );
    assert_eq!(scan["rows"], 12, "{scan}");
    assert_eq!(py_ids(&scan), sql_ids);
    assert!(scan["location"].as_str().unwrap_or_default().starts_with(&warehouse), "{scan}");

    // The secret appears neither in /health nor in any log line.
    let (_, health) = s.get("/health").await;
    assert!(!health.to_string().contains(&secret), "{health}");
    let log = s.log();
    assert!(log.contains("s3_secret_access_key"), "the settings are logged at startup");
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
    assert_ne!(uri, base, "TSS_TEST_POSTGRES_URL must be postgres://tss@host:port/db");
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

    let scan = common::run_python(
        &common::python_script("scan_table.py"),
        &[
            "--catalog-uri".into(),
            base.replacen("postgres://", "postgresql+psycopg2://", 1),
            "--warehouse".into(),
            format!("file://{warehouse}"),
            "--table".into(),
            format!("{namespace}.spans"),
        ],
    );
    assert_eq!(scan["rows"], 12, "{scan}");
    assert_eq!(py_ids(&scan), sql_ids);
    assert!(scan["partition_spec"].as_str().unwrap_or_default().contains("day"), "{scan}");
    assert!(!s.log().contains(&password), "the catalog password leaked into the log");

    // A second selector on the same catalog finds the table and reads it.
    drop(s);
    let again = Selector::start("pg2", &overrides).await;
    assert!(!again.log().contains("created table"), "the existing table must be reused");
    assert_eq!(again.count("SELECT count(*) FROM spans").await, 12);
}
