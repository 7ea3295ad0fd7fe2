//! Every tunable of the selector in one typed struct.
//!
//! Layers, later wins: the embedded `config/default.toml`, an optional file given
//! with `--config`, then `TSS__SECTION__KEY` environment variables. The defaults
//! live in exactly one place (the TOML file), so the binary, the docs and the
//! compose file cannot drift apart.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

mod duration;
mod error;
pub mod policy;
mod sinks;
pub use duration::{ConfigDuration, Milliseconds, Seconds};
pub use error::ConfigError;
use error::{invalid, invalid_owned};
pub use policy::{PolicyAction, PolicySpec};
pub use sinks::{Compression, ForwardConfig, OtlpProtocol, SampledTopicConfig};

/// The defaults, compiled in so the binary runs from any working directory.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "TSS";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub sampling: SamplingConfig,
    /// Backpressure: how much the pipeline may hold before the consumer
    /// pauses. The section keeps its historical name, `[buffer]`.
    pub buffer: BackpressureConfig,
    pub rules: RulesConfig,
    pub storage: StorageConfig,
    /// Kept spans produced to a Kafka topic, in the raw topic's format.
    pub sampled_topic: SampledTopicConfig,
    /// OTLP backends that receive kept spans from the sampled topic.
    #[serde(default)]
    pub forward: Vec<ForwardConfig>,
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    pub query: QueryConfig,
    pub metrics: MetricsConfig,
    pub maintenance: MaintenanceConfig,
}

/// `[maintenance]`: keeping the table fast as it ages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Run on a schedule (one instance at a time, by a Redis lease).
    pub enabled: bool,
    /// How often a run starts.
    pub interval_secs: Seconds,
    /// How long the lease lasts without renewal: a crashed holder's lease
    /// runs out after this.
    pub lease_ttl_secs: Seconds,
    /// Compaction writes files of about this size; files under three
    /// quarters of it are candidates.
    pub target_file_bytes: u64,
    /// A day partition is compacted once it has this many small files.
    pub min_files_to_compact: usize,
    /// Rows a compaction holds in memory to sort them; past this it spills
    /// sorted runs to the temporary directory.
    pub compaction_memory_bytes: usize,
    /// Files under the table's location that no snapshot or metadata
    /// references are deleted once older than this: younger ones may belong
    /// to a commit that has not published them yet.
    pub orphan_file_grace_secs: Seconds,
    /// Longest a maintenance run may take; a run still going then (a hung
    /// catalog or store) is cancelled and the lease released.
    pub run_timeout_secs: Seconds,
    /// Snapshots older than this are expired (the newest
    /// `min_snapshots_to_keep` and the current one never are).
    pub snapshot_max_age_secs: Seconds,
    pub min_snapshots_to_keep: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Label sets (service, span name, kind, status) the RED metrics keep
    /// at most; past it, new ones share one `other` series.
    pub max_series: usize,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub topic_partitions: i32,
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    pub max_message_bytes: usize,
    pub commit_interval_ms: Milliseconds,
    /// librdkafka's `partition.assignment.strategy`.
    pub partition_assignment_strategy: String,
    /// librdkafka's `session.timeout.ms`: how soon a crashed member's
    /// partitions go to the others.
    pub session_timeout_ms: u64,
    /// Longest the startup connection check and topic creation may take
    /// each, so an unreachable or hung broker fails startup with a clear
    /// error instead of waiting (startup then retries).
    pub admin_timeout_ms: Milliseconds,
    /// Static membership (KIP-345, librdkafka's `group.instance.id`): a member
    /// that restarts with the same id takes its partitions back at once
    /// instead of waiting for the dead incarnation's session to time out.
    /// Unique per instance; unset means dynamic membership.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (librdkafka's
    /// `security.protocol`).
    #[serde(default)]
    pub security_protocol: Option<SecurityProtocol>,
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`.
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    #[serde(default)]
    pub sasl_password: Option<String>,
    /// A PEM file of the CA certificates that sign the brokers' certificates;
    /// the system's trust store when unset.
    #[serde(default)]
    pub ssl_ca_location: Option<String>,
    /// The client certificate (PEM) for mutual TLS.
    #[serde(default)]
    pub ssl_certificate_location: Option<String>,
    /// The client certificate's private key (PEM) for mutual TLS.
    #[serde(default)]
    pub ssl_key_location: Option<String>,
    #[serde(default)]
    pub ssl_key_password: Option<String>,
    /// Any other librdkafka property, passed as it is to the consumer, the
    /// dead-letter producer and the admin client. Nested TOML tables are
    /// joined with dots, and `_` in a key reads as `.`, so that
    /// `TSS__KAFKA__PROPERTIES__SOCKET_KEEPALIVE_ENABLE=true` sets
    /// `socket.keepalive.enable`.
    #[serde(default, deserialize_with = "properties::deserialize")]
    pub properties: std::collections::BTreeMap<String, String>,
}

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[serde(alias = "PLAINTEXT")]
    Plaintext,
    #[serde(alias = "SSL")]
    Ssl,
    #[serde(alias = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[serde(alias = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// librdkafka's `sasl.mechanism`, as the brokers spell it. GSSAPI (Kerberos)
/// is not offered: the selector's librdkafka is built without Cyrus SASL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "OAUTHBEARER")]
    OauthBearer,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::OauthBearer => "OAUTHBEARER",
        }
    }
}

/// librdkafka properties the selector sets itself, with the key to use instead
/// (or why it can't be changed).
const RESERVED_KAFKA_PROPERTIES: [(&str, &str); 11] = [
    ("bootstrap.servers", "set kafka.brokers"),
    ("metadata.broker.list", "set kafka.brokers"),
    ("group.id", "set kafka.group_id"),
    ("group.instance.id", "set kafka.group_instance_id"),
    ("session.timeout.ms", "set kafka.session_timeout_ms"),
    (
        "partition.assignment.strategy",
        "set kafka.partition_assignment_strategy",
    ),
    (
        "enable.auto.commit",
        "offsets are committed only once kept traces are stored",
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed only once kept traces are stored",
    ),
    (
        "enable.partition.eof",
        "the consumer loop relies on it being off",
    ),
    ("fetch.message.max.bytes", "set kafka.max_message_bytes"),
    (
        "auto.offset.reset",
        "a new group must start at the earliest offset so nothing is lost",
    ),
];

impl KafkaConfig {
    /// The librdkafka properties the first-class security keys stand for.
    pub fn security_properties(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut put = |key: &'static str, v: Option<&str>| {
            if let Some(v) = v {
                out.push((key, v.to_string()));
            }
        };
        put(
            "security.protocol",
            self.security_protocol.map(SecurityProtocol::as_str),
        );
        put(
            "sasl.mechanism",
            self.sasl_mechanism.map(SaslMechanism::as_str),
        );
        put("sasl.username", self.sasl_username.as_deref());
        put("sasl.password", self.sasl_password.as_deref());
        put("ssl.ca.location", self.ssl_ca_location.as_deref());
        put(
            "ssl.certificate.location",
            self.ssl_certificate_location.as_deref(),
        );
        put("ssl.key.location", self.ssl_key_location.as_deref());
        put("ssl.key.password", self.ssl_key_password.as_deref());
        out
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("kafka.brokers", &self.brokers),
            ("kafka.topic", &self.topic),
            ("kafka.group_id", &self.group_id),
            (
                "kafka.partition_assignment_strategy",
                &self.partition_assignment_strategy,
            ),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        if self.topic_partitions < 1 {
            return Err(invalid("kafka.topic_partitions", "must be at least 1"));
        }
        if self.max_message_bytes < 1024 {
            return Err(invalid("kafka.max_message_bytes", "must be at least 1024"));
        }
        if self.commit_interval_ms.duration().is_zero() {
            return Err(invalid("kafka.commit_interval_ms", "must be positive"));
        }
        if self.admin_timeout_ms.duration().is_zero() {
            return Err(invalid("kafka.admin_timeout_ms", "must be positive"));
        }
        if !(1000..=3_600_000).contains(&self.session_timeout_ms) {
            return Err(invalid(
                "kafka.session_timeout_ms",
                "must be between 1000 and 3600000",
            ));
        }
        if matches!(&self.dead_letter_topic, Some(t) if t.trim().is_empty()) {
            return Err(invalid(
                "kafka.dead_letter_topic",
                "must not be empty when set; leave it out to disable dead-lettering",
            ));
        }
        for (key, why) in RESERVED_KAFKA_PROPERTIES {
            if self.properties.contains_key(key) {
                return Err(invalid_owned(
                    format!("kafka.properties.{key}"),
                    format!("is managed by the selector: {why}"),
                ));
            }
        }
        for (key, _) in self.security_properties() {
            if self.properties.contains_key(key) {
                return Err(invalid_owned(
                    format!("kafka.properties.{key}"),
                    format!(
                        "is also set by its first-class key kafka.{}; set one of them",
                        key.replace('.', "_")
                    ),
                ));
            }
        }
        if self.sasl_username.is_some() != self.sasl_password.is_some() {
            return Err(invalid(
                "kafka.sasl_username",
                "kafka.sasl_username and kafka.sasl_password go together",
            ));
        }
        let sasl = self
            .security_protocol
            .is_some_and(SecurityProtocol::uses_sasl);
        if !sasl && (self.sasl_mechanism.is_some() || self.sasl_username.is_some()) {
            return Err(invalid(
                "kafka.security_protocol",
                "SASL settings need security_protocol = \"sasl_ssl\" or \"sasl_plaintext\"",
            ));
        }
        if self.ssl_certificate_location.is_some() != self.ssl_key_location.is_some() {
            return Err(invalid(
                "kafka.ssl_certificate_location",
                "mutual TLS needs both kafka.ssl_certificate_location and kafka.ssl_key_location",
            ));
        }
        if matches!(&self.group_instance_id, Some(id) if id.trim().is_empty()) {
            return Err(invalid(
                "kafka.group_instance_id",
                "must not be empty when set",
            ));
        }
        Ok(())
    }
}

/// True for librdkafka properties whose value is a secret.
pub fn is_secret_property(key: &str) -> bool {
    [
        "password",
        "secret",
        "jaas",
        "token",
        "ssl.key.pem",
        "keystore",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// Hand-written so that passwords and secret properties never reach a log line.
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: std::collections::BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_property(k) {
                        "***"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("group_id", &self.group_id)
            .field("group_instance_id", &self.group_instance_id)
            .field("topic_partitions", &self.topic_partitions)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("commit_interval_ms", &self.commit_interval_ms)
            .field(
                "partition_assignment_strategy",
                &self.partition_assignment_strategy,
            )
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("admin_timeout_ms", &self.admin_timeout_ms)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password.as_ref().map(|_| "***"))
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("ssl_certificate_location", &self.ssl_certificate_location)
            .field("ssl_key_location", &self.ssl_key_location)
            .field(
                "ssl_key_password",
                &self.ssl_key_password.as_ref().map(|_| "***"),
            )
            .field("properties", &properties)
            .finish()
    }
}

/// `[kafka.properties]`: any TOML shape flattened to librdkafka's dotted keys.
mod properties {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Bool(bool),
        Int(i64),
        Float(f64),
        Str(String),
        Table(BTreeMap<String, Value>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, String>, D::Error> {
        let table = BTreeMap::<String, Value>::deserialize(d)?;
        let mut out = BTreeMap::new();
        flatten("", table, &mut out);
        Ok(out)
    }

    fn flatten(prefix: &str, table: BTreeMap<String, Value>, out: &mut BTreeMap<String, String>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.replace('_', ".")
            } else {
                format!("{prefix}.{}", k.replace('_', "."))
            };
            let value = match v {
                Value::Table(t) => {
                    flatten(&key, t, out);
                    continue;
                }
                Value::Bool(b) => b.to_string(),
                Value::Int(i) => i.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Str(s) => s,
            };
            out.insert(key, value);
        }
    }
}

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
}

impl BackpressureConfig {
    fn validate(&self, max_spans_per_trace: usize) -> Result<(), ConfigError> {
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
        if !(self.resume_ratio > 0.0 && self.resume_ratio < 1.0) {
            return Err(invalid(
                "buffer.resume_ratio",
                "must be between 0 and 1, exclusive",
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host:port[/db]`, or `rediss://…` for TLS.
    /// A user and password in the URL log in as that ACL user.
    pub url: String,
    /// Prefix of every key and channel the selector uses, so that several
    /// pipelines can share one Redis without seeing each other's decisions
    /// and force rules.
    pub key_prefix: String,
    /// For `rediss://`: a PEM file of the CA certificates that sign the
    /// server's certificate; the system's trust store when unset.
    #[serde(default)]
    pub tls_ca_location: Option<String>,
    /// For `rediss://` with client authentication: the client certificate (PEM).
    #[serde(default)]
    pub tls_certificate_location: Option<String>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub tls_key_location: Option<String>,
    /// Longest a Redis call may take (connecting, or one command's answer):
    /// a stalled Redis holds a decision batch at most this long, then
    /// traces are decided locally.
    pub timeout_ms: Milliseconds,
}

impl RedisConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout_ms.duration().is_zero() {
            return Err(invalid("redis.timeout_ms", "must be positive"));
        }
        let tls = self.url.starts_with("rediss://");
        if !tls && !self.url.starts_with("redis://") && !self.url.starts_with("unix://") {
            return Err(invalid(
                "redis.url",
                "must start with redis://, rediss:// or unix://",
            ));
        }
        if self.key_prefix.is_empty() || self.key_prefix.chars().any(|c| c.is_whitespace()) {
            return Err(invalid(
                "redis.key_prefix",
                "must be non-empty, without whitespace",
            ));
        }
        let any_tls_file = self.tls_ca_location.is_some()
            || self.tls_certificate_location.is_some()
            || self.tls_key_location.is_some();
        if any_tls_file && !tls {
            return Err(invalid(
                "redis.url",
                "the redis.tls_* files need a rediss:// URL",
            ));
        }
        if self.tls_certificate_location.is_some() != self.tls_key_location.is_some() {
            return Err(invalid(
                "redis.tls_certificate_location",
                "client authentication needs both redis.tls_certificate_location and redis.tls_key_location",
            ));
        }
        Ok(())
    }
}

/// Hand-written so that a password in the URL never reaches a log line.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_uri(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("tls_ca_location", &self.tls_ca_location)
            .field("tls_certificate_location", &self.tls_certificate_location)
            .field("tls_key_location", &self.tls_key_location)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    pub inactivity_timeout_secs: Seconds,
    pub max_trace_duration_secs: Seconds,
    pub max_spans_per_trace: usize,
    pub always_sample_errors: bool,
    pub latency_threshold_ms: Milliseconds,
    pub baseline_sample_rate: f64,
    pub decision_ttl_secs: u64,
    /// 0 picks one worker per CPU.
    pub workers: usize,
    /// `[[sampling.policies]]`: after force rules and before the error,
    /// latency and baseline settings; the first that decides wins. They
    /// reload on SIGHUP and when the config file changes.
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    /// How often the config file is checked for a changed policy list.
    pub policy_watch_interval_secs: Seconds,
}

impl SamplingConfig {
    /// The number of evaluation workers to run.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    pub max_duration_secs: i64,
    /// Most force rules live at once; a create past it gets 409. Every
    /// instance evaluates every rule against every trace.
    pub max_rules: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    Iceberg,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Write kept traces to the Iceberg table and serve SQL over it. A
    /// deployment that only forwards turns it off.
    pub enabled: bool,
    pub storage_type: StorageType,
    pub flush_max_rows: usize,
    /// Most bytes of Arrow rows built at a time: a flush writes its batch in
    /// chunks of this size, so no column's offsets can pass 2 GiB and what
    /// the writer holds is bounded whatever the spans expand to.
    pub flush_max_bytes: usize,
    pub flush_interval_secs: Seconds,
    /// Longest a flush may spend reading back stored spans (the replay
    /// check) and writing its data files to object storage: a hung S3 then
    /// fails the attempt, which is retried, instead of stopping every
    /// flush. Files of a failed attempt are left to orphan cleanup.
    pub write_timeout_secs: Seconds,
    /// Longest stored attribute value, in bytes (OpenTelemetry's
    /// `AttributeValueLengthLimit`); longer values are cut on a character
    /// boundary and the row marked `tss.truncated`.
    pub attribute_value_max_bytes: usize,
    /// Most attributes (and events) stored per resource, span and event
    /// (OpenTelemetry's `AttributeCountLimit`); the rest are dropped and the
    /// row marked `tss.truncated`.
    pub attribute_max_count: usize,
    /// Rows per Parquet row group: the unit a trace lookup skips or reads.
    pub parquet_row_group_rows: usize,
    /// False-positive probability of the bloom filter on `trace_id` in every
    /// row group.
    pub trace_id_bloom_fpp: f64,
    /// Day partitions older than this many days are removed by maintenance;
    /// 0 keeps everything.
    pub retention_days: u32,
    pub iceberg: IcebergConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogType {
    Sql,
    Rest,
    Memory,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcebergConfig {
    pub catalog_type: CatalogType,
    pub catalog_uri: String,
    pub warehouse: String,
    pub namespace: String,
    pub table_name: String,
    #[serde(default)]
    pub project_id: Option<String>,
    /// OAuth2 client credential for the REST catalog, `client_id:client_secret`.
    #[serde(default)]
    pub credential: Option<String>,
    /// A bearer token for the REST catalog, used as is (it is not refreshed).
    #[serde(default)]
    pub token: Option<String>,
    /// The token endpoint for `credential`; the catalog's own when unset.
    #[serde(default)]
    pub oauth2_server_uri: Option<String>,
    /// The OAuth2 scope asked for with `credential`.
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    #[serde(default)]
    pub s3_access_key_id: Option<String>,
    #[serde(default)]
    pub s3_secret_access_key: Option<String>,
    pub s3_region: String,
    pub s3_path_style: bool,
    /// Longest a catalog call (load, commit, …) may take; a commit that
    /// times out has an unknown outcome and is checked before its retry.
    pub request_timeout_secs: Seconds,
    /// Manifest lists and manifests kept in memory once read, in bytes:
    /// every table load would otherwise read each manifest of the current
    /// snapshot again. 0 keeps none.
    pub manifest_cache_bytes: usize,
}

/// Hand-written so that credentials never reach a log line.
impl std::fmt::Debug for IcebergConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcebergConfig")
            .field("catalog_type", &self.catalog_type)
            .field("catalog_uri", &redact_uri(&self.catalog_uri))
            .field("warehouse", &self.warehouse)
            .field("namespace", &self.namespace)
            .field("table_name", &self.table_name)
            .field("project_id", &self.project_id)
            .field("credential", &self.credential.as_ref().map(|_| "***"))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("oauth2_server_uri", &self.oauth2_server_uri)
            .field("scope", &self.scope)
            .field("s3_endpoint", &self.s3_endpoint)
            .field(
                "s3_access_key_id",
                &self.s3_access_key_id.as_ref().map(|_| "***"),
            )
            .field(
                "s3_secret_access_key",
                &self.s3_secret_access_key.as_ref().map(|_| "***"),
            )
            .field("s3_region", &self.s3_region)
            .field("s3_path_style", &self.s3_path_style)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("manifest_cache_bytes", &self.manifest_cache_bytes)
            .finish()
    }
}

/// Hides a password embedded in a URI such as `postgres://user:secret@host/db`.
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_string();
    };
    let rest = &uri[scheme_end + 3..];
    match (rest.find('@'), rest.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!(
                "{}://{}:***{}",
                &uri[..scheme_end],
                &rest[..colon],
                &rest[at..]
            )
        }
        _ => uri.to_string(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// How long a graceful shutdown may take before the process exits anyway.
    pub shutdown_timeout_secs: Seconds,
    /// Host names (`name` or `name:port`) the admin port answers besides IP
    /// addresses and `localhost`; `*` for any. Guards against DNS rebinding.
    /// A list, or one comma-separated string (as an environment variable).
    #[serde(default, deserialize_with = "string_list")]
    pub allowed_hosts: Vec<String>,
}

/// A list of strings given as a TOML array or as one comma-separated string.
fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        One(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(l) => l,
        Either::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default)]
    pub auth_token: Option<String>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("auth_token", &self.auth_token.as_ref().map(|_| "***"))
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    pub max_rows: usize,
    pub timeout_secs: Seconds,
    /// Memory all running SQL queries may hold together. A query that needs
    /// more fails (503) instead of growing the process; nothing spills to disk.
    pub max_memory_bytes: usize,
    /// The largest result one query may return, in Arrow bytes (the JSON
    /// answer is about as large again); a larger one is refused with 400.
    pub max_result_bytes: usize,
    /// The Parquet footers and `trace_id` bloom filters trace lookups keep,
    /// so that each file's are read once rather than once per lookup; 0
    /// keeps none.
    pub file_cache_bytes: usize,
    /// How often the service and operation index catches up with the table
    /// on its own, while lists are asked for (within the last ten minutes),
    /// so that a list reads only what was committed since.
    pub index_refresh_secs: Seconds,
}

/// The longest duration any `_secs` key accepts: a week. Longer values are
/// mistakes, and absurd ones would overflow `Duration`.
const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// The shortest `maintenance.orphan_file_grace_secs` accepted: an hour.
const MIN_ORPHAN_GRACE_SECS: f64 = 3600.0;

/// The longest lifetime `rules.max_duration_secs` may allow: a year, so that
/// `created_at + duration` in milliseconds can never overflow.
const MAX_RULE_SECONDS: i64 = 365 * 24 * 3600;

/// A positive duration of at most [`MAX_SECONDS`].
fn seconds(key: &'static str, value: Seconds) -> Result<(), ConfigError> {
    let value = value.get();
    if value > 0.0 && value <= MAX_SECONDS {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must be a positive number of seconds, at most {MAX_SECONDS}"),
        ))
    }
}

impl Settings {
    /// Loads the layered configuration from the real process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Loads the layered configuration with the given environment, which lets
    /// tests exercise the env layer without touching the process environment.
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env_map: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("TSS__"))
            .collect();
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env_map)),
        );
        // The path of a value that does not parse names its key.
        let settings: Settings = serde_path_to_error::deserialize(builder.build()?)
            .map_err(|e| invalid_owned(e.path().to_string(), e.into_inner().to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the ranges that types alone cannot express, section by section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.redis.validate()?;
        self.sampling.validate()?;
        self.buffer.validate(self.sampling.max_spans_per_trace)?;
        self.rules.validate()?;
        self.storage.validate()?;
        self.sampled_topic.validate()?;
        sinks::validate_forwarders(&self.forward, &self.sampled_topic)?;
        if !self.storage.enabled && !self.sampled_topic.enabled {
            return Err(invalid(
                "storage.enabled",
                "kept traces need somewhere to go: enable storage, the sampled topic, or both",
            ));
        }
        seconds(
            "server.shutdown_timeout_secs",
            self.server.shutdown_timeout_secs,
        )?;
        self.query.validate()?;
        seconds("maintenance.interval_secs", self.maintenance.interval_secs)?;
        seconds(
            "maintenance.lease_ttl_secs",
            self.maintenance.lease_ttl_secs,
        )?;
        if self.maintenance.target_file_bytes < 1 << 20 {
            return Err(invalid(
                "maintenance.target_file_bytes",
                "must be at least 1 MiB (1048576)",
            ));
        }
        seconds(
            "maintenance.snapshot_max_age_secs",
            self.maintenance.snapshot_max_age_secs,
        )?;
        if self.maintenance.min_snapshots_to_keep < 1 {
            return Err(invalid(
                "maintenance.min_snapshots_to_keep",
                "must be at least 1",
            ));
        }
        if self.maintenance.compaction_memory_bytes < 4 << 20 {
            return Err(invalid(
                "maintenance.compaction_memory_bytes",
                "must be at least 4 MiB (4194304)",
            ));
        }
        seconds(
            "maintenance.orphan_file_grace_secs",
            self.maintenance.orphan_file_grace_secs,
        )?;
        // Shorter than a slow commit, cleanup could delete the files of a
        // commit in flight: a writer's or a compaction's, or one whose
        // outcome was unknown and lands late.
        if self.maintenance.orphan_file_grace_secs.get() < MIN_ORPHAN_GRACE_SECS {
            return Err(invalid(
                "maintenance.orphan_file_grace_secs",
                format!("must be at least {MIN_ORPHAN_GRACE_SECS} (an hour): a younger unreferenced file may belong to a commit in flight"),
            ));
        }
        seconds(
            "maintenance.run_timeout_secs",
            self.maintenance.run_timeout_secs,
        )?;
        if self.maintenance.min_files_to_compact < 2 {
            return Err(invalid(
                "maintenance.min_files_to_compact",
                "must be at least 2",
            ));
        }
        if !(1..=1_000_000).contains(&self.metrics.max_series) {
            return Err(invalid(
                "metrics.max_series",
                "must be between 1 and 1000000",
            ));
        }
        if matches!(&self.admin.auth_token, Some(t) if t.trim().is_empty()) {
            return Err(invalid("admin.auth_token", "must not be empty when set"));
        }
        Ok(())
    }
}

impl SamplingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        seconds(
            "sampling.inactivity_timeout_secs",
            self.inactivity_timeout_secs,
        )?;
        seconds(
            "sampling.max_trace_duration_secs",
            self.max_trace_duration_secs,
        )?;
        if !(1..=MAX_SECONDS as u64).contains(&self.decision_ttl_secs) {
            return Err(invalid(
                "sampling.decision_ttl_secs",
                format!(
                    "must be between 1 and {MAX_SECONDS} seconds (Redis refuses a zero expiry)"
                ),
            ));
        }
        if self.max_spans_per_trace == 0 {
            return Err(invalid(
                "sampling.max_spans_per_trace",
                "must be at least 1",
            ));
        }
        if self.latency_threshold_ms.get() > MAX_SECONDS * 1000.0 {
            return Err(invalid(
                "sampling.latency_threshold_ms",
                format!("must be at most {} (a week)", MAX_SECONDS * 1000.0),
            ));
        }
        if !(0.0..=1.0).contains(&self.baseline_sample_rate) {
            return Err(invalid(
                "sampling.baseline_sample_rate",
                "must be between 0.0 and 1.0",
            ));
        }
        if self.workers > 1024 {
            return Err(invalid("sampling.workers", "must be at most 1024"));
        }
        seconds(
            "sampling.policy_watch_interval_secs",
            self.policy_watch_interval_secs,
        )?;
        policy::validate_all(&self.policies).map_err(|e| invalid_owned(e.field, e.message))
    }
}

impl RulesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_RULE_SECONDS).contains(&self.max_duration_secs) {
            return Err(invalid(
                "rules.max_duration_secs",
                format!("must be between 1 and {MAX_RULE_SECONDS} (a year)"),
            ));
        }
        if !(1..=100_000).contains(&self.max_rules) {
            return Err(invalid("rules.max_rules", "must be between 1 and 100000"));
        }
        Ok(())
    }
}

impl StorageConfig {
    /// The caps on stored attributes.
    pub fn attribute_limits(&self) -> crate::model::AttributeLimits {
        crate::model::AttributeLimits {
            value_max_bytes: self.attribute_value_max_bytes,
            max_count: self.attribute_max_count,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.flush_max_rows == 0 {
            return Err(invalid("storage.flush_max_rows", "must be at least 1"));
        }
        if self.write_timeout_secs.duration().is_zero() {
            return Err(invalid("storage.write_timeout_secs", "must be positive"));
        }
        if !(1 << 20..=1 << 30).contains(&self.flush_max_bytes) {
            return Err(invalid(
                "storage.flush_max_bytes",
                "must be between 1048576 (1 MiB) and 1073741824 (1 GiB)",
            ));
        }
        if !(64..=1 << 24).contains(&self.attribute_value_max_bytes) {
            return Err(invalid(
                "storage.attribute_value_max_bytes",
                "must be between 64 and 16777216",
            ));
        }
        if !(1..=65536).contains(&self.attribute_max_count) {
            return Err(invalid(
                "storage.attribute_max_count",
                "must be between 1 and 65536",
            ));
        }
        // One row at the caps must fit a chunk many times over.
        let row_max = self.attribute_max_count * self.attribute_value_max_bytes;
        if row_max.saturating_mul(4) > self.flush_max_bytes {
            return Err(invalid(
                "storage.flush_max_bytes",
                format!(
                    "must be at least 4 × attribute_max_count × attribute_value_max_bytes \
                     ({} bytes), so that a chunk holds several rows at the caps",
                    row_max.saturating_mul(4)
                ),
            ));
        }
        seconds("storage.flush_interval_secs", self.flush_interval_secs)?;
        if !(1024..=1 << 24).contains(&self.parquet_row_group_rows) {
            return Err(invalid(
                "storage.parquet_row_group_rows",
                "must be between 1024 and 16777216",
            ));
        }
        if !(self.trace_id_bloom_fpp > 0.0 && self.trace_id_bloom_fpp < 0.5) {
            return Err(invalid(
                "storage.trace_id_bloom_fpp",
                "must be greater than 0 and less than 0.5",
            ));
        }
        let ice = &self.iceberg;
        seconds(
            "storage.iceberg.request_timeout_secs",
            ice.request_timeout_secs,
        )?;
        if ice.namespace.trim().is_empty() {
            return Err(invalid("storage.iceberg.namespace", "must not be empty"));
        }
        if ice.table_name.trim().is_empty() {
            return Err(invalid("storage.iceberg.table_name", "must not be empty"));
        }
        if ice.catalog_type != CatalogType::Memory && ice.catalog_uri.trim().is_empty() {
            return Err(invalid("storage.iceberg.catalog_uri", "must not be empty"));
        }
        if ice.warehouse.trim().is_empty() {
            return Err(invalid("storage.iceberg.warehouse", "must not be empty"));
        }
        Ok(())
    }
}

impl QueryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_rows == 0 {
            return Err(invalid("query.max_rows", "must be at least 1"));
        }
        seconds("query.timeout_secs", self.timeout_secs)?;
        seconds("query.index_refresh_secs", self.index_refresh_secs)?;
        if self.max_memory_bytes < 1 << 20 {
            return Err(invalid(
                "query.max_memory_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if self.max_result_bytes < 1 << 16 {
            return Err(invalid(
                "query.max_result_bytes",
                "must be at least 65536 (64 KiB)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_design() {
        let s = Settings::load_with_env(None, env(&[])).expect("defaults load");
        assert_eq!(s.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(s.kafka.topic, "otel-traces-raw");
        assert_eq!(s.kafka.group_id, "tail-sampling-selector");
        assert_eq!(s.kafka.topic_partitions, 8);
        assert!(s.kafka.dead_letter_topic.is_none());
        assert_eq!(s.sampling.inactivity_timeout_secs, 60.0);
        assert_eq!(s.sampling.max_trace_duration_secs, 300.0);
        assert_eq!(s.sampling.max_spans_per_trace, 10000);
        assert!(s.sampling.always_sample_errors);
        assert_eq!(s.sampling.latency_threshold_ms, 5000.0);
        assert_eq!(s.sampling.baseline_sample_rate, 0.0);
        assert_eq!(s.sampling.decision_ttl_secs, 3600);
        assert!(s.sampling.worker_count() >= 1);
        assert_eq!(s.storage.flush_max_rows, 50000);
        assert_eq!(s.storage.flush_interval_secs, 10.0);
        assert_eq!(s.storage.iceberg.catalog_type, CatalogType::Sql);
        assert_eq!(
            s.storage.iceberg.catalog_uri,
            "sqlite:data/catalog.db?mode=rwc"
        );
        assert_eq!(s.storage.iceberg.warehouse, "data/warehouse");
        assert_eq!(s.storage.iceberg.s3_region, "us-east-1");
        assert!(s.storage.iceberg.s3_path_style);
        assert_eq!(s.server.admin_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(s.server.metrics_addr.to_string(), "0.0.0.0:9090");
        assert!(s.admin.auth_token.is_none());
        assert_eq!(s.query.max_rows, 10000);
        assert_eq!(s.query.timeout_secs, 30.0);
        assert_eq!(s.query.max_memory_bytes, 512 << 20);
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[kafka]\nbrokers = \"file:1\"\ntopic = \"t\"\n").expect("write");
        let s = Settings::load_with_env(
            Some(&path),
            env(&[
                ("TSS__KAFKA__BROKERS", "env:2"),
                ("TSS__SAMPLING__BASELINE_SAMPLE_RATE", "0.25"),
                ("TSS__STORAGE__ICEBERG__CATALOG_TYPE", "memory"),
            ]),
        )
        .expect("load");
        assert_eq!(s.kafka.brokers, "env:2");
        assert_eq!(s.kafka.topic, "t");
        assert_eq!(s.sampling.baseline_sample_rate, 0.25);
        assert_eq!(s.storage.iceberg.catalog_type, CatalogType::Memory);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "TSS__SAMPLING__BASELINE_SAMPLE_RATE",
                "1.5",
                "sampling.baseline_sample_rate",
            ),
            (
                "TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS",
                "abc",
                "inactivity_timeout_secs",
            ),
            ("TSS__SERVER__ADMIN_ADDR", "not-an-addr", "admin_addr"),
            (
                "TSS__STORAGE__ICEBERG__CATALOG_TYPE",
                "hive",
                "catalog_type",
            ),
            (
                "TSS__KAFKA__TOPIC_PARTITIONS",
                "0",
                "kafka.topic_partitions",
            ),
            (
                "TSS__SAMPLING__DECISION_TTL_SECS",
                "0",
                "sampling.decision_ttl_secs",
            ),
            (
                "TSS__KAFKA__DEAD_LETTER_TOPIC",
                "",
                "kafka.dead_letter_topic",
            ),
            (
                "TSS__RULES__MAX_DURATION_SECS",
                "9223372036854775807",
                "rules.max_duration_secs",
            ),
            (
                "TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS",
                "1e300",
                "sampling.inactivity_timeout_secs",
            ),
            (
                "TSS__STORAGE__FLUSH_INTERVAL_SECS",
                "-1",
                "storage.flush_interval_secs",
            ),
            ("TSS__QUERY__TIMEOUT_SECS", "NaN", "query.timeout_secs"),
            (
                "TSS__SERVER__SHUTDOWN_TIMEOUT_SECS",
                "0",
                "server.shutdown_timeout_secs",
            ),
        ];
        for (k, v, needle) in cases {
            let err = Settings::load_with_env(None, env(&[(k, v)]))
                .expect_err(&format!("{k}={v} must be rejected"))
                .to_string();
            assert!(
                err.contains(needle),
                "{k}={v}: `{err}` does not name `{needle}`"
            );
        }
    }

    #[test]
    fn durations_take_numbers_in_their_unit_or_strings_with_units() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS", "2m"),
                ("TSS__SAMPLING__LATENCY_THRESHOLD_MS", "1.5s"),
                ("TSS__KAFKA__COMMIT_INTERVAL_MS", "250"),
                ("TSS__STORAGE__FLUSH_INTERVAL_SECS", "0.5"),
            ]),
        )
        .expect("load");
        assert_eq!(
            s.sampling.inactivity_timeout_secs.duration(),
            std::time::Duration::from_secs(120)
        );
        assert_eq!(s.sampling.latency_threshold_ms, 1500.0);
        assert_eq!(
            s.kafka.commit_interval_ms.duration(),
            std::time::Duration::from_millis(250)
        );
        assert_eq!(
            s.storage.flush_interval_secs.duration(),
            std::time::Duration::from_millis(500)
        );
        for (k, v, needle) in [
            (
                "TSS__SAMPLING__MAX_TRACE_DURATION_SECS",
                "2 weeks",
                "sampling.max_trace_duration_secs",
            ),
            (
                "TSS__KAFKA__COMMIT_INTERVAL_MS",
                "soon",
                "kafka.commit_interval_ms",
            ),
            (
                "TSS__STORAGE__STORAGE_TYPE",
                "parquet",
                "storage.storage_type",
            ),
            (
                "TSS__BUFFER__MAX_BUFFERED_BYTES",
                "1000",
                "buffer.max_buffered_bytes",
            ),
        ] {
            let err = Settings::load_with_env(None, env(&[(k, v)]))
                .expect_err(&format!("{k}={v} must be rejected"))
                .to_string();
            assert!(
                err.contains(needle),
                "{k}={v}: `{err}` does not name `{needle}`"
            );
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Settings::load_with_env(None, env(&[("TSS__KAFKA__BROKER", "x")]))
            .expect_err("typo must fail")
            .to_string();
        assert!(err.contains("broker"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("TSS__STORAGE__ICEBERG__S3_SECRET_ACCESS_KEY", "hunter2"),
                ("TSS__ADMIN__AUTH_TOKEN", "tok-secret"),
                (
                    "TSS__STORAGE__ICEBERG__CATALOG_URI",
                    "postgres://u:pw-secret@h/db",
                ),
                ("TSS__STORAGE__ICEBERG__CREDENTIAL", "client:oauth-secret"),
                ("TSS__STORAGE__ICEBERG__TOKEN", "bearer-secret"),
            ]),
        )
        .expect("load");
        let dump = format!("{s:?}");
        for secret in [
            "hunter2",
            "tok-secret",
            "pw-secret",
            "oauth-secret",
            "bearer-secret",
        ] {
            assert!(!dump.contains(secret), "{secret} leaked: {dump}");
        }
    }

    #[test]
    fn kafka_properties_from_toml_keep_their_dotted_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[kafka.properties]\n\"client.id\" = \"sel\"\nsocket.keepalive.enable = true\n\"fetch.wait.max.ms\" = 50\n",
        )
        .expect("write");
        let s = Settings::load_with_env(Some(&path), env(&[])).expect("load");
        let p = &s.kafka.properties;
        assert_eq!(p.get("client.id").map(String::as_str), Some("sel"));
        assert_eq!(
            p.get("socket.keepalive.enable").map(String::as_str),
            Some("true")
        );
        assert_eq!(p.get("fetch.wait.max.ms").map(String::as_str), Some("50"));
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn kafka_settings_that_contradict_are_named() {
        let cases = [
            (
                vec![("TSS__KAFKA__PROPERTIES__GROUP_ID", "x")],
                "kafka.properties.group.id",
            ),
            (
                vec![("TSS__KAFKA__PROPERTIES__ENABLE_AUTO_COMMIT", "true")],
                "kafka.properties.enable.auto.commit",
            ),
            (
                vec![
                    ("TSS__KAFKA__SECURITY_PROTOCOL", "ssl"),
                    ("TSS__KAFKA__PROPERTIES__SECURITY_PROTOCOL", "ssl"),
                ],
                "kafka.properties.security.protocol",
            ),
            (
                vec![("TSS__KAFKA__SASL_MECHANISM", "PLAIN")],
                "kafka.security_protocol",
            ),
            (
                vec![("TSS__KAFKA__SECURITY_PROTOCOL", "sasl_tls")],
                "security_protocol",
            ),
            (
                vec![
                    ("TSS__KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
                    ("TSS__KAFKA__SASL_MECHANISM", "SCRAM-SHA-1"),
                ],
                "sasl_mechanism",
            ),
            (
                vec![
                    ("TSS__KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
                    ("TSS__KAFKA__SASL_USERNAME", "u"),
                ],
                "kafka.sasl_username",
            ),
            (
                vec![("TSS__KAFKA__SSL_CERTIFICATE_LOCATION", "c.pem")],
                "kafka.ssl_certificate_location",
            ),
            (
                vec![("TSS__KAFKA__GROUP_INSTANCE_ID", " ")],
                "kafka.group_instance_id",
            ),
            (vec![("TSS__REDIS__KEY_PREFIX", "")], "redis.key_prefix"),
            (vec![("TSS__REDIS__URL", "http://h:6379")], "redis.url"),
            (vec![("TSS__REDIS__TLS_CA_LOCATION", "ca.pem")], "redis.url"),
        ];
        for (pairs, needle) in cases {
            let err = Settings::load_with_env(None, env(&pairs))
                .expect_err(&format!("{pairs:?} must be rejected"))
                .to_string();
            assert!(
                err.contains(needle),
                "{pairs:?}: `{err}` does not name `{needle}`"
            );
        }
    }

    #[test]
    fn kafka_and_redis_secrets_are_redacted() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("TSS__KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
                ("TSS__KAFKA__SASL_MECHANISM", "SCRAM-SHA-256"),
                ("TSS__KAFKA__SASL_USERNAME", "selector"),
                ("TSS__KAFKA__SASL_PASSWORD", "sasl-secret"),
                ("TSS__KAFKA__SSL_KEY_PASSWORD", "key-secret"),
                (
                    "TSS__KAFKA__PROPERTIES__SASL_OAUTHBEARER_CLIENT_SECRET",
                    "oauth-secret",
                ),
                (
                    "TSS__REDIS__URL",
                    "rediss://alice:redis-secret@127.0.0.1:6380",
                ),
            ]),
        )
        .expect("load");
        let dump = format!("{s:?}");
        for secret in ["sasl-secret", "key-secret", "oauth-secret", "redis-secret"] {
            assert!(!dump.contains(secret), "{secret} leaked: {dump}");
        }
        assert!(
            dump.contains("selector") && dump.contains("alice"),
            "{dump}"
        );
        assert_eq!(s.redis.key_prefix, "tss:");
    }
}
