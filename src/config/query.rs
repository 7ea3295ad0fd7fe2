//! `[query]`: the SQL engine's limits and the caches of its reads.

use serde::Deserialize;

use super::checks::{invalid, seconds};
use super::duration::Seconds;
use super::error::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    pub max_rows: usize,
    pub timeout_secs: Seconds,
    /// Memory all running SQL queries may hold together. A query that needs
    /// more fails (503) instead of growing the process; nothing spills to disk.
    pub max_memory_bytes: usize,
    /// The largest result one query may return, in Arrow bytes (the JSON
    /// answer is about as large again); a larger one is refused with 400.
    pub max_result_bytes: usize,
    /// The Parquet footers and `trace_id` bloom filters trace lookups keep,
    /// so that each file's are read once rather than once per lookup; 0
    /// keeps none.
    pub file_cache_bytes: usize,
    /// How often the service and operation index catches up with the table
    /// on its own, while lists are asked for (within the last ten minutes),
    /// so that a list reads only what was committed since.
    pub index_refresh_secs: Seconds,
}

impl QueryConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_rows == 0 {
            return Err(invalid("query.max_rows", "must be at least 1"));
        }
        seconds("query.timeout_secs", self.timeout_secs)?;
        seconds("query.index_refresh_secs", self.index_refresh_secs)?;
        if self.max_memory_bytes < 1 << 20 {
            return Err(invalid(
                "query.max_memory_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if self.max_result_bytes < 1 << 16 {
            return Err(invalid(
                "query.max_result_bytes",
                "must be at least 65536 (64 KiB)",
            ));
        }
        Ok(())
    }
}
