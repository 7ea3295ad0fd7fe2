//! Trace state shared through Redis: a lazily connected client and the
//! decision cache that keeps late spans and other instances consistent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisConfig;
use crate::ingest::decode::TraceId;
use crate::sampling::{Decision, SamplingReason};

const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failure, Redis is left alone this long so the hot path never
/// stalls on an outage.
const BACKOFF_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Decision keys are `{redis.key_prefix}decision:{trace id}`.
const DECISION_KEYS: &str = "decision:";

#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("redis.{key}: reading `{path}`: {source}")]
    File {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("redis.url: {0}")]
    Client(#[from] redis::RedisError),
}

/// A Redis connection made on first use, so the selector starts without
/// Redis and picks it up when it comes back.
pub struct LazyRedis {
    client: redis::Client,
    prefix: String,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
}

impl LazyRedis {
    /// A client for `cfg.url`: TLS for `rediss://`, trusting `tls_ca_location`
    /// (or the system's roots) and presenting a client certificate when one
    /// is configured; an ACL user and password in the URL log in as that user.
    pub fn new(cfg: &RedisConfig) -> Result<Self, RedisSetupError> {
        let client = if cfg.url.starts_with("rediss://") {
            install_crypto_provider();
            let read = |key: &'static str, path: &Option<String>| {
                path.as_ref()
                    .map(|p| {
                        std::fs::read(p).map_err(|source| RedisSetupError::File {
                            key,
                            path: p.clone(),
                            source,
                        })
                    })
                    .transpose()
            };
            let root_cert = read("tls_ca_location", &cfg.tls_ca_location)?;
            let client_cert = read("tls_certificate_location", &cfg.tls_certificate_location)?;
            let client_key = read("tls_key_location", &cfg.tls_key_location)?;
            let client_tls = client_cert
                .zip(client_key)
                .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                });
            redis::Client::build_with_tls(
                cfg.url.as_str(),
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )?
        } else {
            redis::Client::open(cfg.url.as_str())?
        };
        Ok(Self {
            client,
            prefix: cfg.key_prefix.clone(),
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// `redis.key_prefix` followed by `name`: every key and channel the
    /// selector uses is made here.
    pub fn key(&self, name: impl std::fmt::Display) -> String {
        format!("{}{name}", self.prefix)
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
    short_replies: prometheus::IntCounter,
    failed_at: Mutex<Option<Instant>>,
}

impl DecisionCache {
    /// `short_replies` counts MGET replies whose length didn't match the keys.
    pub fn new(redis: Arc<LazyRedis>, ttl_secs: u64, short_replies: prometheus::IntCounter) -> Self {
        Self {
            redis,
            ttl_secs,
            short_replies,
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
        let keys: Vec<String> = ids.iter().map(|id| self.key(id)).collect();
        let result: Result<Vec<Option<String>>, _> = async {
            let mut c = self.redis.conn().await?;
            redis::cmd("MGET").arg(&keys).query_async(&mut c).await
        }
        .await;
        match result {
            Ok(values) => match decisions_for(ids.len(), &values) {
                Some(decisions) => {
                    self.record(true, "read", None);
                    decisions
                }
                None => {
                    // A reply that doesn't answer every key can't be matched
                    // to the traces: decide them all afresh instead.
                    self.short_replies.inc();
                    tracing::warn!(
                        asked = ids.len(),
                        answered = values.len(),
                        "decision cache read answered a different number of keys; deciding these traces locally"
                    );
                    vec![None; ids.len()]
                }
            },
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
            pipe.set_ex(self.key(id), encode(d), self.ttl_secs).ignore();
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

/// The decisions of an MGET reply, one per key asked; `None` when the reply
/// has another length, so that no trace is ever paired with another's entry
/// (or left without one).
fn decisions_for(asked: usize, values: &[Option<String>]) -> Option<Vec<Option<Decision>>> {
    (values.len() == asked).then(|| values.iter().map(|v| v.as_deref().and_then(decode)).collect())
}

impl DecisionCache {
    fn key(&self, id: &TraceId) -> String {
        self.redis.key(format_args!("{DECISION_KEYS}{}", hex::encode(id)))
    }
}

/// rustls needs one process-wide crypto provider; with more than one compiled
/// in (the S3 client brings its own), it can't pick by itself.
fn install_crypto_provider() {
    // An error means one is installed already, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
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

    #[test]
    fn a_reply_of_another_length_is_not_used() {
        let values = vec![Some("drop".to_string()), None];
        let decided = decisions_for(2, &values).expect("same length");
        assert_eq!(decided, vec![Some(Decision::Drop), None]);
        assert_eq!(decisions_for(3, &values), None, "short reply");
        assert_eq!(decisions_for(1, &values), None, "long reply");
    }
}
