//! The deciding stage: sharded workers group spans into traces until they
//! are complete ([`completion`]), decide them with the policies ([`policy`])
//! and force rules, remember the decision ([`decision_cache`]), release the
//! dropped ones and hand the kept ones to storage.

pub mod completion;
pub mod decision_cache;
pub mod policy;
pub mod recovery;
pub mod samplers;
pub mod simulation;
pub mod sketch;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::ack::Acks;
use crate::config::SamplingConfig;
use crate::handoff::{KeptTrace, ShardBatch};
use crate::matching::ForceRules;
use crate::metrics::Metrics;
use crate::supervise::{StageExit, StageTasks};
use completion::CompletionLimits;
use decision_cache::DecisionCache;
use policy::SharedPolicies;
pub use worker::Judge;
use worker::WorkerContext;

/// Capacity of each worker's input channel, in Kafka messages.
const SHARD_CHANNEL_CAPACITY: usize = 1024;

/// What the deciding stage needs from outside: force rules, the decision
/// cache, the acknowledgement state, metrics, and where kept traces go.
pub struct DecideInputs {
    pub force_rules: Arc<dyn ForceRules>,
    pub decisions: Arc<DecisionCache>,
    pub acks: Acks,
    pub metrics: Metrics,
    /// The policies, compiled at start-up and swapped on reload.
    pub policies: SharedPolicies,
    /// Unbounded: memory is bounded by the held spans and bytes, at which
    /// the consumer pauses.
    pub kept_tx: mpsc::UnboundedSender<KeptTrace>,
    /// Keep open traces as sketches (`buffer.mode = "compact"`): kept
    /// traces then leave with their spans still in Kafka.
    pub compact: bool,
}

/// The running workers.
pub struct Deciders {
    workers: StageTasks,
}

/// Starts `sampling.workers` workers. Returns the sender of each shard: the
/// consumer routes a span by its trace id ([`crate::model::shard_of`]).
/// Workers stop when their sender is dropped.
pub fn start(
    cfg: &SamplingConfig,
    inputs: DecideInputs,
) -> (Vec<mpsc::Sender<ShardBatch>>, Deciders) {
    let ctx = WorkerContext {
        limits: limits_of(cfg),
        judge: Judge::Live {
            policies: inputs.policies,
            force_rules: inputs.force_rules,
            decisions: inputs.decisions,
        },
        acks: inputs.acks,
        metrics: inputs.metrics,
        kept_tx: inputs.kept_tx,
        tick: tick_for(cfg.inactivity_timeout_secs.duration()),
        compact: inputs.compact,
    };
    spawn_workers(ctx, cfg.worker_count())
}

/// Starts the workers of a job over the raw topic (a recovery or a
/// simulation, by `judge`): traces are completed on stream time alone;
/// when the senders are dropped, what is still open is decided too, and
/// the workers end. `acks` and `metrics` are the job's own, so the live
/// path's counts stay its own.
pub fn start_replay(
    cfg: &SamplingConfig,
    judge: Judge,
    acks: Acks,
    metrics: Metrics,
    kept_tx: mpsc::UnboundedSender<KeptTrace>,
) -> (Vec<mpsc::Sender<ShardBatch>>, Deciders) {
    let ctx = WorkerContext {
        limits: limits_of(cfg),
        judge,
        acks,
        metrics,
        kept_tx,
        tick: tick_for(cfg.inactivity_timeout_secs.duration()),
        compact: false,
    };
    spawn_workers(ctx, cfg.worker_count())
}

fn limits_of(cfg: &SamplingConfig) -> CompletionLimits {
    CompletionLimits {
        inactivity_timeout: cfg.inactivity_timeout_secs.duration(),
        max_trace_duration: cfg.max_trace_duration_secs.duration(),
        max_spans_per_trace: cfg.max_spans_per_trace,
    }
}

fn spawn_workers(ctx: WorkerContext, count: usize) -> (Vec<mpsc::Sender<ShardBatch>>, Deciders) {
    let mut workers = StageTasks::new("decide worker");
    let shards = (0..count)
        .map(|_| {
            let (tx, rx) = mpsc::channel(SHARD_CHANNEL_CAPACITY);
            workers.spawn(worker::run(ctx.clone(), rx));
            tx
        })
        .collect();
    (shards, Deciders { workers })
}

impl Deciders {
    /// Waits for every worker to stop. Open traces are not decided early:
    /// their messages stay uncommitted and are read again.
    pub async fn join(mut self) {
        self.workers.join().await;
    }

    /// Resolves when a worker ends before the drain: a dead stage.
    /// Cancel-safe.
    pub async fn ended(&mut self) -> StageExit {
        self.workers.ended().await
    }
}

/// Expiry checks ten times per timeout, at most every second: the tick adds
/// up to its length to every decision's latency.
fn tick_for(inactivity: Duration) -> Duration {
    (inactivity / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
}
