//! Table maintenance on a real selector's table: compaction rewrites the
//! small files of a day partition into one sorted file in one snapshot,
//! loses and doubles no row, merges the manifests, and leaves a table that
//! pyiceberg and DuckDB read.

use std::path::Path;

use prost::Message;
use tail_sampling_selector::testkit::synth::{self, ResourceDef, TraceSpec};

use crate::harness::{
    now_nanos, producer, random_trace_id as trace_id, run_python, send, Selector,
};

pub(crate) async fn send_round(s: &Selector, round: u64, per_round: u64) {
    send_round_at(s, round, per_round, now_nanos() - 10_000_000).await
}

/// A round of error traces (3 spans each) starting at `start_unix_nano`.
async fn send_round_at(s: &Selector, round: u64, per_round: u64, start_unix_nano: u64) {
    let traces: Vec<_> = (0..per_round)
        .map(|n| TraceSpec {
            trace_id: trace_id(70_000 + round * 1000 + n),
            service: "compact-svc".into(),
            spans: 3,
            error: true,
            start_unix_nano,
            duration_ms: 10,
        })
        .collect();
    let resources = traces
        .iter()
        .map(|t| ResourceDef::new(&t.service, synth::trace(t)))
        .collect();
    send(
        &producer(),
        &s.topic,
        &round.to_string(),
        &synth::request(resources).encode_to_vec(),
    )
    .await;
}

/// Expire anything older than a second, keep one snapshot.
const EXPIRE_NOW: &[(&str, &str)] = &[
    ("TSS__MAINTENANCE__SNAPSHOT_MAX_AGE_SECS", "1"),
    ("TSS__MAINTENANCE__MIN_SNAPSHOTS_TO_KEEP", "1"),
];

/// Runs `tail-sampling-selector maintenance` on the selector's table with
/// these settings on top; returns what it printed, failing on an error.
fn maintain(s: &Selector, env: &[(&str, &str)]) -> String {
    let out = s
        .command()
        .arg("maintenance")
        .envs(env.iter().copied())
        .output()
        .expect("maintenance runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn scan(s: &Selector) -> serde_json::Value {
    run_python(
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/scan_table.py"
        )),
        &[
            "--catalog-uri".into(),
            format!("sqlite:///{}", s.catalog_path().display()),
            "--warehouse".into(),
            format!("file://{}", s.warehouse_path().display()),
            "--duckdb".into(),
        ],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_rewrites_small_files_into_one_sorted_file_and_loses_nothing() {
    let prefix = format!("tss-it-compact-{}:", uuid::Uuid::new_v4().simple());
    // Scheduled maintenance off (the harness's default): the test runs it
    // from the command line.
    let s = Selector::start("compact", &[("TSS__REDIS__KEY_PREFIX", prefix.as_str())]).await;
    const ROUNDS: u64 = 10;
    const PER_ROUND: u64 = 200;
    for round in 0..ROUNDS {
        send_round(&s, round, PER_ROUND).await;
        s.wait_exported(((round + 1) * PER_ROUND * 3) as f64).await;
    }
    let id = hex::encode(trace_id(70_000 + 4 * 1000 + 7));
    let (_, before) = s.get(&format!("/admin/traces/{id}")).await;
    // The service list's index has read the ten appended files.
    let listed = ROUNDS * PER_ROUND * 3;
    assert_eq!(listed_spans(&s).await, listed);
    // Manifest pruning by trace_id bounds may drop a few files; most remain.
    assert!(
        before["scan"]["files_planned"].as_u64().expect("planned") >= 2,
        "{before}"
    );

    // The smallest sort memory allowed: the rows sort in spilled runs.
    let stdout = maintain(
        &s,
        &[("TSS__MAINTENANCE__COMPACTION_MEMORY_BYTES", "4194304")],
    );
    assert!(stdout.contains(&format!("{ROUNDS} files")), "{stdout}");
    assert!(stdout.contains("into 1 files"), "{stdout}");
    assert!(
        stdout.contains(&format!("{} rows", ROUNDS * PER_ROUND * 3)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("manifests {ROUNDS} -> 1")),
        "one manifest per append, merged into one: {stdout}"
    );

    // The index reads the compacted file in the background; until it has,
    // the ten files it replaced stand in for it. Either way, and while it
    // switches, every span is listed once.
    for _ in 0..20 {
        assert_eq!(listed_spans(&s).await, listed, "listed once, not twice");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Every span once, and the lookup now plans a single file.
    let total = (ROUNDS * PER_ROUND * 3) as i64;
    assert_eq!(s.count("SELECT count(*) FROM spans").await, total);
    assert_eq!(
        s.count("SELECT count(*) FROM (SELECT DISTINCT trace_id, span_id FROM spans)")
            .await,
        total
    );
    let (status, after) = s.get(&format!("/admin/traces/{id}")).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["span_count"], 3);
    assert_eq!(after["scan"]["files_planned"], 1, "{after}");
    assert_eq!(
        after["spans"], before["spans"],
        "the same spans, in the same order"
    );
    // The one file's rows are in trace id order, then start time, as
    // pyarrow reads them from the Parquet file.
    assert_eq!(
        scan(&s)["files_sorted"],
        serde_json::json!([true]),
        "the compacted file is sorted by trace_id, start_time"
    );

    // The selector goes on appending on top of the compacted snapshot.
    send_round(&s, ROUNDS, PER_ROUND).await;
    s.wait_exported(((ROUNDS + 1) * PER_ROUND * 3) as f64).await;
    let total = total + (PER_ROUND * 3) as i64;
    assert_eq!(s.count("SELECT count(*) FROM spans").await, total);
    assert_eq!(listed_spans(&s).await, total as u64);

    // Readers no one here wrote agree: pyiceberg and DuckDB.
    let read = scan(&s);
    assert_eq!(read["rows"], total, "{read}");
    assert_eq!(read["duckdb_rows"], total, "{read}");
    assert_eq!(
        read["trace_ids"].as_array().map(|a| a.len()),
        Some(((ROUNDS + 1) * PER_ROUND) as usize)
    );

    // A second run finds too few small files (one compacted, one appended).
    let stdout = maintain(&s, &[]);
    assert!(stdout.contains("compaction: 0 files"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_compaction_runs_under_the_lease_while_the_selector_appends() {
    let prefix = format!("tss-it-compact-sched-{}:", uuid::Uuid::new_v4().simple());
    let s = Selector::start(
        "compact-sched",
        &[
            ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
            ("TSS__MAINTENANCE__ENABLED", "true"),
            ("TSS__MAINTENANCE__INTERVAL_SECS", "2"),
            ("TSS__MAINTENANCE__MIN_FILES_TO_COMPACT", "3"),
        ],
    )
    .await;
    // Appends keep coming while the schedule compacts.
    const ROUNDS: u64 = 12;
    const PER_ROUND: u64 = 100;
    for round in 0..ROUNDS {
        send_round(&s, 100 + round, PER_ROUND).await;
        s.wait_exported(((round + 1) * PER_ROUND * 3) as f64).await;
    }
    s.wait_metric(
        "tail_sampling_maintenance_runs_total{result=\"ok\",step=\"compaction\"}",
        1.0,
        std::time::Duration::from_secs(30),
    )
    .await;
    s.wait_metric(
        "tail_sampling_maintenance_files_rewritten_total",
        3.0,
        std::time::Duration::from_secs(30),
    )
    .await;
    let total = (ROUNDS * PER_ROUND * 3) as i64;
    assert_eq!(s.count("SELECT count(*) FROM spans").await, total);
    assert_eq!(
        s.count("SELECT count(*) FROM (SELECT DISTINCT trace_id, span_id FROM spans)")
            .await,
        total
    );
    let (_, health) = s.get("/health").await;
    assert_eq!(health["maintenance"]["status"], "ok", "{health}");
    assert_eq!(
        s.metric("tail_sampling_maintenance_runs_total{result=\"error\",step=\"compaction\"}")
            .await,
        0.0
    );
    let read = scan(&s);
    assert_eq!(read["rows"], total, "{read}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_holder_at_a_time_and_a_dead_holders_lease_runs_out() {
    use std::sync::Arc;
    use std::time::Duration;
    use tail_sampling_selector::config::Settings;
    use tail_sampling_selector::maintenance::lease::Lease;
    use tail_sampling_selector::redis_client::LazyRedis;

    let prefix = format!("tss-it-lease-{}:", uuid::Uuid::new_v4().simple());
    let env = [
        ("TSS__REDIS__URL".to_string(), crate::harness::redis_url()),
        ("TSS__REDIS__KEY_PREFIX".to_string(), prefix),
    ];
    let settings = Settings::load_with_env(None, env).expect("settings");
    let redis = Arc::new(LazyRedis::new(&settings.redis).expect("redis"));
    let a = Lease::new(redis.clone(), "default.spans", Duration::from_millis(1500));
    let b = Lease::new(redis.clone(), "default.spans", Duration::from_millis(1500));
    assert!(a.acquire().await.expect("a"), "a free lease is taken");
    assert!(a.acquire().await.expect("a again"), "the holder keeps it");
    assert!(!b.acquire().await.expect("b"), "nobody else gets it");
    a.release().await;
    assert!(
        b.acquire().await.expect("b after release"),
        "released, it is free"
    );
    // b dies without releasing: after the TTL, a gets it.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert!(
        a.acquire().await.expect("a after expiry"),
        "a dead holder's lease runs out"
    );
    // b's release cannot remove a's lease.
    b.release().await;
    assert!(!b.acquire().await.expect("b"), "still a's");
}

/// Data files under the warehouse, on disk.
fn parquet_files(dir: &Path) -> usize {
    crate::harness::files_under(dir, ".parquet").len()
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_deletes_what_only_old_snapshots_reached_and_keeps_the_replay_guarantee() {
    let prefix = format!("tss-it-expire-{}:", uuid::Uuid::new_v4().simple());
    let mut a = Selector::start("expire", &[("TSS__REDIS__KEY_PREFIX", prefix.as_str())]).await;
    const ROUNDS: u64 = 6;
    const PER_ROUND: u64 = 100;
    for round in 0..ROUNDS {
        send_round(&a, 200 + round, PER_ROUND).await;
        a.wait_exported(((round + 1) * PER_ROUND * 3) as f64).await;
    }
    let total = (ROUNDS * PER_ROUND * 3) as i64;
    assert_eq!(parquet_files(&a.warehouse_path()), ROUNDS as usize);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let stdout = maintain(&a, EXPIRE_NOW);
    // Six appends and the compaction: all but the compaction's snapshot go.
    assert!(stdout.contains(&format!("{ROUNDS} files")), "{stdout}");
    assert!(
        stdout.contains(&format!("expiry: {ROUNDS} snapshots expired")),
        "{stdout}"
    );
    assert_eq!(
        parquet_files(&a.warehouse_path()),
        1,
        "the replaced small files are deleted:\n{stdout}"
    );
    assert_eq!(a.count("SELECT count(*) FROM spans").await, total);
    let read = scan(&a);
    assert_eq!(
        (read["rows"].as_i64(), read["duckdb_rows"].as_i64()),
        (Some(total), Some(total)),
        "{read}"
    );

    // Another selector, in a new consumer group, re-reads every message into
    // the same table. Their offsets are only in the checkpoint now: every
    // span must be found already stored, none stored again.
    let (catalog, warehouse) = (
        a.env("TSS__STORAGE__ICEBERG__CATALOG_URI")
            .expect("uri")
            .to_string(),
        a.warehouse_path(),
    );
    let topic = a.topic.clone();
    let group = format!("{topic}-again");
    let fresh_prefix = format!("tss-it-expire-b-{}:", uuid::Uuid::new_v4().simple());
    // Stopped, its directory (the catalog, the warehouse) kept.
    a.kill();
    let b = Selector::start_on(
        &topic,
        &[
            ("TSS__KAFKA__GROUP_ID", group.as_str()),
            ("TSS__REDIS__KEY_PREFIX", fresh_prefix.as_str()),
            ("TSS__STORAGE__ICEBERG__CATALOG_URI", catalog.as_str()),
            (
                "TSS__STORAGE__ICEBERG__WAREHOUSE",
                warehouse.to_str().expect("path"),
            ),
        ],
    )
    .await;
    b.wait_metric(
        "tail_sampling_replayed_spans_skipped_total",
        total as f64,
        std::time::Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        b.count("SELECT count(*) FROM spans").await,
        total,
        "nothing stored twice"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_compaction_retention_and_expiry_keep_what_they_must() {
    let base = std::env::var("TSS_TEST_POSTGRES_URL").expect(
        "TSS_TEST_POSTGRES_URL must name a PostgreSQL database; run scripts/test.sh (it starts one)",
    );
    let namespace = format!("it_{}", uuid::Uuid::new_v4().simple());
    let prefix = format!("tss-it-pg-maint-{}:", uuid::Uuid::new_v4().simple());
    let s = Selector::start(
        "pg-maint",
        &[
            ("TSS__STORAGE__ICEBERG__CATALOG_URI", base.as_str()),
            ("TSS__STORAGE__ICEBERG__NAMESPACE", namespace.as_str()),
            ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
        ],
    )
    .await;
    const PER_ROUND: u64 = 100;
    // Three flushes of today's traces, one of traces twenty days old.
    for round in 0..3 {
        send_round(&s, 300 + round, PER_ROUND).await;
        s.wait_exported(((round + 1) * PER_ROUND * 3) as f64).await;
    }
    let twenty_days_ago = now_nanos() - 20 * 86_400 * 1_000_000_000;
    send_round_at(&s, 303, PER_ROUND, twenty_days_ago).await;
    s.wait_exported((4 * PER_ROUND * 3) as f64).await;
    let old = "start_time < now() - INTERVAL '15 days'";
    assert_eq!(
        s.count(&format!("SELECT count(*) FROM spans WHERE {old}"))
            .await,
        (PER_ROUND * 3) as i64
    );

    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let stdout = maintain(
        &s,
        &[
            EXPIRE_NOW,
            &[("TSS__MAINTENANCE__MIN_FILES_TO_COMPACT", "2")],
        ]
        .concat(),
    );
    assert!(
        stdout.contains("compaction: 3 files"),
        "today's three files: {stdout}"
    );
    assert!(
        stdout.contains("retention: 1 day partitions removed (1 files, 300 rows)"),
        "{stdout}"
    );
    // The four appends expire; the compaction's and the retention's
    // snapshots are younger than a second.
    assert!(stdout.contains("expiry: 4 snapshots expired"), "{stdout}");

    let today = (3 * PER_ROUND * 3) as i64;
    assert_eq!(s.count("SELECT count(*) FROM spans").await, today);
    assert_eq!(
        s.count(&format!("SELECT count(*) FROM spans WHERE {old}"))
            .await,
        0
    );
    let read = run_python(
        &crate::harness::python_script("scan_table.py"),
        &[
            "--catalog-uri".into(),
            base.replacen("postgres://", "postgresql+psycopg2://", 1),
            "--warehouse".into(),
            format!("file://{}", s.warehouse_path().display()),
            "--table".into(),
            format!("{namespace}.spans"),
            "--duckdb".into(),
        ],
    );
    assert_eq!(
        (read["rows"].as_i64(), read["duckdb_rows"].as_i64()),
        (Some(today), Some(today)),
        "{read}"
    );
    // The old partition's file is still reached by the compaction's snapshot.
    assert_eq!(parquet_files(&s.warehouse_path()), 2);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let stdout = maintain(&s, EXPIRE_NOW);
    assert!(stdout.contains("expiry: 1 snapshots expired"), "{stdout}");
    assert_eq!(
        parquet_files(&s.warehouse_path()),
        1,
        "only the compacted file is left: {stdout}"
    );
    assert_eq!(s.count("SELECT count(*) FROM spans").await, today);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_the_rest_catalog_and_s3_compaction_and_expiry_commit_through_the_catalog() {
    let weed = crate::harness::Seaweed::from_env();
    let namespace = format!("it_rest_maint_{}", uuid::Uuid::new_v4().simple());
    let prefix = format!("tss-it-rest-maint-{}:", uuid::Uuid::new_v4().simple());
    let mut settings = weed.rest_catalog(&namespace);
    settings.push(("TSS__REDIS__KEY_PREFIX".into(), prefix));
    let s = Selector::start("rest-maint", &crate::harness::pairs(&settings)).await;
    const ROUNDS: u64 = 4;
    const PER_ROUND: u64 = 100;
    for round in 0..ROUNDS {
        send_round(&s, 400 + round, PER_ROUND).await;
        s.wait_exported(((round + 1) * PER_ROUND * 3) as f64).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let stdout = maintain(
        &s,
        &[
            EXPIRE_NOW,
            &[("TSS__MAINTENANCE__MIN_FILES_TO_COMPACT", "2")],
        ]
        .concat(),
    );
    assert!(
        stdout.contains(&format!("compaction: {ROUNDS} files")),
        "{stdout}"
    );
    assert!(stdout.contains("into 1 files"), "{stdout}");
    assert!(
        stdout.contains(&format!("expiry: {ROUNDS} snapshots expired")),
        "{stdout}"
    );
    let total = (ROUNDS * PER_ROUND * 3) as i64;
    assert_eq!(s.count("SELECT count(*) FROM spans").await, total);
    assert_eq!(
        s.count("SELECT count(*) FROM (SELECT DISTINCT trace_id, span_id FROM spans)")
            .await,
        total
    );
    let read = run_python(
        &crate::harness::python_script("scan_table.py"),
        &weed.scan_args(&format!("{namespace}.spans")),
    );
    assert_eq!(
        (read["rows"].as_i64(), read["duckdb_rows"].as_i64()),
        (Some(total), Some(total)),
        "{read}"
    );
    // The replaced small files are gone from the bucket.
    let location = read["location"].as_str().unwrap_or_default();
    let table_prefix = location.trim_start_matches(&format!("s3://{}/", weed.warehouse));
    let parquet = weed
        .list(&weed.warehouse, table_prefix)
        .iter()
        .filter(|k| k.ends_with(".parquet"))
        .count();
    assert_eq!(parquet, 1, "{stdout}");

    // An orphan in the bucket, as a crash between writing and committing
    // leaves one: listed over S3 and deleted past the grace period, with
    // every referenced object kept.
    let orphan = format!(
        "{}/data/00000-0-orphan-from-a-crash.parquet",
        table_prefix.trim_end_matches('/')
    );
    weed.put(&weed.warehouse, &orphan);
    // Graces under an hour are refused: the cleanup's clock runs two hours
    // ahead instead, which ages every object in the bucket at once.
    let stdout = maintain(
        &s,
        &[
            ("TSS__MAINTENANCE__ORPHAN_FILE_GRACE_SECS", "3600"),
            ("TSS_TESTKIT_CLOCK_AHEAD_SECS", "7200"),
        ],
    );
    let keys = weed.list(&weed.warehouse, table_prefix);
    assert!(!keys.contains(&orphan), "{stdout}\n{keys:?}");
    assert_eq!(s.count("SELECT count(*) FROM spans").await, total);
    let read = run_python(
        &crate::harness::python_script("scan_table.py"),
        &weed.scan_args(&format!("{namespace}.spans")),
    );
    assert_eq!(
        (read["rows"].as_i64(), read["duckdb_rows"].as_i64()),
        (Some(total), Some(total)),
        "{read}"
    );
}

/// Over a hundred commits, so that the metadata log (100 previous versions)
/// lets older `metadata.json` files go; an orphan data file and manifest as
/// a crash between writing and committing leaves them; a file of someone
/// else's. Cleanup deletes the orphans and the old metadata files once past
/// the grace period, keeps the young and the foreign, and every reader
/// still reads every row.
#[tokio::test(flavor = "multi_thread")]
async fn orphan_files_and_old_metadata_files_go_after_the_grace_period_and_nothing_referenced_does()
{
    let prefix = format!("tss-it-orphans-{}:", uuid::Uuid::new_v4().simple());
    let s = Selector::start(
        "orphans",
        &[
            ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
            ("TSS__STORAGE__FLUSH_INTERVAL_SECS", "100ms"),
            ("TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    // One round every 60 ms, so that most flushes have something to commit,
    // until more than 110 commits have landed (how many rounds that takes
    // depends on the machine's speed).
    const PER_ROUND: u64 = 2;
    const MAX_ROUNDS: u64 = 3000;
    let mut rounds = 0;
    while rounds < MAX_ROUNDS {
        send_round(&s, 500 + rounds, PER_ROUND).await;
        rounds += 1;
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        if rounds % 50 == 0 && s.metric("tail_sampling_iceberg_commits_total").await > 115.0 {
            break;
        }
    }
    let total = (rounds * PER_ROUND * 3) as i64;
    s.wait_exported(total as f64).await;
    let commits = s.metric("tail_sampling_iceberg_commits_total").await;
    assert!(
        commits > 110.0,
        "too few commits for the metadata log to roll over: {commits}"
    );
    let warehouse = s.warehouse_path();
    let metadata_before = crate::harness::files_under(&warehouse, ".metadata.json").len();
    assert!(
        metadata_before > 110,
        "{metadata_before} metadata.json files after {commits} commits"
    );

    let data_dir = crate::harness::files_under(&warehouse, ".parquet")[0]
        .parent()
        .expect("a data directory")
        .to_path_buf();
    let table_dir = crate::harness::files_under(&warehouse, ".metadata.json")[0]
        .parent()
        .and_then(Path::parent)
        .expect("the table's directory")
        .to_path_buf();
    let orphan_data = data_dir.join("00000-0-orphan-from-a-crash.parquet");
    let orphan_manifest = table_dir
        .join("metadata")
        .join("orphan-from-a-crash-m0.avro");
    let foreign = table_dir.join("README.txt");
    for f in [&orphan_data, &orphan_manifest, &foreign] {
        std::fs::write(f, b"not referenced by any snapshot").expect("write a stray file");
    }
    // The table ages two hours: every file under it, the strays too.
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for f in crate::harness::files_under(&warehouse, "") {
        let file = std::fs::File::options().write(true).open(&f).expect("open");
        file.set_modified(two_hours_ago)
            .expect("set the modification time");
    }
    // Written just now: well inside a grace period of an hour, however long
    // the run takes.
    let young = data_dir.join("00000-0-young-in-flight.parquet");
    std::fs::write(&young, b"a commit in flight").expect("write");

    let stdout = maintain(&s, &[("TSS__MAINTENANCE__ORPHAN_FILE_GRACE_SECS", "3600")]);
    assert!(
        !orphan_data.exists() && !orphan_manifest.exists(),
        "the old orphans are deleted:\n{stdout}"
    );
    assert!(
        young.exists(),
        "a file younger than the grace period is kept:\n{stdout}"
    );
    assert!(
        foreign.exists(),
        "a file that is not Iceberg's is left alone:\n{stdout}"
    );
    let metadata_after = crate::harness::files_under(&warehouse, ".metadata.json").len();
    // The current version and the 100 in its log.
    assert_eq!(metadata_after, 101, "{stdout}");
    assert!(
        !stdout.contains("and 0 metadata.json files deleted"),
        "{stdout}"
    );
    assert_eq!(s.count("SELECT count(*) FROM spans").await, total);
    let read = scan(&s);
    assert_eq!(
        (read["rows"].as_i64(), read["duckdb_rows"].as_i64()),
        (Some(total), Some(total)),
        "{read}"
    );

    // The same run again deletes nothing: everything left is referenced,
    // young or foreign.
    let again = maintain(&s, &[("TSS__MAINTENANCE__ORPHAN_FILE_GRACE_SECS", "3600")]);
    assert!(
        again.contains(" 0 data files and manifests and 0 metadata.json files deleted"),
        "{again}"
    );
}

async fn runs(s: &Selector) -> f64 {
    s.metric("tail_sampling_maintenance_runs_total{result=\"ok\",step=\"compaction\"}")
        .await
}

/// Two selectors on one topic and one table, maintenance every second: one
/// takes the lease and keeps it, the other never runs; SIGKILL the holder
/// and, once its lease runs out, the other takes over.
#[tokio::test(flavor = "multi_thread")]
async fn of_two_instances_one_maintains_and_killing_it_hands_the_lease_over() {
    use std::time::{Duration, Instant};
    let prefix = format!("tss-it-two-{}:", uuid::Uuid::new_v4().simple());
    let scheduled = [
        ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
        ("TSS__MAINTENANCE__ENABLED", "true"),
        ("TSS__MAINTENANCE__INTERVAL_SECS", "1"),
        ("TSS__MAINTENANCE__LEASE_TTL_SECS", "3"),
        ("TSS__MAINTENANCE__MIN_FILES_TO_COMPACT", "2"),
    ];
    let mut a = Selector::start("two-maintainers", &scheduled).await;
    let (catalog, warehouse) = (
        a.env("TSS__STORAGE__ICEBERG__CATALOG_URI")
            .expect("uri")
            .to_string(),
        a.env("TSS__STORAGE__ICEBERG__WAREHOUSE")
            .expect("warehouse")
            .to_string(),
    );
    let shared: Vec<(&str, &str)> = scheduled
        .iter()
        .copied()
        .chain([
            ("TSS__STORAGE__ICEBERG__CATALOG_URI", catalog.as_str()),
            ("TSS__STORAGE__ICEBERG__WAREHOUSE", warehouse.as_str()),
        ])
        .collect();
    let b = Selector::start_on(&a.topic, &shared).await;
    // Some appends for compaction to find, while both run; the group
    // shares the partitions between the two.
    for round in 0..4 {
        send_round(&a, 600 + round, 50).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while a
        .metric("tail_sampling_spans_exported_total{sink=\"iceberg\"}")
        .await
        + b.metric("tail_sampling_spans_exported_total{sink=\"iceberg\"}")
            .await
        < 600.0
    {
        assert!(
            Instant::now() < deadline,
            "the spans were not stored\n{}\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let held = (
        a.metric("tail_sampling_maintenance_lease_held").await,
        b.metric("tail_sampling_maintenance_lease_held").await,
    );
    let (ran_a, ran_b) = (runs(&a).await, runs(&b).await);
    assert_eq!(
        held.0 + held.1,
        1.0,
        "exactly one holds the lease: {held:?}"
    );
    let (holder, other_ran) = if held.0 == 1.0 {
        (ran_a, ran_b)
    } else {
        (ran_b, ran_a)
    };
    assert!(holder >= 3.0, "the holder runs every second: {holder} runs");
    assert_eq!(
        other_ran, 0.0,
        "the other never runs while the holder lives"
    );

    // Kill the holder without a word: its lease runs out after 3 s.
    let survivor = if held.0 == 1.0 {
        a.kill();
        &b
    } else {
        drop(b);
        &a
    };
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(30);
    while survivor
        .metric("tail_sampling_maintenance_lease_held")
        .await
        != 1.0
    {
        assert!(
            Instant::now() < deadline,
            "nobody took the lease over\n{}",
            survivor.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took_over = killed.elapsed();
    assert!(
        took_over >= Duration::from_millis(1500),
        "the lease was taken before it ran out: {took_over:?}"
    );
    let before = runs(survivor).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while runs(survivor).await < before + 2.0 {
        assert!(
            Instant::now() < deadline,
            "the new holder does not run\n{}",
            survivor.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "lease handed over {} ms after the holder's SIGKILL",
        took_over.as_millis()
    );
    assert!(
        survivor.log().contains("took the maintenance lease"),
        "{}",
        survivor.log()
    );
}

/// The spans `/admin/services` counts over the last day, every service.
async fn listed_spans(s: &Selector) -> u64 {
    let now = chrono::Utc::now().timestamp_millis();
    let (status, body) = s
        .get(&format!(
            "/admin/services?from={}&to={}",
            now - 86_400_000,
            now + 60_000
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    body["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s["span_count"].as_u64().expect("span_count"))
        .sum()
}
