//! Secured, production-shaped services on loopback: Kafka over TLS (a real
//! broker behind stunnel), settings a broker or librdkafka rejects, Redis
//! over TLS with an ACL user and a client certificate, and two pipelines that
//! share one Redis under different key prefixes.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{Selector, TlsBroker, TlsRedis};
use serde_json::{json, Value};

/// Settings that reach `broker` over TLS, trusting `ca`.
fn tls_kafka<'a>(broker: &'a str, ca: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("TSS__KAFKA__BROKERS", broker),
        ("TSS__KAFKA__SECURITY_PROTOCOL", "ssl"),
        ("TSS__KAFKA__SSL_CA_LOCATION", ca),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_selector_and_the_tools_use_kafka_over_tls() {
    let broker = TlsBroker::start();
    let (addr, ca) = (broker.brokers(), broker.certs.path("ca.pem"));
    let s = Selector::start("tls", &tls_kafka(&addr, &ca)).await;

    // simple_producer over TLS, with librdkafka properties given as -X.
    crate::harness::produce_seed_traces_with(
        &s.topic,
        &[
            "--brokers",
            &addr,
            "-X",
            "security.protocol=ssl",
            "-X",
            &format!("ssl.ca.location={ca}"),
        ],
    );
    s.wait_metric(
        "tail_sampling_traces_dropped_total",
        6.0,
        Duration::from_secs(60),
    )
    .await;
    s.wait_exported(12.0).await;
    assert_eq!(
        s.count("SELECT count(DISTINCT trace_id) FROM spans").await,
        4
    );

    // load_generator over TLS, configured through the selector's config file.
    let config = s.dir.path().join("producer.toml");
    std::fs::write(
        &config,
        format!("[kafka]\nbrokers = \"{addr}\"\nsecurity_protocol = \"ssl\"\nssl_ca_location = \"{ca}\"\n"),
    )
    .expect("config file");
    let out = Command::new(env!("CARGO_BIN_EXE_load_generator"))
        .args([
            "--config",
            &config.display().to_string(),
            "--topic",
            &s.topic,
        ])
        .args(["--count", "200", "--rate", "0", "--partitions", "4"])
        .output()
        .expect("load_generator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0 failed"), "{stdout}");
    s.wait_metric(
        "tail_sampling_traces_ingested_total",
        210.0,
        Duration::from_secs(60),
    )
    .await;
    let (_, health) = s.get("/health").await;
    assert_eq!(health["kafka"]["status"], "ok", "{health}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_that_does_not_sign_the_broker_stops_startup() {
    let broker = TlsBroker::start();
    let (addr, wrong) = (broker.brokers(), broker.certs.path("other-ca.pem"));
    let started = Instant::now();
    let (code, log) =
        crate::harness::start_expecting_failure(&tls_kafka(&addr, &wrong), Duration::from_secs(60));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("kafka rejected the connection"), "{log}");
    assert!(
        log.contains("certificate verify failed"),
        "librdkafka's reason is shown\n{log}"
    );
    println!(
        "wrong CA: exit {code:?} after {} ms",
        started.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_with_a_client_certificate() {
    let broker = TlsBroker::start_with(true);
    let (addr, ca) = (broker.brokers(), broker.certs.path("ca.pem"));
    let (cert, key) = (
        broker.certs.path("client.pem"),
        broker.certs.path("client.key"),
    );
    let mut settings = tls_kafka(&addr, &ca);
    settings.extend([
        ("TSS__KAFKA__SSL_CERTIFICATE_LOCATION", cert.as_str()),
        ("TSS__KAFKA__SSL_KEY_LOCATION", key.as_str()),
    ]);
    let s = Selector::start("mtls", &settings).await;
    crate::harness::produce_seed_traces_with(
        &s.topic,
        &[
            "--brokers",
            &addr,
            "-X",
            "security.protocol=ssl",
            "-X",
            &format!("ssl.ca.location={ca}"),
            "-X",
            &format!("ssl.certificate.location={cert}"),
            "-X",
            &format!("ssl.key.location={key}"),
        ],
    );
    s.wait_exported(12.0).await;
    assert_eq!(
        s.count("SELECT count(DISTINCT trace_id) FROM spans").await,
        4
    );

    // Without the client certificate the broker's side refuses the handshake.
    let (code, log) =
        crate::harness::start_expecting_failure(&tls_kafka(&addr, &ca), Duration::from_secs(60));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("kafka rejected the connection"), "{log}");
    assert!(
        log.contains("certificate required"),
        "librdkafka's reason is shown\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_librdkafka_rejects_stop_startup_naming_them() {
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("TSS__KAFKA__PROPERTIES__NO_SUCH_SETTING", "1")],
            "no.such.setting",
        ),
        (
            &[("TSS__KAFKA__PROPERTIES__SOCKET_TIMEOUT_MS", "soon")],
            "socket.timeout.ms",
        ),
        (
            &[
                ("TSS__KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
                ("TSS__KAFKA__SASL_MECHANISM", "SCRAM-SHA-1"),
            ],
            "sasl_mechanism",
        ),
        (
            // A mechanism that this librdkafka build can't do, given as a raw property.
            &[
                ("TSS__KAFKA__SECURITY_PROTOCOL", "sasl_plaintext"),
                ("TSS__KAFKA__PROPERTIES__SASL_MECHANISM", "GSSAPI"),
            ],
            "GSSAPI",
        ),
    ];
    for (overrides, needle) in cases {
        let (code, log) =
            crate::harness::start_expecting_failure(overrides, Duration::from_secs(30));
        assert_ne!(code, Some(0), "{overrides:?}\n{log}");
        assert!(
            log.contains(needle),
            "{overrides:?}: the log does not name `{needle}`\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sasl_against_a_broker_without_sasl_stops_startup() {
    // The local broker speaks no SASL: the handshake fails, and the selector
    // says so instead of retrying forever.
    let overrides = [
        ("TSS__KAFKA__SECURITY_PROTOCOL", "sasl_plaintext"),
        ("TSS__KAFKA__SASL_MECHANISM", "SCRAM-SHA-256"),
        ("TSS__KAFKA__SASL_USERNAME", "selector"),
        ("TSS__KAFKA__SASL_PASSWORD", "sasl-password-never-logged"),
    ];
    let (code, log) = crate::harness::start_expecting_failure(&overrides, Duration::from_secs(60));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("kafka rejected the connection"), "{log}");
    assert!(log.contains("SASL"), "{log}");
    assert!(
        !log.contains("sasl-password-never-logged"),
        "the SASL password leaked\n{log}"
    );
}

fn tls_redis_settings(redis: &TlsRedis) -> Vec<(String, String)> {
    [
        ("TSS__REDIS__URL", redis.url()),
        ("TSS__REDIS__TLS_CA_LOCATION", redis.certs.path("ca.pem")),
        (
            "TSS__REDIS__TLS_CERTIFICATE_LOCATION",
            redis.certs.path("client.pem"),
        ),
        (
            "TSS__REDIS__TLS_KEY_LOCATION",
            redis.certs.path("client.key"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

async fn post_rule(s: &Selector, service: &str) -> Value {
    let r = reqwest::Client::new()
        .post(format!("http://{}/admin/force-rules", s.admin))
        .json(&json!({
            "duration_secs": 600, "priority": 10, "action": "force_keep",
            "match": {"resource": [{"key": "service.name", "op": "eq", "value": service}]}
        }))
        .send()
        .await
        .expect("POST rule");
    assert_eq!(r.status().as_u16(), 201);
    r.json().await.expect("rule JSON")
}

async fn rule_ids(s: &Selector) -> Vec<String> {
    let (status, list) = s.get("/admin/force-rules").await;
    assert_eq!(status, 200, "{list}");
    list["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| r["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Sends 10 error-free traces of `service`; only a force rule keeps them.
fn produce_service(s: &Selector, service: &str) {
    crate::harness::produce_seed_traces_with(
        &s.topic,
        &[
            "--brokers",
            &crate::harness::brokers(),
            "--service-name",
            service,
            "--error-every",
            "0",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_over_tls_with_an_acl_user_and_a_client_certificate() {
    let redis = TlsRedis::start();
    let settings = tls_redis_settings(&redis);
    let s = Selector::start("redis-tls", &crate::harness::pairs(&settings)).await;
    let (_, health) = s.get("/health").await;
    assert_eq!(health["redis"]["status"], "ok", "{health}");

    // A force rule goes through the TLS Redis and keeps a service's traces.
    let service = format!("tls-svc-{}", uuid::Uuid::new_v4().simple());
    let rule = post_rule(&s, &service).await;
    let id = rule["id"].as_str().expect("id").to_string();
    assert!(rule_ids(&s).await.contains(&id));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    produce_service(&s, &service);
    s.wait_metric(
        "tail_sampling_traces_force_sampled_total",
        10.0,
        Duration::from_secs(60),
    )
    .await;

    // The decisions were written to that Redis, under the default prefix.
    let decisions = redis_keys(&redis_tls_client(&redis), "tss:decision:*").await;
    assert!(decisions.len() >= 10, "{decisions:?}");
    assert!(
        !s.log().contains(&redis.password),
        "the Redis password leaked into the log"
    );

    // Without the client certificate, the server refuses the connection and
    // /health says why.
    let no_cert: Vec<(String, String)> = settings
        .iter()
        .filter(|(k, _)| !k.contains("TLS_CERTIFICATE") && !k.contains("TLS_KEY"))
        .cloned()
        .collect();
    let topic = format!("tss-it-redis-nocert-{}", uuid::Uuid::new_v4().simple());
    let unready = Selector::launch(&topic, &crate::harness::pairs(&no_cert));
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        let body = unready
            .try_get("/health")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        if body["redis"]["status"] == "down" {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "redis never reported down: {body}\n{}",
            unready.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (status, _) = unready.get("/health/ready").await;
    assert_eq!(status, 503, "{health}");
    assert!(!health.to_string().contains(&redis.password), "{health}");
}

fn redis_tls_client(redis: &TlsRedis) -> redis::Client {
    let read = |name: &str| std::fs::read(redis.certs.path(name)).expect("cert file");
    redis::Client::build_with_tls(
        redis.url().as_str(),
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read("client.pem"),
                client_key: read("client.key"),
            }),
            root_cert: Some(read("ca.pem")),
        },
    )
    .expect("TLS client")
}

async fn redis_keys(client: &redis::Client, pattern: &str) -> Vec<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut c)
        .await
        .expect("KEYS")
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelines_with_different_key_prefixes_do_not_see_each_other() {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (prefix_a, prefix_b) = (format!("it-a-{run}:"), format!("it-b-{run}:"));
    let a = Selector::start("prefix-a", &[("TSS__REDIS__KEY_PREFIX", prefix_a.as_str())]).await;
    let b = Selector::start("prefix-b", &[("TSS__REDIS__KEY_PREFIX", prefix_b.as_str())]).await;

    // A rule made in pipeline A is not listed, nor applied, in pipeline B.
    let service = format!("prefix-svc-{run}");
    let rule = post_rule(&a, &service).await;
    let id = rule["id"].as_str().expect("id").to_string();
    assert!(rule_ids(&a).await.contains(&id));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!rule_ids(&b).await.contains(&id), "B sees A's rule");

    produce_service(&a, &service);
    produce_service(&b, &service);
    a.wait_metric(
        "tail_sampling_traces_force_sampled_total",
        10.0,
        Duration::from_secs(60),
    )
    .await;
    b.wait_metric(
        "tail_sampling_traces_dropped_total",
        10.0,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        b.metric("tail_sampling_traces_force_sampled_total").await,
        0.0
    );

    // Each pipeline's decisions live under its own prefix only.
    let client = redis::Client::open(crate::harness::redis_url()).expect("redis client");
    let keys_a = redis_keys(&client, &format!("{prefix_a}decision:*")).await;
    let keys_b = redis_keys(&client, &format!("{prefix_b}decision:*")).await;
    assert_eq!(keys_a.len(), 10, "{keys_a:?}");
    assert_eq!(keys_b.len(), 10, "{keys_b:?}");
    let rules_a = redis_keys(&client, &format!("{prefix_a}rule:*")).await;
    let rules_b = redis_keys(&client, &format!("{prefix_b}rule:*")).await;
    assert_eq!(rules_a, vec![format!("{prefix_a}rule:{id}")]);
    assert!(rules_b.is_empty(), "{rules_b:?}");
}
