//! One evaluation worker: owns a shard of the traces (by trace id), buffers
//! their spans, decides complete traces and routes the kept ones to storage.
//! The same worker serves a recovery job, whose judge is the job's
//! condition instead of the live policies.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::completion::{CompleteTrace, CompletionLimits, Stamp, TraceBuffer};
use super::decision_cache::DecisionCache;
use super::policy::{PolicySet, SharedPolicies};
use super::recovery::RecoveryJudge;
use super::simulation::Simulation;
use super::sketch::Watch;
use crate::ack::Acks;
use crate::handoff::{KeptTrace, ShardBatch};
use crate::matching::ForceRules;
use crate::metrics::red::RedRecorder;
use crate::metrics::Metrics;
use crate::model::{unix_now_ms, Decision, SamplingReason};

/// Who decides a complete trace.
#[derive(Clone)]
pub enum Judge {
    /// The live path: force rules, then the policies; every decision is
    /// remembered in the decision cache.
    Live {
        /// Swapped whole when the policy list reloads.
        policies: SharedPolicies,
        force_rules: Arc<dyn ForceRules>,
        /// Earlier decisions, so late spans and other instances agree.
        decisions: Arc<DecisionCache>,
    },
    /// A recovery job: its condition and range, remembering nothing. Its
    /// input ends, and what is open then is decided, not abandoned.
    Recovery(Arc<RecoveryJudge>),
    /// A policy simulation: counts what two policy lists would keep, and
    /// keeps nothing. Its input ends like a recovery's.
    Simulation(Arc<Simulation>),
}

impl Judge {
    /// Whether the input is a read of the past that ends (a job's).
    fn replays(&self) -> bool {
        !matches!(self, Judge::Live { .. })
    }
}

/// Everything a worker shares with the rest of the pipeline.
#[derive(Clone)]
pub struct WorkerContext {
    pub limits: CompletionLimits,
    pub judge: Judge,
    /// The partition leases (spans of a revoked one are purged) and the
    /// stream clock.
    pub acks: Acks,
    pub metrics: Metrics,
    /// Unbounded: memory is bounded by the held spans and the consumer's pause.
    pub kept_tx: mpsc::UnboundedSender<KeptTrace>,
    /// How often due traces are looked for.
    pub tick: Duration,
    /// Whether the live path keeps open traces as sketches
    /// (`buffer.mode = "compact"`); a job's read always keeps spans.
    pub compact: bool,
}

/// Runs until the input channel closes. Open traces are then dropped undecided:
/// their holds free their spans and keep their messages uncommitted, so the
/// next owner re-reads them.
pub async fn run(ctx: WorkerContext, mut rx: mpsc::Receiver<ShardBatch>) {
    let buffer = if ctx.judge.replays() {
        TraceBuffer::on_stream_time_only(ctx.limits)
    } else if ctx.compact {
        TraceBuffer::compact(ctx.limits, Arc::new(Watch::default()))
    } else {
        TraceBuffer::new(ctx.limits)
    };
    let mut state = Worker {
        buffer,
        reported_traces: 0,
        reported_spans: 0,
        seen_revocations: ctx.acks.assignments.revocations(),
        red: RedRecorder::new(ctx.metrics.decide.red.clone()),
        watching: None,
        ctx,
    };
    state.refresh_watch();
    let mut tick = tokio::time::interval(state.ctx.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due: Vec<CompleteTrace> = Vec::new();
    loop {
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(batch) => {
                    // Purge first: the batch may come from a new lease on a
                    // partition whose old lease's spans are still buffered.
                    state.purge_revoked();
                    state.refresh_watch();
                    state.ingest(batch, &mut due);
                    state.decide_all(&mut due).await;
                }
                None => break,
            },
            _ = tick.tick() => {
                state.purge_revoked();
                let watermark = state.ctx.acks.watermark(unix_now_ms());
                let now = Stamp { wall: Instant::now(), stream_ms: watermark.unwrap_or(i64::MIN) };
                state.buffer.expire(now, &mut due);
                state.decide_all(&mut due).await;
                state.red.flush();
            }
        }
        state.report_gauges();
    }
    if state.ctx.judge.replays() {
        // The read is over: nothing more can arrive for what is open.
        due.extend(state.buffer.drain());
        state.decide_all(&mut due).await;
        state.red.flush();
        state.report_gauges();
        return;
    }
    state.red.flush();
    let abandoned = state.buffer.drain().len();
    state.report_gauges();
    tracing::info!(
        traces = abandoned,
        "worker stopped; undecided traces will be re-read from Kafka"
    );
}

struct Worker {
    ctx: WorkerContext,
    buffer: TraceBuffer,
    reported_traces: i64,
    reported_spans: i64,
    seen_revocations: u64,
    /// RED metrics of every decided span, kept or dropped; in a compact
    /// buffer, of every span as it arrives, since spans are not kept.
    red: RedRecorder,
    /// What a compact buffer's watch was built from: the policy list and
    /// the force rules' generation.
    watching: Option<(Arc<PolicySet>, u64)>,
}

impl Worker {
    /// After a revocation, drops what was read under the ended leases.
    fn purge_revoked(&mut self) {
        let now = self.ctx.acks.assignments.revocations();
        if now == self.seen_revocations {
            return;
        }
        self.seen_revocations = now;
        let current = self.ctx.acks.assignments.snapshot();
        let dropped = self.buffer.purge(|l| current.contains(l));
        if dropped > 0 {
            tracing::info!(
                spans = dropped,
                "dropped buffered spans of revoked partitions; their next owner re-reads them"
            );
        }
    }

    /// Builds a compact buffer's watch again when the policies or the force
    /// rules changed: the spans that arrive from now on are tested for the
    /// new conditions.
    fn refresh_watch(&mut self) {
        if !self.buffer.is_compact() {
            return;
        }
        let Judge::Live {
            policies,
            force_rules,
            ..
        } = &self.ctx.judge
        else {
            return;
        };
        let policies = policies.load_full();
        let generation = force_rules.generation();
        if let Some((seen, seen_generation)) = &self.watching {
            if Arc::ptr_eq(seen, &policies) && *seen_generation == generation {
                return;
            }
        }
        let (mut matches, keys) = policies.watched();
        matches.extend(force_rules.conditions());
        self.buffer.set_watch(Arc::new(Watch::new(matches, keys)));
        self.watching = Some((policies, generation));
    }

    /// Buffers a batch; traces it completes (at `max_spans_per_trace`) go to `due`.
    fn ingest(&mut self, batch: ShardBatch, due: &mut Vec<CompleteTrace>) {
        if !self.ctx.acks.assignments.is_current(batch.msg().lease()) {
            // Queued before its partition was revoked; the next owner reads
            // it. Dropping the batch frees its spans.
            return;
        }
        self.ctx
            .metrics
            .decide
            .spans_ingested_total
            .inc_by(batch.spans.len() as u64);
        if self.buffer.is_compact() {
            self.red.record(batch.spans.iter().map(|(_, s)| s));
        }
        let at = Stamp {
            wall: Instant::now(),
            stream_ms: batch.seen_ms(),
        };
        let outcome = self.buffer.push_message(batch.spans, batch.ticket, at, due);
        self.ctx
            .metrics
            .decide
            .traces_ingested_total
            .inc_by(outcome.opened);
    }

    /// Decides every due trace. A trace decided before (its spans arrived
    /// late, or another instance decided it) gets that same decision; the
    /// rest are evaluated and remembered, in one Redis round trip each way.
    async fn decide_all(&mut self, due: &mut Vec<CompleteTrace>) {
        if due.is_empty() {
            return;
        }
        match self.ctx.judge.clone() {
            Judge::Live {
                policies,
                force_rules,
                decisions,
            } => {
                self.decide_live(due, &policies, force_rules.as_ref(), &decisions)
                    .await
            }
            Judge::Recovery(judge) => {
                for trace in due.drain(..) {
                    let decision = judge.decide(&trace.spans);
                    self.route(trace, decision);
                }
            }
            Judge::Simulation(sim) => {
                for trace in due.drain(..) {
                    let decision = sim.decide(&trace.trace_id, &trace.spans);
                    self.route(trace, decision);
                }
            }
        }
    }

    async fn decide_live(
        &mut self,
        due: &mut Vec<CompleteTrace>,
        policies: &SharedPolicies,
        force_rules: &dyn ForceRules,
        decisions: &DecisionCache,
    ) {
        let ids: Vec<_> = due.iter().map(|t| t.trace_id).collect();
        let prior = decisions.lookup(&ids).await;
        let mut fresh = Vec::new();
        let policies = policies.load();
        for (trace, prior) in due.drain(..).zip(prior) {
            self.ctx
                .metrics
                .decide
                .decision_latency_seconds
                .observe(trace.last_seen.elapsed().as_secs_f64());
            if !self.buffer.is_compact() {
                self.red.record(&trace.spans);
            }
            match prior {
                Some(decision) => {
                    let label = if decision == Decision::Drop {
                        "dropped"
                    } else {
                        "kept"
                    };
                    self.ctx
                        .metrics
                        .decide
                        .late_spans_total
                        .with_label_values(&[label])
                        .inc_by(trace.span_count() as u64);
                    self.route(trace, decision);
                }
                None => {
                    let decision =
                        policies.decide_facts(&trace.trace_id, trace.facts().get(), force_rules);
                    self.count(&decision);
                    fresh.push((trace.trace_id, decision.clone()));
                    self.route(trace, decision);
                }
            }
        }
        decisions.store(&fresh).await;
    }

    fn count(&self, decision: &Decision) {
        match decision {
            Decision::Drop => self.ctx.metrics.decide.traces_dropped_total.inc(),
            Decision::Keep { reason, .. } => {
                self.ctx
                    .metrics
                    .decide
                    .traces_sampled_total
                    .with_label_values(&[reason.as_str()])
                    .inc();
                if *reason == SamplingReason::ForceRule {
                    self.ctx.metrics.decide.traces_force_sampled_total.inc();
                }
            }
        }
    }

    /// Settles a dropped trace, or hands a kept one to the sinks.
    fn route(&mut self, trace: CompleteTrace, decision: Decision) {
        let Decision::Keep {
            reason,
            rule_id,
            sample_rate,
        } = decision
        else {
            trace.hold.settle();
            return;
        };
        let spans_in_kafka = if trace.sketch.is_some() {
            trace.span_count()
        } else {
            0
        };
        let kept = KeptTrace {
            trace_id: trace.trace_id,
            spans: trace.spans,
            spans_in_kafka,
            charge: None,
            sample_rate,
            reason,
            rule_id,
            hold: trace.hold,
            decided_at: SystemTime::now(),
        };
        if let Err(e) = self.ctx.kept_tx.send(kept) {
            // Dropping the trace frees its spans; its messages stay unsettled.
            tracing::warn!(
                trace_id = %hex::encode(e.0.trace_id),
                "storage has stopped; the kept trace stays uncommitted in Kafka"
            );
        }
    }

    fn report_gauges(&mut self) {
        let traces = self.buffer.trace_count() as i64;
        let spans = self.buffer.span_count() as i64;
        self.ctx
            .metrics
            .decide
            .buffered_traces
            .add(traces - self.reported_traces);
        self.ctx
            .metrics
            .decide
            .buffered_spans
            .add(spans - self.reported_spans);
        self.reported_traces = traces;
        self.reported_spans = spans;
    }
}
