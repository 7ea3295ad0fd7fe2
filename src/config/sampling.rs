//! `[sampling]`: when a trace is complete and which traces are kept.

use serde::Deserialize;

use super::checks::{invalid, invalid_owned, seconds, MAX_SECONDS};
use super::duration::{Milliseconds, Seconds};
use super::error::ConfigError;
use super::policy::{self, PolicySpec};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    pub inactivity_timeout_secs: Seconds,
    pub max_trace_duration_secs: Seconds,
    pub max_spans_per_trace: usize,
    pub always_sample_errors: bool,
    pub latency_threshold_ms: Milliseconds,
    pub baseline_sample_rate: f64,
    pub decision_ttl_secs: u64,
    /// 0 picks one worker per CPU.
    pub workers: usize,
    /// `[[sampling.policies]]`: after force rules and before the error,
    /// latency and baseline settings; the first that decides wins. They
    /// reload on SIGHUP and when the config file changes.
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    /// How often the config file is checked for a changed policy list.
    pub policy_watch_interval_secs: Seconds,
}

impl SamplingConfig {
    /// The number of evaluation workers to run.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        }
    }
}

impl SamplingConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        seconds(
            "sampling.inactivity_timeout_secs",
            self.inactivity_timeout_secs,
        )?;
        seconds(
            "sampling.max_trace_duration_secs",
            self.max_trace_duration_secs,
        )?;
        if !(1..=MAX_SECONDS as u64).contains(&self.decision_ttl_secs) {
            return Err(invalid(
                "sampling.decision_ttl_secs",
                format!(
                    "must be between 1 and {MAX_SECONDS} seconds (Redis refuses a zero expiry)"
                ),
            ));
        }
        if self.max_spans_per_trace == 0 {
            return Err(invalid(
                "sampling.max_spans_per_trace",
                "must be at least 1",
            ));
        }
        if self.latency_threshold_ms.get() > MAX_SECONDS * 1000.0 {
            return Err(invalid(
                "sampling.latency_threshold_ms",
                format!("must be at most {} (a week)", MAX_SECONDS * 1000.0),
            ));
        }
        if !(0.0..=1.0).contains(&self.baseline_sample_rate) {
            return Err(invalid(
                "sampling.baseline_sample_rate",
                "must be between 0.0 and 1.0",
            ));
        }
        if self.workers > 1024 {
            return Err(invalid("sampling.workers", "must be at most 1024"));
        }
        seconds(
            "sampling.policy_watch_interval_secs",
            self.policy_watch_interval_secs,
        )?;
        policy::validate_all(&self.policies).map_err(|e| invalid_owned(e.field, e.message))
    }
}
