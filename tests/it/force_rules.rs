//! Force rules end to end: the API on a real selector, rules in the real Redis.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::Selector;
use serde_json::{json, Value};

async fn post_rule(s: &Selector, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/admin/force-rules", s.admin))
        .json(body)
        .send()
        .await
        .expect("POST rule");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn delete_rule(s: &Selector, id: &str) -> u16 {
    reqwest::Client::new()
        .delete(format!("http://{}/admin/force-rules/{id}", s.admin))
        .send()
        .await
        .expect("DELETE rule")
        .status()
        .as_u16()
}

fn produce(s: &Selector, service: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_simple_producer"))
        .args([
            "--brokers",
            &crate::harness::brokers(),
            "--topic",
            &s.topic,
            "--service-name",
            service,
        ])
        .output()
        .expect("simple_producer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The listed rule with this id. Other tests share the Redis, so rules are
/// always looked up by id and scoped to a service of their own.
async fn listed(s: &Selector, id: &str) -> Option<Value> {
    let (_, list) = s.get("/admin/force-rules").await;
    list["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
}

/// Waits until the rule is listed (or gone), then for the local compiled
/// copy, which follows within the 2 s the contract allows.
async fn wait_rule(s: &Selector, id: &str, present: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if listed(s, id).await.is_some() == present {
            // One resync interval more for the local compiled copy.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("rule {id} did not become present={present}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_force_keep_rule_keeps_a_whole_service_until_deleted() {
    let s = Selector::start("force", &[]).await;
    let service = format!("demo-service-{}", uuid::Uuid::new_v4().simple());
    let (status, rule) = post_rule(
        &s,
        &json!({
            "description": "Force sample all demo-service traces",
            "duration_secs": 300,
            "priority": 100,
            "match": {"resource": [{"key": "service.name", "op": "eq", "value": service}]},
            "action": "force_keep"
        }),
    )
    .await;
    assert_eq!(status, 201, "{rule}");
    let id = rule["id"].as_str().expect("id").to_string();
    assert!(
        rule["created_at"].is_string() && rule["expires_at"].is_string(),
        "{rule}"
    );
    let (status, one) = s.get(&format!("/admin/force-rules/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(one["priority"], 100);
    wait_rule(&s, &id, true).await;

    produce(&s, &service);
    s.wait_exported(30.0).await;
    let body = s
        .query("SELECT sampling_reason, sampling_rule_id, count(DISTINCT trace_id) FROM spans GROUP BY 1, 2")
        .await;
    assert_eq!(body["rows"], json!([["force_rule", id, 10]]), "{body}");
    let m = s.metrics().await;
    assert_eq!(m["tail_sampling_traces_force_sampled_total"], 10.0);
    // Match counts reach Redis with the next resync (every second); allow a
    // loaded machine a few.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let listed_rule = loop {
        let rule = listed(&s, &id).await.expect("listed");
        if rule["matched_traces"] == 10 || std::time::Instant::now() > deadline {
            break rule;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(listed_rule["matched_traces"], 10, "{listed_rule}");
    assert!(
        listed_rule["remaining_secs"].as_i64().unwrap_or(0) > 250,
        "{listed_rule}"
    );

    assert_eq!(delete_rule(&s, &id).await, 204);
    assert_eq!(delete_rule(&s, &id).await, 404);
    wait_rule(&s, &id, false).await;
    produce(&s, &service);
    s.wait_metric(
        "tail_sampling_traces_dropped_total",
        6.0,
        Duration::from_secs(60),
    )
    .await;
    s.wait_exported(42.0).await;
    let m = s.metrics().await;
    assert_eq!(
        m["tail_sampling_traces_sampled_total{reason=\"error\"}"],
        4.0
    );
    assert_eq!(m["tail_sampling_traces_force_sampled_total"], 10.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn short_rules_expire_and_invalid_rules_name_their_field() {
    let s = Selector::start("rules-validate", &[]).await;
    let (status, rule) = post_rule(
        &s,
        &json!({
            "duration_secs": 3,
            "match": {
                "resource": [{"key": "service.name", "op": "eq", "value": format!("svc-{}", uuid::Uuid::new_v4().simple())}],
                "span": [{"key": "name", "op": "exists"}]
            },
            "action": "force_drop"
        }),
    )
    .await;
    assert_eq!(status, 201, "{rule}");
    let id = rule["id"].as_str().expect("id").to_string();
    assert_eq!(s.get(&format!("/admin/force-rules/{id}")).await.0, 200);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(s.get(&format!("/admin/force-rules/{id}")).await.0, 404);
    assert!(
        listed(&s, &id).await.is_none(),
        "an expired rule is not listed"
    );

    let bad = [
        (
            json!({"duration_secs": 5, "match": {"span": [{"key": "a", "op": "like", "value": "x"}]}, "action": "force_keep"}),
            "match.span[0].op",
        ),
        (
            json!({"duration_secs": 5, "match": {"span": [{"key": "a", "op": "exists"}]}, "action": "keep"}),
            "action",
        ),
        (
            json!({"duration_secs": 5, "match": {"span": [{"key": "a", "op": "regex", "value": "(["}]}, "action": "force_keep"}),
            "match.span[0].value",
        ),
        (
            json!({"duration_secs": 0, "match": {"span": [{"key": "a", "op": "exists"}]}, "action": "force_keep"}),
            "duration_secs",
        ),
        (
            json!({"duration_secs": 100000000, "match": {"span": [{"key": "a", "op": "exists"}]}, "action": "force_keep"}),
            "duration_secs",
        ),
        (
            json!({"duration_secs": 5, "match": {}, "action": "force_keep"}),
            "match",
        ),
        (
            json!({"duration_secs": 5, "match": {"resource": [{"key": "a", "op": "eq"}]}, "action": "force_keep"}),
            "match.resource[0].value",
        ),
        (
            json!({"duration_secs": 5, "match": {"span": [{"key": "a", "op": "gt", "value": "fast"}]}, "action": "force_keep"}),
            "match.span[0].value",
        ),
        (
            json!({"duration_secs": 5, "description": "x".repeat(70_000), "match": {"span": [{"key": "a", "op": "exists"}]}, "action": "force_keep"}),
            "body",
        ),
    ];
    for (body, field) in bad {
        let (status, err) = post_rule(&s, &body).await;
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["field"], field, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_in_one_group_both_honour_a_rule_made_through_either() {
    let topic = format!("tss-it-pair-{}", uuid::Uuid::new_v4().simple());
    let a = Selector::start_on(&topic, &[]).await;
    let b = Selector::start_on(&topic, &[]).await;
    // Wait for the group to settle so both own partitions: with
    // cooperative-sticky assignment, A first gives some up, then B gets them.
    let settle = Instant::now() + Duration::from_secs(30);
    while !(a.log().contains("partitions revoked") && b.log().contains("partitions assigned")) {
        assert!(
            Instant::now() < settle,
            "the group did not settle\n{}\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let service = format!("pair-service-{}", uuid::Uuid::new_v4().simple());
    let (status, rule) = post_rule(
        &b,
        &json!({"duration_secs": 120, "priority": 5,
                "match": {"resource": [{"key": "service.name", "op": "eq", "value": service}]},
                "action": "force_keep"}),
    )
    .await;
    assert_eq!(status, 201, "{rule}");
    let id = rule["id"].as_str().expect("id").to_string();
    // The contract: every instance applies it within 2 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = Command::new(env!("CARGO_BIN_EXE_simple_producer"))
        .args([
            "--brokers",
            &crate::harness::brokers(),
            "--topic",
            &topic,
            "--service-name",
            &service,
            "--count",
            "40",
        ])
        .output()
        .expect("simple_producer");
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ka = a.metric("tail_sampling_traces_force_sampled_total").await;
        let kb = b.metric("tail_sampling_traces_force_sampled_total").await;
        let da = a.metric("tail_sampling_traces_dropped_total").await;
        let db = b.metric("tail_sampling_traces_dropped_total").await;
        if ka + kb >= 40.0 {
            assert!(
                ka > 0.0 && kb > 0.0,
                "both instances decided traces: a={ka} b={kb}"
            );
            assert_eq!(da + db, 0.0, "nothing dropped");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a={ka} b={kb} dropped={}",
            da + db
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(delete_rule(&a, &id).await, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_goes_on_while_redis_is_down() {
    let mut redis = crate::harness::OwnRedis::start();
    let url = redis.url();
    let s = Selector::start("redis-down", &[("TSS__REDIS__URL", url.as_str())]).await;
    let service = format!("outage-{}", uuid::Uuid::new_v4().simple());
    let (status, _) = post_rule(
        &s,
        &json!({"duration_secs": 600, "match": {"resource": [{"key": "service.name", "op": "eq", "value": service}]}, "action": "force_keep"}),
    )
    .await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    redis.stop();
    // Readiness reports it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = s.get("/health/ready").await;
        if status == 503 {
            assert!(
                body["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("redis"),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "readiness never reported Redis");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Rule writes fail clearly.
    let (status, body) = post_rule(
        &s,
        &json!({"duration_secs": 60, "match": {"span": [{"key": "name", "op": "exists"}]}, "action": "force_keep"}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("Redis"),
        "{body}"
    );
    // Sampling continues with the last known rule.
    produce(&s, &service);
    s.wait_metric(
        "tail_sampling_traces_force_sampled_total",
        10.0,
        Duration::from_secs(60),
    )
    .await;
    s.wait_exported(30.0).await;

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = post_rule(
            &s,
            &json!({"duration_secs": 60, "match": {"resource": [{"key": "service.name", "op": "eq", "value": "after-outage"}]}, "action": "force_keep"}),
        )
        .await;
        if status == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rule writes did not recover (last {status})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, _) = s.get("/health/ready").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut status = status;
    while status != 200 {
        assert!(Instant::now() < deadline, "readiness did not recover");
        tokio::time::sleep(Duration::from_millis(300)).await;
        status = s.get("/health/ready").await.0;
    }
}
