//! What every handler of the admin API shares: the state axum hands each
//! request, and the parts of it that a handler may find missing.

use std::sync::Arc;

use axum::http::StatusCode;
use tokio::sync::OnceCell;

use super::error::ApiError;
use super::guard;
use crate::decide::policy::SharedPolicies;
use crate::health::Health;
use crate::matching::ForceRules;
use crate::metrics::Metrics;
use crate::query::QueryEngine;
use crate::recovery::SharedRecoveries;
use crate::rules::store::RuleStore;

/// Largest request body the admin API reads.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub health: Health,
    /// Set once the table exists and the engine is registered.
    pub query: Arc<OnceCell<QueryEngine>>,
    pub auth_token: Option<Arc<str>>,
    pub rules: Option<RulesApi>,
    pub sampling: Option<SamplingApi>,
    /// Trace lookups count what they skipped here.
    pub metrics: Option<Metrics>,
    /// The `Host` and `Origin` values served ([`guard`]).
    pub hosts: Arc<guard::HostPolicy>,
    /// Recovery jobs, when storage is on.
    pub recoveries: Option<SharedRecoveries>,
}

/// Rules need Redis; the service runs on without it.
#[derive(Clone)]
pub struct RulesApi {
    pub store: Arc<RuleStore>,
    pub max_duration_secs: i64,
}

/// What the explain endpoint evaluates with: the live policies and rules.
#[derive(Clone)]
pub struct SamplingApi {
    pub policies: SharedPolicies,
    pub force_rules: Arc<dyn ForceRules>,
}

/// The query engine, or 503 until the table is reachable.
pub(super) fn engine(state: &AppState) -> Result<&QueryEngine, ApiError> {
    state.query.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the table is not available yet; see /health",
        )
    })
}
