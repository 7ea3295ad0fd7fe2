//! The data path: ingest → decide → storage, started together and drained
//! in the order that keeps the no-loss guarantee.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::AppError;
use super::probes;
use crate::ack::Acks;
use crate::config::{BufferMode, Settings};
use crate::decide::decision_cache::DecisionCache;
use crate::decide::policy::SharedPolicies;
use crate::decide::{self, DecideInputs, Deciders};
use crate::handoff::Onward;
use crate::health::Health;
use crate::ingest::ownership::OwnershipWatch;
use crate::ingest::{self, Ingest, IngestContext};
use crate::matching::ForceRules;
use crate::metrics::Metrics;
use crate::publish::{self, PublishContext};
use crate::redis_client::LazyRedis;
use crate::reread::{self, RereadContext};
use crate::rules::store::LiveRules;
use crate::storage;
use crate::storage::writer::{WriterContext, WriterRole};
use crate::supervise::{StageExit, StageTask};
use crate::table::TableHandle;

/// What the data path is started with.
pub(super) struct Inputs {
    /// The table, unless `storage.enabled` is false.
    pub table: Option<TableHandle>,
    pub live_rules: Arc<LiveRules>,
    pub policies: SharedPolicies,
    pub redis: Arc<LazyRedis>,
    pub metrics: Metrics,
    pub health: Health,
}

/// The running data path.
pub(super) struct Pipeline {
    ingest: Ingest,
    deciders: Deciders,
    /// The sinks, in the order kept traces pass them: the second read of
    /// the compact buffer, the sampled topic, then the table's writer, each
    /// only when enabled.
    sinks: Vec<StageTask>,
    probes: JoinHandle<()>,
    stop_probes: CancellationToken,
}

impl Pipeline {
    /// Starts storage, then the deciding workers, then the Kafka side, so
    /// each stage's consumer exists before its producer. The consumer loop
    /// stops at `shutdown`.
    pub fn start(
        settings: &Settings,
        inputs: Inputs,
        shutdown: CancellationToken,
    ) -> Result<Self, AppError> {
        let acks = Acks::default();
        let Inputs {
            table,
            live_rules,
            policies,
            redis,
            metrics,
            health,
        } = inputs;
        let (kept_tx, sinks) = start_sinks(settings, table.as_ref(), &acks, &metrics, &health)?;
        let decisions = DecisionCache::new(
            redis,
            settings.sampling.decision_ttl_secs,
            metrics.decide.decision_cache_short_replies_total.clone(),
        );
        let force_rules: Arc<dyn ForceRules> = live_rules;
        let inputs = DecideInputs {
            force_rules,
            decisions: Arc::new(decisions),
            acks: acks.clone(),
            metrics: metrics.clone(),
            policies,
            kept_tx,
            compact: settings.buffer.mode == BufferMode::Compact,
        };
        let (shards, deciders) = decide::start(&settings.sampling, inputs);
        let ownership = OwnershipWatch::new(acks.assignments.clone(), &settings.kafka);
        let ctx = IngestContext {
            acks,
            metrics,
            health: health.clone(),
        };
        let ingest = ingest::start(
            &settings.kafka,
            settings.buffer.clone(),
            ctx,
            shards,
            shutdown,
        )?;
        let stop_probes = CancellationToken::new();
        let probes = tokio::spawn(probes::kafka_and_catalog(
            settings.kafka.topic.clone(),
            health,
            table,
            ingest.consumer.clone(),
            ownership,
            stop_probes.clone(),
        ));
        Ok(Self {
            ingest,
            deciders,
            sinks,
            probes,
            stop_probes,
        })
    }

    /// Resolves when a stage ends before the drain (a panic, or a loop that
    /// returned): the pipeline can no longer keep its promise and must be
    /// drained and the process restarted. Cancel-safe.
    pub async fn stage_ended(&mut self) -> StageExit {
        tokio::select! {
            exit = self.ingest.ended() => exit,
            exit = self.deciders.ended() => exit,
            exit = first_ended(&mut self.sinks) => exit,
        }
    }

    /// Drains in order, within `limit`: the consumer loop stops and drops
    /// the shard senders, so the workers stop (open traces stay undecided
    /// and uncommitted); the workers drop the kept-trace senders, so each
    /// sink in turn hands on what it holds and the writer makes its last
    /// flush; then the committer commits the final
    /// watermarks, which cover that flush. Whatever did not finish in time
    /// stays uncommitted in Kafka and is read again. Last, the consumer
    /// leaves the group, handing its partitions over at once.
    pub async fn drain(self, limit: Duration) {
        let Self {
            mut ingest,
            deciders,
            mut sinks,
            probes,
            stop_probes,
        } = self;
        let consumer = ingest.consumer.clone();
        let in_order = async {
            ingest.stopped_reading().await;
            deciders.join().await;
            for sink in &mut sinks {
                sink.join().await;
            }
            ingest.stop_committing().await;
        };
        if tokio::time::timeout(limit, in_order).await.is_err() {
            tracing::warn!(
                timeout_secs = limit.as_secs_f64(),
                "shutdown did not finish in time; what was not committed is read again on restart"
            );
        }
        stop_probes.cancel();
        let _ = probes.await;
        drop(ingest);
        ingest::close(consumer).await;
    }
}

/// Builds the chain of sinks from its end: the table's writer releases the
/// acknowledgements after its commit; the sampled topic, in front of it,
/// hands a trace on once the broker confirmed it. Returns the chain's head.
fn start_sinks(
    settings: &Settings,
    table: Option<&TableHandle>,
    acks: &Acks,
    metrics: &Metrics,
    health: &Health,
) -> Result<
    (
        tokio::sync::mpsc::UnboundedSender<crate::handoff::KeptTrace>,
        Vec<StageTask>,
    ),
    AppError,
> {
    let mut onward = Onward::Settle;
    let mut sinks = Vec::new();
    if let Some(table) = table {
        let (tx, writer) = storage::start(
            table.clone(),
            &settings.storage,
            WriterContext {
                acks: acks.clone(),
                metrics: metrics.clone(),
                health: health.clone(),
                topic: settings.kafka.topic.clone(),
                role: WriterRole::Live,
            },
        );
        onward = Onward::Next(tx);
        sinks.push(writer);
    }
    if settings.sampled_topic.enabled {
        let ctx = PublishContext {
            metrics: metrics.clone(),
            health: health.clone(),
        };
        let (tx, publisher) =
            publish::start(&settings.sampled_topic, &settings.kafka, ctx, onward)?;
        onward = Onward::Next(tx);
        sinks.insert(0, publisher);
    }
    if matches!(onward, Onward::Settle) {
        return Err(AppError::NoSink);
    }
    if settings.buffer.mode == BufferMode::Compact {
        // Kept traces leave the workers as facts: their spans are read
        // again from Kafka before the first sink.
        let ctx = RereadContext {
            metrics: metrics.clone(),
            health: health.clone(),
            acks: acks.clone(),
        };
        let delay = Duration::from_millis(settings.buffer.reread_delay_ms);
        let (tx, reread) = reread::start(&settings.kafka, delay, ctx, onward)?;
        onward = Onward::Next(tx);
        sinks.insert(0, reread);
    }
    match onward {
        Onward::Next(head) => Ok((head, sinks)),
        Onward::Settle => Err(AppError::NoSink),
    }
}

/// The first of the sinks to end. Cancel-safe.
async fn first_ended(sinks: &mut [StageTask]) -> StageExit {
    if sinks.is_empty() {
        return std::future::pending().await;
    }
    let ended = sinks.iter_mut().map(|s| Box::pin(s.ended()));
    futures::future::select_all(ended).await.0
}
