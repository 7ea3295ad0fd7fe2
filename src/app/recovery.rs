//! Runs jobs over the raw topic, recoveries and policy simulations: each
//! re-reads a time range of the raw topic with
//! the live path's own stages, each with acknowledgements, metrics and
//! health of its own, so that nothing it does moves the live path's
//! offsets, counts or probes:
//!
//! ```text
//! ingest::range (no group) ─▶ decide (RecoveryJudge, stream time only) ─▶ storage (WriterRole::Recovery)
//! ```
//!
//! 1. **Plan.** The range is widened by the trace timeouts (back by
//!    `max_trace_duration`, on by `inactivity_timeout`) so that traces
//!    crossing its edges are read whole, and the job waits for the widened
//!    end to pass. The offsets of the widened range are found per
//!    partition.
//! 2. **Wait for the live group** to commit past those ends: a committed
//!    offset means every trace that message fed was decided and, if kept,
//!    stored. So whatever the job reads, the live path will not store later,
//!    and a trace the table does not hold was dropped live.
//! 3. **Read, decide, store.** The writer checks every trace against the
//!    table first and stores only spans it does not hold, so a rerun, or a
//!    rerun after a kill, stores nothing twice.
//!
//! A simulation reads the same way but decides every trace with two policy
//! lists ([`decide::simulation`]), keeps none, and needs neither the live
//! group's commits nor a writer.
//!
//! Jobs live in memory: after a restart they are gone, and a rerun is how a
//! killed job is finished.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ack::Acks;
use crate::config::Settings;
use crate::decide::policy::SharedPolicies;
use crate::decide::simulation::Simulation;
use crate::decide::{self, recovery::RecoveryJudge, Judge};
use crate::health::Health;
use crate::ingest::range::{self, PartitionRange, RangeReadConfig, ReadProgress};
use crate::metrics::Metrics;
use crate::model::unix_now_ms;
use crate::recovery::{
    JobKind, JobReport, PartitionProgress, Recoveries, RecoveryError, RecoveryRequest,
    RecoveryState, SimulationRequest,
};
use crate::storage;
use crate::storage::writer::{StoredTally, WriterContext, WriterRole};
use crate::table::TableHandle;

/// How often a running job publishes its counts and checks its limits.
const TICK: Duration = Duration::from_secs(1);
/// Slack after the widened end, for messages still in a producer's batch.
const END_SLACK: Duration = Duration::from_secs(2);

/// The recovery jobs of one process.
pub struct RecoveryRunner {
    settings: Arc<Settings>,
    metrics: Metrics,
    /// Set once the table is open; jobs are refused before.
    table: Arc<OnceCell<TableHandle>>,
    /// The live policies, which simulations compare with; none from the
    /// command line.
    policies: Option<SharedPolicies>,
    jobs: Mutex<VecDeque<Arc<Job>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// One job: what it was asked, and where it is.
struct Job {
    id: String,
    /// The request as it was made.
    request: serde_json::Value,
    from_ms: i64,
    to_ms: i64,
    /// Messages per second at most.
    max_messages_per_sec: u32,
    created_at: SystemTime,
    cancel: CancellationToken,
    work: Work,
    read: Arc<ReadProgress>,
    state: Mutex<JobState>,
}

/// What a job does with the traces it reads.
enum Work {
    Recover {
        judge: Arc<RecoveryJudge>,
        stored: Arc<StoredTally>,
        max_traces: Option<u64>,
    },
    Simulate(Arc<Simulation>),
}

impl Work {
    fn kind(&self) -> JobKind {
        match self {
            Work::Recover { .. } => JobKind::Recovery,
            Work::Simulate(_) => JobKind::Simulation,
        }
    }
}

#[derive(Default)]
struct JobState {
    state: Option<RecoveryState>,
    read_from_ms: Option<i64>,
    read_to_ms: Option<i64>,
    offsets_found_by: Option<&'static str>,
    ranges: Vec<PartitionRange>,
    running_since: Option<Instant>,
    /// When the job ended: its rate stops moving then.
    ended: Option<Instant>,
    /// When the reader reached the end of every range.
    read_ended: Option<Instant>,
    finished_at: Option<SystemTime>,
    warnings: Vec<String>,
    error: Option<String>,
}

impl RecoveryRunner {
    pub fn new(settings: Arc<Settings>, metrics: Metrics, shutdown: CancellationToken) -> Self {
        Self {
            settings,
            metrics,
            table: Arc::new(OnceCell::new()),
            policies: None,
            jobs: Mutex::new(VecDeque::new()),
            tasks: TaskTracker::new(),
            // Its own child: stopping the jobs must not stop the process.
            shutdown: shutdown.child_token(),
        }
    }

    /// The live policies, for simulations to compare with.
    pub fn with_live_policies(mut self, policies: SharedPolicies) -> Self {
        self.policies = Some(policies);
        self
    }

    /// The table jobs write to, once it is open.
    pub fn set_table(&self, table: TableHandle) {
        let _ = self.table.set(table);
    }

    /// Cancels every job and waits for them to end.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Runs one job to its end, for the command line.
    pub async fn run_to_end(
        &self,
        request: RecoveryRequest,
        mut on_tick: impl FnMut(&JobReport),
    ) -> Result<JobReport, RecoveryError> {
        let started = self.start(request)?;
        loop {
            tokio::time::sleep(TICK).await;
            let Some(report) = self.get(&started.id) else {
                return Err(RecoveryError::Unavailable);
            };
            on_tick(&report);
            if report.state.is_final() {
                return Ok(report);
            }
        }
    }

    fn running(&self) -> usize {
        self.jobs
            .lock()
            .iter()
            .filter(|j| !j.state.lock().state.is_some_and(RecoveryState::is_final))
            .count()
    }
}

impl Recoveries for RecoveryRunner {
    fn start(&self, request: RecoveryRequest) -> Result<JobReport, RecoveryError> {
        let as_json = serde_json::to_value(&request).unwrap_or_default();
        let valid = request.validate(unix_now_ms())?;
        let table = self.admit()?;
        let id = format!("rec-{}", uuid::Uuid::now_v7().simple());
        let judge = RecoveryJudge::new(
            Arc::from(id.as_str()),
            valid.condition,
            nanos(valid.from_ms),
            nanos(valid.to_ms) + 999_999,
        );
        let work = Work::Recover {
            judge: Arc::new(judge),
            stored: Arc::new(StoredTally::default()),
            max_traces: valid.request.max_traces,
        };
        let rate = valid.request.max_messages_per_sec;
        Ok(self.spawn(
            id,
            as_json,
            (valid.from_ms, valid.to_ms),
            rate,
            work,
            Some(table),
        ))
    }

    fn simulate(&self, request: SimulationRequest) -> Result<JobReport, RecoveryError> {
        let as_json = serde_json::to_value(&request).unwrap_or_default();
        let (from_ms, to_ms) = request.range(unix_now_ms())?;
        let Some(live) = self.policies.as_ref().map(|p| p.load_full()) else {
            return Err(RecoveryError::Unavailable);
        };
        let candidate = match &request.policies {
            Some(specs) => live.with_policies(specs, "policies")?,
            None => live.with_policies(&live.specs(), "policies")?,
        };
        let live = live.with_policies(&live.specs(), "policies")?;
        self.admit()?;
        let id = format!("sim-{}", uuid::Uuid::now_v7().simple());
        let sim = Simulation::new(candidate, live, nanos(from_ms), nanos(to_ms) + 999_999);
        let work = Work::Simulate(Arc::new(sim));
        let rate = request.max_messages_per_sec;
        Ok(self.spawn(id, as_json, (from_ms, to_ms), rate, work, None))
    }

    fn list(&self) -> Vec<JobReport> {
        self.jobs.lock().iter().map(|j| j.report()).collect()
    }

    fn get(&self, id: &str) -> Option<JobReport> {
        self.find(id).map(|j| j.report())
    }

    fn cancel(&self, id: &str) -> Option<JobReport> {
        let job = self.find(id)?;
        job.cancel.cancel();
        Some(job.report())
    }
}

impl RecoveryRunner {
    fn find(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().iter().find(|j| j.id == id).cloned()
    }

    /// The table, if a new job may start now.
    fn admit(&self) -> Result<TableHandle, RecoveryError> {
        let Some(table) = self.table.get().cloned() else {
            return Err(RecoveryError::Unavailable);
        };
        let running = self.running();
        if running >= self.settings.recovery.max_concurrent_jobs {
            return Err(RecoveryError::Busy { running });
        }
        Ok(table)
    }

    /// Records a job and runs it in the background.
    fn spawn(
        &self,
        id: String,
        request: serde_json::Value,
        (from_ms, to_ms): (i64, i64),
        rate: Option<u32>,
        work: Work,
        table: Option<TableHandle>,
    ) -> JobReport {
        let cap = self.settings.recovery.max_messages_per_sec;
        let job = Arc::new(Job {
            id,
            request,
            from_ms,
            to_ms,
            max_messages_per_sec: rate.map_or(cap, |r| r.min(cap)),
            created_at: SystemTime::now(),
            cancel: self.shutdown.child_token(),
            work,
            read: Arc::new(ReadProgress::default()),
            state: Mutex::new(JobState {
                state: Some(RecoveryState::Planning),
                ..Default::default()
            }),
        });
        {
            let mut jobs = self.jobs.lock();
            jobs.push_front(job.clone());
            let keep = self.settings.recovery.max_finished_jobs
                + self.settings.recovery.max_concurrent_jobs;
            while jobs.len() > keep {
                let Some(pos) = jobs
                    .iter()
                    .rposition(|j| j.state.lock().state.is_some_and(RecoveryState::is_final))
                else {
                    break;
                };
                jobs.remove(pos);
            }
        }
        tracing::info!(job = %job.id, from_ms, to_ms, "job over the raw topic started");
        let ctx = JobContext {
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            table,
        };
        self.metrics.recovery.jobs_running.inc();
        self.tasks.spawn(run_job(ctx, job.clone()));
        job.report()
    }
}

/// Unix milliseconds as Unix nanoseconds (0 before the epoch).
fn nanos(ms: i64) -> u64 {
    (ms.max(0) as u64) * 1_000_000
}

struct JobContext {
    settings: Arc<Settings>,
    metrics: Metrics,
    /// Where a recovery writes; none for a simulation.
    table: Option<TableHandle>,
}

/// Runs a job and records how it ended.
async fn run_job(ctx: JobContext, job: Arc<Job>) {
    let outcome = execute(&ctx, &job).await;
    let state = match outcome {
        Ok(()) if job.cancel.is_cancelled() => RecoveryState::Cancelled,
        Ok(()) => RecoveryState::Done,
        Err(e) => {
            tracing::error!(job = %job.id, error = %e, "recovery job failed");
            job.state.lock().error = Some(e);
            RecoveryState::Failed
        }
    };
    {
        let mut s = job.state.lock();
        s.state = Some(state);
        s.ended = Some(Instant::now());
        s.finished_at = Some(SystemTime::now());
    }
    let m = &ctx.metrics.recovery;
    m.jobs_running.dec();
    m.jobs_total.with_label_values(&[state.as_str()]).inc();
    let report = job.report();
    m.traces_recovered_total.inc_by(report.traces_recovered);
    m.spans_recovered_total.inc_by(report.spans_recovered);
    tracing::info!(
        job = %job.id,
        state = state.as_str(),
        messages_read = report.messages_read,
        traces_scanned = report.traces_scanned,
        traces_matched = report.traces_matched,
        traces_recovered = report.traces_recovered,
        spans_recovered = report.spans_recovered,
        "job over the raw topic ended"
    );
}

/// Plans, waits, reads, decides and stores. `Ok` also when cancelled.
async fn execute(ctx: &JobContext, job: &Arc<Job>) -> Result<(), String> {
    let sampling = &ctx.settings.sampling;
    let read_from = job.from_ms - sampling.max_trace_duration_secs.duration().as_millis() as i64;
    let read_to = job.to_ms + sampling.inactivity_timeout_secs.duration().as_millis() as i64;
    {
        let mut s = job.state.lock();
        s.read_from_ms = Some(read_from);
        s.read_to_ms = Some(read_to);
    }
    // The widened end must have passed before its offsets mean anything.
    let wait_ms = read_to + END_SLACK.as_millis() as i64 - unix_now_ms();
    if wait_ms > 0 {
        job.set_state(RecoveryState::Waiting);
        if !job.sleep(Duration::from_millis(wait_ms as u64)).await {
            return Ok(());
        }
        job.set_state(RecoveryState::Planning);
    }
    let kafka = ctx.settings.kafka.clone();
    let (ranges, lookup) =
        tokio::task::spawn_blocking(move || range::plan_range(&kafka, read_from, read_to))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("finding the offsets of the range: {e}"))?;
    {
        let mut s = job.state.lock();
        s.offsets_found_by = Some(match lookup {
            range::OffsetLookup::ListOffsets => "list_offsets",
            range::OffsetLookup::Search => "search",
        });
        let missing: Vec<String> = ranges
            .iter()
            .filter(|r| r.missing_ms > 0)
            .map(|r| format!("{} ({} s)", r.partition, r.missing_ms / 1000))
            .collect();
        if !missing.is_empty() {
            s.warnings.push(format!(
                "past the topic's retention: the start of the range is gone on partitions {}; \
                 traces from then cannot be recovered",
                missing.join(", ")
            ));
        }
        s.ranges = ranges.clone();
    }
    // A simulation stores nothing, so what the live path will still store
    // does not matter to it.
    let ranges = match job.work {
        Work::Recover { .. } => match wait_for_live_group(ctx, job, ranges).await? {
            Some(ranges) => ranges,
            None => return Ok(()),
        },
        Work::Simulate(_) => ranges,
    };
    job.state.lock().ranges = ranges.clone();
    job.set_state(RecoveryState::Running);
    job.state.lock().running_since = Some(Instant::now());
    read_decide_store(ctx, job, ranges).await
}

/// Waits until the live group has committed past every range's end, for
/// `recovery.live_wait_secs` at most; then cuts each range at what it
/// committed. `None` when cancelled.
async fn wait_for_live_group(
    ctx: &JobContext,
    job: &Job,
    mut ranges: Vec<PartitionRange>,
) -> Result<Option<Vec<PartitionRange>>, String> {
    let deadline = Instant::now() + ctx.settings.recovery.live_wait_secs.duration();
    let partitions: Vec<i32> = ranges.iter().map(|r| r.partition).collect();
    loop {
        let (kafka, group, parts) = (
            ctx.settings.kafka.clone(),
            ctx.settings.kafka.group_id.clone(),
            partitions.clone(),
        );
        let committed =
            tokio::task::spawn_blocking(move || range::committed_offsets(&kafka, &group, &parts))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("reading the live group's committed offsets: {e}"))?;
        let behind: Vec<&PartitionRange> = ranges
            .iter()
            .filter(|r| r.end > r.start && committed.get(&r.partition).is_none_or(|c| *c < r.end))
            .collect();
        if behind.is_empty() {
            return Ok(Some(ranges));
        }
        if Instant::now() >= deadline {
            let cut: Vec<String> = behind.iter().map(|r| r.partition.to_string()).collect();
            job.state.lock().warnings.push(format!(
                "the live group `{}` had not committed past the range on partitions {} within \
                 recovery.live_wait_secs; the job read only what it had decided",
                ctx.settings.kafka.group_id,
                cut.join(", ")
            ));
            for r in &mut ranges {
                let live = committed.get(&r.partition).copied().unwrap_or(r.start);
                r.end = r.end.min(live.max(r.start));
            }
            return Ok(Some(ranges));
        }
        job.set_state(RecoveryState::Waiting);
        if !job.sleep(TICK).await {
            return Ok(None);
        }
    }
}

/// The job's own pipeline: the range reader, the deciding workers and a
/// recovery writer, with acknowledgements, metrics and health of their own.
async fn read_decide_store(
    ctx: &JobContext,
    job: &Arc<Job>,
    ranges: Vec<PartitionRange>,
) -> Result<(), String> {
    let acks = Acks::default();
    acks.assignments
        .assign(&ranges.iter().map(|r| r.partition).collect::<Vec<_>>());
    let private = Metrics::new().map_err(|e| e.to_string())?;
    let (judge, kept_tx, mut writer) = match (&job.work, &ctx.table) {
        (Work::Recover { judge, stored, .. }, Some(table)) => {
            let (tx, writer) = storage::start(
                table.clone(),
                &ctx.settings.storage,
                WriterContext {
                    acks: acks.clone(),
                    metrics: private.clone(),
                    health: Health::default(),
                    topic: ctx.settings.kafka.topic.clone(),
                    role: WriterRole::Recovery {
                        job_id: Arc::from(job.id.as_str()),
                        stored: stored.clone(),
                    },
                },
            );
            (Judge::Recovery(judge.clone()), tx, Some(writer))
        }
        (Work::Recover { .. }, None) => return Err("no table to recover into".into()),
        // Nothing is kept: the channel is never sent on.
        (Work::Simulate(sim), _) => (
            Judge::Simulation(sim.clone()),
            tokio::sync::mpsc::unbounded_channel().0,
            None,
        ),
    };
    let (shards, deciders) = decide::start_replay(
        &ctx.settings.sampling,
        judge,
        acks.clone(),
        private,
        kept_tx,
    );
    let read = RangeReadConfig {
        max_messages_per_sec: job.max_messages_per_sec,
        max_held_spans: ctx.settings.recovery.max_buffered_spans,
        max_message_bytes: ctx.settings.kafka.max_message_bytes,
    };
    // Stops reading at a cancel, or once `max_traces` matched.
    let stop_reading = job.cancel.child_token();
    let reading = range::read_range(
        &ctx.settings.kafka,
        read,
        ranges,
        acks.clone(),
        shards,
        job.read.clone(),
        stop_reading.clone(),
    );
    tokio::pin!(reading);
    let mut published = 0;
    let read_result = loop {
        tokio::select! {
            r = &mut reading => break r,
            _ = tokio::time::sleep(TICK) => {
                published = job.publish_reads(&ctx.metrics, published);
                job.check_max_traces(&stop_reading);
            }
        }
    };
    job.state.lock().read_ended = Some(Instant::now());
    // The reader dropped the shard senders: the workers decide what is
    // open and end, which closes the writer's input; it makes its last
    // flush and ends.
    deciders.join().await;
    if let Some(writer) = writer.as_mut() {
        writer.join().await;
    }
    job.publish_reads(&ctx.metrics, published);
    read_result.map_err(|e| format!("reading the range: {e}"))?;
    let unsettled = acks.tracker.pending_messages();
    if unsettled > 0 && !job.cancel.is_cancelled() {
        return Err(format!(
            "{unsettled} messages' matched traces could not be stored (see the log); \
             run the job again: what was stored is not stored twice"
        ));
    }
    Ok(())
}

impl Job {
    fn set_state(&self, state: RecoveryState) {
        self.state.lock().state = Some(state);
    }

    /// Sleeps unless cancelled first; false when cancelled.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// Adds the messages read since the last call to the metric.
    fn publish_reads(&self, metrics: &Metrics, published: u64) -> u64 {
        let now = self.read.messages.load(Relaxed);
        metrics
            .recovery
            .messages_read_total
            .inc_by(now.saturating_sub(published));
        now
    }

    fn check_max_traces(&self, stop_reading: &CancellationToken) {
        let Work::Recover {
            judge,
            max_traces: Some(max),
            ..
        } = &self.work
        else {
            return;
        };
        let max = *max;
        if judge.tally().traces_matched >= max && !stop_reading.is_cancelled() {
            self.state.lock().warnings.push(format!(
                "stopped reading at max_traces = {max}: traces past it in the range were not looked at"
            ));
            stop_reading.cancel();
        }
    }

    fn report(&self) -> JobReport {
        let s = self.state.lock();
        let positions = self.read.positions();
        let partitions: Vec<PartitionProgress> = s
            .ranges
            .iter()
            .map(|r| PartitionProgress {
                partition: r.partition,
                start_offset: r.start,
                end_offset: r.end,
                read_offset: positions
                    .get(&r.partition)
                    .copied()
                    .unwrap_or(r.start)
                    .min(r.end),
                missing_ms: r.missing_ms,
            })
            .collect();
        let total: i64 = s.ranges.iter().map(PartitionRange::messages).sum();
        let done_msgs: i64 = partitions
            .iter()
            .map(|p| (p.read_offset - p.start_offset).max(0))
            .sum();
        let finished = s.state.is_some_and(|st| st == RecoveryState::Done);
        let progress = if finished || total == 0 {
            if finished {
                1.0
            } else {
                0.0
            }
        } else {
            (done_msgs as f64 / total as f64).min(1.0)
        };
        let read = self.read.messages.load(Relaxed);
        let per_sec = |until: Option<Instant>| {
            let until = until.unwrap_or_else(Instant::now);
            let elapsed = s
                .running_since
                .map_or(0.0, |t| until.saturating_duration_since(t).as_secs_f64());
            if elapsed > 0.0 {
                read as f64 / elapsed
            } else {
                0.0
            }
        };
        let rate = per_sec(s.ended);
        let read_rate = per_sec(s.read_ended.or(s.ended));
        let eta = (rate > 0.0 && !s.state.is_some_and(RecoveryState::is_final))
            .then(|| (total - done_msgs).max(0) as f64 / rate);
        let (scanned, matched, recovered, spans, present, simulation) = match &self.work {
            Work::Recover { judge, stored, .. } => {
                let t = judge.tally();
                (
                    t.traces_scanned,
                    t.traces_matched,
                    stored.traces.load(Relaxed),
                    stored.spans.load(Relaxed),
                    stored.traces_present.load(Relaxed),
                    None,
                )
            }
            Work::Simulate(sim) => {
                let r = sim.result(self.to_ms - self.from_ms);
                (r.traces, 0, 0, 0, 0, Some(r))
            }
        };
        JobReport {
            id: self.id.clone(),
            kind: self.work.kind(),
            state: s.state.unwrap_or(RecoveryState::Planning),
            request: self.request.clone(),
            from: rfc3339(self.from_ms),
            to: rfc3339(self.to_ms),
            read_from: s.read_from_ms.map(rfc3339),
            read_to: s.read_to_ms.map(rfc3339),
            created_at: rfc3339_of(self.created_at),
            finished_at: s.finished_at.map(rfc3339_of),
            offsets_found_by: s.offsets_found_by,
            partitions_done: partitions
                .iter()
                .filter(|p| p.read_offset >= p.end_offset)
                .count(),
            partitions,
            messages_total: total,
            messages_read: read,
            bytes_read: self.read.bytes.load(Relaxed),
            messages_invalid: self.read.messages_invalid.load(Relaxed),
            traces_scanned: scanned,
            traces_matched: matched,
            traces_recovered: recovered,
            spans_recovered: spans,
            traces_already_stored: present,
            progress,
            messages_per_sec: rate,
            read_messages_per_sec: read_rate,
            eta_secs: eta,
            warnings: s.warnings.clone(),
            error: s.error.clone(),
            simulation,
        }
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn rfc3339_of(t: SystemTime) -> String {
    rfc3339(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    )
}
