//! `[recovery]`: what recovery jobs may take from the live path.

use serde::Deserialize;

use super::checks::{invalid, seconds};
use super::duration::Seconds;
use super::error::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryConfig {
    /// Jobs that may run at once on one instance; more are refused (409).
    pub max_concurrent_jobs: usize,
    /// Messages per second one job reads at most; a request may ask for
    /// less. It keeps a recovery from starving the live path of CPU and the
    /// brokers of bandwidth.
    pub max_messages_per_sec: u32,
    /// Spans one job holds at most (buffered or being stored): its own
    /// share of memory, beside `buffer.max_buffered_spans`.
    pub max_buffered_spans: usize,
    /// Longest a job waits for the live group to commit past the end of its
    /// range; after it, the job reads only what the live group has decided
    /// and says so in its warnings.
    pub live_wait_secs: Seconds,
    /// Finished jobs kept for `GET /admin/recoveries`, newest first.
    pub max_finished_jobs: usize,
}

impl RecoveryConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_concurrent_jobs == 0 {
            return Err(invalid(
                "recovery.max_concurrent_jobs",
                "must be at least 1",
            ));
        }
        if self.max_messages_per_sec == 0 {
            return Err(invalid(
                "recovery.max_messages_per_sec",
                "must be at least 1",
            ));
        }
        if self.max_buffered_spans < 1000 {
            return Err(invalid(
                "recovery.max_buffered_spans",
                "must be at least 1000",
            ));
        }
        seconds("recovery.live_wait_secs", self.live_wait_secs)?;
        Ok(())
    }
}
