//! `[[sampling.policies]]`: sampling policies as data. Each entry has a
//! `name`, a `match` (the condition language of force rules, plus trace
//! fields) and an `action` with the action's own keys. They are checked here,
//! when the config loads (and reloads), so that a bad entry is refused with
//! the path of its field; `decide::policy` compiles them into samplers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::Seconds;
use crate::matching::{reject, FieldError, MatchSpec};

/// What a policy does with a trace it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyAction {
    /// Keep it whole (sample rate 1).
    Keep,
    /// Drop it.
    Drop,
    /// Keep `rate` of the matching traces, deterministically by trace id.
    Sample,
    /// Keep at most `traces_per_sec`, per value of `key_fields` if given.
    RateLimit,
    /// Refinery's EMA dynamic sampler: rare `key_fields` values are kept at
    /// a high rate, frequent ones sampled so the average meets `goal_rate`.
    Dynamic,
}

impl PolicyAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyAction::Keep => "keep",
            PolicyAction::Drop => "drop",
            PolicyAction::Sample => "sample",
            PolicyAction::RateLimit => "rate_limit",
            PolicyAction::Dynamic => "dynamic",
        }
    }
}

/// One `[[sampling.policies]]` entry as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Stored in `sampling_rule_id` of the traces it keeps.
    pub name: String,
    /// Empty matches every trace.
    #[serde(rename = "match", default)]
    pub match_: MatchSpec,
    pub action: PolicyAction,
    /// `sample`: the fraction kept, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// `rate_limit`: traces kept per second, per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traces_per_sec: Option<f64>,
    /// `dynamic`: the average fraction kept, in (0, 1] (Refinery's
    /// `GoalSampleRate` N is 1/N here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_rate: Option<f64>,
    /// `rate_limit` and `dynamic`: the fields whose values make the key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_fields: Vec<String>,
    /// `dynamic`: how often sample rates are recomputed (default 15 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjustment_interval_secs: Option<Seconds>,
    /// `rate_limit` and `dynamic`: distinct keys tracked; further keys
    /// share one `other` key (default 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<usize>,
}

/// Default for `adjustment_interval_secs`, as Refinery's.
pub const DEFAULT_ADJUSTMENT_INTERVAL_SECS: f64 = 15.0;
/// Default for `max_keys`.
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// What a checked entry does: its action with the settings that action
/// takes, each present, in range and defaulted, and nothing else. The
/// deciding stage builds its samplers from this, never from the flat keys.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionSpec {
    Keep,
    Drop,
    /// Keep `rate` of the matching traces.
    Sample {
        rate: f64,
    },
    RateLimit {
        traces_per_sec: f64,
        key_fields: Vec<String>,
        max_keys: usize,
    },
    Dynamic {
        goal_rate: f64,
        key_fields: Vec<String>,
        adjustment_interval: Duration,
        max_keys: usize,
    },
}

/// The settings each action takes; any other set is an error.
fn settings_of(action: PolicyAction) -> &'static [&'static str] {
    match action {
        PolicyAction::Keep | PolicyAction::Drop => &[],
        PolicyAction::Sample => &["rate"],
        PolicyAction::RateLimit => &["traces_per_sec", "key_fields", "max_keys"],
        PolicyAction::Dynamic => &[
            "goal_rate",
            "key_fields",
            "adjustment_interval_secs",
            "max_keys",
        ],
    }
}

impl PolicySpec {
    /// Checks one entry; `path` is `sampling.policies[i]`.
    pub fn validate(&self, path: &str) -> Result<(), FieldError> {
        self.action_spec(path).map(|_| ())
    }

    /// The entry's name and match checked, and its action with exactly the
    /// settings it takes; the error names the field at fault.
    pub fn action_spec(&self, path: &str) -> Result<ActionSpec, FieldError> {
        let field = |name: &str| format!("{path}.{name}");
        let named = |m: &str| format!("policy `{}`: {m}", self.name);
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(reject(
                field("name"),
                "must be non-empty letters, digits, `-`, `_` or `.`",
            ));
        }
        self.match_.compile(&field("match"))?;
        let action = self.action;
        for (key, set) in [
            ("rate", self.rate.is_some()),
            ("traces_per_sec", self.traces_per_sec.is_some()),
            ("goal_rate", self.goal_rate.is_some()),
            ("key_fields", !self.key_fields.is_empty()),
            (
                "adjustment_interval_secs",
                self.adjustment_interval_secs.is_some(),
            ),
            ("max_keys", self.max_keys.is_some()),
        ] {
            if set && !settings_of(action).contains(&key) {
                return Err(reject(
                    field(key),
                    named(&format!("is not a setting of action `{}`", action.as_str())),
                ));
            }
        }
        let required = |key: &str, v: Option<f64>| {
            v.ok_or_else(|| {
                reject(
                    field(key),
                    named(&format!("is required for action `{}`", action.as_str())),
                )
            })
        };
        let fraction = |key: &str, v: Option<f64>| match required(key, v)? {
            r if r > 0.0 && r <= 1.0 => Ok(r),
            _ => Err(reject(
                field(key),
                named("must be greater than 0 and at most 1"),
            )),
        };
        if let Some(i) = self.key_fields.iter().position(|k| k.trim().is_empty()) {
            return Err(reject(
                format!("{path}.key_fields[{i}]"),
                named("must not be empty"),
            ));
        }
        let max_keys = match self.max_keys {
            Some(0) => return Err(reject(field("max_keys"), named("must be at least 1"))),
            Some(n) => n,
            None => DEFAULT_MAX_KEYS,
        };
        Ok(match action {
            PolicyAction::Keep => ActionSpec::Keep,
            PolicyAction::Drop => ActionSpec::Drop,
            PolicyAction::Sample => ActionSpec::Sample {
                rate: fraction("rate", self.rate)?,
            },
            PolicyAction::RateLimit => {
                let traces_per_sec = required("traces_per_sec", self.traces_per_sec)?;
                if !(traces_per_sec > 0.0 && traces_per_sec <= 1e6) {
                    return Err(reject(
                        field("traces_per_sec"),
                        named("must be greater than 0 and at most 1000000"),
                    ));
                }
                ActionSpec::RateLimit {
                    traces_per_sec,
                    key_fields: self.key_fields.clone(),
                    max_keys,
                }
            }
            PolicyAction::Dynamic => {
                let goal_rate = fraction("goal_rate", self.goal_rate)?;
                if self.key_fields.is_empty() {
                    return Err(reject(
                        field("key_fields"),
                        named("is required for action `dynamic`"),
                    ));
                }
                let secs = self
                    .adjustment_interval_secs
                    .map_or(DEFAULT_ADJUSTMENT_INTERVAL_SECS, |s| s.get());
                if !(0.1..=3600.0).contains(&secs) {
                    return Err(reject(
                        field("adjustment_interval_secs"),
                        named("must be between 0.1 and 3600 seconds"),
                    ));
                }
                ActionSpec::Dynamic {
                    goal_rate,
                    key_fields: self.key_fields.clone(),
                    adjustment_interval: Duration::from_secs_f64(secs),
                    max_keys,
                }
            }
        })
    }
}

/// Checks the whole list: every entry, and that names are unique.
pub fn validate_all(policies: &[PolicySpec]) -> Result<(), FieldError> {
    for (i, p) in policies.iter().enumerate() {
        let path = format!("sampling.policies[{i}]");
        p.validate(&path)?;
        if policies[..i].iter().any(|q| q.name == p.name) {
            return Err(reject(
                format!("{path}.name"),
                format!("policy `{}` is defined twice", p.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(toml_text: &str) -> PolicySpec {
        toml::from_str(toml_text).expect("a policy entry")
    }

    #[test]
    fn an_action_gets_its_settings_with_their_defaults_and_nothing_else() {
        let dynamic = entry(
            "name = \"d\"\naction = \"dynamic\"\ngoal_rate = 0.1\nkey_fields = [\"service.name\"]",
        );
        assert_eq!(
            dynamic.action_spec("p").expect("valid"),
            ActionSpec::Dynamic {
                goal_rate: 0.1,
                key_fields: vec!["service.name".into()],
                adjustment_interval: Duration::from_secs(15),
                max_keys: DEFAULT_MAX_KEYS,
            }
        );
        let sample = entry("name = \"s\"\naction = \"sample\"\nrate = 0.25");
        assert_eq!(
            sample.action_spec("p").expect("valid"),
            ActionSpec::Sample { rate: 0.25 }
        );
        let foreign = entry("name = \"s\"\naction = \"sample\"\nrate = 0.5\ntraces_per_sec = 3.0");
        let err = foreign.action_spec("p").expect_err("rate_limit's key");
        assert_eq!(err.field, "p.traces_per_sec");
        let missing = entry("name = \"r\"\naction = \"rate_limit\"");
        let err = missing.action_spec("p").expect_err("required");
        assert_eq!(err.field, "p.traces_per_sec");
    }
}
