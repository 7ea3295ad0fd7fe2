//! The checks every section shares: a key at fault, and the bounds of
//! durations.

use super::duration::Seconds;
use super::error::ConfigError;

pub(super) fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    invalid_owned(key.to_string(), reason)
}

pub(super) fn invalid_owned(key: String, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The longest duration any `_secs` key accepts: a week. Longer values are
/// mistakes, and absurd ones would overflow `Duration`.
pub(super) const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// The shortest `maintenance.orphan_file_grace_secs` accepted: an hour.
pub(super) const MIN_ORPHAN_GRACE_SECS: f64 = 3600.0;

/// The longest lifetime `rules.max_duration_secs` may allow: a year, so that
/// `created_at + duration` in milliseconds can never overflow.
pub(super) const MAX_RULE_SECONDS: i64 = 365 * 24 * 3600;

/// A positive duration of at most [`MAX_SECONDS`].
pub(super) fn seconds(key: &'static str, value: Seconds) -> Result<(), ConfigError> {
    let value = value.get();
    if value > 0.0 && value <= MAX_SECONDS {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must be a positive number of seconds, at most {MAX_SECONDS}"),
        ))
    }
}
