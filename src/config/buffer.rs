//! `[buffer]`: how much the pipeline may hold before the consumer pauses.

use serde::Deserialize;

use super::checks::invalid;
use super::error::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackpressureConfig {
    /// Spans held in memory at most: buffered, decided and not yet committed.
    /// At the limit the consumer pauses its partitions; it resumes below
    /// `resume_ratio` of the limit. Nothing is dropped to make room.
    pub max_buffered_spans: usize,
    /// Bytes of Kafka messages the held spans keep alive, at most: a span is
    /// a slice of its message, so one held span keeps the whole message. The
    /// consumer pauses at this limit too.
    pub max_buffered_bytes: u64,
    pub resume_ratio: f64,
    /// How an open trace is held while it waits to be decided.
    #[serde(default)]
    pub mode: BufferMode,
    /// In compact mode, how long the second read waits after a kept trace
    /// is decided before reading its messages, of wall time or of stream
    /// time, whichever passes first. Traces decided within this wait are
    /// read in one pass, in message order; a trace whose messages lie
    /// behind that pass (decided later than this after a trace with later
    /// messages) costs the read a new consumer to go back. The default is
    /// the OpenTelemetry SDKs' export interval, the usual spread of one
    /// trace's messages; counted in stream time too, it costs a backlog
    /// next to nothing.
    #[serde(default = "default_reread_delay_ms")]
    pub reread_delay_ms: u64,
}

fn default_reread_delay_ms() -> u64 {
    5000
}

/// `buffer.mode`: what the selector keeps of an open trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferMode {
    /// Every span, as read from Kafka, until the trace is decided.
    #[default]
    Spans,
    /// Only what the decision reads (aggregates and the watched
    /// conditions), plus the offsets of the messages that fed the trace.
    /// A kept trace's spans are read again from those messages before the
    /// sinks; a dropped trace's are never decoded twice. About an eighth
    /// of the memory per buffered span; a force rule created while a trace
    /// is open sees only the spans that arrive after it.
    Compact,
}

impl BufferMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BufferMode::Spans => "spans",
            BufferMode::Compact => "compact",
        }
    }
}

impl BackpressureConfig {
    pub(super) fn validate(&self, max_spans_per_trace: usize) -> Result<(), ConfigError> {
        if self.max_buffered_spans < max_spans_per_trace {
            return Err(invalid(
                "buffer.max_buffered_spans",
                "must be at least sampling.max_spans_per_trace",
            ));
        }
        if self.max_buffered_bytes < 1 << 20 {
            return Err(invalid(
                "buffer.max_buffered_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if self.reread_delay_ms > 600_000 {
            return Err(invalid(
                "buffer.reread_delay_ms",
                "must be at most 600000 (10 minutes)",
            ));
        }
        if !(self.resume_ratio > 0.0 && self.resume_ratio < 1.0) {
            return Err(invalid(
                "buffer.resume_ratio",
                "must be between 0 and 1, exclusive",
            ));
        }
        Ok(())
    }
}
