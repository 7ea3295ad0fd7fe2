//! `[rules]`: the limits on force rules.

use serde::Deserialize;

use super::checks::{invalid, MAX_RULE_SECONDS};
use super::error::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    pub max_duration_secs: i64,
    /// Most force rules live at once; a create past it gets 409. Every
    /// instance evaluates every rule against every trace.
    pub max_rules: usize,
}

impl RulesConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_RULE_SECONDS).contains(&self.max_duration_secs) {
            return Err(invalid(
                "rules.max_duration_secs",
                format!("must be between 1 and {MAX_RULE_SECONDS} (a year)"),
            ));
        }
        if !(1..=100_000).contains(&self.max_rules) {
            return Err(invalid("rules.max_rules", "must be between 1 and 100000"));
        }
        Ok(())
    }
}
