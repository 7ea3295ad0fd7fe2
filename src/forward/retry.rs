//! Which OTLP answers are retried, and how long to wait before the next
//! try: the OTLP specification's rules ("OTLP/HTTP Throttling" and
//! "Failures"), with exponential backoff and full jitter.

use std::time::{Duration, SystemTime};

/// Longest a `Retry-After` is honoured for: a backend asking for an hour is
/// asked again sooner.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// What a response means for the batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Accepted; `rejected_spans` of it were refused inside it
    /// (`partial_success`), which is not retried.
    Accepted {
        rejected_spans: i64,
        message: String,
    },
    /// Try again, after `after` when the backend said so.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The backend will never take this batch as it is.
    Reject { reason: String, status: u16 },
}

/// HTTP statuses the OTLP specification calls retryable.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// The wait a `Retry-After` header asks for: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Exponential backoff with full jitter: the n-th retry (from 1) waits a
/// uniformly random time below `initial · 2ⁿ⁻¹`, capped at `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry number `retry`, with `jitter` in [0, 1).
    pub fn wait(&self, retry: u32, jitter: f64) -> Duration {
        let ceiling = self.ceiling(retry);
        // At least a tenth of the ceiling: a zero wait would be a busy loop.
        ceiling.mul_f64(0.1 + 0.9 * jitter.clamp(0.0, 1.0))
    }

    /// The wait before retry `retry`: what the backend asked for, else the
    /// jittered backoff.
    pub fn next(&self, retry: u32, asked: Option<Duration>) -> Duration {
        asked.unwrap_or_else(|| self.wait(retry, rand::random::<f64>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retryable_statuses_are_the_specifications() {
        for s in [429, 502, 503, 504] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 413, 500, 501] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_below_the_ceiling() {
        let b = Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        };
        assert_eq!(b.ceiling(1), Duration::from_millis(500));
        assert_eq!(b.ceiling(2), Duration::from_secs(1));
        assert_eq!(b.ceiling(4), Duration::from_secs(4));
        assert_eq!(b.ceiling(40), Duration::from_secs(30));
        assert_eq!(b.wait(3, 0.0), Duration::from_millis(200));
        assert!(b.wait(3, 0.999) < b.ceiling(3));
        assert_eq!(
            b.next(9, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        let w = b.next(2, None);
        assert!(
            w >= Duration::from_millis(100) && w <= Duration::from_secs(1),
            "{w:?}"
        );
    }
}
