//! What flows between the stages: spans and traces, the decisions made about
//! them, and the slot through which force rules reach the policies.
//!
//! Part of the shared core: every stage may import it, and it imports only
//! the other core modules.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::ack::{Lease, MsgRef};

/// The 16-byte W3C trace id.
pub type TraceId = [u8; 16];

/// The resource and instrumentation scope shared by the spans of one `ScopeSpans`.
#[derive(Debug, Default)]
pub struct Origin {
    /// Encoded `opentelemetry.proto.resource.v1.Resource`, empty when absent.
    pub resource: Bytes,
    /// Encoded `opentelemetry.proto.common.v1.InstrumentationScope`, empty when absent.
    pub scope: Bytes,
}

/// One buffered span: the encoded bytes plus the few fields the policies read.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Encoded `opentelemetry.proto.trace.v1.Span`, a slice of the Kafka message.
    pub bytes: Bytes,
    pub origin: Arc<Origin>,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub is_error: bool,
    /// The partition lease the span was read under; set by the consumer.
    pub lease: Lease,
}

/// The spans of one Kafka message that belong to this worker's shard.
#[derive(Debug)]
pub struct ShardBatch {
    pub msg: MsgRef,
    pub spans: Vec<(TraceId, SpanRecord)>,
    /// The stream time the message was read at (its partition's clock),
    /// in Unix milliseconds.
    pub seen_ms: i64,
}

/// The wall clock in Unix milliseconds.
pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A trace the policies kept, on its way to the table.
#[derive(Debug)]
pub struct KeptTrace {
    pub trace_id: TraceId,
    pub spans: Vec<SpanRecord>,
    pub reason: SamplingReason,
    pub rule_id: Option<Arc<str>>,
    /// How many traces this one stands for: 1, or 1/rate when a sampling
    /// rate kept it. Stored as `sample_rate`.
    pub sample_rate: f64,
    pub msgs: Vec<MsgRef>,
    pub decided_at: SystemTime,
}

/// Why a trace was kept; stored in the `sampling_reason` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplingReason {
    ForceRule,
    Error,
    Latency,
    Baseline,
}

impl SamplingReason {
    pub const ALL: [SamplingReason; 4] = [
        SamplingReason::ForceRule,
        SamplingReason::Error,
        SamplingReason::Latency,
        SamplingReason::Baseline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SamplingReason::ForceRule => "force_rule",
            SamplingReason::Error => "error",
            SamplingReason::Latency => "latency",
            SamplingReason::Baseline => "baseline",
        }
    }
}

impl fmt::Display for SamplingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome for one trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Keep {
        reason: SamplingReason,
        /// Set when a force rule decided.
        rule_id: Option<Arc<str>>,
    },
    Drop,
}

/// What a force rule said about a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForceVerdict {
    Keep { rule_id: Arc<str> },
    Drop { rule_id: Arc<str> },
}

/// The slot for force rules: the first policy, consulted before the others.
/// Implementations must answer from local state; evaluation never waits on I/O.
pub trait ForceRules: Send + Sync {
    fn evaluate(&self, trace_id: &TraceId, spans: &[SpanRecord]) -> Option<ForceVerdict>;
}

/// No force rules: every trace falls through to the other policies.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoForceRules;

impl ForceRules for NoForceRules {
    fn evaluate(&self, _: &TraceId, _: &[SpanRecord]) -> Option<ForceVerdict> {
        None
    }
}

/// A stable, well-mixed 64-bit hash of the trace id (SplitMix64 finaliser over
/// both halves). Fixed forever: changing it would change which traces every
/// instance keeps, so instances of different versions would disagree.
pub fn trace_hash(trace_id: &TraceId) -> u64 {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&trace_id[..8]);
    lo.copy_from_slice(&trace_id[8..]);
    mix(mix(u64::from_be_bytes(hi)) ^ u64::from_be_bytes(lo))
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Picks the worker for a trace. The trace id's last bytes are random in every
/// W3C-conformant id, but mixing the whole id keeps skewed ids balanced too.
pub fn shard_of(trace_id: &TraceId, shards: usize) -> usize {
    (trace_hash(trace_id).rotate_left(17) % shards as u64) as usize
}

