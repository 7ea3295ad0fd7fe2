//! `POST /admin/sampling/explain`: which force rule, policy or setting would
//! decide the traces in an OTLP request, and why, without storing anything,
//! counting a force-rule match or moving a sampler's state.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState, MAX_BODY_BYTES};
use crate::decide::policy::{SharedPolicies, Step};
use crate::model::{Decision, ForceRules, SpanRecord, TraceId};
use crate::otlp::decode::decode_message;

/// What the explain endpoint evaluates with: the live policies and rules.
#[derive(Clone)]
pub struct SamplingApi {
    pub policies: SharedPolicies,
    pub force_rules: Arc<dyn ForceRules>,
}

pub async fn explain(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let api = state
        .sampling
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "sampling is not running"))?;
    let decoded = decode_message(body, MAX_BODY_BYTES).map_err(|e| {
        ApiError::invalid(
            "body",
            format!("expected an OTLP ExportTraceServiceRequest (JSON or protobuf): {e}"),
        )
    })?;
    if decoded.spans.is_empty() {
        return Err(ApiError::invalid(
            "body",
            "the request holds no span with a valid trace id and times",
        ));
    }
    let policies = api.policies.load();
    let traces: Vec<Value> = group(decoded.spans)
        .into_iter()
        .map(|(id, spans)| {
            let (decision, steps) = policies.explain(&id, &spans, api.force_rules.as_ref());
            describe(&id, spans.len(), &decision, &steps)
        })
        .collect();
    Ok(Json(json!({ "traces": traces })).into_response())
}

/// Spans by trace, in the order the traces first appear.
fn group(spans: Vec<(TraceId, SpanRecord)>) -> Vec<(TraceId, Vec<SpanRecord>)> {
    let mut out: Vec<(TraceId, Vec<SpanRecord>)> = Vec::new();
    for (id, span) in spans {
        match out.iter_mut().find(|(t, _)| *t == id) {
            Some((_, list)) => list.push(span),
            None => out.push((id, vec![span])),
        }
    }
    out
}

fn describe(id: &TraceId, span_count: usize, decision: &Decision, steps: &[Step]) -> Value {
    let decided_by = steps.iter().find(|s| s.outcome.is_some());
    let mut v = json!({
        "trace_id": hex::encode(id),
        "span_count": span_count,
        "decision": if matches!(decision, Decision::Drop) { "drop" } else { "keep" },
        "decided_by": decided_by,
        "steps": steps,
    });
    if let Decision::Keep {
        reason,
        rule_id,
        sample_rate,
    } = decision
    {
        v["sampling_reason"] = json!(reason.as_str());
        v["sampling_rule_id"] = json!(rule_id.as_deref());
        v["sample_rate"] = json!(sample_rate);
    }
    v
}
