//! Helpers for integration tests: a real selector process against the real
//! local broker and Redis. Nothing here skips: a missing service fails the test.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

pub fn brokers() -> String {
    std::env::var("TSS_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn redis_url() -> String {
    std::env::var("TSS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `prefix` and 8 random hex digits: a service name or key of one test run.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A local port that was free a moment ago and that this process has not
/// handed out before: the kernel may give the same port to two binds in a
/// row once the first listener is closed, and two services of one test on
/// one port fail to start.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    // Holding every listener until a new port turns up keeps the kernel
    // from offering the same one again.
    let mut held = Vec::new();
    for _ in 0..64 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("no free local port");
        let port = listener.local_addr().expect("local address").port();
        if given.insert(port) {
            return port;
        }
        held.push(listener);
    }
    panic!("no local port that this test process has not handed out already");
}

/// A selector process with its own topic, group, catalog and warehouse.
pub struct Selector {
    child: Child,
    env: HashMap<String, String>,
    pub dir: tempfile::TempDir,
    pub topic: String,
    pub admin: String,
    pub metrics: String,
    pub token: Option<String>,
    http: reqwest::Client,
}

impl Selector {
    /// Starts a selector with short timeouts plus `overrides` (`TSS__…` pairs),
    /// and waits until `/health/ready` answers 200.
    pub async fn start(name: &str, overrides: &[(&str, &str)]) -> Selector {
        let topic = format!("tss-it-{name}-{}", uuid::Uuid::new_v4().simple());
        Self::start_on(&topic, overrides).await
    }

    /// Starts a selector on a given topic (its group is `{topic}-group`), so
    /// several selectors can share one consumer group.
    ///
    /// A port picked free can still be taken by another process before the
    /// selector binds it; then the selector exits at once, and it is started
    /// again on new ports.
    pub async fn start_on(topic: &str, overrides: &[(&str, &str)]) -> Selector {
        for _ in 0..3 {
            let mut s = Self::launch(topic, overrides);
            if !s.lost_a_port(Duration::from_secs(5)).await {
                s.wait_ready().await;
                return s;
            }
        }
        panic!("the selector lost its ports to other processes three times");
    }

    /// Whether the process exited within `within` because one of its ports
    /// was taken; returns early once it answers `/health/live`.
    async fn lost_a_port(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.log().contains("Address already in use");
            }
            let live = self
                .http
                .get(format!("http://{}/health/live", self.admin))
                .send()
                .await;
            if live.is_ok_and(|r| r.status().is_success()) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Starts a selector and returns at once, ready or not.
    pub fn launch(topic: &str, overrides: &[(&str, &str)]) -> Selector {
        let dir = tempfile::tempdir().expect("tempdir");
        let topic = topic.to_string();
        let admin = format!("127.0.0.1:{}", free_port());
        let metrics = format!("127.0.0.1:{}", free_port());
        let env = test_env(&topic, dir.path(), &admin, &metrics, overrides);
        let token = env.get("TSS__ADMIN__AUTH_TOKEN").cloned();
        let child = spawn_selector(&env, dir.path());
        Selector {
            child,
            env,
            dir,
            topic,
            admin,
            metrics,
            token,
            http: reqwest::Client::new(),
        }
    }

    /// The selector binary with this selector's settings and working
    /// directory, for running a subcommand against the same table.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tail-sampling-selector"));
        if let Some(file) = self.env.get(CONFIG_FILE) {
            cmd.arg("--config").arg(file);
        }
        cmd.envs(&self.env)
            .env("RUST_LOG", "info")
            .current_dir(self.dir.path());
        cmd
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `TSS__…` environment this selector runs with.
    pub fn env(&self, key: &str) -> Option<&str> {
        self.env.get(key).map(String::as_str)
    }

    /// Removes a setting for the next `restart`.
    pub fn unset_env(&mut self, key: &str) {
        self.env.remove(key);
    }

    /// Waits for the process to exit by itself; its exit code (`None` when
    /// a signal ended it). Panics with the log after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if started.elapsed() > timeout {
                panic!(
                    "the selector was still running after {timeout:?}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: the process gets no chance to flush or commit anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit. Returns how long the shutdown took.
    pub fn terminate(&mut self, timeout: Duration) -> Duration {
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return started.elapsed();
            }
            if started.elapsed() > timeout {
                panic!(
                    "selector did not exit within {timeout:?} of SIGTERM\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process again with the same configuration, ports, catalog
    /// and warehouse, and waits until it is ready and owns partitions again
    /// (after a SIGKILL, the group first waits out the dead member's session).
    pub async fn restart(&mut self) {
        let assigned = self.log().matches("partitions assigned").count();
        self.child = spawn_selector(&self.env, self.dir.path());
        self.wait_ready().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.log().matches("partitions assigned").count() <= assigned {
            assert!(
                Instant::now() < deadline,
                "the restarted selector got no partitions within 60 s\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the process again at once, waiting for nothing, as a crash
    /// loop's supervisor does.
    pub fn respawn(&mut self) {
        self.child = spawn_selector(&self.env, self.dir.path());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("selector.log")).unwrap_or_default()
    }

    pub fn catalog_path(&self) -> PathBuf {
        self.dir.path().join("catalog.db")
    }

    pub fn warehouse_path(&self) -> PathBuf {
        self.dir.path().join("warehouse")
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let r = self
                .http
                .get(format!("http://{}/health/ready", self.admin))
                .send()
                .await;
            if let Ok(r) = r {
                if r.status().is_success() {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "selector not ready within 90 s (is the broker at {} and Redis at {} up? run scripts/stack.sh up)\n{}",
                    brokers(),
                    redis_url(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn admin_request(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// `POST /admin/query`; returns the status and the JSON body.
    pub async fn query_raw(&self, sql: &str) -> (u16, Value) {
        let r = self
            .admin_request(self.http.post(format!("http://{}/admin/query", self.admin)))
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .expect("query request");
        let status = r.status().as_u16();
        (status, r.json().await.expect("query response is JSON"))
    }

    /// A query that must succeed.
    pub async fn query(&self, sql: &str) -> Value {
        let (status, body) = self.query_raw(sql).await;
        assert_eq!(status, 200, "{sql} -> {body}");
        body
    }

    /// `SELECT count(*) …` as a number.
    pub async fn count(&self, sql: &str) -> i64 {
        let body = self.query(sql).await;
        body["rows"][0][0]
            .as_i64()
            .unwrap_or_else(|| panic!("{sql} -> {body}"))
    }

    /// `GET`, or `None` while nothing listens yet.
    pub async fn try_get(&self, path: &str) -> Option<(u16, Value)> {
        let r = self
            .admin_request(self.http.get(format!("http://{}{path}", self.admin)))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .admin_request(self.http.get(format!("http://{}{path}", self.admin)))
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Every sample of the metrics page, by name with labels.
    pub async fn metrics(&self) -> HashMap<String, f64> {
        let text = self
            .http
            .get(format!("http://{}/metrics", self.metrics))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    /// The selector's own series, histogram buckets left out, one per line:
    /// what a failing wait prints beside the log.
    pub async fn metrics_summary(&self) -> String {
        let mut lines: Vec<String> = self
            .metrics()
            .await
            .into_iter()
            .filter(|(k, _)| k.starts_with("tail_sampling_") && !k.contains("_bucket"))
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        lines.sort();
        lines.join("\n")
    }

    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics().await.get(name).copied().unwrap_or(0.0)
    }

    /// Waits until `metric >= value`, failing with the log after `timeout`.
    pub async fn wait_metric(&self, name: &str, value: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(name).await;
            if v >= value {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name} is {v}, expected >= {value}\n{}\n{}",
                    self.metrics_summary().await,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every kept trace is committed: no buffered traces and the
    /// exported-span count has reached `spans`.
    pub async fn wait_exported(&self, spans: f64) {
        self.wait_metric(
            "tail_sampling_spans_exported_total{sink=\"iceberg\"}",
            spans,
            Duration::from_secs(60),
        )
        .await;
    }
}

/// The settings every test selector runs with, then `overrides`.
fn test_env(
    topic: &str,
    dir: &Path,
    admin: &str,
    metrics: &str,
    overrides: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("TSS__KAFKA__BROKERS", brokers()),
        ("TSS__KAFKA__TOPIC", topic.to_string()),
        ("TSS__KAFKA__GROUP_ID", format!("{topic}-group")),
        ("TSS__KAFKA__TOPIC_PARTITIONS", "4".into()),
        ("TSS__REDIS__URL", redis_url()),
        ("TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS", "2".into()),
        ("TSS__SAMPLING__WORKERS", "2".into()),
        ("TSS__STORAGE__FLUSH_INTERVAL_SECS", "1".into()),
        ("TSS__KAFKA__SESSION_TIMEOUT_MS", "6000".into()),
        (
            "TSS__STORAGE__ICEBERG__CATALOG_URI",
            format!("sqlite:{}/catalog.db?mode=rwc", dir.display()),
        ),
        (
            "TSS__STORAGE__ICEBERG__WAREHOUSE",
            dir.join("warehouse").display().to_string(),
        ),
        ("TSS__SERVER__ADMIN_ADDR", admin.to_string()),
        ("TSS__SERVER__METRICS_ADDR", metrics.to_string()),
        // Scheduled maintenance would compact under other tests' feet at
        // moments of its own; the maintenance tests switch it on.
        ("TSS__MAINTENANCE__ENABLED", "false".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // The matrix: the same tests with the other buffer mode (scripts/test.sh).
    if let Ok(mode) = std::env::var(BUFFER_MODE) {
        env.insert("TSS__BUFFER__MODE".into(), mode);
    }
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

/// Starts a selector that must refuse to start: waits for it to exit within
/// `timeout` and returns its exit code and log.
pub fn start_expecting_failure(
    overrides: &[(&str, &str)],
    timeout: Duration,
) -> (Option<i32>, String) {
    let topic = format!("tss-it-fail-{}", uuid::Uuid::new_v4().simple());
    let mut s = Selector::launch(&topic, overrides);
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = s.child.try_wait() {
            return (status.code(), s.log());
        }
        if started.elapsed() > timeout {
            panic!(
                "the selector was still running {timeout:?} after its start\n{}",
                s.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Selector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An override with this key passes its value as `--config FILE`.
pub const CONFIG_FILE: &str = "TSS_TEST_CONFIG_FILE";

/// Set to `compact` or `spans`, the `buffer.mode` of every selector a test
/// starts that does not choose its own.
pub const BUFFER_MODE: &str = "TSS_TEST_BUFFER_MODE";

fn spawn_selector(env: &HashMap<String, String>, dir: &Path) -> Child {
    // Appends, so the log of every incarnation stays readable.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("selector.log"))
        .expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tail-sampling-selector"));
    // A config file, as `--config` (see `CONFIG_FILE`).
    if let Some(file) = env.get(CONFIG_FILE) {
        cmd.arg("--config").arg(file);
    }
    cmd.envs(env)
        // TSS_TEST_RUST_LOG widens it, e.g. `info,librdkafka=debug` together
        // with TSS__KAFKA__PROPERTIES__DEBUG=cgrp to follow the group protocol.
        .env(
            "RUST_LOG",
            std::env::var("TSS_TEST_RUST_LOG")
                .unwrap_or_else(|_| "info,tail_sampling_selector=debug".into()),
        )
        .current_dir(dir)
        .stdout(Stdio::from(log.try_clone().expect("log clone")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawning the selector")
}

/// Every file under `dir` whose name ends with `suffix`, at any depth.
pub fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out
}

pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// Trace ids unique to this test run: decisions stay in the shared Redis for
/// `decision_ttl_secs`, and a reused id would count as a late span.
/// A trace id as an SDK makes one: random-looking in every byte, so that
/// the ids of one batch spread over the whole range (as [`trace_id`]'s,
/// whose first half counts up, do not).
pub fn random_trace_id(seed: u64) -> [u8; 16] {
    let mut id = trace_id(seed);
    let high = u64::from_be_bytes(id[..8].try_into().unwrap_or_default());
    id[..8].copy_from_slice(
        &high
            .wrapping_mul(0xd6e8_feb8_6659_fd93)
            .rotate_left(29)
            .to_be_bytes(),
    );
    id[0] |= 1;
    id
}

pub fn trace_id(seed: u64) -> [u8; 16] {
    static SALT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let salt = *SALT.get_or_init(|| now_nanos().wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&salt.wrapping_add(seed).to_be_bytes());
    id[8..].copy_from_slice(&seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    id[0] |= 1;
    id
}

pub fn producer() -> FutureProducer {
    producer_at(&brokers())
}

/// A producer for the brokers at `brokers`.
pub fn producer_at(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "15000")
        .create()
        .expect("producer")
}

/// Creates a topic with `partitions` partitions on the test broker.
pub async fn create_topic(topic: &str, partitions: i32) {
    create_topic_at(&brokers(), topic, partitions).await
}

/// Creates a topic with `partitions` partitions on the brokers at `brokers`.
pub async fn create_topic_at(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
}

/// Runs `load_generator` against the test broker; panics with its output
/// when it fails.
pub fn load_generator(topic: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_load_generator"))
        .args(["--brokers", &brokers(), "--topic", topic])
        .args(args)
        .output()
        .expect("load_generator");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub async fn send(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    send_record(
        producer,
        topic,
        FutureRecord::to(topic).key(key).payload(payload),
    )
    .await
}

/// [`send`] with the message's timestamp, in Unix milliseconds.
pub async fn send_at(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    timestamp_ms: i64,
) {
    let record = FutureRecord::to(topic)
        .key(key)
        .payload(payload)
        .timestamp(timestamp_ms);
    send_record(producer, topic, record).await
}

async fn send_record(producer: &FutureProducer, topic: &str, record: FutureRecord<'_, str, [u8]>) {
    producer
        .send(record, Duration::from_secs(15))
        .await
        .map_err(|(e, _)| e)
        .unwrap_or_else(|e| panic!("producing to {topic} at {} failed: {e}", brokers()));
}

pub fn python() -> String {
    std::env::var("TSS_TEST_PYTHON").expect(
        "TSS_TEST_PYTHON must point at a Python with pyiceberg installed; run scripts/test.sh",
    )
}

pub fn run_python(script: &Path, args: &[String]) -> Value {
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

/// A Redis server of the test's own, on a free port, so that a test can stop
/// and restart it without disturbing the machine's Redis.
pub struct OwnRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> OwnRedis {
        let mut r = OwnRedis {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/stack.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The stack's SeaweedFS (`scripts/stack.sh up`): a real S3 server and an
/// Iceberg REST catalog whose warehouse is its table bucket.
pub struct Seaweed {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub rest_uri: String,
    pub warehouse: String,
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run scripts/test.sh, which starts SeaweedFS with scripts/stack.sh up")
    })
}

impl Seaweed {
    pub fn from_env() -> Seaweed {
        let s = Seaweed {
            endpoint: required_env("TSS_TEST_S3_ENDPOINT"),
            access_key: required_env("TSS_TEST_S3_ACCESS_KEY"),
            secret_key: required_env("TSS_TEST_S3_SECRET_KEY"),
            rest_uri: required_env("TSS_TEST_ICEBERG_REST_URI"),
            warehouse: required_env("TSS_TEST_ICEBERG_WAREHOUSE"),
        };
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", s.port())).is_ok(),
            "SeaweedFS S3 does not answer at {}: run scripts/stack.sh up",
            s.endpoint
        );
        s
    }

    /// The S3 port, for a relay in front of it.
    pub fn port(&self) -> u16 {
        self.endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no port in {}", self.endpoint))
    }

    /// The OAuth2 client credential the REST catalog takes.
    pub fn credential(&self) -> String {
        format!("{}:{}", self.access_key, self.secret_key)
    }

    /// Settings for a selector on the REST catalog with its S3 warehouse, in
    /// a namespace of its own.
    pub fn rest_catalog(&self, namespace: &str) -> Vec<(String, String)> {
        [
            ("TSS__STORAGE__ICEBERG__CATALOG_TYPE", "rest".to_string()),
            ("TSS__STORAGE__ICEBERG__CATALOG_URI", self.rest_uri.clone()),
            ("TSS__STORAGE__ICEBERG__WAREHOUSE", self.warehouse.clone()),
            ("TSS__STORAGE__ICEBERG__CREDENTIAL", self.credential()),
            ("TSS__STORAGE__ICEBERG__NAMESPACE", namespace.to_string()),
            ("TSS__STORAGE__ICEBERG__S3_ENDPOINT", self.endpoint.clone()),
            (
                "TSS__STORAGE__ICEBERG__S3_ACCESS_KEY_ID",
                self.access_key.clone(),
            ),
            (
                "TSS__STORAGE__ICEBERG__S3_SECRET_ACCESS_KEY",
                self.secret_key.clone(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The `scan_table.py` options that read the REST catalog's `table`.
    pub fn scan_args(&self, table: &str) -> Vec<String> {
        [
            "--catalog-type",
            "rest",
            "--catalog-uri",
            &self.rest_uri,
            "--warehouse",
            &self.warehouse,
            "--credential",
            &self.credential(),
            "--table",
            table,
            "--s3-endpoint",
            &self.endpoint,
            "--s3-access-key-id",
            &self.access_key,
            "--s3-secret-access-key",
            &self.secret_key,
            "--duckdb",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn tool(&self, args: &[&str]) -> Value {
        let mut all: Vec<String> = vec![
            "--endpoint".into(),
            self.endpoint.clone(),
            "--access-key-id".into(),
            self.access_key.clone(),
            "--secret-access-key".into(),
            self.secret_key.clone(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        run_python(&python_script("s3_tool.py"), &all)
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.tool(&["create-bucket", bucket]);
    }

    /// Writes a small object at `key`, with boto3.
    pub fn put(&self, bucket: &str, key: &str) {
        self.tool(&["put", bucket, key]);
    }

    /// Every object key under `prefix`, listed with boto3.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let listing = self.tool(&["list", bucket, prefix]);
        listing
            .as_array()
            .expect("a JSON list")
            .iter()
            .map(|o| o["key"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// Borrows owned `(key, value)` pairs as the `&str` pairs `Selector::start` takes.
pub fn pairs(owned: &[(String, String)]) -> Vec<(&str, &str)> {
    owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// A throwaway certificate authority and certificates it signed, made with
/// the `openssl` command: a server certificate for 127.0.0.1 and localhost,
/// a client certificate, and a second CA that signed nothing here.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn generate() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("ext");
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl must be installed (scripts/test.sh installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-subj",
                &format!("/CN=tss-test-{ca}"),
            ]);
        }
        for leaf in ["server", "client"] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{leaf}.key"),
                "-out",
                &format!("{leaf}.csr"),
                "-subj",
                &format!("/CN=tss-test-{leaf}"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{leaf}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{leaf}.pem"),
                "-extfile",
                &format!("{leaf}.ext"),
            ]);
        }
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not open port {port}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Tansu broker of a test's own, with memory storage, listening on
/// `port` and advertising `advertised` (where a proxy in front of it
/// listens), its output in `log`; returns once it accepts connections.
fn start_tansu(cluster_id: &str, port: u16, advertised: u16, log: &Path) -> Child {
    let tansu_bin = required_env("TSS_TEST_TANSU");
    let tansu = Command::new(&tansu_bin)
        .args([
            "broker",
            "--kafka-cluster-id",
            cluster_id,
            "--kafka-listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--kafka-advertised-listener-url",
            &format!("tcp://127.0.0.1:{advertised}"),
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::from(std::fs::File::create(log).expect("log")))
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {tansu_bin}: {e}"));
    wait_for_port(port, "Tansu", log);
    tansu
}

/// What a [`TcpFaultProxy`] does with the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpFault {
    /// Carries them both ways.
    Forward,
    /// Keeps every connection open and accepts new ones, but carries
    /// nothing until told otherwise: a broker that hangs.
    Hang,
}

/// A TCP proxy of the test's own, for faults below HTTP: it forwards, hangs
/// ([`TcpFault::Hang`]), or drops every open connection at once
/// ([`TcpFaultProxy::drop_connections`]).
pub struct TcpFaultProxy {
    pub port: u16,
    fault: tokio::sync::watch::Sender<TcpFault>,
    /// Bumped to drop every open connection.
    drops: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpFaultProxy {
    /// Listens on `port` (a free one) and forwards to `upstream`.
    pub async fn start(port: u16, upstream: u16) -> TcpFaultProxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the proxy");
        let (fault, fault_rx) = tokio::sync::watch::channel(TcpFault::Forward);
        let (drops, drops_rx) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (fault, mut drops) = (fault_rx.clone(), drops_rx.clone());
                drops.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pipe(cr, sw, fault.clone()) => {}
                        _ = pipe(sr, cw, fault) => {}
                        _ = drops.changed() => {}
                    }
                });
            }
        });
        TcpFaultProxy {
            port,
            fault,
            drops,
            task,
        }
    }

    pub fn set(&self, fault: TcpFault) {
        self.fault.send_replace(fault);
    }

    /// Closes every connection open now; new ones are accepted as before.
    pub fn drop_connections(&self) {
        self.drops.send_modify(|n| *n += 1);
    }
}

impl Drop for TcpFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding each chunk while the fault is a hang.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut fault: tokio::sync::watch::Receiver<TcpFault>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if fault.wait_for(|f| *f == TcpFault::Forward).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A Kafka-API broker of the test's own behind a [`TcpFaultProxy`]: a Tansu
/// broker on a private port that advertises the proxy's, so that every
/// client, after its first metadata request too, goes through the proxy.
pub struct FaultyBroker {
    pub proxy: TcpFaultProxy,
    tansu: Child,
    _dir: tempfile::TempDir,
}

impl FaultyBroker {
    pub async fn start() -> FaultyBroker {
        let dir = tempfile::tempdir().expect("tempdir");
        let (private, public) = (free_port(), free_port());
        let tansu = start_tansu("tss-faulty", private, public, &dir.path().join("tansu.log"));
        let proxy = TcpFaultProxy::start(public, private).await;
        FaultyBroker {
            proxy,
            tansu,
            _dir: dir,
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }
}

impl Drop for FaultyBroker {
    fn drop(&mut self) {
        let _ = self.tansu.kill();
        let _ = self.tansu.wait();
    }
}

/// A Kafka-API broker of the test's own that clients reach only over TLS: a
/// Tansu broker on a private plain port, advertising the TLS port, with
/// stunnel terminating TLS in front of it (Tansu's own TLS does not work).
pub struct TlsBroker {
    pub port: u16,
    pub certs: Certs,
    tansu: Child,
    stunnel: Child,
}

impl TlsBroker {
    pub fn start() -> TlsBroker {
        Self::start_with(false)
    }

    /// With `client_auth`, stunnel asks every client for a certificate
    /// signed by the test CA (mutual TLS).
    pub fn start_with(client_auth: bool) -> TlsBroker {
        let stunnel_bin = required_env("TSS_TEST_STUNNEL");
        let certs = Certs::generate();
        let (plain, tls) = (free_port(), free_port());
        let tansu = start_tansu("tss-tls", plain, tls, &certs.dir.path().join("tansu.log"));
        let conf = certs.dir.path().join("stunnel.conf");
        let stunnel_log = certs.dir.path().join("stunnel.log");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\noutput = {log}\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\ncert = {cert}\nkey = {key}\n{verify}",
                log = stunnel_log.display(),
                cert = certs.path("server.pem"),
                key = certs.path("server.key"),
                verify = if client_auth {
                    format!("verify = 2\nCAfile = {}\n", certs.path("ca.pem"))
                } else {
                    String::new()
                },
            ),
        )
        .expect("stunnel.conf");
        let stunnel = Command::new(&stunnel_bin)
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {stunnel_bin}: {e}"));
        wait_for_port(tls, "stunnel", &stunnel_log);
        TlsBroker {
            port: tls,
            certs,
            tansu,
            stunnel,
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        for c in [&mut self.stunnel, &mut self.tansu] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Redis server of the test's own that speaks only TLS, asks for a client
/// certificate, and has an ACL user `selector` besides the default user.
pub struct TlsRedis {
    pub port: u16,
    pub certs: Certs,
    pub password: String,
    child: Child,
}

impl TlsRedis {
    pub fn start() -> TlsRedis {
        let certs = Certs::generate();
        let port = free_port();
        let password = format!("acl-secret-{}", uuid::Uuid::new_v4().simple());
        let log = certs.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                &certs.path("server.pem"),
                "--tls-key-file",
                &certs.path("server.key"),
                "--tls-ca-cert-file",
                &certs.path("ca.pem"),
                "--tls-auth-clients",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                &log.display().to_string(),
                // Redis joins the words after `--user` into one ACL rule.
                "--user",
                "selector",
                "on",
                &format!(">{password}"),
                "~*",
                "&*",
                "+@all",
                // Nobody gets in without logging in as an ACL user.
                "--user",
                "default",
                "off",
            ])
            .current_dir(certs.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/stack.sh installs it)");
        wait_for_port(port, "redis-server (TLS)", &log);
        TlsRedis {
            port,
            certs,
            password,
            child,
        }
    }

    /// `rediss://selector:…@127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!(
            "rediss://selector:{}@127.0.0.1:{}",
            self.password, self.port
        )
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A helper script under `tests/python/`.
pub fn python_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// Runs `simple_producer` with the seed defaults against `topic`.
pub fn produce_seed_traces(topic: &str) {
    produce_seed_traces_with(topic, &["--brokers", &brokers()]);
}

/// Runs `simple_producer` against `topic` with extra arguments.
pub fn produce_seed_traces_with(topic: &str, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_simple_producer"))
        .args(["--topic", topic])
        .args(args)
        .output()
        .expect("simple_producer runs");
    assert!(
        out.status.success(),
        "simple_producer failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One message read back from a topic.
pub struct Consumed {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Consumed {
    /// A header's value as text; empty when absent.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// Reads `count` messages from the start of `topic`, failing after `timeout`.
pub async fn consume_all(topic: &str, count: usize, timeout: Duration) -> Vec<Consumed> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set(
            "group.id",
            format!("tss-it-reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => panic!(
                "only {} of {count} messages in {topic} after {timeout:?}",
                out.len()
            ),
        };
        let headers = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|hd| {
                        (
                            hd.key.to_string(),
                            String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Consumed {
            key: msg.key().unwrap_or_default().to_vec(),
            payload: msg.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    out
}

/// The resident set size of a process, in KiB (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// The peak resident set size of a process since it started, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// What the [`FaultProxy`] does with a table commit (`POST` to
/// `…/namespaces/{ns}/tables/{table}`); every other request passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitFault {
    /// Forwards it and returns the catalog's answer.
    Pass,
    /// Forwards it, then answers 504 as a load balancer whose upstream was
    /// slow: the catalog took the commit, the client cannot know.
    Answer504,
    /// Forwards it, then closes the connection without an answer.
    Drop,
    /// Never forwards it and never answers.
    Hang,
}

/// An HTTP proxy of the tests' own in front of the Iceberg REST catalog,
/// which injects [`CommitFault`]s into table commits: the first
/// `set_fault(fault, n)` commits get the fault, later ones pass.
pub struct FaultProxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
    server: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    target: String,
    fault: parking_lot::Mutex<(CommitFault, usize)>,
    commits_seen: std::sync::atomic::AtomicUsize,
    faults_injected: std::sync::atomic::AtomicUsize,
    http: reqwest::Client,
}

impl FaultProxy {
    /// A proxy to `target` (`http://host:port`), passing everything.
    pub async fn start(target: &str) -> FaultProxy {
        let state = std::sync::Arc::new(ProxyState {
            target: target.trim_end_matches('/').to_string(),
            fault: parking_lot::Mutex::new((CommitFault::Pass, 0)),
            commits_seen: Default::default(),
            faults_injected: Default::default(),
            http: reqwest::Client::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("addr").port();
        let app = axum::Router::new()
            .fallback(proxy)
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy {
            port,
            state,
            server,
        }
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The next `count` commits get `fault`.
    pub fn set_fault(&self, fault: CommitFault, count: usize) {
        *self.state.fault.lock() = (fault, count);
    }

    /// Table commits that reached the proxy.
    pub fn commits_seen(&self) -> usize {
        self.state
            .commits_seen
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Commits that got a fault.
    pub fn faults_injected(&self) -> usize {
        self.state
            .faults_injected
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn is_table_commit(method: &axum::http::Method, path: &str) -> bool {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    method == axum::http::Method::POST
        && parts.len() >= 4
        && parts[parts.len() - 2] == "tables"
        && parts[parts.len() - 4] == "namespaces"
}

async fn proxy(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<ProxyState>>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use std::sync::atomic::Ordering;
    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let fault = if is_table_commit(&parts.method, parts.uri.path()) {
        state.commits_seen.fetch_add(1, Ordering::SeqCst);
        let mut f = state.fault.lock();
        if f.1 > 0 {
            f.1 -= 1;
            state.faults_injected.fetch_add(1, Ordering::SeqCst);
            f.0
        } else {
            CommitFault::Pass
        }
    } else {
        CommitFault::Pass
    };
    if fault == CommitFault::Hang {
        return std::future::pending().await;
    }
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .expect("request body");
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).expect("method");
    let mut forward = state
        .http
        .request(method, format!("{}{path_and_query}", state.target))
        .body(body.to_vec());
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            forward = forward.header(name.as_str(), value.as_bytes());
        }
    }
    let answer = match forward.send().await {
        Ok(r) => r,
        Err(e) => return (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = answer.status().as_u16();
    let headers: Vec<(String, Vec<u8>)> = answer
        .headers()
        .iter()
        .filter(|(n, _)| {
            !matches!(
                n.as_str(),
                "content-length" | "connection" | "transfer-encoding"
            )
        })
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
    let bytes = answer.bytes().await.unwrap_or_default();
    match fault {
        CommitFault::Answer504 => (
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            "upstream timed out",
        )
            .into_response(),
        // Ends the connection's task: the client sees it close unanswered.
        CommitFault::Drop => {
            std::panic::resume_unwind(Box::new("the fault proxy drops the connection"))
        }
        _ => {
            let mut response = axum::response::Response::new(axum::body::Body::from(bytes));
            *response.status_mut() = axum::http::StatusCode::from_u16(status).expect("status");
            for (n, v) in headers {
                if let (Ok(n), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(n.as_bytes()),
                    axum::http::HeaderValue::from_bytes(&v),
                ) {
                    response.headers_mut().append(n, v);
                }
            }
            response
        }
    }
}

/// Each partition's committed offset for `group` (-1 when none) and its
/// high watermark, as the broker reports them.
pub async fn committed_and_high(topic: &str, group: &str, partitions: i32) -> Vec<(i64, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let (topic, group) = (topic.to_string(), group.to_string());
    tokio::task::spawn_blocking(move || {
        // Asks the coordinator without joining the group.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        (0..partitions)
            .map(|p| {
                let offset = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => -1,
                };
                let (_, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .expect("watermarks");
                (offset, high)
            })
            .collect()
    })
    .await
    .expect("offset reader")
}
