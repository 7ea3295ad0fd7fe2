//! `[sampled_topic]` and `[[forward]]`: where kept traces go besides the
//! table. The sampled topic is a Kafka topic of kept spans in the raw
//! topic's format; each forwarder reads it in a consumer group of its own
//! and sends what it reads to an OTLP backend, committing only what the
//! backend accepted.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::checks::{invalid, invalid_owned};
use super::duration::Milliseconds;
use super::error::ConfigError;

/// `[sampled_topic]`: every kept span produced to a Kafka topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampledTopicConfig {
    /// Produce kept spans to `topic`. The input offsets of a kept trace
    /// commit only after the broker confirmed all of its records.
    pub enabled: bool,
    pub topic: String,
    /// Partitions when the selector creates the topic; 0 takes
    /// `kafka.topic_partitions`.
    pub partitions: i32,
    /// Largest record produced, in bytes: a bigger kept trace is split over
    /// several records, each a whole `ExportTraceServiceRequest`.
    pub max_record_bytes: usize,
    /// librdkafka's `compression.type` for the topic's records.
    pub compression: String,
    /// How long librdkafka keeps trying to deliver a record
    /// (`message.timeout.ms`) before the sink produces it again.
    pub delivery_timeout_ms: Milliseconds,
}

impl SampledTopicConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled && self.topic.trim().is_empty() {
            return Err(invalid("sampled_topic.topic", "must not be empty"));
        }
        if self.partitions < 0 {
            return Err(invalid("sampled_topic.partitions", "must be 0 or more"));
        }
        if self.max_record_bytes < 64 * 1024 {
            return Err(invalid(
                "sampled_topic.max_record_bytes",
                "must be at least 64 KiB (65536)",
            ));
        }
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.compression.as_str()) {
            return Err(invalid(
                "sampled_topic.compression",
                "must be none, gzip, snappy, lz4 or zstd",
            ));
        }
        if self.delivery_timeout_ms.duration().as_millis() < 1000 {
            return Err(invalid(
                "sampled_topic.delivery_timeout_ms",
                "must be at least 1000",
            ));
        }
        Ok(())
    }
}

/// How a forwarder speaks OTLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    /// `POST {endpoint}` with `application/x-protobuf`.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// `POST {endpoint}` with OTLP/JSON.
    #[serde(rename = "http/json")]
    HttpJson,
    /// `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
    #[serde(rename = "grpc")]
    Grpc,
}

impl OtlpProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::HttpJson => "http/json",
            OtlpProtocol::Grpc => "grpc",
        }
    }
}

/// Request body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
}

/// One `[[forward]]` entry: an OTLP backend that receives every kept span,
/// at least once.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Names the forwarder in metrics (`sink="otlp/<name>"`), logs and
    /// `/health`; letters, digits, `-` and `_`.
    pub name: String,
    /// Where requests go, as `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: over
    /// HTTP the full URL, `/v1/traces` included; over gRPC the server's
    /// `http://` or `https://` address.
    pub endpoint: String,
    #[serde(default = "default_protocol")]
    pub protocol: OtlpProtocol,
    /// Sent with every request: the API-key headers of hosted backends
    /// (`DD-API-KEY`, `x-honeycomb-team`, `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Longest one request may take before it counts as failed and is retried.
    #[serde(default = "default_timeout")]
    pub timeout_ms: Milliseconds,
    /// Most spans per request.
    #[serde(default = "default_batch_spans")]
    pub max_batch_spans: usize,
    /// Most bytes of encoded spans per request, before compression.
    #[serde(default = "default_batch_bytes")]
    pub max_batch_bytes: usize,
    /// How long a batch waits to fill before it goes anyway.
    #[serde(default = "default_linger")]
    pub linger_ms: Milliseconds,
    /// Requests in flight at a time.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// The catch-up limit: most spans sent per second, so that a backend
    /// coming back from an outage is not flooded with the backlog. 0 means
    /// no limit.
    #[serde(default = "default_max_spans_per_sec")]
    pub max_spans_per_sec: u32,
    /// First wait before a retry; it doubles up to `retry_max_backoff_ms`,
    /// with full jitter. A `Retry-After` from the backend takes precedence.
    #[serde(default = "default_initial_backoff")]
    pub retry_initial_backoff_ms: Milliseconds,
    #[serde(default = "default_max_backoff")]
    pub retry_max_backoff_ms: Milliseconds,
    /// The forwarder's own consumer group on the sampled topic; its lag is
    /// the forwarder's backlog. Defaults to `tail-sampling-forward-<name>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Static membership in that group (`group.instance.id`, KIP-345),
    /// unique per forwarder process: a restarted forwarder takes its
    /// partitions back at once instead of waiting for the dead
    /// incarnation's session to time out.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// Where a batch the backend rejects for good (a 4xx other than 429,
    /// a body it can't take) goes, with the reason in a header.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// A PEM file of CA certificates trusted for the endpoint, beside the
    /// built-in roots.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// A PEM client certificate and its key, for mutual TLS.
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    #[serde(default)]
    pub tls_key_file: Option<String>,
}

fn default_protocol() -> OtlpProtocol {
    OtlpProtocol::HttpProtobuf
}
fn default_compression() -> Compression {
    Compression::Gzip
}
fn default_timeout() -> Milliseconds {
    Milliseconds::new(std::time::Duration::from_secs(10))
}
fn default_batch_spans() -> usize {
    8192
}
fn default_batch_bytes() -> usize {
    4 << 20
}
fn default_linger() -> Milliseconds {
    Milliseconds::new(std::time::Duration::from_millis(200))
}
fn default_concurrency() -> usize {
    4
}
fn default_max_spans_per_sec() -> u32 {
    50_000
}
fn default_initial_backoff() -> Milliseconds {
    Milliseconds::new(std::time::Duration::from_millis(500))
}
fn default_max_backoff() -> Milliseconds {
    Milliseconds::new(std::time::Duration::from_secs(30))
}
fn default_dead_letter_topic() -> String {
    "otel-traces-sampled-dlq".into()
}

impl ForwardConfig {
    /// The consumer group this forwarder reads the sampled topic in.
    pub fn group_id(&self) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("tail-sampling-forward-{}", self.name))
    }

    /// The `sink` label of its metrics.
    pub fn sink_label(&self) -> String {
        format!("otlp/{}", self.name)
    }

    pub(super) fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("forward[{i}].{k}");
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(invalid_owned(
                key("name"),
                "must be letters, digits, `-` and `_`",
            ));
        }
        let scheme_ok =
            self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://");
        if !scheme_ok {
            return Err(invalid_owned(
                key("endpoint"),
                "must be an http:// or https:// URL (with its path, /v1/traces)",
            ));
        }
        for (k, v) in &self.headers {
            let valid = !k.is_empty()
                && k.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                && v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
            if !valid {
                return Err(invalid_owned(
                    key("headers"),
                    format!("`{k}` is not a valid HTTP header"),
                ));
            }
        }
        let positive = [
            ("max_batch_spans", self.max_batch_spans),
            ("max_batch_bytes", self.max_batch_bytes),
            ("concurrency", self.concurrency),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(invalid_owned(key(k), "must be at least 1"));
            }
        }
        if self.concurrency > 64 {
            return Err(invalid_owned(key("concurrency"), "must be at most 64"));
        }
        if self.timeout_ms.duration().is_zero() {
            return Err(invalid_owned(key("timeout_ms"), "must be positive"));
        }
        if self.retry_initial_backoff_ms.duration().is_zero()
            || self.retry_max_backoff_ms.duration() < self.retry_initial_backoff_ms.duration()
        {
            return Err(invalid_owned(
                key("retry_max_backoff_ms"),
                "the backoffs must be positive, the maximum at least the initial one",
            ));
        }
        if self.dead_letter_topic.trim().is_empty() {
            return Err(invalid_owned(
                key("dead_letter_topic"),
                "must not be empty: a rejected batch is kept there, never dropped",
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(invalid_owned(
                key("tls_cert_file"),
                "tls_cert_file and tls_key_file go together",
            ));
        }
        Ok(())
    }
}

/// Header values are secrets (API keys): only their names are printed.
impl std::fmt::Debug for ForwardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardConfig")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("compression", &self.compression)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_batch_spans", &self.max_batch_spans)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("concurrency", &self.concurrency)
            .field("max_spans_per_sec", &self.max_spans_per_sec)
            .field("group_id", &self.group_id())
            .field("dead_letter_topic", &self.dead_letter_topic)
            .finish_non_exhaustive()
    }
}

/// Checks the forwarders together: unique names, and a sampled topic to read.
pub(super) fn validate_forwarders(
    forward: &[ForwardConfig],
    sampled: &SampledTopicConfig,
) -> Result<(), ConfigError> {
    let mut names = std::collections::BTreeSet::new();
    for (i, f) in forward.iter().enumerate() {
        f.validate(i)?;
        if !names.insert(f.name.as_str()) {
            return Err(invalid_owned(
                format!("forward[{i}].name"),
                format!("`{}` is used twice", f.name),
            ));
        }
    }
    if !forward.is_empty() && !sampled.enabled {
        return Err(invalid(
            "sampled_topic.enabled",
            "must be true when a [[forward]] is set: forwarders read the sampled topic",
        ));
    }
    Ok(())
}
