//! Force rules in Redis, shared by every instance, and the local compiled copy.
//!
//! Each rule is one key, `{prefix}rule:{id}`, holding its JSON and expiring
//! with it (the prefix is `redis.key_prefix`, `tss:` by default). Writers
//! publish the rule id on `{prefix}rules:changed`; every instance then
//! reloads all rules at once. A full reload every second is the safety net for
//! a missed message. Evaluation reads only the local copy, never Redis.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::RwLock;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::{now_ms, RuleSet, RuleSpec};
use crate::matching::{CompiledMatch, ForceRules, ForceVerdict, TraceFacts};
use crate::model::TraceId;
use crate::redis_client::LazyRedis;

/// Key names under `redis.key_prefix`.
const RULE_KEYS: &str = "rule:";
/// The set of rule ids, so that listing never scans the keyspace (which
/// also holds one decision key per recent trace). Ids of expired rules are
/// removed from it when a listing finds their key gone.
const INDEX_KEY: &str = "rules";
const MATCHES_KEY: &str = "rule-matches";
const CHANNEL: &str = "rules:changed";
/// How often every instance reloads all rules, whatever pub/sub said.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis is unavailable: {0}")]
    Unavailable(redis::RedisError),
    #[error("{live} force rules are live, the most `rules.max_rules` allows; delete one or wait for one to expire")]
    TooMany { live: usize },
    #[error("stored rule `{id}` is corrupt: {error}")]
    Corrupt {
        id: String,
        error: serde_json::Error,
    },
}

/// A rule as stored and as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredRule {
    pub id: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub expires_at: i64,
    #[serde(flatten)]
    pub spec: RuleSpec,
}

/// The Redis side. Connects lazily, so the selector starts without Redis and
/// picks it up when it comes back.
pub struct RuleStore {
    redis: Arc<LazyRedis>,
    /// Most live rules (`rules.max_rules`): every instance evaluates every
    /// rule against every trace.
    max_rules: usize,
}

impl RuleStore {
    pub fn new(redis: Arc<LazyRedis>, max_rules: usize) -> Self {
        Self { redis, max_rules }
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        Ok(self.redis.conn().await?)
    }

    fn rule_key(&self, id: &str) -> String {
        self.redis.key(format_args!("{RULE_KEYS}{id}"))
    }

    /// Stores a new rule, unless `max_rules` are live already. The count and
    /// the write are one Redis script, so creates racing on any number of
    /// instances never pass the limit together.
    pub async fn create(&self, spec: RuleSpec) -> Result<StoredRule, StoreError> {
        let created_at = now_ms();
        let rule = StoredRule {
            id: uuid::Uuid::now_v7().to_string(),
            created_at,
            expires_at: created_at + spec.duration_secs * 1000,
            spec,
        };
        let json = serde_json::to_string(&rule).map_err(|error| StoreError::Corrupt {
            id: rule.id.clone(),
            error,
        })?;
        let mut c = self.conn().await?;
        let live: i64 = create_script()
            .key(self.redis.key(INDEX_KEY))
            .key(self.rule_key(&rule.id))
            .arg(self.rule_key(""))
            .arg(self.max_rules)
            .arg(json)
            .arg(rule.spec.duration_secs)
            .arg(&rule.id)
            .arg(self.redis.key(CHANNEL))
            .invoke_async(&mut c)
            .await?;
        if live >= 0 {
            return Err(StoreError::TooMany {
                live: live as usize,
            });
        }
        Ok(rule)
    }

    /// True when the rule existed.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let (removed,): (i64,) = redis::pipe()
            .del(self.rule_key(id))
            .srem(self.redis.key(INDEX_KEY), id)
            .ignore()
            .hdel(self.redis.key(MATCHES_KEY), id)
            .ignore()
            .publish(self.redis.key(CHANNEL), id)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(removed > 0)
    }

    pub async fn get(&self, id: &str) -> Result<Option<StoredRule>, StoreError> {
        let mut c = self.conn().await?;
        let json: Option<String> = c.get(self.rule_key(id)).await?;
        json.map(|j| parse(id, &j)).transpose()
    }

    /// Every live rule.
    pub async fn list(&self) -> Result<Vec<StoredRule>, StoreError> {
        let mut c = self.conn().await?;
        let ids: Vec<String> = c.smembers(self.redis.key(INDEX_KEY)).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.rule_key(id)).collect();
        let values: Vec<Option<String>> = c.mget(&keys).await?;
        let mut rules = Vec::new();
        let mut expired = Vec::new();
        for (id, value) in ids.iter().zip(values) {
            match value.map(|json| parse(id, &json)) {
                Some(Ok(r)) => rules.push(r),
                Some(Err(e)) => tracing::warn!(error = %e, "ignoring a corrupt stored rule"),
                None => expired.push(id.as_str()),
            }
        }
        if !expired.is_empty() {
            let _: Result<(), _> = c.srem(self.redis.key(INDEX_KEY), &expired).await;
        }
        rules.sort_by(|a, b| b.spec.priority.cmp(&a.spec.priority).then(a.id.cmp(&b.id)));
        Ok(rules)
    }

    /// Matches counted by every instance so far, by rule id.
    pub async fn match_counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        let mut c = self.conn().await?;
        Ok(c.hgetall(self.redis.key(MATCHES_KEY)).await?)
    }

    async fn add_match_counts(&self, counts: &[(Arc<str>, u64)]) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let mut pipe = redis::pipe();
        for (id, n) in counts {
            pipe.hincr(self.redis.key(MATCHES_KEY), id.as_ref(), *n)
                .ignore();
        }
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }
}

/// Counts the live rules of the index (dropping the ids of expired ones)
/// and, below the limit, stores the rule, indexes it and announces it.
/// Returns -1 when stored, else the live count. KEYS: the index, the new
/// rule's key; ARGV: the rule-key prefix, the limit, the JSON, the lifetime
/// in seconds, the id, the change channel.
fn create_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"
local live = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then
    live = live + 1
  else
    redis.call('SREM', KEYS[1], id)
  end
end
if live >= tonumber(ARGV[2]) then
  return live
end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
redis.call('SADD', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[5])
return -1
",
        )
    })
}

fn parse(id: &str, json: &str) -> Result<StoredRule, StoreError> {
    serde_json::from_str(json).map_err(|error| StoreError::Corrupt {
        id: id.to_string(),
        error,
    })
}

/// The compiled local copy that sampling consults. Swapped whole on reload.
#[derive(Default)]
pub struct LiveRules {
    current: RwLock<Arc<RuleSet>>,
    /// Bumped whenever `current` is replaced.
    generation: std::sync::atomic::AtomicU64,
}

impl LiveRules {
    /// Replaces the rules with `rules` (highest priority first), of which
    /// the first `max_rules` count. Only rules new since the last call are
    /// compiled; the others, and the matches they counted, carry over, and
    /// an unchanged list changes nothing.
    pub fn replace(&self, mut rules: Vec<StoredRule>, max_duration_secs: i64, max_rules: usize) {
        if rules.len() > max_rules {
            tracing::warn!(
                live = rules.len(),
                max_rules,
                "more force rules are live than rules.max_rules; evaluating those of highest priority"
            );
            rules.truncate(max_rules);
        }
        let old = self.current.read().clone();
        if old.same_rules(rules.iter().map(|r| (r.id.as_str(), r.expires_at))) {
            return;
        }
        let carried = old.by_id();
        let compiled = rules
            .into_iter()
            .filter_map(|r| {
                if let Some(rule) = carried
                    .get(r.id.as_str())
                    .filter(|c| c.expires_at == r.expires_at)
                {
                    return Some(Arc::clone(rule));
                }
                let id = Arc::from(r.id.as_str());
                match r
                    .spec
                    .compile(id, max_duration_secs.max(r.spec.duration_secs))
                {
                    Ok(rule) => Some(Arc::new(rule.with_expiry(r.expires_at))),
                    Err(e) => {
                        tracing::warn!(rule = %r.id, error = %e, "stored rule does not compile");
                        None
                    }
                }
            })
            .collect();
        *self.current.write() = Arc::new(RuleSet::new(compiled));
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn take_match_counts(&self) -> Vec<(Arc<str>, u64)> {
        self.current.read().take_match_counts()
    }
}

impl ForceRules for LiveRules {
    fn evaluate(&self, trace_id: &TraceId, trace: &dyn TraceFacts) -> Option<ForceVerdict> {
        let rules = self.current.read().clone();
        rules.evaluate(trace_id, trace)
    }

    fn peek(&self, trace_id: &TraceId, trace: &dyn TraceFacts) -> Option<ForceVerdict> {
        let rules = self.current.read().clone();
        rules.peek(trace_id, trace)
    }

    fn conditions(&self) -> Vec<Arc<CompiledMatch>> {
        self.current.read().conditions()
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// Keeps `live` in step with Redis: reload on every pub/sub message and every
/// `RESYNC_INTERVAL`; report match counts as it goes. Runs until `stop` is
/// cancelled; the pub/sub listener runs inside it, so nothing outlives it.
pub async fn run_sync(
    store: Arc<RuleStore>,
    live: Arc<LiveRules>,
    max_duration_secs: i64,
    stop: tokio_util::sync::CancellationToken,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(16);
    let listener = listen(store.redis.client().clone(), store.redis.key(CHANNEL), tx);
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = listener => {}
        _ = resync(&store, &live, max_duration_secs, rx) => {}
    }
}

/// Reloads the rules on every notification and every `RESYNC_INTERVAL`.
async fn resync(
    store: &RuleStore,
    live: &LiveRules,
    max_duration_secs: i64,
    mut rx: tokio::sync::mpsc::Receiver<()>,
) {
    let mut tick = tokio::time::interval(RESYNC_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = rx.recv() => {}
        }
        match store.list().await {
            Ok(rules) => live.replace(rules, max_duration_secs, store.max_rules),
            Err(e) => {
                tracing::debug!(error = %e, "rule resync failed; keeping the last known rules")
            }
        }
        let counts = live.take_match_counts();
        if !counts.is_empty() {
            if let Err(e) = store.add_match_counts(&counts).await {
                tracing::debug!(error = %e, "could not report rule matches");
            }
        }
    }
}

/// Forwards rule-change notifications; reconnects when Redis drops.
async fn listen(client: redis::Client, channel: String, tx: tokio::sync::mpsc::Sender<()>) {
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub.subscribe(&channel).await.is_ok() {
                    let mut messages = pubsub.on_message();
                    while messages.next().await.is_some() {
                        let _ = tx.try_send(());
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "rule channel unavailable"),
        }
        tokio::time::sleep(RESYNC_INTERVAL).await;
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::Unavailable(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, priority: i64) -> StoredRule {
        let json = format!(
            r#"{{"id":"{id}","created_at":0,"expires_at":{},"duration_secs":60,
                "priority":{priority},"action":"force_keep",
                "match":{{"span":[{{"key":"name","op":"regex","value":"^op-.*"}}]}}}}"#,
            i64::MAX / 2
        );
        parse(id, &json).expect("rule")
    }

    #[test]
    fn unchanged_rules_are_not_compiled_again_and_keep_their_counts() {
        let live = LiveRules::default();
        live.replace(vec![stored("a", 2), stored("b", 1)], 86_400, 10);
        let first = live.current.read().clone();
        first.get("a").expect("a").add_matches(3);
        live.replace(vec![stored("a", 2), stored("b", 1)], 86_400, 10);
        assert!(
            Arc::ptr_eq(&first, &live.current.read().clone()),
            "the same list leaves the set as it was"
        );
        live.replace(vec![stored("a", 2), stored("c", 1)], 86_400, 10);
        let next = live.current.read().clone();
        assert!(Arc::ptr_eq(
            first.get("a").expect("a"),
            next.get("a").expect("a")
        ));
        assert!(next.get("b").is_none());
        assert_eq!(next.take_match_counts(), vec![(Arc::from("a"), 3)]);
    }

    #[test]
    fn past_max_rules_those_of_highest_priority_count() {
        let live = LiveRules::default();
        let rules: Vec<StoredRule> = (0..5).map(|i| stored(&format!("r{i}"), 10 - i)).collect();
        live.replace(rules, 86_400, 3);
        let set = live.current.read().clone();
        assert_eq!(set.len(), 3);
        assert!(set.get("r0").is_some() && set.get("r2").is_some() && set.get("r3").is_none());
    }
}
