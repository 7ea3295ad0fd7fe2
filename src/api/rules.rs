//! `/admin/force-rules`: create, list, get and delete force rules.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::error::ApiError;
use super::state::{AppState, RulesApi};
use crate::rules::store::{StoreError, StoredRule};
use crate::rules::{RuleError, RuleSpec};

/// Largest rule body accepted.
pub const MAX_RULE_BODY_BYTES: usize = 64 * 1024;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(reason) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("force rules are unavailable while Redis is unreachable: {reason}"),
            ),
            full @ StoreError::TooMany { .. } => {
                ApiError::new(StatusCode::CONFLICT, full.to_string())
            }
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        ApiError::invalid(e.field, e.message)
    }
}

fn api(state: &AppState) -> Result<&RulesApi, ApiError> {
    state.rules.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "force rules are not configured",
        )
    })
}

/// Parses and validates a rule body; the error names the offending field.
pub fn parse_rule(body: &[u8], max_duration_secs: i64) -> Result<RuleSpec, RuleError> {
    if body.len() > MAX_RULE_BODY_BYTES {
        return Err(RuleError {
            field: "body".into(),
            message: format!(
                "body of {} bytes exceeds {MAX_RULE_BODY_BYTES} bytes",
                body.len()
            ),
        });
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let spec: RuleSpec = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        RuleError {
            field: if path == "." {
                "body".to_string()
            } else {
                path
            },
            message: e.inner().to_string(),
        }
    })?;
    spec.compile("validation".into(), max_duration_secs)?;
    Ok(spec)
}

pub async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let api = api(&state)?;
    let body = body.map_err(|e| ApiError::invalid("body", e.body_text()))?;
    let spec = parse_rule(&body, api.max_duration_secs)?;
    let rule = api.store.create(spec).await?;
    tracing::info!(rule = %rule.id, action = ?rule.spec.action, priority = rule.spec.priority, "force rule created");
    Ok((StatusCode::CREATED, Json(RuleAnswer::new(&rule, None))).into_response())
}

pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let api = api(&state)?;
    let (rules, counts) = tokio::try_join!(api.store.list(), api.store.match_counts())?;
    let rules: Vec<RuleAnswer> = rules
        .iter()
        .map(|r| RuleAnswer::new(r, Some(counts.get(&r.id).copied().unwrap_or(0))))
        .collect();
    Ok(Json(RuleList {
        count: rules.len(),
        rules,
    })
    .into_response())
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let api = api(&state)?;
    let rule = api
        .store
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no force rule {id}")))?;
    let matched = api
        .store
        .match_counts()
        .await
        .ok()
        .and_then(|c| c.get(&id).copied());
    Ok(Json(RuleAnswer::new(&rule, Some(matched.unwrap_or(0)))).into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let api = api(&state)?;
    if !api.store.delete(&id).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no force rule {id}"),
        ));
    }
    tracing::info!(rule = %id, "force rule deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A force rule as the API answers it (docs/api.md, "Force rules"): the
/// rule as created, with its times in RFC 3339 and what is left of it.
#[derive(Debug, Serialize)]
struct RuleAnswer<'a> {
    id: &'a str,
    created_at: Option<String>,
    expires_at: Option<String>,
    remaining_secs: i64,
    /// Traces the rule matched so far; absent in the answer to a create.
    #[serde(skip_serializing_if = "Option::is_none")]
    matched_traces: Option<u64>,
    #[serde(flatten)]
    spec: &'a RuleSpec,
}

impl<'a> RuleAnswer<'a> {
    fn new(rule: &'a StoredRule, matched: Option<u64>) -> Self {
        let remaining_ms = (rule.expires_at - chrono::Utc::now().timestamp_millis()).max(0);
        Self {
            id: &rule.id,
            created_at: iso(rule.created_at),
            expires_at: iso(rule.expires_at),
            remaining_secs: remaining_ms / 1000,
            matched_traces: matched,
            spec: &rule.spec,
        }
    }
}

/// `GET /admin/force-rules`.
#[derive(Debug, Serialize)]
struct RuleList<'a> {
    rules: Vec<RuleAnswer<'a>>,
    count: usize,
}

fn iso(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_field() {
        let cases = [
            (
                r#"{"duration_secs":5,"match":{"span":[{"key":"a","op":"like","value":"x"}]},"action":"force_keep"}"#,
                "match.span[0].op",
            ),
            (
                r#"{"duration_secs":5,"match":{"span":[{"key":"a","op":"exists"}]},"action":"keep"}"#,
                "action",
            ),
            (
                r#"{"duration_secs":-1,"match":{"span":[{"key":"a","op":"exists"}]},"action":"force_keep"}"#,
                "duration_secs",
            ),
            (
                r#"{"duration_secs":"soon","match":{"span":[{"key":"a","op":"exists"}]},"action":"force_keep"}"#,
                "duration_secs",
            ),
            (
                r#"{"duration_secs":5,"match":{},"action":"force_keep"}"#,
                "match",
            ),
            (r#"not json"#, "body"),
        ];
        for (body, field) in cases {
            let e = parse_rule(body.as_bytes(), 3600).expect_err(body);
            assert_eq!(e.field, field, "{body}: {}", e.message);
        }
        let big = format!(r#"{{"description":"{}"}}"#, "x".repeat(MAX_RULE_BODY_BYTES));
        assert_eq!(
            parse_rule(big.as_bytes(), 3600).expect_err("big").field,
            "body"
        );
    }
}
