//! Wires the stages into the running service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, OnceCell};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::buffer::worker::{self, WorkerContext};
use crate::buffer::{BufferLimits, HeldSpans};
use crate::config::Settings;
use crate::health::Health;
use crate::ingest::offsets::{Assignments, CommitGate, OffsetTracker};
use crate::ingest::ownership::OwnershipWatch;
use crate::ingest::{self, IngestError, Source};
use crate::metrics::Metrics;
use crate::query::{QueryEngine, QueryLimits};
use crate::rules::store::{run_sync, LiveRules, RuleStore};
use crate::state::{DecisionCache, LazyRedis};
use crate::sampling::{ForceRules, PolicySet};
use crate::api::rules::RulesApi;
use crate::storage::writer::{IcebergWriter, WriterConfig, WriterContext};
use crate::storage::TableHandle;

/// Capacity of each worker's input channel, in Kafka messages.
const SHARD_CHANNEL_CAPACITY: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Redis(#[from] crate::state::RedisSetupError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
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

/// Runs the selector until `shutdown` turns true, then drains in order:
/// stop fetching, let workers finish, flush storage, commit the watermarks.
/// The drain takes at most `server.shutdown_timeout_secs`; whatever it did
/// not finish stays uncommitted in Kafka and is read again.
pub async fn run(settings: Settings, shutdown: watch::Receiver<bool>) -> Result<(), AppError> {
    // Settings librdkafka rejects stop startup here, before any retry loop.
    ingest::client::check(&settings.kafka).map_err(IngestError::from)?;
    let metrics = Metrics::new()?;
    let health = Health::default();
    let tracker = Arc::new(OffsetTracker::new());
    let assignments = Arc::new(Assignments::new());
    let gate = Arc::new(CommitGate::default());
    let held = Arc::new(HeldSpans::default());
    let query_cell: Arc<OnceCell<QueryEngine>> = Arc::new(OnceCell::new());

    let redis = Arc::new(LazyRedis::new(&settings.redis)?);
    // Background tasks that live as long as the service; stopped at the end.
    let background = TaskTracker::new();
    let stop_background = CancellationToken::new();
    background.spawn(redis_probe(redis.clone(), health.clone(), stop_background.clone()));
    let rule_store = Arc::new(RuleStore::new(redis.clone()));
    let decisions = Arc::new(DecisionCache::new(
        redis,
        settings.sampling.decision_ttl_secs,
        metrics.decision_cache_short_replies_total.clone(),
    ));
    let live_rules = Arc::new(LiveRules::default());
    background.spawn(run_sync(
        rule_store.clone(),
        live_rules.clone(),
        settings.rules.max_duration_secs,
        stop_background.clone(),
    ));

    let admin_addr = effective_admin_addr(&settings);
    let admin = api::admin_router(AppState {
        health: health.clone(),
        query: query_cell.clone(),
        auth_token: settings.admin.auth_token.as_deref().map(Arc::from),
        rules: Some(RulesApi {
            store: rule_store,
            max_duration_secs: settings.rules.max_duration_secs,
        }),
    });
    let admin_listener = bind(admin_addr).await?;
    let metrics_listener = bind(settings.server.metrics_addr).await?;
    let mut servers = JoinSet::new();
    servers.spawn(async move { axum::serve(admin_listener, admin).await });
    let metrics_router = api::metrics_router(metrics.clone());
    servers.spawn(async move { axum::serve(metrics_listener, metrics_router).await });
    tracing::info!(admin = %admin_addr, metrics = %settings.server.metrics_addr, "HTTP listening");

    let table = open_table_with_retry(&settings, &health, shutdown.clone()).await;
    let Some(table) = table else {
        stop_tasks(background, stop_background).await;
        return Ok(());
    };
    let limits = QueryLimits {
        max_rows: settings.query.max_rows,
        timeout: Duration::from_secs_f64(settings.query.timeout_secs),
        max_memory_bytes: settings.query.max_memory_bytes,
    };
    match QueryEngine::new(&table, limits).await {
        Ok(engine) => {
            let _ = query_cell.set(engine);
        }
        Err(e) => {
            tracing::error!(error = %e, "query engine unavailable; retrying in the background");
            background.spawn(query_engine_with_retry(
                table.clone(),
                limits,
                query_cell.clone(),
                shutdown.clone(),
            ));
        }
    }

    if !ensure_topics_with_retry(&settings, &health, shutdown.clone()).await? {
        stop_tasks(background, stop_background).await;
        return Ok(());
    }
    let consumer = Arc::new(ingest::create_consumer(
        &settings.kafka,
        tracker.clone(),
        assignments.clone(),
        gate.clone(),
        metrics.assigned_partitions.clone(),
    )?);

    let probes = spawn_probes(
        &settings,
        health.clone(),
        table.clone(),
        consumer.clone(),
        OwnershipWatch::new(assignments.clone(), &settings.kafka),
    );

    let (kept_tx, kept_rx) = mpsc::unbounded_channel();
    let writer = IcebergWriter::new(
        table,
        WriterConfig {
            flush_max_rows: settings.storage.flush_max_rows,
            flush_interval: Duration::from_secs_f64(settings.storage.flush_interval_secs),
        },
        WriterContext {
            tracker: tracker.clone(),
            assignments: assignments.clone(),
            gate,
            held: held.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            topic: settings.kafka.topic.clone(),
        },
    );
    let writer_task = tokio::spawn(writer.run(kept_rx));

    let force_rules: Arc<dyn ForceRules> = live_rules;
    let ctx = WorkerContext {
        limits: BufferLimits {
            inactivity_timeout: Duration::from_secs_f64(settings.sampling.inactivity_timeout_secs),
            max_trace_duration: Duration::from_secs_f64(settings.sampling.max_trace_duration_secs),
            max_spans_per_trace: settings.sampling.max_spans_per_trace,
        },
        policies: PolicySet::from_config(&settings.sampling),
        force_rules,
        decisions,
        tracker: tracker.clone(),
        assignments: assignments.clone(),
        held: held.clone(),
        metrics: metrics.clone(),
        kept_tx,
        tick: tick_for(settings.sampling.inactivity_timeout_secs),
    };
    let mut workers = JoinSet::new();
    let mut shards = Vec::new();
    for _ in 0..settings.sampling.worker_count() {
        let (tx, rx) = mpsc::channel(SHARD_CHANNEL_CAPACITY);
        shards.push(tx);
        workers.spawn(worker::run(ctx.clone(), rx));
    }
    drop(ctx);

    // The committer stops only after the writer, so its last commit covers
    // everything the writer's final flush stored.
    let (stop_committer, committer_stop) = watch::channel(false);
    let committer = tokio::spawn(ingest::run_committer(
        consumer.clone(),
        tracker.clone(),
        settings.kafka.topic.clone(),
        metrics.clone(),
        Duration::from_millis(settings.kafka.commit_interval_ms),
        committer_stop,
    ));
    let source = Source {
        consumer: consumer.clone(),
        shards,
        tracker,
        assignments,
        held,
        limits: settings.buffer.clone(),
        metrics,
        health,
        dead_letter: ingest::dead_letter_producer(&settings.kafka)?,
        max_message_bytes: settings.kafka.max_message_bytes,
    };
    tracing::info!(topic = %settings.kafka.topic, group = %settings.kafka.group_id, "consuming");
    source.run(shutdown).await;

    // Shutdown: the source dropped the shard senders, so workers stop; open
    // traces are not decided early and their messages stay uncommitted.
    let limit = Duration::from_secs_f64(settings.server.shutdown_timeout_secs);
    let drain = async {
        while workers.join_next().await.is_some() {}
        let _ = writer_task.await;
        let _ = stop_committer.send(true);
        let _ = committer.await;
    };
    if tokio::time::timeout(limit, drain).await.is_err() {
        tracing::warn!(
            timeout_secs = limit.as_secs_f64(),
            "shutdown did not finish in time; what was not committed is read again on restart"
        );
    }
    // Leaving the group hands the partitions over at once instead of after
    // the session timeout. The revoke callback commits the last watermarks.
    probes.abort();
    let _ = probes.await;
    let closing = tokio::task::spawn_blocking(move || drop(consumer));
    let _ = tokio::time::timeout(Duration::from_secs(10), closing).await;
    servers.abort_all();
    stop_tasks(background, stop_background).await;
    tracing::info!("stopped");
    Ok(())
}

/// Cancels the background tasks and waits briefly for them to end.
async fn stop_tasks(tasks: TaskTracker, stop: CancellationToken) {
    stop.cancel();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await.is_err() {
        tracing::warn!("background tasks did not stop within 2 s");
    }
}

/// Registers the table with DataFusion, retrying until it works, so that a
/// passing catalog error at startup does not leave SQL unavailable.
async fn query_engine_with_retry(
    table: TableHandle,
    limits: QueryLimits,
    cell: Arc<OnceCell<QueryEngine>>,
    shutdown: watch::Receiver<bool>,
) {
    let engine = retry(
        shutdown,
        || QueryEngine::new(&table, limits),
        |e, backoff| {
            tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "query engine unavailable")
        },
    )
    .await;
    if let Some(engine) = engine {
        let _ = cell.set(engine);
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, AppError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })
}

/// Expiry checks ten times per timeout, at most every second: the tick adds
/// up to its length to every decision's latency.
fn tick_for(inactivity_secs: f64) -> Duration {
    Duration::from_secs_f64((inactivity_secs / 10.0).clamp(0.05, 1.0))
}

/// Calls `attempt` until it succeeds, backing off from 0.5 s to 30 s and
/// reporting each failure through `on_error`. `None` when shutdown came first.
async fn retry<T, E, Fut>(
    shutdown: watch::Receiver<bool>,
    attempt: impl FnMut() -> Fut,
    on_error: impl Fn(&E, Duration),
) -> Option<T>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    retry_unless(shutdown, attempt, on_error, |_| false)
        .await
        .ok()
        .flatten()
}

/// [`retry`], but an error for which `is_fatal` holds ends it at once.
async fn retry_unless<T, E, Fut>(
    mut shutdown: watch::Receiver<bool>,
    mut attempt: impl FnMut() -> Fut,
    on_error: impl Fn(&E, Duration),
    is_fatal: impl Fn(&E) -> bool,
) -> Result<Option<T>, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(500);
    loop {
        match attempt().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => on_error(&e, backoff),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return Ok(None),
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Waits for the catalog; an unreachable catalog is reported, not fatal.
async fn open_table_with_retry(
    settings: &Settings,
    health: &Health,
    shutdown: watch::Receiver<bool>,
) -> Option<TableHandle> {
    let table = retry(
        shutdown,
        || TableHandle::open(&settings.storage.iceberg),
        |e, backoff| {
            tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot open the Iceberg table");
            health.set_catalog(Err(e.to_string()));
        },
    )
    .await?;
    health.set_catalog(Ok(()));
    Some(table)
}

/// Creates the topics, retrying while the broker is unreachable. Returns
/// false when shutdown was requested first, and an error when the broker
/// rejected the client's TLS or SASL settings, which retrying can't fix.
async fn ensure_topics_with_retry(
    settings: &Settings,
    health: &Health,
    shutdown: watch::Receiver<bool>,
) -> Result<bool, AppError> {
    let kafka = &settings.kafka;
    let created = retry_unless(
        shutdown,
        || {
            let topics: Vec<&str> = std::iter::once(kafka.topic.as_str())
                .chain(kafka.dead_letter_topic.as_deref())
                .collect();
            async move { ingest::ensure_topics(kafka, &topics).await }
        },
        |e, backoff| {
            tracing::error!(error = %e, brokers = %kafka.brokers, retry_in_ms = backoff.as_millis() as u64, "cannot reach Kafka");
            health.set_kafka(Err(e.to_string()));
        },
        IngestError::is_fatal,
    )
    .await?;
    Ok(created.is_some())
}

/// Probes Redis every few seconds for `/health`, from startup until `stop`.
async fn redis_probe(redis: Arc<LazyRedis>, health: Health, stop: CancellationToken) {
    loop {
        health.set_redis(redis.ping().await.map_err(|e| e.to_string()));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}

const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Probes Kafka and the catalog every few seconds for `/health`.
fn spawn_probes(
    settings: &Settings,
    health: Health,
    table: TableHandle,
    consumer: Arc<ingest::SelectorConsumer>,
    mut ownership: OwnershipWatch,
) -> tokio::task::JoinHandle<()> {
    let topic = settings.kafka.topic.clone();
    tokio::spawn(async move {
        loop {
            ownership.check(&consumer, &topic).await;
            let c = consumer.clone();
            let t = topic.clone();
            let kafka = tokio::task::spawn_blocking(move || {
                use rdkafka::consumer::Consumer;
                c.fetch_metadata(Some(&t), Duration::from_secs(3))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            health.set_kafka(kafka);
            health.set_catalog(
                table
                    .catalog
                    .table_exists(&table.ident)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|exists| {
                        if exists {
                            Ok(())
                        } else {
                            Err(format!("table {} does not exist", table.ident))
                        }
                    }),
            );
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    })
}
