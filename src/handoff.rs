//! What one stage hands the next, each with the acknowledgement it carries:
//! a worker shard's part of a Kafka message, and a kept trace on its way
//! through the sinks.
//!
//! Part of the shared core, between the data (`model`) and the
//! acknowledgements (`ack`): a stage that holds one of these holds the
//! offsets of its messages, and lets them go by settling it or, when the
//! messages must be read again, by dropping it.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::ack::{Charge, Hold, Ticket};
use crate::model::{MsgRef, SamplingReason, SpanRecord, TraceId};

/// The spans of one Kafka message that belong to one worker's shard.
#[derive(Debug)]
pub struct ShardBatch {
    /// The shard's share of the message; the trace buffer redeems it.
    pub ticket: Ticket,
    pub spans: Vec<(TraceId, SpanRecord)>,
}

impl ShardBatch {
    pub fn msg(&self) -> MsgRef {
        self.ticket.msg()
    }

    /// The stream time the message was read at (its partition's clock),
    /// in Unix milliseconds.
    pub fn seen_ms(&self) -> i64 {
        self.ticket.seen_ms()
    }
}

/// A trace the policies kept, on its way to the table.
#[derive(Debug)]
pub struct KeptTrace {
    pub trace_id: TraceId,
    pub spans: Vec<SpanRecord>,
    /// Spans still to be read again from the messages the hold names: the
    /// trace's span count when a compact buffer decided it, until the
    /// second read fills `spans`; zero once `spans` is the whole trace.
    /// The sinks only ever see zero.
    pub spans_in_kafka: usize,
    /// The bytes the second read's copies of the trace's messages take,
    /// counted until the trace is dropped (stored or given up).
    pub charge: Option<Charge>,
    pub reason: SamplingReason,
    pub rule_id: Option<Arc<str>>,
    /// How many traces this one stands for: 1, or 1/rate when a sampling
    /// rate kept it. Stored as `sample_rate`.
    pub sample_rate: f64,
    /// The trace's messages, settled by the last sink once it is stored.
    pub hold: Hold,
    pub decided_at: SystemTime,
}

/// Where a sink hands a kept trace once it holds it safely: the next sink
/// of the chain or, after the last one, settlement, which lets the trace's
/// Kafka messages commit. A trace that never gets here (a sink that failed
/// or stopped) stays uncommitted and is read again.
#[derive(Debug, Clone)]
pub enum Onward {
    Next(mpsc::UnboundedSender<KeptTrace>),
    Settle,
}

impl Onward {
    pub fn pass(&self, kept: KeptTrace) {
        match self {
            // A closed channel means the next sink is gone: the trace is
            // dropped unsettled, so its messages are read again.
            Onward::Next(tx) => drop(tx.send(kept)),
            Onward::Settle => kept.hold.settle(),
        }
    }
}

#[cfg(test)]
impl KeptTrace {
    /// A trace kept for an error that holds `msgs`, with `spans_in_kafka`
    /// spans still to be read from them and none at hand: the stages'
    /// unit tests' fixture.
    pub fn held(trace_id: TraceId, msgs: Vec<MsgRef>, spans_in_kafka: usize) -> Self {
        Self {
            trace_id,
            spans: Vec::new(),
            spans_in_kafka,
            charge: None,
            reason: SamplingReason::Error,
            rule_id: None,
            sample_rate: 1.0,
            hold: Hold::detached(msgs),
            decided_at: SystemTime::now(),
        }
    }
}
