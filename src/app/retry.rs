//! Start-up steps that wait for a service: the catalog, the query engine and
//! the Kafka topics. Each retries with backoff while the service is away and
//! gives up only at shutdown or on an error retrying can't fix.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::background::{Background, QueryCell};
use super::error::AppError;
use crate::config::Settings;
use crate::health::Health;
use crate::ingest::{self, IngestError};
use crate::query::{QueryEngine, QueryLimits};
use crate::table::TableHandle;

/// Calls `attempt` until it succeeds, backing off from 0.5 s to 30 s and
/// reporting each failure through `on_error`. `None` when shutdown came first.
async fn retry<T, E, Fut>(
    shutdown: &CancellationToken,
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
    shutdown: &CancellationToken,
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
            _ = shutdown.cancelled() => return Ok(None),
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Waits for the catalog; an unreachable catalog is reported, not fatal.
pub(super) async fn open_table(
    settings: &Settings,
    health: &Health,
    shutdown: &CancellationToken,
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

/// Registers the table with DataFusion. When that fails, it is retried in the
/// background, so that a passing catalog error at startup does not leave SQL
/// unavailable; the pipeline starts either way.
pub(super) async fn start_query_engine(
    settings: &Settings,
    table: &TableHandle,
    cell: QueryCell,
    background: &Background,
) {
    let limits = QueryLimits {
        max_rows: settings.query.max_rows,
        timeout: settings.query.timeout_secs.duration(),
        max_memory_bytes: settings.query.max_memory_bytes,
        max_result_bytes: settings.query.max_result_bytes,
        file_cache_bytes: settings.query.file_cache_bytes,
        index_refresh: settings.query.index_refresh_secs.duration(),
    };
    let (tasks, stop_all) = (background.tasks.clone(), background.stop.clone());
    let with_background =
        move |engine: QueryEngine| engine.with_background(tasks.clone(), stop_all.clone());
    match QueryEngine::new(table, limits).await {
        Ok(engine) => {
            let _ = cell.set(with_background(engine));
        }
        Err(e) => {
            tracing::error!(error = %e, "query engine unavailable; retrying in the background");
            let table = table.clone();
            let with_background = with_background.clone();
            background.spawn(move |stop| async move {
                let engine = retry(
                    &stop,
                    || QueryEngine::new(&table, limits),
                    |e, backoff| {
                        tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "query engine unavailable")
                    },
                )
                .await;
                if let Some(engine) = engine {
                    let _ = cell.set(with_background(engine));
                }
            });
        }
    }
}

/// Creates the topics, retrying while the broker is unreachable. Returns
/// false when shutdown was requested first, and an error when the broker
/// rejected the client's TLS or SASL settings, which retrying can't fix.
pub(super) async fn ensure_topics(
    settings: &Settings,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<bool, AppError> {
    let kafka = &settings.kafka;
    let created = retry_unless(
        shutdown,
        || {
            let topics = topics_to_create(settings);
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

/// Every topic the selector reads or writes, with its partition count: the
/// raw topic and its dead-letter topic, the sampled topic and the
/// forwarders' dead-letter topics.
pub(super) fn topics_to_create(settings: &Settings) -> Vec<(&str, i32)> {
    let kafka = &settings.kafka;
    let mut topics: Vec<(&str, i32)> = std::iter::once(kafka.topic.as_str())
        .chain(kafka.dead_letter_topic.as_deref())
        .map(|t| (t, kafka.topic_partitions))
        .collect();
    let sampled = &settings.sampled_topic;
    if sampled.enabled {
        let partitions = match sampled.partitions {
            0 => kafka.topic_partitions,
            n => n,
        };
        topics.push((sampled.topic.as_str(), partitions));
    }
    for f in &settings.forward {
        topics.push((f.dead_letter_topic.as_str(), kafka.topic_partitions));
    }
    topics.sort();
    topics.dedup_by(|a, b| a.0 == b.0);
    topics
}
