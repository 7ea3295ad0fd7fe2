//! Trace state shared through Redis: a lazily connected client and the
//! decision cache that keeps late spans and other instances consistent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::ingest::decode::TraceId;
use crate::sampling::{Decision, SamplingReason};

const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failure, Redis is left alone this long so the hot path never
/// stalls on an outage.
const BACKOFF_AFTER_FAILURE: Duration = Duration::from_secs(5);
const DECISION_PREFIX: &str = "tss:decision:";

/// A Redis connection made on first use, so the selector starts without
/// Redis and picks it up when it comes back.
pub struct LazyRedis {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
}

impl LazyRedis {
    pub fn new(url: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// `PING`, for the readiness probe.
    pub async fn ping(&self) -> Result<(), redis::RedisError> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    pub async fn conn(&self) -> Result<ConnectionManager, redis::RedisError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let c = tokio::time::timeout(
            REDIS_TIMEOUT * 2,
            self.client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::Io, "connect timed out"))
        })??;
        *guard = Some(c.clone());
        Ok(c)
    }
}

/// Decisions by trace id, with a TTL, read and written in one round trip per
/// batch of traces, never per span.
pub struct DecisionCache {
    redis: Arc<LazyRedis>,
    ttl_secs: u64,
    failed_at: Mutex<Option<Instant>>,
}

impl DecisionCache {
    pub fn new(redis: Arc<LazyRedis>, ttl_secs: u64) -> Self {
        Self {
            redis,
            ttl_secs,
            failed_at: Mutex::new(None),
        }
    }

    fn available(&self) -> bool {
        self.failed_at
            .lock()
            .is_none_or(|t| t.elapsed() > BACKOFF_AFTER_FAILURE)
    }

    fn record(&self, ok: bool, what: &str, e: Option<&redis::RedisError>) {
        let mut failed = self.failed_at.lock();
        if ok {
            *failed = None;
        } else {
            if failed.is_none() {
                tracing::warn!(error = ?e.map(|e| e.to_string()), "decision cache {what} failed; deciding locally until Redis returns");
            }
            *failed = Some(Instant::now());
        }
    }

    /// Earlier decisions for these traces; all `None` when Redis is unreachable.
    pub async fn lookup(&self, ids: &[TraceId]) -> Vec<Option<Decision>> {
        if ids.is_empty() || !self.available() {
            return vec![None; ids.len()];
        }
        let keys: Vec<String> = ids.iter().map(key).collect();
        let result: Result<Vec<Option<String>>, _> = async {
            let mut c = self.redis.conn().await?;
            redis::cmd("MGET").arg(&keys).query_async(&mut c).await
        }
        .await;
        match result {
            Ok(values) => {
                self.record(true, "read", None);
                values.iter().map(|v| v.as_deref().and_then(decode)).collect()
            }
            Err(e) => {
                self.record(false, "read", Some(&e));
                vec![None; ids.len()]
            }
        }
    }

    /// Remembers fresh decisions for `decision_ttl_secs`.
    pub async fn store(&self, decisions: &[(TraceId, Decision)]) {
        if decisions.is_empty() || !self.available() {
            return;
        }
        let mut pipe = redis::pipe();
        for (id, d) in decisions {
            pipe.set_ex(key(id), encode(d), self.ttl_secs).ignore();
        }
        let result: Result<(), _> = async {
            let mut c = self.redis.conn().await?;
            pipe.query_async(&mut c).await
        }
        .await;
        match result {
            Ok(()) => self.record(true, "write", None),
            Err(e) => self.record(false, "write", Some(&e)),
        }
    }
}

fn key(id: &TraceId) -> String {
    format!("{DECISION_PREFIX}{}", hex::encode(id))
}

/// `drop`, or `keep:<reason>[:<rule id>]`.
pub fn encode(d: &Decision) -> String {
    match d {
        Decision::Drop => "drop".into(),
        Decision::Keep { reason, rule_id: None } => format!("keep:{reason}"),
        Decision::Keep {
            reason,
            rule_id: Some(id),
        } => format!("keep:{reason}:{id}"),
    }
}

pub fn decode(s: &str) -> Option<Decision> {
    if s == "drop" {
        return Some(Decision::Drop);
    }
    let rest = s.strip_prefix("keep:")?;
    let (reason, rule_id) = match rest.split_once(':') {
        Some((r, id)) => (r, Some(Arc::from(id))),
        None => (rest, None),
    };
    let reason = SamplingReason::ALL
        .into_iter()
        .find(|r| r.as_str() == reason)?;
    Some(Decision::Keep { reason, rule_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_round_trip() {
        for d in [
            Decision::Drop,
            Decision::Keep {
                reason: SamplingReason::Latency,
                rule_id: None,
            },
            Decision::Keep {
                reason: SamplingReason::ForceRule,
                rule_id: Some("0190-abc".into()),
            },
        ] {
            assert_eq!(decode(&encode(&d)), Some(d));
        }
        assert_eq!(decode("keep:bogus"), None);
        assert_eq!(decode("garbage"), None);
    }
}
