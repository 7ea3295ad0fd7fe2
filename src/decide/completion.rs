//! Trace completion: per-trace span buffers for one worker shard, and when
//! a trace counts as complete.
//!
//! Completion runs on stream time (see [`crate::ack::StreamClock`]): a trace
//! is complete when the watermark has passed its newest span's stream time by
//! `inactivity_timeout`, or its first span's by `max_trace_duration`. On live
//! traffic stream time is the wall clock, so this is the familiar rule; on a
//! backlog it runs as fast as the backlog is read. The wall clock still bounds
//! the wait at twice each timeout, so a partition whose stream time stands
//! still (a stuck fetch) cannot hold traces forever. That bound is a
//! safety net, checked by a sweep over the open traces every half
//! inactivity timeout (so it fires up to that much late), which keeps it
//! out of every trace's memory: queue entries cost more than the sweep.
//!
//! Each worker owns one `TraceBuffer` outright, so nothing here is locked.
//! Stream deadlines come in order on live traffic and go to FIFO queues;
//! those of a slower partition's spans, which come out of order, go to a
//! min-heap beside them. An entry
//! carries the trace's generation, so entries made stale by a newer span are
//! skipped in O(1).

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::sketch::{TraceSketch, Watch};
use crate::ack::{Hold, Ticket};
use crate::matching::{TraceFacts, TraceView};
use crate::model::Lease;
use crate::model::{unix_now_ms, SpanRecord, TraceId};

/// How much longer than its timeout a trace may wait, in wall time, for
/// stream time to reach it.
const WALL_BOUND_FACTOR: u32 = 2;

/// A moment on both clocks: the wall clock, and stream time in Unix
/// milliseconds (for `expire`, the watermark; `i64::MIN` when unknown).
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub wall: Instant,
    pub stream_ms: i64,
}

/// Live traffic: stream time is the wall clock.
impl From<Instant> for Stamp {
    fn from(wall: Instant) -> Self {
        static BASE: OnceLock<(Instant, i64)> = OnceLock::new();
        let (base, base_ms) = *BASE.get_or_init(|| (Instant::now(), unix_now_ms()));
        let stream_ms = match wall.checked_duration_since(base) {
            Some(after) => base_ms + after.as_millis() as i64,
            None => base_ms - base.duration_since(wall).as_millis() as i64,
        };
        Stamp { wall, stream_ms }
    }
}

/// When a trace counts as complete.
#[derive(Debug, Clone, Copy)]
pub struct CompletionLimits {
    pub inactivity_timeout: Duration,
    pub max_trace_duration: Duration,
    pub max_spans_per_trace: usize,
}

/// Why a trace left the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Inactive,
    MaxDuration,
    MaxSpans,
}

/// A trace ready for a decision, with the Kafka messages it holds back.
#[derive(Debug)]
pub struct CompleteTrace {
    pub trace_id: TraceId,
    /// The spans; empty when the buffer kept the trace as a sketch.
    pub spans: Vec<SpanRecord>,
    /// The trace as facts, from a compact buffer; its spans are read again
    /// from the messages the hold names.
    pub sketch: Option<TraceSketch>,
    pub hold: Hold,
    pub completion: Completion,
    /// When the trace's newest span arrived, on the wall clock.
    pub last_seen: Instant,
}

impl CompleteTrace {
    /// What a decision reads of the trace.
    pub fn facts(&self) -> Facts<'_> {
        match &self.sketch {
            Some(sketch) => Facts::Sketch(sketch),
            None => Facts::Spans(TraceView::new(&self.spans)),
        }
    }

    /// How many spans the trace has, held or sketched.
    pub fn span_count(&self) -> usize {
        self.sketch
            .as_ref()
            .map_or(self.spans.len(), |s| s.span_count())
    }
}

/// A complete trace as a decision reads it.
pub enum Facts<'a> {
    Spans(TraceView<'a>),
    Sketch(&'a TraceSketch),
}

impl<'a> Facts<'a> {
    pub fn get(&self) -> &dyn TraceFacts {
        match self {
            Facts::Spans(view) => view,
            Facts::Sketch(sketch) => *sketch,
        }
    }
}

/// What an open trace holds of its spans.
#[derive(Debug)]
enum Held {
    Spans(Vec<SpanRecord>),
    /// One sketch per partition lease the spans were read under, so that a
    /// revoked lease's share can go alone.
    Sketches(Vec<(Lease, TraceSketch)>),
}

impl Held {
    fn span_count(&self) -> usize {
        match self {
            Held::Spans(spans) => spans.len(),
            Held::Sketches(parts) => parts.iter().map(|(_, s)| s.span_count()).sum(),
        }
    }

    /// Takes in spans; `seq` numbers them in the order of arrival.
    fn extend(
        &mut self,
        spans: impl IntoIterator<Item = SpanRecord>,
        watch: &Watch,
        seq: &mut u64,
    ) -> usize {
        match self {
            Held::Spans(held) => {
                let before = held.len();
                held.extend(spans);
                held.len() - before
            }
            Held::Sketches(parts) => {
                let mut added = 0;
                for span in spans {
                    let i = match parts.iter().position(|(l, _)| *l == span.lease) {
                        Some(i) => i,
                        None => {
                            // Most traces are read under one lease: no room
                            // to spare.
                            parts.reserve_exact(1);
                            parts.push((span.lease, TraceSketch::default()));
                            parts.len() - 1
                        }
                    };
                    parts[i].1.add(&span, *seq, watch);
                    *seq += 1;
                    added += 1;
                }
                added
            }
        }
    }

    /// Keeps what was read under current leases, and the hold's references
    /// on their messages; returns how many spans went.
    fn retain_current(&mut self, hold: &mut Hold, is_current: impl Fn(Lease) -> bool) -> usize {
        match self {
            Held::Spans(spans) => hold.retain_current(spans, is_current),
            Held::Sketches(parts) => {
                let gone = parts
                    .iter()
                    .filter(|(l, _)| !is_current(*l))
                    .map(|(_, s)| s.span_count())
                    .sum();
                parts.retain(|(l, _)| is_current(*l));
                hold.release_revoked(gone, is_current);
                gone
            }
        }
    }

    /// The spans, or the shares merged into one sketch.
    fn into_parts(self) -> (Vec<SpanRecord>, Option<TraceSketch>) {
        match self {
            Held::Spans(spans) => (spans, None),
            Held::Sketches(parts) => {
                let merged = parts.into_iter().map(|(_, s)| s).reduce(|mut a, b| {
                    a.merge(b);
                    a
                });
                (Vec::new(), Some(merged.unwrap_or_default()))
            }
        }
    }
}

/// What one `push_message` did.
#[derive(Debug, Default, Clone, Copy)]
pub struct MessageOutcome {
    /// Message references the traces took.
    pub refs: i64,
    /// Traces that were not buffered before.
    pub opened: u64,
}

/// What one `push` did.
#[derive(Debug)]
pub struct PushOutcome {
    /// The trace took a reference on the message.
    pub took_ref: bool,
    /// The trace was not buffered before this push.
    pub opened: bool,
    /// The trace, when this push took it to `max_spans_per_trace`.
    pub complete: Option<CompleteTrace>,
}

#[derive(Debug)]
struct OpenTrace {
    held: Held,
    hold: Hold,
    /// Bumped when its idle entries are pushed again; matches only the newest.
    generation: u32,
    /// The generation at which the trace was opened; matches its age entries.
    opened: u32,
    last_seen: Instant,
    /// When this opening of the trace began, on the wall clock.
    opened_at: Instant,
    /// The newest span's stream time; a span of a slower partition may come
    /// later with an earlier stream time, so this is a maximum.
    last_stream_ms: i64,
}

/// Stream deadlines: (deadline, generation, trace). Deadlines mostly come in
/// order (live traffic, one partition), and those go to a FIFO queue; one
/// earlier than the FIFO's newest (a slower partition's span) goes to a
/// min-heap. Ties break on the generation, which is unique, so trace ids
/// are never compared.
#[derive(Debug, Default)]
struct StreamQueue {
    in_order: VecDeque<(i64, u32, TraceId)>,
    out_of_order: BinaryHeap<Reverse<(i64, u32, TraceId)>>,
}

impl StreamQueue {
    fn push(&mut self, deadline: i64, generation: u32, id: TraceId) {
        match self.in_order.back() {
            Some(&(last, _, _)) if deadline < last => {
                self.out_of_order.push(Reverse((deadline, generation, id)))
            }
            _ => self.in_order.push_back((deadline, generation, id)),
        }
    }

    /// The earliest entry due at `watermark`, removed.
    fn pop_due(&mut self, watermark: i64) -> Option<(u32, TraceId)> {
        let fifo = self
            .in_order
            .front()
            .map(|e| e.0)
            .filter(|d| *d <= watermark);
        let heap = self
            .out_of_order
            .peek()
            .map(|e| e.0 .0)
            .filter(|d| *d <= watermark);
        match (fifo, heap) {
            (Some(f), Some(h)) if h < f => {
                self.out_of_order.pop().map(|Reverse((_, g, id))| (g, id))
            }
            (Some(_), _) => self.in_order.pop_front().map(|(_, g, id)| (g, id)),
            (None, Some(_)) => self.out_of_order.pop().map(|Reverse((_, g, id))| (g, id)),
            (None, None) => None,
        }
    }

    fn len(&self) -> usize {
        self.in_order.len() + self.out_of_order.len()
    }

    fn clear(&mut self) {
        self.in_order.clear();
        self.out_of_order.clear();
    }

    fn retain(&mut self, keep: impl Fn(&TraceId, &u32) -> bool) {
        self.in_order.retain(|(_, g, id)| keep(id, g));
        self.out_of_order.retain(|Reverse((_, g, id))| keep(id, g));
    }
}

#[derive(Debug)]
pub struct TraceBuffer {
    limits: CompletionLimits,
    traces: FxHashMap<TraceId, OpenTrace>,
    /// Inactivity by stream time.
    idle_stream: StreamQueue,
    /// Age by stream time; one per opening.
    age_stream: StreamQueue,
    buffered_spans: usize,
    next_generation: u32,
    /// Whether the wall clock bounds the wait (see the module doc).
    wall_bounds: bool,
    /// Whether traces are kept as sketches that watch for what `watch`
    /// names, their spans dropped once looked at.
    compact: bool,
    watch: Arc<Watch>,
    /// Arrival order of the spans a compact buffer has looked at.
    next_seq: u64,
    /// When the open traces are next swept for wall-clock bounds.
    next_sweep: Instant,
}

impl TraceBuffer {
    pub fn new(limits: CompletionLimits) -> Self {
        Self {
            wall_bounds: true,
            limits,
            traces: FxHashMap::default(),
            idle_stream: StreamQueue::default(),
            age_stream: StreamQueue::default(),
            buffered_spans: 0,
            next_generation: 0,
            compact: false,
            watch: Arc::new(Watch::default()),
            next_seq: 0,
            next_sweep: Instant::now() + limits.inactivity_timeout / 2,
        }
    }

    /// A buffer that keeps each trace as the facts its decision reads
    /// (see [`super::sketch`]), watching for what `watch` names.
    pub fn compact(limits: CompletionLimits, watch: Arc<Watch>) -> Self {
        Self {
            compact: true,
            watch,
            ..Self::new(limits)
        }
    }

    /// Watches for what `watch` names in the spans that arrive from now
    /// on; what open traces saw so far stays as it is.
    pub fn set_watch(&mut self, watch: Arc<Watch>) {
        self.watch = watch;
    }

    /// Whether traces are kept as sketches.
    pub fn is_compact(&self) -> bool {
        self.compact
    }

    /// A buffer that completes traces on stream time alone. For a read of
    /// the past (a recovery), which may run slower than the traffic was
    /// produced (rate-limited, paused for memory): a wall-clock bound would
    /// then cut traces in two. Its input always ends, and what is open then
    /// is decided as it is.
    pub fn on_stream_time_only(limits: CompletionLimits) -> Self {
        Self {
            wall_bounds: false,
            ..Self::new(limits)
        }
    }

    pub fn trace_count(&self) -> usize {
        self.traces.len()
    }

    pub fn span_count(&self) -> usize {
        self.buffered_spans
    }

    /// Adds the spans one message holds for one trace; the trace's hold
    /// takes them, and a reference on the message, from the shard's ticket.
    /// The caller redeems the ticket before it settles any hold.
    pub fn push(
        &mut self,
        trace_id: TraceId,
        spans: impl IntoIterator<Item = SpanRecord>,
        ticket: &mut Ticket,
        at: impl Into<Stamp>,
    ) -> PushOutcome {
        self.push_run(trace_id, spans, ticket, at.into(), true)
    }

    /// [`TraceBuffer::push`]; `complete_when_full` false leaves a trace at
    /// `max_spans_per_trace` open for the caller to take.
    fn push_run(
        &mut self,
        trace_id: TraceId,
        spans: impl IntoIterator<Item = SpanRecord>,
        ticket: &mut Ticket,
        at: Stamp,
        complete_when_full: bool,
    ) -> PushOutcome {
        let now = at.wall;
        let (trace, opened) = match self.traces.entry(trace_id) {
            Entry::Occupied(o) => (o.into_mut(), false),
            Entry::Vacant(v) => (
                v.insert(OpenTrace {
                    held: if self.compact {
                        Held::Sketches(Vec::new())
                    } else {
                        Held::Spans(Vec::new())
                    },
                    hold: ticket.open(),
                    generation: 0,
                    opened: 0,
                    last_seen: now,
                    opened_at: now,
                    last_stream_ms: at.stream_ms,
                }),
                true,
            ),
        };
        trace.last_seen = now;
        let stream_moved = at.stream_ms > trace.last_stream_ms;
        trace.last_stream_ms = trace.last_stream_ms.max(at.stream_ms);
        // A new idle entry only when the deadline moves, with stream time:
        // spans that come together (one message, one batch) leave one.
        let refresh = opened || stream_moved;
        if refresh {
            self.next_generation = self.next_generation.wrapping_add(1);
            trace.generation = self.next_generation;
            if opened {
                trace.opened = self.next_generation;
            }
        }
        let generation = trace.generation;
        let idle_stream_deadline = trace
            .last_stream_ms
            .saturating_add(self.limits.inactivity_timeout.as_millis() as i64);
        let added = trace.held.extend(spans, &self.watch, &mut self.next_seq);
        self.buffered_spans += added;
        let took_ref = ticket.give(&mut trace.hold, added);
        let full = complete_when_full && trace.held.span_count() >= self.limits.max_spans_per_trace;
        if opened {
            let age = self.limits.max_trace_duration;
            let deadline = at.stream_ms.saturating_add(age.as_millis() as i64);
            self.age_stream.push(deadline, generation, trace_id);
        }
        let complete = if full {
            self.take(&trace_id, Completion::MaxSpans)
        } else if !refresh {
            None
        } else {
            self.idle_stream
                .push(idle_stream_deadline, generation, trace_id);
            None
        };
        PushOutcome {
            took_ref,
            opened,
            complete,
        }
    }

    /// Buffers the spans one message holds for this shard, and redeems the
    /// shard's ticket for the references its traces took. Consecutive spans
    /// of one trace (the usual layout: an SDK or the Collector groups a
    /// trace's spans) cost one map lookup and one deadline between them.
    /// Traces this completes at `max_spans_per_trace` go to `due`.
    pub fn push_message(
        &mut self,
        spans: Vec<(TraceId, SpanRecord)>,
        mut ticket: Ticket,
        at: impl Into<Stamp>,
        due: &mut Vec<CompleteTrace>,
    ) -> MessageOutcome {
        let at = at.into();
        let mut outcome = MessageOutcome::default();
        // A compact buffer completes a full trace only at the end of the
        // message: its spans are read again by message, so one message's
        // spans of a trace must all go to one instance of it.
        let whole_messages = self.is_compact();
        let mut full: Vec<TraceId> = Vec::new();
        let mut spans = spans.into_iter();
        while let Some((trace_id, first)) = spans.next() {
            // The run's exact length lets the trace's span list grow once.
            let run = spans
                .as_slice()
                .iter()
                .take_while(|(next, _)| *next == trace_id)
                .count();
            let rest = spans.by_ref().take(run).map(|(_, s)| s);
            let pushed = self.push_run(
                trace_id,
                std::iter::once(first).chain(rest),
                &mut ticket,
                at,
                !whole_messages,
            );
            outcome.refs += i64::from(pushed.took_ref);
            outcome.opened += u64::from(pushed.opened);
            due.extend(pushed.complete);
            if whole_messages && !full.contains(&trace_id) && self.is_full(&trace_id) {
                full.push(trace_id);
            }
        }
        for id in full {
            due.extend(self.take(&id, Completion::MaxSpans));
        }
        ticket.redeem();
        outcome
    }

    /// Moves every trace that is due at `now` into `out`: by the watermark
    /// (`now.stream_ms`), or by the wall-clock bound.
    pub fn expire(&mut self, now: impl Into<Stamp>, out: &mut Vec<CompleteTrace>) {
        let Stamp {
            wall: now,
            stream_ms: watermark,
        } = now.into();
        while let Some((generation, id)) = self.idle_stream.pop_due(watermark) {
            if self
                .traces
                .get(&id)
                .is_some_and(|t| t.generation == generation)
            {
                out.extend(self.take(&id, Completion::Inactive));
            }
        }
        while let Some((opened_generation, id)) = self.age_stream.pop_due(watermark) {
            if self
                .traces
                .get(&id)
                .is_some_and(|t| t.opened == opened_generation)
            {
                out.extend(self.take(&id, Completion::MaxDuration));
            }
        }
        if self.wall_bounds && now >= self.next_sweep {
            self.sweep(now, out);
            self.next_sweep = now + self.limits.inactivity_timeout / 2;
        }
        self.compact_queues();
    }

    /// Takes the traces past a wall-clock bound: twice the inactivity
    /// timeout since their newest span, or twice the longest duration since
    /// they opened.
    fn sweep(&mut self, now: Instant, out: &mut Vec<CompleteTrace>) {
        let idle = self.limits.inactivity_timeout * WALL_BOUND_FACTOR;
        let age = self.limits.max_trace_duration * WALL_BOUND_FACTOR;
        let due: Vec<(TraceId, Completion)> = self
            .traces
            .iter()
            .filter_map(|(id, t)| {
                if now >= t.opened_at + age {
                    Some((*id, Completion::MaxDuration))
                } else if now >= t.last_seen + idle {
                    Some((*id, Completion::Inactive))
                } else {
                    None
                }
            })
            .collect();
        for (id, completion) in due {
            out.extend(self.take(&id, completion));
        }
    }

    /// Drops what was read under leases that have ended: those spans and
    /// message references go (their holds free the spans), and a trace left
    /// with no span goes entirely. Returns how many spans were dropped. The
    /// next owner of the revoked partitions re-reads them; a trace that also
    /// has spans from a partition still owned keeps those and is decided as
    /// usual.
    pub fn purge(&mut self, is_current: impl Fn(Lease) -> bool) -> usize {
        let mut dropped = 0;
        self.traces.retain(|_, t| {
            dropped += t.held.retain_current(&mut t.hold, &is_current);
            t.held.span_count() > 0
        });
        self.buffered_spans -= dropped;
        dropped
    }

    /// Removes every open trace without deciding it; used when partitions are
    /// given up, because their next owner re-reads the messages. Dropping
    /// the traces frees their spans and keeps their offsets.
    pub fn drain(&mut self) -> Vec<CompleteTrace> {
        self.idle_stream.clear();
        self.age_stream.clear();
        self.buffered_spans = 0;
        self.traces
            .drain()
            .map(|(trace_id, t)| {
                let (spans, sketch) = t.held.into_parts();
                CompleteTrace {
                    trace_id,
                    spans,
                    sketch,
                    hold: t.hold,
                    completion: Completion::Inactive,
                    last_seen: t.last_seen,
                }
            })
            .collect()
    }

    fn is_full(&self, id: &TraceId) -> bool {
        self.traces
            .get(id)
            .is_some_and(|t| t.held.span_count() >= self.limits.max_spans_per_trace)
    }

    fn take(&mut self, id: &TraceId, completion: Completion) -> Option<CompleteTrace> {
        let t = self.traces.remove(id)?;
        self.buffered_spans -= t.held.span_count();
        let (spans, sketch) = t.held.into_parts();
        Some(CompleteTrace {
            trace_id: *id,
            spans,
            sketch,
            hold: t.hold,
            completion,
            last_seen: t.last_seen,
        })
    }

    /// Stale idle entries pile up for busy traces; rebuild the queue when it is
    /// much larger than the live set so memory stays proportional to it.
    fn compact_queues(&mut self) {
        let live = self.traces.len().max(1024);
        let traces = &self.traces;
        let current = |id: &TraceId, g: &u32| traces.get(id).is_some_and(|t| t.generation == *g);
        if self.idle_stream.len() > live * 8 {
            self.idle_stream.retain(current);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::OffsetTracker;
    use crate::decide::sketch::Watch;
    use crate::model::{MsgRef, Origin};
    use bytes::Bytes;
    use std::sync::Arc;

    fn limits() -> CompletionLimits {
        CompletionLimits {
            inactivity_timeout: Duration::from_secs(10),
            max_trace_duration: Duration::from_secs(60),
            max_spans_per_trace: 5,
        }
    }

    fn rec() -> SpanRecord {
        SpanRecord {
            bytes: Bytes::new(),
            origin: Arc::new(Origin::default()),
            start_unix_nano: 0,
            end_unix_nano: 0,
            ..Default::default()
        }
    }

    fn id(n: u8) -> TraceId {
        let mut t = [0u8; 16];
        t[15] = n;
        t
    }

    fn r(offset: i64) -> MsgRef {
        MsgRef {
            partition: 0,
            offset,
            epoch: 1,
        }
    }

    /// A share of the message with room for any test's spans.
    fn ticket(msg: MsgRef) -> Ticket {
        let tracker = Arc::new(OffsetTracker::new());
        let mut tickets = tracker.receive(msg, 1, 0, [1_000].into_iter());
        tickets.pop().expect("one share")
    }

    fn m(offset: i64) -> Ticket {
        ticket(r(offset))
    }

    #[test]
    fn a_backlog_completes_by_stream_time_not_by_arrival() {
        let mut b = TraceBuffer::new(limits());
        let wall = Instant::now();
        let at = |stream_ms| Stamp { wall, stream_ms };
        // Read within the same instant, stamped an hour ago and 5 s apart.
        b.push(id(1), [rec()], &mut m(0), at(1_000_000));
        b.push(id(2), [rec()], &mut m(1), at(1_005_000));
        let mut out = Vec::new();
        b.expire(at(1_009_999), &mut out);
        assert!(
            out.is_empty(),
            "the watermark has not passed 10 s of inactivity"
        );
        b.expire(at(1_010_000), &mut out);
        assert_eq!(
            out.iter().map(|t| t.trace_id).collect::<Vec<_>>(),
            vec![id(1)]
        );
        b.expire(at(1_015_000), &mut out);
        assert_eq!(out.len(), 2, "no wall time passed, yet both are complete");
    }

    #[test]
    fn a_span_from_a_slower_partition_does_not_make_a_trace_look_older() {
        let mut b = TraceBuffer::new(limits());
        let wall = Instant::now();
        let at = |stream_ms| Stamp { wall, stream_ms };
        b.push(id(1), [rec()], &mut m(0), at(50_000));
        b.push(id(1), [rec()], &mut m(1), at(20_000));
        let mut out = Vec::new();
        b.expire(at(59_999), &mut out);
        assert!(out.is_empty(), "the newest span's stream time counts");
        b.expire(at(60_000), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].spans.len(), 2);
    }

    #[test]
    fn traces_of_a_slower_partition_complete_in_stream_order() {
        let mut b = TraceBuffer::new(limits());
        let wall = Instant::now();
        let at = |stream_ms| Stamp { wall, stream_ms };
        b.push(id(1), [rec()], &mut m(0), at(50_000));
        b.push(id(2), [rec()], &mut m(1), at(20_000));
        b.push(id(3), [rec()], &mut m(2), at(55_000));
        let mut out = Vec::new();
        b.expire(at(30_000), &mut out);
        assert_eq!(
            out.iter().map(|t| t.trace_id).collect::<Vec<_>>(),
            vec![id(2)]
        );
        b.expire(at(65_000), &mut out);
        assert_eq!(
            out.iter().map(|t| t.trace_id).collect::<Vec<_>>(),
            vec![id(2), id(1), id(3)]
        );
    }

    #[test]
    fn the_wall_clock_bounds_a_stream_that_stands_still() {
        let mut b = TraceBuffer::new(limits());
        let t0 = Instant::now();
        b.push(
            id(1),
            [rec()],
            &mut m(0),
            Stamp {
                wall: t0,
                stream_ms: 1_000,
            },
        );
        let mut out = Vec::new();
        let stuck = |wall| Stamp {
            wall,
            stream_ms: 1_000,
        };
        b.expire(stuck(t0 + Duration::from_secs(19)), &mut out);
        assert!(out.is_empty(), "within twice the inactivity timeout");
        b.expire(stuck(t0 + Duration::from_secs(25)), &mut out);
        assert_eq!(
            out.len(),
            1,
            "decided by the sweep within half a timeout of the wall-clock bound"
        );
        assert_eq!(out[0].completion, Completion::Inactive);
    }

    #[test]
    fn spans_that_come_together_leave_one_deadline() {
        let mut b = TraceBuffer::new(CompletionLimits {
            max_spans_per_trace: 1000,
            ..limits()
        });
        let wall = Instant::now();
        let at = |stream_ms| Stamp { wall, stream_ms };
        for offset in 0..5 {
            b.push(id(1), [rec()], &mut m(offset), at(1_000));
        }
        assert_eq!(b.idle_stream.len(), 1);
        b.push(id(1), [rec()], &mut m(5), at(1_001));
        assert_eq!(b.idle_stream.len(), 2);
        let mut out = Vec::new();
        b.expire(at(11_000), &mut out);
        assert!(out.is_empty(), "the newest span's deadline holds");
        b.expire(at(11_001), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].spans.len(), 6);
    }

    #[test]
    fn inactivity_timeout_restarts_on_every_span() {
        let t0 = Instant::now();
        let mut b = TraceBuffer::new(limits());
        b.push(id(1), [rec()], &mut m(0), t0);
        b.push(id(1), [rec()], &mut m(1), t0 + Duration::from_secs(8));
        let mut out = Vec::new();
        b.expire(t0 + Duration::from_secs(12), &mut out);
        assert!(out.is_empty(), "the second span restarted the timer");
        b.expire(t0 + Duration::from_secs(18), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].spans.len(), 2);
        assert_eq!(out[0].hold.msgs(), [r(0), r(1)]);
        assert_eq!(out[0].completion, Completion::Inactive);
        assert_eq!(b.trace_count(), 0);
        assert_eq!(b.span_count(), 0);
    }

    #[test]
    fn max_duration_decides_a_trace_that_never_goes_quiet() {
        let t0 = Instant::now();
        let mut b = TraceBuffer::new(CompletionLimits {
            max_spans_per_trace: 1000,
            ..limits()
        });
        let mut out = Vec::new();
        let mut decided_at = None;
        for s in (0..=80).step_by(4) {
            let now = t0 + Duration::from_secs(s);
            assert!(b
                .push(id(2), [rec()], &mut m(s as i64), now)
                .complete
                .is_none());
            b.expire(now, &mut out);
            if !out.is_empty() {
                decided_at = Some(s);
                break;
            }
        }
        // A span every 4 s never lets the 10 s inactivity timeout fire; the
        // 60 s limit does, and the span pushed at 60 s is part of the trace.
        assert_eq!(decided_at, Some(60));
        assert_eq!(out[0].completion, Completion::MaxDuration);
        assert_eq!(out[0].spans.len(), 16);
    }

    #[test]
    fn max_spans_decides_at_once() {
        let t0 = Instant::now();
        let mut b = TraceBuffer::new(limits());
        let first = b.push(id(3), vec![rec(), rec(), rec()], &mut m(0), t0);
        assert!(first.took_ref && first.opened);
        assert!(first.complete.is_none());
        let second = b.push(id(3), vec![rec(), rec()], &mut m(1), t0);
        assert!(!second.opened);
        let done = second.complete.expect("5 spans reach the limit");
        assert_eq!(done.completion, Completion::MaxSpans);
        assert_eq!(done.spans.len(), 5);
        // Its queued deadlines are now stale and decide nothing.
        let mut out = Vec::new();
        b.expire(t0 + Duration::from_secs(100), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_compact_buffer_completes_a_full_trace_at_the_end_of_its_message() {
        let t0 = Instant::now();
        let spans = |runs: &[(u8, usize)]| {
            runs.iter()
                .flat_map(|&(n, len)| std::iter::repeat_n((id(n), rec()), len))
                .collect::<Vec<_>>()
        };
        // Trace 3 reaches 5 spans in its first run; its second run, after
        // trace 4's, is in the same message.
        let message = spans(&[(3, 5), (4, 1), (3, 2)]);
        let mut compact = TraceBuffer::compact(limits(), Arc::new(Watch::default()));
        let mut due = Vec::new();
        compact.push_message(message.clone(), m(0), t0, &mut due);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].span_count(), 7, "the whole message's share");
        assert_eq!(compact.trace_count(), 1, "trace 4 only");
        // The spans mode splits at the limit, as it always has.
        let mut plain = TraceBuffer::new(limits());
        let mut due = Vec::new();
        plain.push_message(message, m(0), t0, &mut due);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].span_count(), 5);
        assert_eq!(plain.trace_count(), 2, "trace 4 and trace 3 again");
    }

    #[test]
    fn message_references_are_taken_once_per_message() {
        let t0 = Instant::now();
        let mut b = TraceBuffer::new(limits());
        assert!(b.push(id(4), [rec()], &mut m(7), t0).took_ref);
        assert!(!b.push(id(4), [rec()], &mut m(7), t0).took_ref);
        assert!(b.push(id(5), [rec()], &mut m(7), t0).took_ref);
        assert_eq!(b.span_count(), 3);
        assert_eq!(b.trace_count(), 2);
        let drained = b.drain();
        assert_eq!(drained.len(), 2);
        assert_eq!(b.span_count(), 0);
    }

    #[test]
    fn a_trace_reopened_after_its_decision_gets_fresh_deadlines() {
        let t0 = Instant::now();
        let mut b = TraceBuffer::new(limits());
        let mut out = Vec::new();
        b.push(id(6), [rec()], &mut m(0), t0);
        b.expire(t0 + Duration::from_secs(11), &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        // A late span opens the trace again at t0+50 and another keeps it
        // busy at t0+58; the first opening's max-duration deadline (t0+60)
        // must not cut it short.
        b.push(id(6), [rec()], &mut m(1), t0 + Duration::from_secs(50));
        b.push(id(6), [rec()], &mut m(2), t0 + Duration::from_secs(58));
        b.expire(t0 + Duration::from_secs(61), &mut out);
        assert!(out.is_empty(), "the old max-duration entry is stale");
        b.expire(t0 + Duration::from_secs(68), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].spans.len(), 2);
        assert_eq!(out[0].completion, Completion::Inactive);
    }

    #[test]
    fn purge_drops_only_what_revoked_leases_read() {
        for compact in [false, true] {
            purge_in(if compact {
                TraceBuffer::compact(limits(), Arc::new(Watch::default()))
            } else {
                TraceBuffer::new(limits())
            });
        }
    }

    fn purge_in(mut b: TraceBuffer) {
        let t0 = Instant::now();
        let owned = Lease {
            partition: 0,
            epoch: 1,
        };
        let revoked = Lease {
            partition: 1,
            epoch: 2,
        };
        let on = |lease: Lease| SpanRecord { lease, ..rec() };
        let msg = |lease: Lease, offset| MsgRef {
            partition: lease.partition,
            offset,
            epoch: lease.epoch,
        };
        let share = |lease: Lease, offset| ticket(msg(lease, offset));
        // Trace 7 lives on the revoked partition only; trace 8 on both.
        b.push(
            id(7),
            [on(revoked), on(revoked)],
            &mut share(revoked, 0),
            t0,
        );
        b.push(id(8), [on(owned)], &mut share(owned, 0), t0);
        b.push(id(8), [on(revoked)], &mut share(revoked, 1), t0);
        assert_eq!(b.purge(|l| l == owned), 3);
        assert_eq!(b.trace_count(), 1);
        assert_eq!(b.span_count(), 1);
        let mut out = Vec::new();
        b.expire(t0 + Duration::from_secs(11), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].trace_id, id(8));
        assert_eq!(out[0].hold.msgs(), [msg(owned, 0)]);
        assert_eq!(out[0].span_count(), 1);
        assert_eq!(out[0].sketch.is_some(), b.is_compact());
        assert!(out[0].spans.iter().all(|s| s.lease == owned));
    }

    #[test]
    fn a_message_takes_one_reference_per_trace_it_feeds() {
        let t0 = Instant::now();
        let mut b = TraceBuffer::new(limits());
        let mut due = Vec::new();
        // Trace 9 appears in two runs, trace 10 in one; 6 spans in all.
        let spans = vec![
            (id(9), rec()),
            (id(9), rec()),
            (id(10), rec()),
            (id(9), rec()),
            (id(10), rec()),
            (id(10), rec()),
        ];
        let out = b.push_message(spans, m(3), t0, &mut due);
        assert_eq!(out.refs, 2);
        assert_eq!(out.opened, 2);
        assert_eq!(b.span_count(), 6);
        assert!(due.is_empty());
        // Trace 10 reaches max_spans_per_trace (5) with the next message.
        let more = vec![(id(10), rec()), (id(10), rec())];
        let out = b.push_message(more, m(4), t0, &mut due);
        assert_eq!((out.refs, out.opened), (1, 0));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].spans.len(), 5);
        assert_eq!(due[0].hold.msgs(), [r(3), r(4)]);
    }
}
