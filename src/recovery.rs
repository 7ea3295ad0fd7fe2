//! Jobs over the raw topic as the HTTP API and the command line see them:
//! recoveries (a time range, a condition in the force-rule language,
//! limits) and policy simulations (a time range and a policy list), what a
//! job reports while it runs, and the interface the runner
//! (`app::recovery`) offers them.
//!
//! Part of the shared core: the API and the command line both speak it,
//! and neither may import the start-up path that runs the jobs.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::PolicySpec;
use crate::matching::{reject, CompiledMatch, FieldError, MatchSpec};

/// `POST /admin/recoveries`, and the `recover` command's options.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryRequest {
    /// RFC 3339, Unix milliseconds, `now`, or relative to now (`-2h`, `-90m`).
    pub from: String,
    /// As `from`; now when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The traces to recover, in the force-rule language.
    #[serde(default, rename = "match")]
    pub match_: MatchSpec,
    /// Stop once this many traces have matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_traces: Option<u64>,
    /// Read at most this many messages per second; the config's
    /// `recovery.max_messages_per_sec` caps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages_per_sec: Option<u32>,
}

/// `POST /admin/sampling/simulate`: what a policy list would have kept
/// over a time range, beside what the live list keeps.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimulationRequest {
    /// As a recovery's `from`.
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `[[sampling.policies]]` entries as JSON; absent: the live list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<PolicySpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages_per_sec: Option<u32>,
}

impl SimulationRequest {
    /// The range against `now_ms`, checked as a recovery's is.
    pub fn range(&self, now_ms: i64) -> Result<(i64, i64), FieldError> {
        let probe = RecoveryRequest {
            from: self.from.clone(),
            to: self.to.clone(),
            match_: MatchSpec::default(),
            max_traces: None,
            max_messages_per_sec: self.max_messages_per_sec,
        };
        let valid = probe.validate(now_ms)?;
        Ok((valid.from_ms, valid.to_ms))
    }
}

/// What one policy list kept of one service's traces, or of all of them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct KeptRow {
    /// The policy's name, or the setting that kept it (`error`,
    /// `latency`, `baseline`); absent in a total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The root span's service; absent in a total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub traces: u64,
    pub spans: u64,
    /// Of the service's traces (of all traces in a total).
    pub kept_fraction: f64,
    /// The traces these stand for: what `sum(sample_rate)` would count.
    pub sum_sample_rate: f64,
    /// Encoded OTLP bytes of the kept spans, scaled to a day.
    pub otlp_bytes_per_day: f64,
}

/// One policy list's outcome: its total, then per policy and service.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct KeptSummary {
    pub total: KeptRow,
    pub rows: Vec<KeptRow>,
}

/// What a simulation found so far.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SimulationResult {
    /// Traces that overlap the range, and their spans.
    pub traces: u64,
    pub spans: u64,
    /// The list simulated.
    pub candidate: KeptSummary,
    /// The live list, decided the same way over the same traces.
    pub live: KeptSummary,
}

/// A request checked: times resolved, the condition compiled.
pub struct ValidRequest {
    pub request: RecoveryRequest,
    pub from_ms: i64,
    pub to_ms: i64,
    pub condition: CompiledMatch,
}

/// Longest range one job may cover.
pub const MAX_RANGE_MS: i64 = 31 * 24 * 3_600_000;

impl RecoveryRequest {
    /// Resolves the times against `now_ms` and compiles the condition; an
    /// error names the field at fault.
    pub fn validate(self, now_ms: i64) -> Result<ValidRequest, FieldError> {
        let from_ms = parse_time("from", &self.from, now_ms)?;
        let to_ms = match &self.to {
            Some(t) => parse_time("to", t, now_ms)?,
            None => now_ms,
        };
        if to_ms > now_ms + 60_000 {
            return Err(reject("to", "must not be in the future"));
        }
        if to_ms <= from_ms {
            return Err(reject("to", "must be after `from`"));
        }
        if to_ms - from_ms > MAX_RANGE_MS {
            return Err(reject("from", "the range may cover 31 days at most"));
        }
        if self.max_traces == Some(0) {
            return Err(reject("max_traces", "must be at least 1"));
        }
        if self.max_messages_per_sec == Some(0) {
            return Err(reject("max_messages_per_sec", "must be at least 1"));
        }
        let condition = self.match_.compile("match")?;
        Ok(ValidRequest {
            request: self,
            from_ms,
            to_ms,
            condition,
        })
    }
}

/// A time as RFC 3339, Unix milliseconds, `now`, or `-<duration>` before
/// `now_ms` (`-2h`, `-15m`, `-1h30m`), in Unix milliseconds.
pub fn parse_time(field: &str, value: &str, now_ms: i64) -> Result<i64, FieldError> {
    let v = value.trim();
    if v == "now" {
        return Ok(now_ms);
    }
    if let Some(ago) = v.strip_prefix('-') {
        let d = humantime::parse_duration(ago).map_err(|e| {
            reject(
                field,
                format!("`{value}`: not a duration before now ({e}); try -2h or -30m"),
            )
        })?;
        return Ok(now_ms - d.as_millis() as i64);
    }
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            reject(
                field,
                format!(
                    "`{value}` is none of RFC 3339 (2026-12-03T10:00:00Z), Unix milliseconds, \
                     `now` or a duration before now (-2h): {e}"
                ),
            )
        })
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryState {
    /// Finding the offsets of the range.
    Planning,
    /// Waiting for the range to end (its end plus the inactivity timeout)
    /// and for the live group to commit past it.
    Waiting,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl RecoveryState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RecoveryState::Done | RecoveryState::Failed | RecoveryState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryState::Planning => "planning",
            RecoveryState::Waiting => "waiting",
            RecoveryState::Running => "running",
            RecoveryState::Done => "done",
            RecoveryState::Failed => "failed",
            RecoveryState::Cancelled => "cancelled",
        }
    }
}

/// One partition of a job.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartitionProgress {
    pub partition: i32,
    /// The offsets `[start_offset, end_offset)` the widened range covers.
    pub start_offset: i64,
    pub end_offset: i64,
    /// The next offset to read.
    pub read_offset: i64,
    /// Milliseconds at the start of the range the topic no longer holds.
    #[serde(skip_serializing_if = "is_zero")]
    pub missing_ms: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Recovery,
    Simulation,
}

/// A job as `GET /admin/recoveries/{id}` (or `/admin/sampling/simulations/{id}`) shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub id: String,
    pub kind: JobKind,
    pub state: RecoveryState,
    /// The request as it was made.
    pub request: serde_json::Value,
    /// The range asked for, RFC 3339.
    pub from: String,
    pub to: String,
    /// What was read: the range widened by the trace timeouts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_to: Option<String>,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// `list_offsets` or `search` (the broker could not answer by time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsets_found_by: Option<&'static str>,
    pub partitions: Vec<PartitionProgress>,
    pub partitions_done: usize,
    pub messages_total: i64,
    pub messages_read: u64,
    pub bytes_read: u64,
    pub messages_invalid: u64,
    /// Traces that overlap the range, and those that matched.
    pub traces_scanned: u64,
    pub traces_matched: u64,
    /// Matched traces stored by this job, and their spans.
    pub traces_recovered: u64,
    pub spans_recovered: u64,
    /// Matched traces the table held already (kept live, or recovered by
    /// an earlier job).
    pub traces_already_stored: u64,
    /// Fraction of `messages_total` read, 0 to 1.
    pub progress: f64,
    /// Messages read over the whole job so far, to its end.
    pub messages_per_sec: f64,
    /// Messages read over the time spent reading: the reader's own rate,
    /// without the wait for the last traces to be decided and stored.
    pub read_messages_per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<f64>,
    /// What the job could not do as asked (retention, the live group
    /// behind the range, the `max_traces` limit).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A simulation's outcome so far (final once `state` is `done`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simulation: Option<SimulationResult>,
}

/// Why a job could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("recoveries need the table: storage is disabled or the catalog is not connected yet")]
    Unavailable,
    #[error("{running} recovery jobs are running already (recovery.max_concurrent_jobs)")]
    Busy { running: usize },
}

/// What runs the jobs; served by the API and the command line.
pub trait Recoveries: Send + Sync {
    fn start(&self, request: RecoveryRequest) -> Result<JobReport, RecoveryError>;
    fn simulate(&self, request: SimulationRequest) -> Result<JobReport, RecoveryError>;
    /// Newest first.
    fn list(&self) -> Vec<JobReport>;
    fn get(&self, id: &str) -> Option<JobReport>;
    /// Cancels a job that has not ended; `None` for an unknown id.
    fn cancel(&self, id: &str) -> Option<JobReport>;
}

pub type SharedRecoveries = Arc<dyn Recoveries>;

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn request(from: &str, to: Option<&str>) -> RecoveryRequest {
        RecoveryRequest {
            from: from.into(),
            to: to.map(Into::into),
            match_: MatchSpec::default(),
            max_traces: None,
            max_messages_per_sec: None,
        }
    }

    #[test]
    fn times_are_relative_absolute_or_now() {
        assert_eq!(parse_time("from", "-2h", NOW), Ok(NOW - 7_200_000));
        assert_eq!(parse_time("from", "-1h30m", NOW), Ok(NOW - 5_400_000));
        assert_eq!(parse_time("to", "now", NOW), Ok(NOW));
        assert_eq!(parse_time("to", "12345", NOW), Ok(12345));
        // 2027-01-15T08:00:00Z is 1,800,000,000 s after the epoch.
        assert_eq!(
            parse_time("from", "2027-01-15T08:00:00Z", NOW),
            Ok(1_800_000_000_000)
        );
        let e = parse_time("from", "yesterday", NOW).expect_err("refused");
        assert_eq!(e.field, "from");
    }

    #[test]
    fn a_request_is_checked_field_by_field() {
        let ok = request("-10m", None).validate(NOW).expect("valid");
        assert_eq!((ok.from_ms, ok.to_ms), (NOW - 600_000, NOW));
        let e = |r: RecoveryRequest| r.validate(NOW).err().map(|e| e.field);
        assert_eq!(e(request("-10m", Some("-20m"))), Some("to".into()));
        assert_eq!(e(request("-40d", None)), Some("from".into()));
        assert_eq!(
            e(request("-1m", Some("2100-01-01T00:00:00Z"))),
            Some("to".into())
        );
        let mut r = request("-1h", None);
        r.max_traces = Some(0);
        assert_eq!(e(r), Some("max_traces".into()));
        let mut r = request("-1h", None);
        r.match_ = serde_json::from_value(serde_json::json!(
            {"span": [{"key": "x", "op": "regex", "value": "("}]}
        ))
        .expect("spec");
        assert_eq!(e(r), Some("match.span[0].value".into()));
    }
}
