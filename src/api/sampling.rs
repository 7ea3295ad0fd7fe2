//! `POST /admin/sampling/explain`: which force rule, policy or setting would
//! decide the traces in an OTLP request, and why, without storing anything,
//! counting a force-rule match or moving a sampler's state; and
//! `GET /admin/sampling/policies`, the live policy list.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::error::ApiError;
use super::state::{AppState, MAX_BODY_BYTES};
use crate::decide::policy::Step;
use crate::model::{Decision, SpanRecord, TraceId};
use crate::otlp::decode::decode_message;

/// The live policy list and the settings after it.
#[derive(Debug, Serialize)]
struct LivePolicies {
    policies: Vec<crate::config::PolicySpec>,
    always_sample_errors: bool,
    latency_threshold_ms: f64,
    baseline_sample_rate: f64,
}

/// `GET /admin/sampling/policies`: the list in force (after any reload).
pub async fn policies(State(state): State<AppState>) -> Result<Response, ApiError> {
    let api = state
        .sampling
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "sampling is not running"))?;
    let live = api.policies.load();
    let (always_sample_errors, latency_threshold_ms, baseline_sample_rate) =
        live.fallback_settings();
    Ok(Json(LivePolicies {
        policies: live.specs(),
        always_sample_errors,
        latency_threshold_ms,
        baseline_sample_rate,
    })
    .into_response())
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
    let traces: Vec<Explained> = group(decoded.spans)
        .into_iter()
        .map(|(id, spans)| {
            let (decision, steps) = policies.explain(&id, &spans, api.force_rules.as_ref());
            describe(&id, spans.len(), &decision, steps)
        })
        .collect();
    Ok(Json(Explanation { traces }).into_response())
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

/// The answer of `POST /admin/sampling/explain`.
#[derive(Debug, Serialize)]
struct Explanation {
    traces: Vec<Explained>,
}

/// One trace of the request, decided as the live path would.
#[derive(Debug, Serialize)]
struct Explained {
    trace_id: String,
    span_count: usize,
    /// `keep` or `drop`.
    decision: &'static str,
    /// The step that decided; null when none did.
    decided_by: Option<Step>,
    steps: Vec<Step>,
    /// What a kept trace would be stored with; absent for a drop.
    #[serde(flatten)]
    kept: Option<KeptAs>,
}

#[derive(Debug, Serialize)]
struct KeptAs {
    sampling_reason: &'static str,
    sampling_rule_id: Option<Arc<str>>,
    sample_rate: f64,
}

fn describe(id: &TraceId, span_count: usize, decision: &Decision, steps: Vec<Step>) -> Explained {
    let kept = match decision {
        Decision::Drop => None,
        Decision::Keep {
            reason,
            rule_id,
            sample_rate,
        } => Some(KeptAs {
            sampling_reason: reason.as_str(),
            sampling_rule_id: rule_id.clone(),
            sample_rate: *sample_rate,
        }),
    };
    Explained {
        trace_id: hex::encode(id),
        span_count,
        decision: if kept.is_some() { "keep" } else { "drop" },
        decided_by: steps.iter().find(|s| s.outcome.is_some()).cloned(),
        steps,
        kept,
    }
}
