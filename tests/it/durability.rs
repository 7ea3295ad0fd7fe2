//! The promise: no kept trace is lost and no span is stored twice, whatever
//! happens to the selector. Each test produces traces whose decisions are
//! known, disturbs the selector while it works (SIGKILL, SIGTERM, a second
//! member leaving the group, storage going away), then reads the table and
//! prints `lost=N duplicated=N` with its figures.
//!
//! `scripts/durability.sh` runs these tests alone and shows the figures.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{create_topic, now_nanos, producer, send, send_at, trace_id, Selector};
use prost::Message;
use rand::Rng;
use tail_sampling_selector::testkit::synth::{self, ResourceDef, TraceSpec};

const SPANS_PER_TRACE: usize = 3;

/// One produced trace: its id, its two messages, and whether it must be kept.
struct Case {
    id: [u8; 16],
    first: Vec<u8>,
    second: Vec<u8>,
    kept: bool,
}

/// `n` traces; every 5th has an error and must be kept, the rest are fast and
/// dropped. Each trace is sent in two messages: two spans, then the last one.
fn workload(seed_base: u64, n: u64) -> Vec<Case> {
    (0..n)
        .map(|i| {
            let id = trace_id(seed_base + i);
            let kept = i % 5 == 0;
            let spans = synth::trace(&TraceSpec {
                trace_id: id,
                service: "durability".into(),
                spans: SPANS_PER_TRACE,
                error: kept,
                start_unix_nano: now_nanos() - 50_000_000,
                duration_ms: 50,
            });
            let encode = |s: &[opentelemetry_proto::tonic::trace::v1::Span]| {
                synth::request(vec![ResourceDef::new("durability", s.to_vec())]).encode_to_vec()
            };
            Case {
                id,
                first: encode(&spans[..2]),
                second: encode(&spans[2..]),
                kept,
            }
        })
        .collect()
}

/// Sends every trace, the second half of trace i together with the first of
/// trace i + LAG, so traces interleave across messages; about `per_sec`
/// traces a second.
async fn produce(topic: String, cases: Arc<Vec<Case>>, per_sec: u64) {
    const LAG: usize = 10;
    let p = producer();
    let pause = Duration::from_micros(1_000_000 / per_sec.max(1));
    for i in 0..cases.len() + LAG {
        if let Some(c) = cases.get(i) {
            send(&p, &topic, &hex::encode(c.id), &c.first).await;
        }
        if let Some(c) = i.checked_sub(LAG).and_then(|j| cases.get(j)) {
            send(&p, &topic, &hex::encode(c.id), &c.second).await;
        }
        tokio::time::sleep(pause).await;
    }
}

/// What the table holds for the workload.
struct Outcome {
    expected: usize,
    rows: usize,
    lost: usize,
    duplicated: usize,
    unexpected: usize,
}

async fn outcome(s: &Selector, cases: &[Case]) -> Outcome {
    let body = s.query("SELECT trace_id, span_id FROM spans").await;
    let rows = body["rows"].as_array().expect("rows");
    assert_eq!(
        body["truncated"], false,
        "raise query.max_rows for this test"
    );
    let stored: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or_default().to_string(),
                r[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let distinct: HashSet<&(String, String)> = stored.iter().collect();
    let kept: BTreeSet<String> = cases
        .iter()
        .filter(|c| c.kept)
        .map(|c| hex::encode(c.id))
        .collect();
    let expected: HashSet<(String, String)> = cases
        .iter()
        .filter(|c| c.kept)
        .flat_map(|c| {
            (0..SPANS_PER_TRACE)
                .map(move |i| (hex::encode(c.id), hex::encode(synth::span_id_for(&c.id, i))))
        })
        .collect();
    Outcome {
        expected: expected.len(),
        rows: stored.len(),
        lost: expected.iter().filter(|k| !distinct.contains(k)).count(),
        duplicated: stored.len() - distinct.len(),
        unexpected: distinct.iter().filter(|(t, _)| !kept.contains(t)).count(),
    }
}

/// Waits until every expected span is stored (or the deadline passes), then
/// a little longer so that a late duplicate would show too.
async fn settle(s: &Selector, cases: &[Case], deadline: Duration) -> Outcome {
    let until = Instant::now() + deadline;
    loop {
        let o = outcome(s, cases).await;
        if o.lost == 0 || Instant::now() > until {
            tokio::time::sleep(Duration::from_secs(3)).await;
            return outcome(s, cases).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn report(name: &str, cases: &[Case], o: &Outcome, extra: &str) {
    println!(
        "{name}: traces={} kept_traces={} expected_spans={} stored_rows={} lost={} duplicated={} unexpected={} {extra}",
        cases.len(),
        cases.iter().filter(|c| c.kept).count(),
        o.expected,
        o.rows,
        o.lost,
        o.duplicated,
        o.unexpected,
    );
}

fn assert_nothing_lost(s: &Selector, o: &Outcome) {
    assert!(
        o.lost == 0 && o.duplicated == 0 && o.unexpected == 0,
        "lost={} duplicated={} unexpected={}\n{}",
        o.lost,
        o.duplicated,
        o.unexpected,
        s.log()
    );
}

/// Short timeouts, and a row cap that fits the whole table.
const FAST: &[(&str, &str)] = &[
    ("TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS", "2"),
    ("TSS__STORAGE__FLUSH_INTERVAL_SECS", "1"),
    ("TSS__KAFKA__COMMIT_INTERVAL_MS", "200"),
    ("TSS__QUERY__MAX_ROWS", "100000"),
];

/// A killed instance restarts as the same static group member (KIP-345),
/// as docs/configuration.md recommends for deployments: it takes its
/// partitions back at once, where a dynamic member would wait for the dead
/// incarnation's eviction (which Tansu 0.6 does not reliably do). A static
/// member needs no short session; Tansu also pauses 3 s in each static
/// JoinGroup and SyncGroup without counting them as contact, so a session
/// shorter than both would evict a member that is still joining.
fn static_member(instance: &str) -> [(&str, &str); 2] {
    [
        ("TSS__KAFKA__GROUP_INSTANCE_ID", instance),
        ("TSS__KAFKA__SESSION_TIMEOUT_MS", "45000"),
    ]
}

/// SIGKILLs `s` five times, 1–6 s apart, restarting it at once each time;
/// with `wait_ready`, each restart waits for `/health/ready` as an
/// operator would, else for nothing, as a crash loop's supervisor does.
async fn crash_loop(s: &mut Selector, wait_ready: bool) {
    let mut rng = rand::rng();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..6_000))).await;
        s.kill();
        s.respawn();
        if wait_ready {
            s.wait_ready().await;
        }
    }
}

/// Produces 2,000 traces while stopping the selector at 5 random moments,
/// with SIGKILL or SIGTERM, restarting it each time. Kafka offsets are
/// committed only every 3 s while Iceberg commits every second, so most kills
/// land between the two and the restarted selector re-reads spans that are
/// already stored.
async fn stop_and_restart(name: &str, seed_base: u64, graceful: bool, per_sec: u64) {
    stop_and_restart_with(name, seed_base, graceful, per_sec, &[]).await;
}

/// [`stop_and_restart`] with more settings (another catalog, say).
async fn stop_and_restart_with(
    name: &str,
    seed_base: u64,
    graceful: bool,
    per_sec: u64,
    extra: &[(&str, &str)],
) -> String {
    let instance = format!("{name}-{}", uuid::Uuid::new_v4().simple());
    let overrides: Vec<(&str, &str)> = FAST
        .iter()
        .copied()
        .chain([("TSS__KAFKA__COMMIT_INTERVAL_MS", "3000")])
        .chain(static_member(&instance).into_iter().filter(|_| !graceful))
        .chain(extra.iter().copied())
        .collect();
    let mut s = Selector::start(name, &overrides).await;
    let cases = Arc::new(workload(seed_base, 2_000));
    let producing = tokio::spawn(produce(s.topic.clone(), cases.clone(), per_sec));
    let mut rng = rand::rng();
    let mut shutdowns = Vec::new();
    for _ in 0..5 {
        // Long enough for each incarnation to decide and commit some traces
        // (inactivity 2 s, flush 1 s), short of its next Kafka commit or not.
        tokio::time::sleep(Duration::from_millis(rng.random_range(2_500..6_000))).await;
        if graceful {
            shutdowns.push(s.terminate(Duration::from_secs(45)));
        } else {
            s.kill();
        }
        s.restart().await;
    }
    producing.await.expect("producer task");
    let o = settle(&s, &cases, Duration::from_secs(120)).await;
    let extra = if graceful {
        let longest = shutdowns.iter().max().copied().unwrap_or_default();
        format!("restarts=5 longest_shutdown_ms={}", longest.as_millis())
    } else {
        "restarts=5".to_string()
    };
    report(
        name,
        &cases,
        &o,
        &format!("{extra} {}", replay_figures(&s.log())),
    );
    assert_nothing_lost(&s, &o);
    s.log()
}

/// Writes the workload as a backlog: the traffic of the last ten minutes,
/// each message stamped as if produced then, interleaved as [`produce`] does.
async fn produce_backlog(topic: &str, cases: &[Case]) {
    const LAG: usize = 10;
    let p = producer();
    let step_ms = 600_000 / cases.len().max(1) as i64;
    let start_ms = (now_nanos() / 1_000_000) as i64 - 600_000;
    for i in 0..cases.len() + LAG {
        let ts = start_ms + i as i64 * step_ms;
        if let Some(c) = cases.get(i) {
            send_at(&p, topic, &hex::encode(c.id), &c.first, ts).await;
        }
        if let Some(c) = i.checked_sub(LAG).and_then(|j| cases.get(j)) {
            send_at(&p, topic, &hex::encode(c.id), &c.second, ts).await;
        }
    }
}

/// A backlog of 2,000 traces, stamped over the last ten minutes, is decided
/// by stream time while the selector is killed three times in the middle of
/// draining it: nothing kept is lost, nothing is stored twice.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_while_draining_a_backlog_loses_and_duplicates_nothing() {
    let name = "backlog-kill";
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (topic, instance) = (format!("tss-it-{name}-{run}"), format!("{name}-{run}"));
    create_topic(&topic, 4).await;
    let cases = workload(900_000_000, 2_000);
    produce_backlog(&topic, &cases).await;
    let overrides: Vec<(&str, &str)> = FAST
        .iter()
        .copied()
        .chain([("TSS__KAFKA__COMMIT_INTERVAL_MS", "1500")])
        .chain(static_member(&instance))
        .collect();
    let mut s = Selector::start_on(&topic, &overrides).await;
    let mut rng = rand::rng();
    let mut stored_at_kill = Vec::new();
    for _ in 0..3 {
        // Right after readiness, while the backlog is being read and decided.
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1_500))).await;
        stored_at_kill.push(outcome(&s, &cases).await.rows);
        s.kill();
        s.restart().await;
    }
    let o = settle(&s, &cases, Duration::from_secs(120)).await;
    let extra = format!(
        "restarts=3 rows_stored_at_each_kill={stored_at_kill:?} {}",
        replay_figures(&s.log())
    );
    report(name, &cases, &o, &extra);
    assert_nothing_lost(&s, &o);
}

/// Over every incarnation's log: how often replayed traces were checked
/// against the table, and how many of their spans were already stored.
fn replay_figures(log: &str) -> String {
    let checks: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("checked replayed traces against the table"))
        .collect();
    let field = |l: &str, name: &str| -> u64 {
        l.split(&format!("{name}="))
            .nth(1)
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    format!(
        "replay_checks={} replayed_traces={} already_stored_spans_skipped={}",
        checks.len(),
        checks.iter().map(|l| field(l, "traces")).sum::<u64>(),
        checks
            .iter()
            .map(|l| field(l, "already_stored_spans"))
            .sum::<u64>(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    stop_and_restart("crash-sigkill", 10_000_000, false, 40).await;
}

/// The same SIGKILLs while table maintenance runs every second against the
/// live traffic: compaction rewrites the small files, expiry removes every
/// snapshot older than a second (so the replay check reads the offsets
/// checkpoint), and orphan cleanup runs (its grace of at least an hour
/// keeps what the kills just left; the orphan tests age the files).
/// Kills land in the middle of rewrites and expiries too.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_while_compaction_and_expiry_run_loses_and_duplicates_nothing() {
    // A key prefix of its own: the maintenance lease lives in Redis, and
    // another selector on this Redis (a quickstart left running) would hold
    // the default one.
    let prefix = format!("tss-it-{}:", uuid::Uuid::new_v4().simple());
    let maintenance = [
        ("TSS__REDIS__KEY_PREFIX", prefix.as_str()),
        ("TSS__MAINTENANCE__ENABLED", "true"),
        ("TSS__MAINTENANCE__INTERVAL_SECS", "1"),
        ("TSS__MAINTENANCE__LEASE_TTL_SECS", "2"),
        ("TSS__MAINTENANCE__MIN_FILES_TO_COMPACT", "2"),
        ("TSS__MAINTENANCE__SNAPSHOT_MAX_AGE_SECS", "1"),
        ("TSS__MAINTENANCE__MIN_SNAPSHOTS_TO_KEEP", "1"),
        ("TSS__MAINTENANCE__ORPHAN_FILE_GRACE_SECS", "3600"),
    ];
    let log = stop_and_restart_with(
        "crash-sigkill-maintained",
        80_000_000,
        false,
        40,
        &maintenance,
    )
    .await;
    let compactions = log
        .lines()
        .filter(|l| l.contains("compaction committed"))
        .count();
    let expiries = log
        .lines()
        .filter(|l| l.contains("expired snapshots"))
        .count();
    println!("crash-sigkill-maintained: compactions={compactions} expiries={expiries}");
    assert!(
        compactions > 0 && expiries > 0,
        "maintenance did not run: {compactions} compactions, {expiries} expiries"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_on_the_rest_catalog_and_s3_loses_and_duplicates_nothing() {
    let weed = crate::harness::Seaweed::from_env();
    let namespace = format!("it_crash_{}", uuid::Uuid::new_v4().simple());
    let rest = weed.rest_catalog(&namespace);
    stop_and_restart_with(
        "crash-sigkill-rest",
        50_000_000,
        false,
        40,
        &crate::harness::pairs(&rest),
    )
    .await;
}

/// A crash loop: SIGKILL five times at random 1–6 s intervals, restarting at
/// once each time without waiting for the member to own partitions. With
/// static membership each incarnation takes the dead one's place in the
/// group, so the last one owns every partition again within moments, and
/// nothing kept is lost or stored twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_loop_with_static_membership_ends_with_every_partition_owned() {
    let instance = format!("crash-loop-{}", uuid::Uuid::new_v4().simple());
    let overrides: Vec<(&str, &str)> = FAST
        .iter()
        .copied()
        .chain([("TSS__KAFKA__COMMIT_INTERVAL_MS", "3000")])
        .chain(static_member(&instance))
        .collect();
    let mut s = Selector::start("crash-loop", &overrides).await;
    s.wait_metric(
        "tail_sampling_assigned_partitions",
        4.0,
        Duration::from_secs(60),
    )
    .await;
    let cases = Arc::new(workload(60_000_000, 1_500));
    let producing = tokio::spawn(produce(s.topic.clone(), cases.clone(), 40));
    crash_loop(&mut s, false).await;
    s.wait_ready().await;
    let back = Instant::now();
    s.wait_metric(
        "tail_sampling_assigned_partitions",
        4.0,
        Duration::from_secs(60),
    )
    .await;
    let owned_after = back.elapsed();
    producing.await.expect("producer task");
    let o = settle(&s, &cases, Duration::from_secs(120)).await;
    report(
        "crash-loop",
        &cases,
        &o,
        &format!(
            "kills=5 every_partition_owned_ms_after_ready={} {}",
            owned_after.as_millis(),
            replay_figures(&s.log())
        ),
    );
    assert_nothing_lost(&s, &o);
    assert_eq!(s.metric("tail_sampling_assigned_partitions").await, 4.0);
}

/// A crash loop as an operator runs one by hand: a producer writes 140
/// traces while the selector, a static member, is killed five times 1–6 s
/// apart, each restart waiting for `/health/ready`. (With a 10 s session,
/// Tansu 0.6 can evict the static member while it joins under load and
/// leave the group in a rebalance that never ends, as [`static_member`]
/// says: the messages stay unread, and the member warns that it owns
/// nothing; Apache Kafka has no such flaw.)
/// Every kept trace is stored once, and the group's committed offsets end
/// at each partition's high watermark, never past it: no offset is
/// committed for a message whose trace is not stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_loop_restarted_on_readiness_commits_no_offset_past_a_stored_trace() {
    let instance = format!("ready-loop-{}", uuid::Uuid::new_v4().simple());
    let overrides: Vec<(&str, &str)> = FAST
        .iter()
        .copied()
        .chain(static_member(&instance))
        .collect();
    let mut s = Selector::start("ready-loop", &overrides).await;
    let cases = Arc::new(workload(70_000_000, 140));
    let producing = tokio::spawn(produce(s.topic.clone(), cases.clone(), 8));
    crash_loop(&mut s, true).await;
    producing.await.expect("producer task");
    let o = settle(&s, &cases, Duration::from_secs(120)).await;
    report("ready-loop", &cases, &o, &replay_figures(&s.log()));
    assert_nothing_lost(&s, &o);
    // Every message is decided by now; the last commit follows within a second.
    let group = format!("{}-group", s.topic);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let offsets = crate::harness::committed_and_high(&s.topic, &group, 4).await;
        assert!(
            offsets.iter().all(|(c, h)| c <= h),
            "an offset committed past the high watermark: {offsets:?}"
        );
        if offsets.iter().all(|(c, h)| c == h) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the committed offsets stop short of the high watermarks: {offsets:?}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Two members of one group on a one-partition topic: the one that owns
/// nothing says so in its gauge and, once that has lasted longer than the
/// session timeout while the group has unread messages, in a warning.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_owns_nothing_says_so() {
    let one_partition: Vec<(&str, &str)> = FAST
        .iter()
        .copied()
        .chain([("TSS__KAFKA__TOPIC_PARTITIONS", "1")])
        .collect();
    let a = Selector::start("idle-member", &one_partition).await;
    a.wait_metric(
        "tail_sampling_assigned_partitions",
        1.0,
        Duration::from_secs(60),
    )
    .await;
    let b = Selector::start_on(&a.topic, &one_partition).await;
    let cases = Arc::new(workload(70_000_000, 600));
    let producing = tokio::spawn(produce(a.topic.clone(), cases.clone(), 40));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !b
        .log()
        .contains("owns no partition while its group has unread messages")
    {
        assert!(
            Instant::now() < deadline,
            "no warning from the idle member\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (owned_a, owned_b) = (
        a.metric("tail_sampling_assigned_partitions").await,
        b.metric("tail_sampling_assigned_partitions").await,
    );
    producing.abort();
    assert_eq!((owned_a, owned_b), (1.0, 0.0));
    assert!(
        !a.log().contains("owns no partition"),
        "the owner must not warn\n{}",
        a.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_at_random_moments_loses_and_duplicates_nothing() {
    stop_and_restart("crash-sigterm", 20_000_000, true, 60).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_leaving_the_group_hands_over_its_partitions() {
    let mut a = Selector::start("handover", FAST).await;
    // B shares A's topic, group, catalog and warehouse.
    let shared: Vec<(&str, &str)> = FAST
        .iter()
        .copied()
        .chain([
            (
                "TSS__STORAGE__ICEBERG__CATALOG_URI",
                a.env("TSS__STORAGE__ICEBERG__CATALOG_URI")
                    .unwrap_or_default(),
            ),
            (
                "TSS__STORAGE__ICEBERG__WAREHOUSE",
                a.env("TSS__STORAGE__ICEBERG__WAREHOUSE")
                    .unwrap_or_default(),
            ),
        ])
        .collect();
    let b = Selector::start_on(&a.topic, &shared).await;
    let cases = Arc::new(workload(30_000_000, 1_000));
    let producing = tokio::spawn(produce(a.topic.clone(), cases.clone(), 150));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let took = a.terminate(Duration::from_secs(45));
    producing.await.expect("producer task");
    let o = settle(&b, &cases, Duration::from_secs(120)).await;
    report(
        "handover",
        &cases,
        &o,
        &format!("shutdown_ms={}", took.as_millis()),
    );
    assert_nothing_lost(&b, &o);
    assert!(
        a.log().contains("partitions revoked"),
        "A gave its partitions up"
    );
}

/// A TCP relay in front of the S3 server that can refuse every connection,
/// as an unreachable S3 endpoint does, or stop answering writes: a request
/// that starts with `PUT` or `POST` is held, unanswered, while writes hang.
struct Relay {
    port: u16,
    down: Arc<AtomicBool>,
    writes_hang: Arc<AtomicBool>,
}

/// Resolves once `flag` is set.
async fn until_set(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Forwards one connection's requests, holding the first request that
/// starts while writes hang until they answer again (then the connection
/// is cut, as a server that gave up would).
async fn forward_requests(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    writes_hang: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let write = buf[..n].starts_with(b"PUT ") || buf[..n].starts_with(b"POST ");
        if write && writes_hang.load(Ordering::SeqCst) {
            while writes_hang.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let down = Arc::new(AtomicBool::new(false));
        let writes_hang = Arc::new(AtomicBool::new(false));
        let (flag, hang) = (down.clone(), writes_hang.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (flag, hang) = (flag.clone(), hang.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let (in_read, mut in_write) = inbound.into_split();
                    let (mut out_read, out_write) = outbound.into_split();
                    // Cut established connections too when the relay goes down.
                    tokio::select! {
                        _ = forward_requests(in_read, out_write, hang) => {}
                        _ = tokio::io::copy(&mut out_read, &mut in_write) => {}
                        _ = until_set(&flag) => {}
                    }
                });
            }
        });
        Relay {
            port,
            down,
            writes_hang,
        }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn set_writes_hang(&self, hang: bool) {
        self.writes_hang.store(hang, Ordering::SeqCst);
    }
}

/// A selector on a SQLite catalog whose warehouse is on S3 behind `relay`.
fn s3_behind_relay(
    s3: &crate::harness::Seaweed,
    relay: &Relay,
    name: &str,
) -> Vec<(&'static str, String)> {
    let bucket = format!("tss-{name}-{}", uuid::Uuid::new_v4().simple());
    s3.create_bucket(&bucket);
    vec![
        (
            "TSS__STORAGE__ICEBERG__WAREHOUSE",
            format!("s3://{bucket}/warehouse"),
        ),
        (
            "TSS__STORAGE__ICEBERG__S3_ENDPOINT",
            format!("http://127.0.0.1:{}", relay.port),
        ),
        (
            "TSS__STORAGE__ICEBERG__S3_ACCESS_KEY_ID",
            s3.access_key.clone(),
        ),
        (
            "TSS__STORAGE__ICEBERG__S3_SECRET_ACCESS_KEY",
            s3.secret_key.clone(),
        ),
    ]
}

/// An object store that stops answering writes (connections accepted,
/// `PUT`s never answered) for 15 s while traffic flows: each flush attempt
/// fails after `storage.write_timeout_secs` (3 s here) instead of waiting
/// for S3 forever, is retried, and once S3 answers again every kept trace
/// is stored once.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_object_store_fails_each_flush_in_time_and_loses_nothing() {
    let s3 = crate::harness::Seaweed::from_env();
    let relay = Relay::start(s3.port()).await;
    let storage = s3_behind_relay(&s3, &relay, "hung-s3");
    let overrides: Vec<(&str, &str)> = FAST
        .iter()
        .copied()
        .chain(storage.iter().map(|(k, v)| (*k, v.as_str())))
        .chain([("TSS__STORAGE__WRITE_TIMEOUT_SECS", "3")])
        .collect();
    let s = Selector::start("hung-s3", &overrides).await;
    let cases = Arc::new(workload(45_000_000, 600));
    let producing = tokio::spawn(produce(s.topic.clone(), cases.clone(), 40));
    tokio::time::sleep(Duration::from_secs(3)).await;

    relay.set_writes_hang(true);
    let hung = Instant::now();
    let mut timed_out = false;
    while hung.elapsed() < Duration::from_secs(15) {
        timed_out |= s
            .log()
            .contains("writing data files took longer than 3 s (storage.write_timeout_secs)");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    relay.set_writes_hang(false);
    assert!(
        timed_out,
        "no flush gave up on the hung object store within 15 s\n{}",
        s.log()
    );
    producing.await.expect("producer task");
    let o = settle(&s, &cases, Duration::from_secs(120)).await;
    report("hung-s3", &cases, &o, "writes_hung_secs=15");
    assert_nothing_lost(&s, &o);
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_outage_pauses_consumption_and_loses_nothing() {
    let s3 = crate::harness::Seaweed::from_env();
    let relay = Relay::start(s3.port()).await;
    let storage = s3_behind_relay(&s3, &relay, "outage");
    const LIMIT: f64 = 600.0;
    let overrides: Vec<(&str, &str)> = FAST
        .iter()
        .copied()
        .chain(storage.iter().map(|(k, v)| (*k, v.as_str())))
        .chain([
            ("TSS__BUFFER__MAX_BUFFERED_SPANS", "600"),
            ("TSS__SAMPLING__MAX_SPANS_PER_TRACE", "500"),
        ])
        .collect();
    let s = Selector::start("outage", &overrides).await;
    let cases = Arc::new(workload(40_000_000, 1_500));
    let producing = tokio::spawn(produce(s.topic.clone(), cases.clone(), 150));
    tokio::time::sleep(Duration::from_secs(2)).await;

    relay.set_down(true);
    let outage = Instant::now();
    let (mut max_held, mut paused, mut not_ready_reason) = (0.0f64, false, String::new());
    while outage.elapsed() < Duration::from_secs(30) {
        let m = s.metrics().await;
        max_held = max_held.max(m.get("tail_sampling_held_spans").copied().unwrap_or(0.0));
        paused |= m
            .get("tail_sampling_consumer_paused")
            .copied()
            .unwrap_or(0.0)
            >= 1.0;
        let (status, body) = s.get("/health/ready").await;
        if status == 503 {
            not_ready_reason = body["reason"].as_str().unwrap_or_default().to_string();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rss_kib = crate::harness::rss_kib(s.pid());
    relay.set_down(false);
    producing.await.expect("producer task");
    let o = settle(&s, &cases, Duration::from_secs(150)).await;
    report(
        "storage-outage",
        &cases,
        &o,
        &format!("outage_secs=30 max_held_spans={max_held} limit={LIMIT} paused={paused} rss_kib_during_outage={rss_kib}"),
    );
    assert!(paused, "the consumer never paused\n{}", s.log());
    // One message may still be taken after the limit is reached.
    assert!(
        max_held <= LIMIT + 10.0,
        "held {max_held} spans, limit {LIMIT}"
    );
    assert!(
        not_ready_reason.contains("storage_writes") || not_ready_reason.contains("buffer"),
        "readiness did not say why: `{not_ready_reason}`"
    );
    assert_nothing_lost(&s, &o);
    let (status, _) = s.get("/health/ready").await;
    assert_eq!(status, 200, "ready again after the outage");
}
