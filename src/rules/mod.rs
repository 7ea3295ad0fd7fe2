//! Force rules as data: the stored JSON shape, its validation, and the
//! compiled form that sampling evaluates without any I/O. Conditions are the
//! shared language of [`crate::matching`].

pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::matching::{reject, CompiledMatch, ForceRules, ForceVerdict, TraceFacts};
pub use crate::matching::{Condition, FieldError as RuleError, MatchSpec, Op};
use crate::model::TraceId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    ForceKeep,
    ForceDrop,
}

/// The body of `POST /admin/force-rules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSpec {
    #[serde(default)]
    pub description: String,
    pub duration_secs: i64,
    #[serde(default)]
    pub priority: i64,
    #[serde(rename = "match")]
    pub match_: MatchSpec,
    pub action: Action,
}

/// A validated rule, compiled once (regexes included).
pub struct CompiledRule {
    pub id: Arc<str>,
    pub priority: i64,
    pub action: Action,
    /// Unix milliseconds after which the rule no longer matches.
    pub expires_at: i64,
    match_: Arc<CompiledMatch>,
    /// Traces matched since the counts were last taken.
    matches: AtomicU64,
}

impl RuleSpec {
    /// Validates and compiles the rule; `max_duration_secs` bounds its lifetime.
    pub fn compile(&self, id: Arc<str>, max_duration_secs: i64) -> Result<CompiledRule, RuleError> {
        if self.duration_secs <= 0 {
            return Err(reject("duration_secs", "must be greater than 0"));
        }
        if self.duration_secs > max_duration_secs {
            return Err(reject(
                "duration_secs",
                format!("must be at most {max_duration_secs}"),
            ));
        }
        if self.match_.is_empty() {
            return Err(reject(
                "match",
                "needs at least one resource, span or trace condition",
            ));
        }
        Ok(CompiledRule {
            id,
            priority: self.priority,
            action: self.action,
            expires_at: i64::MAX,
            match_: Arc::new(self.match_.compile("match")?),
            matches: AtomicU64::new(0),
        })
    }
}

impl std::fmt::Debug for CompiledRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRule")
            .field("id", &self.id)
            .field("priority", &self.priority)
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

impl CompiledRule {
    /// Sets when the rule stops matching (Unix milliseconds).
    pub fn with_expiry(mut self, expires_at: i64) -> Self {
        self.expires_at = expires_at;
        self
    }

    /// Adds matches counted elsewhere, such as by the copy this one replaces.
    pub fn add_matches(&self, n: u64) {
        self.matches.fetch_add(n, Ordering::Relaxed);
    }

    fn take_matches(&self) -> u64 {
        self.matches.swap(0, Ordering::Relaxed)
    }

    fn verdict(&self) -> ForceVerdict {
        let rule_id = self.id.clone();
        match self.action {
            Action::ForceKeep => ForceVerdict::Keep { rule_id },
            Action::ForceDrop => ForceVerdict::Drop { rule_id },
        }
    }

    fn matches(&self, trace: &dyn TraceFacts) -> bool {
        self.match_.matches(trace)
    }
}

/// The active rules, highest priority first. Rules are shared with the set
/// a reload replaces, so that an unchanged rule is not compiled again and
/// keeps the matches it counted.
#[derive(Default)]
pub struct RuleSet {
    rules: Vec<Arc<CompiledRule>>,
}

impl RuleSet {
    pub fn new(mut rules: Vec<Arc<CompiledRule>>) -> Self {
        // Ties go to the rule with the smaller id, so every instance agrees.
        rules.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
        Self { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<CompiledRule>> {
        self.rules.iter().find(|r| r.id.as_ref() == id)
    }

    /// The rules by id, for a reload to find each one in constant time.
    pub fn by_id(&self) -> std::collections::HashMap<&str, &Arc<CompiledRule>> {
        self.rules.iter().map(|r| (r.id.as_ref(), r)).collect()
    }

    /// Whether the set holds exactly these rules (id and expiry).
    pub fn same_rules<'a>(&self, rules: impl ExactSizeIterator<Item = (&'a str, i64)>) -> bool {
        if rules.len() != self.rules.len() {
            return false;
        }
        let mut ids: Vec<(&str, i64)> = self
            .rules
            .iter()
            .map(|r| (r.id.as_ref(), r.expires_at))
            .collect();
        let mut others: Vec<(&str, i64)> = rules.collect();
        ids.sort_unstable();
        others.sort_unstable();
        ids == others
    }

    /// Takes the match counts gathered since the last call.
    pub fn take_match_counts(&self) -> Vec<(Arc<str>, u64)> {
        self.rules
            .iter()
            .filter_map(|r| {
                let n = r.take_matches();
                (n > 0).then(|| (r.id.clone(), n))
            })
            .collect()
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl RuleSet {
    /// The first live rule that matches, highest priority first.
    fn first_match(&self, trace: &dyn TraceFacts) -> Option<&Arc<CompiledRule>> {
        if self.rules.is_empty() {
            return None;
        }
        let now = now_ms();
        self.rules
            .iter()
            .filter(|r| r.expires_at > now)
            .find(|r| r.matches(trace))
    }
}

impl ForceRules for RuleSet {
    fn evaluate(&self, _: &TraceId, trace: &dyn TraceFacts) -> Option<ForceVerdict> {
        let hit = self.first_match(trace)?;
        hit.matches.fetch_add(1, Ordering::Relaxed);
        Some(hit.verdict())
    }

    fn peek(&self, _: &TraceId, trace: &dyn TraceFacts) -> Option<ForceVerdict> {
        self.first_match(trace).map(|r| r.verdict())
    }

    fn conditions(&self) -> Vec<Arc<CompiledMatch>> {
        self.rules.iter().map(|r| r.match_.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::TraceView;
    use crate::model::SpanRecord;
    use crate::testkit::synth::{records, TraceSpec};

    fn spec(json: &str) -> RuleSpec {
        serde_json::from_str(json).expect("rule json")
    }

    fn spans(service: &str, error: bool, duration_ms: u64) -> Vec<SpanRecord> {
        let t = TraceSpec {
            trace_id: [9; 16],
            service: service.into(),
            spans: 3,
            error,
            start_unix_nano: 1_700_000_000_000_000_000,
            duration_ms,
        };
        records(&t, ("tenant", "acme-prod"))
    }

    fn rule(json: &str, id: &str) -> Arc<CompiledRule> {
        Arc::new(spec(json).compile(id.into(), 86_400).expect("valid rule"))
    }

    #[test]
    fn the_design_example_matches_its_service_and_route() {
        let r = rule(
            r#"{"description":"demo","duration_secs":300,"priority":100,
               "match":{"resource":[{"key":"service.name","op":"eq","value":"demo-service"}],
                        "span":[{"key":"http.route","op":"starts_with","value":"/checkout"}]},
               "action":"force_keep"}"#,
            "r1",
        );
        let set = RuleSet::new(vec![r]);
        assert_eq!(
            set.evaluate(&[9; 16], &TraceView::new(&spans("demo-service", false, 10))),
            Some(ForceVerdict::Keep {
                rule_id: "r1".into()
            })
        );
        assert_eq!(
            set.evaluate(&[9; 16], &TraceView::new(&spans("other", false, 10))),
            None
        );
    }

    #[test]
    fn operators_on_fields_and_attributes() {
        let cases = [
            (
                r#"{"key":"tenant","op":"regex","value":"^acme-(prod|stage)$"}"#,
                true,
            ),
            (r#"{"key":"tenant","op":"regex","value":"^globex"}"#, false),
            (r#"{"key":"duration_ms","op":"gt","value":100}"#, true),
            (r#"{"key":"duration_ms","op":"gt","value":"1000"}"#, false),
            (
                r#"{"key":"http.response.status_code","op":"gte","value":200}"#,
                true,
            ),
            (r#"{"key":"name","op":"contains","value":"checkout"}"#, true),
            (r#"{"key":"kind","op":"eq","value":"SERVER"}"#, true),
            (r#"{"key":"status_code","op":"eq","value":"ERROR"}"#, false),
            (r#"{"key":"db.system","op":"exists"}"#, true),
            (r#"{"key":"no.such","op":"exists"}"#, false),
            (r#"{"key":"name","op":"ends_with","value":"orders"}"#, true),
            (r#"{"key":"no.such","op":"ne","value":"x"}"#, true),
        ];
        let data = spans("svc", false, 500);
        for (cond, expected) in cases {
            let r = rule(
                &format!(
                    r#"{{"duration_secs":60,"match":{{"span":[{cond}]}},"action":"force_keep"}}"#
                ),
                "r",
            );
            let got = RuleSet::new(vec![r])
                .evaluate(&[9; 16], &TraceView::new(&data))
                .is_some();
            assert_eq!(got, expected, "{cond}");
        }
    }

    #[test]
    fn higher_priority_wins_a_conflict() {
        let keep = rule(
            r#"{"duration_secs":60,"priority":10,"match":{"span":[{"key":"name","op":"exists"}]},"action":"force_keep"}"#,
            "keep",
        );
        let drop = rule(
            r#"{"duration_secs":60,"priority":20,"match":{"resource":[{"key":"service.name","op":"eq","value":"svc"}]},"action":"force_drop"}"#,
            "drop",
        );
        let set = RuleSet::new(vec![keep, drop]);
        assert_eq!(
            set.evaluate(&[9; 16], &TraceView::new(&spans("svc", true, 10))),
            Some(ForceVerdict::Drop {
                rule_id: "drop".into()
            })
        );
    }

    #[test]
    fn invalid_rules_name_their_field() {
        let cases = [
            (
                r#"{"duration_secs":0,"match":{"span":[{"key":"a","op":"exists"}]},"action":"force_keep"}"#,
                "duration_secs",
            ),
            (
                r#"{"duration_secs":999999,"match":{"span":[{"key":"a","op":"exists"}]},"action":"force_keep"}"#,
                "duration_secs",
            ),
            (
                r#"{"duration_secs":5,"match":{},"action":"force_keep"}"#,
                "match",
            ),
            (
                r#"{"duration_secs":5,"match":{"span":[{"key":"a","op":"regex","value":"("}]},"action":"force_keep"}"#,
                "match.span[0].value",
            ),
            (
                r#"{"duration_secs":5,"match":{"resource":[{"key":"a","op":"eq"}]},"action":"force_keep"}"#,
                "match.resource[0].value",
            ),
            (
                r#"{"duration_secs":5,"match":{"span":[{"key":"a","op":"gt","value":"fast"}]},"action":"force_keep"}"#,
                "match.span[0].value",
            ),
        ];
        for (json, field) in cases {
            let err = spec(json).compile("x".into(), 86_400).expect_err(json);
            assert_eq!(err.field, field, "{json}: {err}");
        }
        // Unknown ops and actions fail to parse at all.
        assert!(serde_json::from_str::<RuleSpec>(
            r#"{"duration_secs":5,"match":{"span":[{"key":"a","op":"like"}]},"action":"force_keep"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<RuleSpec>(
            r#"{"duration_secs":5,"match":{"span":[{"key":"a","op":"exists"}]},"action":"keep"}"#
        )
        .is_err());
    }
}
