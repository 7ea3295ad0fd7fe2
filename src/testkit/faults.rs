//! Faults a test injects into a selector process, named in the
//! `TSS_TESTKIT_FAULT` environment variable (comma-separated). Only builds
//! with the `testkit` feature have them; the service as shipped does not.
//!
//! - `writer_panic`: the storage writer panics at its next commit, to test
//!   that a dead stage stops the process with the cause in the log.
//!
//! `TSS_TESTKIT_CLOCK_AHEAD_SECS` sets orphan cleanup's clock ahead, which
//! ages every file in an object store at once.

/// The environment variable that arms faults.
pub const FAULT_ENV: &str = "TSS_TESTKIT_FAULT";

/// Whether the fault `name` is armed in this process.
pub fn armed(name: &str) -> bool {
    std::env::var(FAULT_ENV).is_ok_and(|v| v.split(',').any(|f| f.trim() == name))
}

/// Seconds orphan cleanup's clock runs ahead of the wall clock.
pub fn clock_ahead_secs() -> i64 {
    std::env::var("TSS_TESTKIT_CLOCK_AHEAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
