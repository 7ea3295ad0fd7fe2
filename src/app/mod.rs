//! The start-up path: builds the shared core, starts the stages in order and
//! drains them in order at shutdown. Reads as the list of what it starts.

mod background;
mod error;
mod pipeline;
mod probes;
pub mod recovery;
mod reload;
mod retry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use secrecy::ExposeSecret;

use tokio::sync::OnceCell;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, RulesApi, SamplingApi};
use crate::config::Settings;
use crate::decide::policy::PolicySet;
use crate::forward::{self, ForwardContext, Forwarders};
use crate::health::Health;
use crate::ingest::{self, IngestError};
use crate::maintenance::Maintainer;
use crate::matching::ForceRules;
use crate::metrics::Metrics;
use crate::redis_client::LazyRedis;
use crate::rules::store::{run_sync, LiveRules, RuleStore};
use background::Background;
pub use error::AppError;
use pipeline::Pipeline;
use recovery::RecoveryRunner;

/// Runs the selector until `shutdown` is cancelled, then drains in order:
/// stop fetching, let workers finish, flush storage, commit the watermarks.
/// The drain takes at most `server.shutdown_timeout_secs`; whatever it did
/// not finish stays uncommitted in Kafka and is read again. `config_file`
/// is where the settings came from; the policy list reloads from it.
pub async fn run(
    settings: Settings,
    config_file: Option<PathBuf>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    // Settings librdkafka rejects stop startup here, before any retry loop.
    ingest::client::check(&settings.kafka).map_err(IngestError::from)?;
    let metrics = Metrics::with_max_series(settings.metrics.max_series)?;
    let policies = PolicySet::shared(&settings.sampling)?;
    metrics
        .decide
        .policies_loaded
        .set(policies.load().len() as i64);
    let health = Health::default();
    let background = Background::default();
    let redis = Arc::new(LazyRedis::new(&settings.redis)?);
    background.spawn(|stop| probes::redis(redis.clone(), health.clone(), stop));
    let rule_store = Arc::new(RuleStore::new(redis.clone(), settings.rules.max_rules));
    let live_rules = Arc::new(LiveRules::default());
    let max_rule_secs = settings.rules.max_duration_secs;
    let (store, live) = (rule_store.clone(), live_rules.clone());
    background.spawn(move |stop| run_sync(store, live, max_rule_secs, stop));
    let reloader = reload::Reloader {
        file: config_file,
        interval: settings.sampling.policy_watch_interval_secs.duration(),
        policies: policies.clone(),
        metrics: metrics.clone(),
    };
    background.spawn(move |stop| reloader.run(stop));
    let force_rules: Arc<dyn ForceRules> = live_rules.clone();
    let query = Arc::new(OnceCell::new());
    let recoveries = Arc::new(
        RecoveryRunner::new(
            Arc::new(settings.clone()),
            metrics.clone(),
            shutdown.clone(),
        )
        .with_live_policies(policies.clone()),
    );
    let state = AppState {
        health: health.clone(),
        query: query.clone(),
        auth_token: settings
            .admin
            .auth_token
            .as_ref()
            .map(|t| Arc::from(t.expose_secret())),
        rules: Some(RulesApi {
            store: rule_store,
            max_duration_secs: max_rule_secs,
        }),
        sampling: Some(SamplingApi {
            policies: policies.clone(),
            force_rules,
        }),
        metrics: Some(metrics.clone()),
        hosts: Arc::new(
            api::guard::HostPolicy::new(&settings.server.allowed_hosts)
                .counting_refusals(metrics.api.admin_requests_refused_total.clone()),
        ),
        recoveries: settings
            .storage
            .enabled
            .then(|| recoveries.clone() as crate::recovery::SharedRecoveries),
    };
    let mut servers = serve_http(&settings, state, &metrics).await?;
    let metrics_for_forward = metrics.clone();

    let started = async {
        let table = if settings.storage.enabled {
            let Some(table) = retry::open_table(&settings, &health, &shutdown).await else {
                return Ok(None);
            };
            retry::start_query_engine(&settings, &table, query, &background).await;
            start_maintenance(&settings, &table, &metrics, &health, &redis, &background).await;
            recoveries.set_table(table.clone());
            Some(table)
        } else {
            tracing::info!("storage.enabled is false: kept traces go to the sampled topic only, and SQL is off");
            health.set_catalog_off();
            None
        };
        if !retry::ensure_topics(&settings, &health, &shutdown).await? {
            return Ok(None);
        }
        let inputs = pipeline::Inputs {
            table,
            live_rules,
            policies,
            redis,
            metrics,
            health: health.clone(),
        };
        let pipeline = Pipeline::start(&settings, inputs, shutdown.clone())?;
        let forwarders = start_forwarders(&settings, &metrics_for_forward, &health)?;
        Ok(Some((pipeline, forwarders)))
    };
    let outcome = match started.await {
        Ok(Some((mut pipeline, forwarders))) => {
            let failed = tokio::select! {
                _ = shutdown.cancelled() => None,
                exit = pipeline.stage_ended() => Some(exit),
            };
            if let Some(exit) = &failed {
                tracing::error!(
                    stage = exit.stage,
                    cause = %exit.cause,
                    "a pipeline stage died; draining the others and exiting so that the process is restarted"
                );
                health.set_stage_dead(exit.to_string());
                shutdown.cancel();
            }
            pipeline
                .drain(settings.server.shutdown_timeout_secs.duration())
                .await;
            if let Some(f) = forwarders {
                f.stop(FORWARDERS_STOP).await;
            }
            failed.map_or(Ok(()), |exit| Err(AppError::StageFailed(exit)))
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    recoveries.stop().await;
    servers.abort_all();
    background.stop().await;
    tracing::info!("stopped");
    outcome
}

/// How long forwarders get at shutdown to finish requests in flight.
const FORWARDERS_STOP: std::time::Duration = std::time::Duration::from_secs(5);

/// The `[[forward]]` entries, when there are any.
fn start_forwarders(
    settings: &Settings,
    metrics: &Metrics,
    health: &Health,
) -> Result<Option<Forwarders>, AppError> {
    if settings.forward.is_empty() {
        return Ok(None);
    }
    let ctx = ForwardContext {
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let topic = &settings.sampled_topic.topic;
    Ok(Some(forward::start(
        &settings.forward,
        &settings.kafka,
        topic,
        ctx,
    )?))
}

/// `tail-sampling-selector forward`: only the forwarders, with the metrics
/// port, until `shutdown`. For running them apart from the selectors (to
/// scale or isolate them); in the same group they share the partitions
/// with any selector that runs the same `[[forward]]` entries.
pub async fn forward_only(settings: Settings, shutdown: CancellationToken) -> Result<(), AppError> {
    if settings.forward.is_empty() {
        return Err(AppError::NoForwarders);
    }
    ingest::client::check(&settings.kafka).map_err(IngestError::from)?;
    let metrics = Metrics::with_max_series(settings.metrics.max_series)?;
    let health = Health::default();
    let listener = bind(settings.server.metrics_addr).await?;
    let mut servers = JoinSet::new();
    let router = api::metrics_router(metrics.clone());
    servers.spawn(async move { axum::serve(listener, router).await });
    if !retry::ensure_topics(&settings, &health, &shutdown).await? {
        return Ok(());
    }
    let forwarders = start_forwarders(&settings, &metrics, &health)?;
    if let Some(f) = forwarders {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = f.wait() => {}
        }
        f.stop(FORWARDERS_STOP).await;
    }
    servers.abort_all();
    tracing::info!("stopped");
    Ok(())
}

/// One maintenance run from the command line: opens the table, takes the
/// maintenance lease (refused while a scheduled run holds it), runs every
/// step once and says what it did.
pub async fn maintain_once(
    settings: &Settings,
) -> Result<String, crate::maintenance::MaintenanceError> {
    let table = crate::table::TableHandle::open(&settings.storage.iceberg).await?;
    let metrics = Metrics::new()?;
    let redis = LazyRedis::new(&settings.redis)?;
    let m = Maintainer::new(settings, table, metrics, Health::default()).await?;
    Ok(m.run_leased_once(Arc::new(redis)).await?.to_string())
}

/// One recovery job from the command line: opens the table, runs the job
/// to its end (`shutdown` cancels it) and returns its final report;
/// `on_tick` sees the report every second.
pub async fn recover_once(
    settings: Settings,
    request: crate::recovery::RecoveryRequest,
    shutdown: CancellationToken,
    on_tick: impl FnMut(&crate::recovery::JobReport),
) -> Result<crate::recovery::JobReport, AppError> {
    ingest::client::check(&settings.kafka).map_err(IngestError::from)?;
    let table = crate::table::TableHandle::open(&settings.storage.iceberg).await?;
    let metrics = Metrics::new()?;
    let runner = RecoveryRunner::new(Arc::new(settings), metrics, shutdown);
    runner.set_table(table);
    let report = runner.run_to_end(request, on_tick).await?;
    runner.stop().await;
    Ok(report)
}

/// Table maintenance on its schedule, when `maintenance.enabled`. A catalog
/// it cannot commit to is reported in `/health`; the pipeline runs anyway.
async fn start_maintenance(
    settings: &Settings,
    table: &crate::table::TableHandle,
    metrics: &Metrics,
    health: &Health,
    redis: &Arc<LazyRedis>,
    background: &Background,
) {
    if !settings.maintenance.enabled {
        return;
    }
    match Maintainer::new(settings, table.clone(), metrics.clone(), health.clone()).await {
        Ok(m) => {
            let redis = redis.clone();
            background.spawn(move |stop| m.run_scheduled(redis, stop));
        }
        Err(e) => {
            tracing::warn!(error = %e, "table maintenance is off");
            health.set_maintenance(Err(format!("off: {e}")));
        }
    }
}

/// The admin address actually used: loopback only when no token protects it.
pub fn effective_admin_addr(settings: &Settings) -> SocketAddr {
    let addr = settings.server.admin_addr;
    if settings.admin.auth_token.is_some() || addr.ip().is_loopback() {
        return addr;
    }
    tracing::warn!(
        configured = %addr,
        "admin.auth_token is unset: the admin API binds to loopback only; set a token to expose it"
    );
    SocketAddr::from(([127, 0, 0, 1], addr.port()))
}

/// Binds the admin and metrics ports and serves them until aborted.
async fn serve_http(
    settings: &Settings,
    state: AppState,
    metrics: &Metrics,
) -> Result<JoinSet<std::io::Result<()>>, AppError> {
    let admin_addr = effective_admin_addr(settings);
    let admin_listener = bind(admin_addr).await?;
    let metrics_listener = bind(settings.server.metrics_addr).await?;
    let mut servers = JoinSet::new();
    let admin = api::admin_router(state);
    servers.spawn(async move { axum::serve(admin_listener, admin).await });
    let metrics_router = api::metrics_router(metrics.clone());
    servers.spawn(async move { axum::serve(metrics_listener, metrics_router).await });
    tracing::info!(admin = %admin_addr, metrics = %settings.server.metrics_addr, "HTTP listening");
    Ok(servers)
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, AppError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| AppError::Bind { addr, error })
}
