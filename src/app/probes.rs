//! Readiness probes for `/health`: Redis from startup, Kafka and the catalog
//! once the pipeline runs.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::ingest::ownership::OwnershipWatch;
use crate::ingest::SelectorConsumer;
use crate::redis_client::LazyRedis;
use crate::table::TableHandle;

const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Probes Redis every few seconds, from startup until `stop`.
pub(super) async fn redis(redis: Arc<LazyRedis>, health: Health, stop: CancellationToken) {
    loop {
        health.set_redis(redis.ping().await.map_err(|e| e.to_string()));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}

/// Probes Kafka and the catalog every few seconds, and warns when this
/// instance owns no partition while the group lags.
pub(super) async fn kafka_and_catalog(
    topic: String,
    health: Health,
    table: Option<TableHandle>,
    consumer: Arc<SelectorConsumer>,
    mut ownership: OwnershipWatch,
    stop: CancellationToken,
) {
    let probe = async {
        loop {
            ownership.check(&consumer, &topic).await;
            health.set_kafka(kafka(&consumer, &topic).await);
            match &table {
                Some(table) => health.set_catalog(catalog(table).await),
                None => health.set_catalog_off(),
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    };
    // Cancelled mid-probe too: the consumer is closed right after.
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = probe => {}
    }
}

async fn kafka(consumer: &Arc<SelectorConsumer>, topic: &str) -> Result<(), String> {
    let (c, t) = (consumer.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        c.fetch_metadata(Some(&t), Duration::from_secs(3))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))
}

async fn catalog(table: &TableHandle) -> Result<(), String> {
    match table.catalog.table_exists(&table.ident).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("table {} does not exist", table.ident)),
        Err(e) => Err(e.to_string()),
    }
}
