//! The maintenance lease: one instance at a time maintains the table. A
//! Redis key `{prefix}maintenance:{table}` holds the holder's token with a
//! TTL; the holder renews it while it lives, between runs too, so the same
//! instance keeps maintaining until it stops or dies, and a crashed holder's
//! lease runs out after `maintenance.lease_ttl_secs`. Renewal and release only
//! touch the key while it still holds this holder's token.

use std::sync::Arc;
use std::time::Duration;

use super::error::MaintenanceError;
use crate::redis_client::LazyRedis;

/// Extends the TTL only while the key holds our token.
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
/// Deletes the key only while it holds our token.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// How often a holder renews: every third of the TTL.
fn renew_every(ttl: Duration) -> Duration {
    ttl / 3
}

#[derive(Clone)]
pub struct Lease {
    redis: Arc<LazyRedis>,
    key: String,
    token: String,
    ttl: Duration,
}

impl Lease {
    pub fn new(redis: Arc<LazyRedis>, table: &str, ttl: Duration) -> Self {
        let key = redis.key(format_args!("maintenance:{table}"));
        Self {
            redis,
            key,
            token: uuid::Uuid::new_v4().to_string(),
            ttl,
        }
    }

    /// Takes the lease when it is free (or already ours).
    pub async fn acquire(&self) -> Result<bool, MaintenanceError> {
        let mut c = self.redis.conn().await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.token)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .query_async(&mut c)
            .await?;
        if set.is_some() {
            return Ok(true);
        }
        self.renew().await
    }

    /// Extends the lease if it is still ours; `false` when it is not.
    pub async fn renew(&self) -> Result<bool, MaintenanceError> {
        let mut c = self.redis.conn().await?;
        let renewed: i64 = redis::Script::new(RENEW)
            .key(&self.key)
            .arg(&self.token)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(renewed == 1)
    }

    /// How often the holder renews: every third of the TTL, so that two
    /// renewals can fail before the lease runs out.
    pub fn renew_every(&self) -> Duration {
        renew_every(self.ttl)
    }

    pub async fn release(&self) {
        let Ok(mut c) = self.redis.conn().await else {
            return;
        };
        let released: Result<i64, _> = redis::Script::new(RELEASE)
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut c)
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "releasing the maintenance lease failed; it runs out by itself");
        }
    }
}
