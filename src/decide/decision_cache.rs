//! The decision cache: decisions shared through Redis, so that late spans
//! and other instances agree with the first decision made about a trace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::model::{Decision, SamplingReason, TraceId};
use crate::redis_client::LazyRedis;

/// After a failure, Redis is left alone this long so the hot path never
/// stalls on an outage.
const BACKOFF_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Decision keys are `{redis.key_prefix}decision:{trace id}`.
const DECISION_KEYS: &str = "decision:";

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
    pub fn new(
        redis: Arc<LazyRedis>,
        ttl_secs: u64,
        short_replies: prometheus::IntCounter,
    ) -> Self {
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
    (values.len() == asked).then(|| {
        values
            .iter()
            .map(|v| v.as_deref().and_then(decode))
            .collect()
    })
}

impl DecisionCache {
    fn key(&self, id: &TraceId) -> String {
        self.redis
            .key(format_args!("{DECISION_KEYS}{}", hex::encode(id)))
    }
}

/// `drop`, or `keep:<reason>[:<rule id>][@<sample rate>]`; the rate is left
/// out when it is 1, so the entries of traces kept whole read as before.
/// Rule ids are UUIDs and policy names have no `@`.
pub fn encode(d: &Decision) -> String {
    match d {
        Decision::Drop => "drop".into(),
        Decision::Keep {
            reason,
            rule_id,
            sample_rate,
        } => {
            let mut s = format!("keep:{reason}");
            if let Some(id) = rule_id {
                s.push(':');
                s.push_str(id);
            }
            if *sample_rate != 1.0 {
                s.push('@');
                s.push_str(&sample_rate.to_string());
            }
            s
        }
    }
}

pub fn decode(s: &str) -> Option<Decision> {
    if s == "drop" {
        return Some(Decision::Drop);
    }
    let rest = s.strip_prefix("keep:")?;
    let (rest, sample_rate) = match rest.rsplit_once('@') {
        Some((r, rate)) => (
            r,
            rate.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 1.0)?,
        ),
        None => (rest, 1.0),
    };
    let (reason, rule_id) = match rest.split_once(':') {
        Some((r, id)) => (r, Some(Arc::from(id))),
        None => (rest, None),
    };
    let reason = SamplingReason::ALL
        .into_iter()
        .find(|r| r.as_str() == reason)?;
    Some(Decision::Keep {
        reason,
        rule_id,
        sample_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_round_trip() {
        for d in [
            Decision::Drop,
            Decision::keep(SamplingReason::Latency, None),
            Decision::keep(SamplingReason::ForceRule, Some("0190-abc".into())),
            Decision::Keep {
                reason: SamplingReason::Baseline,
                rule_id: None,
                sample_rate: 4.0,
            },
            Decision::Keep {
                reason: SamplingReason::Policy,
                rule_id: Some("per-endpoint".into()),
                sample_rate: 11.0,
            },
        ] {
            assert_eq!(decode(&encode(&d)), Some(d));
        }
        // Entries written before sample rates were stored read as whole.
        assert_eq!(
            decode("keep:error"),
            Some(Decision::keep(SamplingReason::Error, None))
        );
        assert_eq!(
            encode(&Decision::keep(SamplingReason::Error, None)),
            "keep:error"
        );
        assert_eq!(
            encode(&Decision::Keep {
                reason: SamplingReason::Baseline,
                rule_id: None,
                sample_rate: 2.0
            }),
            "keep:baseline@2"
        );
        assert_eq!(decode("keep:policy:p@nan"), None);
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
