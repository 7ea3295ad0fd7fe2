//! What flows between the stages: spans and traces, the decisions made about
//! them.
//!
//! Part of the shared core: every stage may import it, and it imports only
//! the other core modules.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

/// One ownership of one partition by this instance: the partition and the
/// epoch at which it was assigned. Epochs never repeat within a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Lease {
    pub partition: i32,
    pub epoch: u32,
}

/// One Kafka message, by partition and offset, with the epoch it was read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgRef {
    pub partition: i32,
    pub offset: i64,
    pub epoch: u32,
}

impl MsgRef {
    pub fn lease(&self) -> Lease {
        Lease {
            partition: self.partition,
            epoch: self.epoch,
        }
    }
}

/// The 16-byte W3C trace id.
pub type TraceId = [u8; 16];

/// Caps on what one stored row holds, as OpenTelemetry's attribute limits
/// (`AttributeValueLengthLimit`, `AttributeCountLimit`): a client that puts
/// 64 KiB of resource attributes on every span would otherwise multiply them
/// by every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttributeLimits {
    /// Longest value (and key), in bytes, cut on a character boundary.
    pub value_max_bytes: usize,
    /// Most attributes per resource, span or event, and events per span.
    pub max_count: usize,
}

impl Default for AttributeLimits {
    fn default() -> Self {
        Self {
            value_max_bytes: 16 * 1024,
            max_count: 128,
        }
    }
}

/// The resource and instrumentation scope shared by the spans of one `ScopeSpans`.
#[derive(Debug, Default)]
pub struct Origin {
    /// Encoded `opentelemetry.proto.resource.v1.Resource`, empty when absent.
    pub resource: Bytes,
    /// Encoded `opentelemetry.proto.common.v1.InstrumentationScope`, empty when absent.
    pub scope: Bytes,
    /// The resource's `service.name`, read once by the ingest scan (empty
    /// when absent): the RED metrics and most conditions need nothing else
    /// of the resource.
    pub service_name: Box<str>,
}

/// One buffered span: the encoded bytes plus the few fields the policies
/// and the RED metrics read, so that neither decodes the span.
#[derive(Debug, Clone, Default)]
pub struct SpanRecord {
    /// Encoded `opentelemetry.proto.trace.v1.Span`, a slice of the Kafka message.
    pub bytes: Bytes,
    pub origin: Arc<Origin>,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// Where the span's name lies in `bytes` (start, end).
    pub name_range: (u32, u32),
    /// [`name_hash`] of the name, taken by the ingest scan while the bytes
    /// are in cache: the RED metrics key on it without touching the bytes
    /// again at decision time.
    pub name_hash: u64,
    /// OTLP `SpanKind` (0 unspecified … 5 consumer).
    pub kind: u8,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: u8,
    /// No parent span id: the trace's root.
    pub is_root: bool,
    /// The partition lease the span was read under; set by the consumer.
    pub lease: Lease,
}

/// OTLP status code ERROR.
pub const STATUS_ERROR: u8 = 2;

/// A fast hash of a span name (FxHash; not for anything adversarial: a
/// collision would only merge two RED series).
pub fn name_hash(name: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(name);
    h.finish()
}

impl SpanRecord {
    pub fn is_error(&self) -> bool {
        self.status_code == STATUS_ERROR
    }

    /// The span's name, read from its bytes without decoding them.
    pub fn name(&self) -> &str {
        std::str::from_utf8(self.name_bytes()).unwrap_or("")
    }

    /// The name's bytes, unchecked: for keys that only need equality.
    pub fn name_bytes(&self) -> &[u8] {
        let (start, end) = (self.name_range.0 as usize, self.name_range.1 as usize);
        self.bytes.get(start..end).unwrap_or_default()
    }

    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }
}

/// The wall clock in Unix milliseconds.
pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Why a trace was kept; stored in the `sampling_reason` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplingReason {
    ForceRule,
    /// A `[[sampling.policies]]` entry; its name is the rule id.
    Policy,
    Error,
    Latency,
    Baseline,
    /// Stored later by a recovery job, from the raw topic; the job's id is
    /// the rule id.
    Recovered,
}

impl SamplingReason {
    pub const ALL: [SamplingReason; 6] = [
        SamplingReason::ForceRule,
        SamplingReason::Policy,
        SamplingReason::Error,
        SamplingReason::Latency,
        SamplingReason::Baseline,
        SamplingReason::Recovered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SamplingReason::ForceRule => "force_rule",
            SamplingReason::Policy => "policy",
            SamplingReason::Error => "error",
            SamplingReason::Latency => "latency",
            SamplingReason::Baseline => "baseline",
            SamplingReason::Recovered => "recovered",
        }
    }
}

impl fmt::Display for SamplingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome for one trace.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Keep {
        reason: SamplingReason,
        /// The force rule's id or the policy's name, when one decided.
        rule_id: Option<Arc<str>>,
        /// How many traces this one stands for (1, or 1/rate).
        sample_rate: f64,
    },
    Drop,
}

impl Decision {
    /// A keep for a reason that keeps traces whole (sample rate 1).
    pub fn keep(reason: SamplingReason, rule_id: Option<Arc<str>>) -> Self {
        Decision::Keep {
            reason,
            rule_id,
            sample_rate: 1.0,
        }
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

/// [`trace_hash`] mixed with a salt: an independent uniform hash per salt,
/// so that two sampling policies do not keep the same traces.
pub fn salted_trace_hash(trace_id: &TraceId, salt: u64) -> u64 {
    mix(trace_hash(trace_id) ^ salt)
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
