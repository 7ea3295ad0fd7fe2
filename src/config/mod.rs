//! Every tunable of the selector in one typed struct.
//!
//! Layers, later wins: the embedded `config/default.toml`, an optional file given
//! with `--config`, then `TSS__SECTION__KEY` environment variables. The defaults
//! live in exactly one place (the TOML file), so the binary, the docs and the
//! compose file cannot drift apart.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

/// The defaults, compiled in so the binary runs from any working directory.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "TSS";

/// Why the configuration could not be loaded. Every variant names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(#[from] config::ConfigError),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub sampling: SamplingConfig,
    pub buffer: BufferConfig,
    pub rules: RulesConfig,
    pub storage: StorageConfig,
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    pub query: QueryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub topic_partitions: i32,
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    pub max_message_bytes: usize,
    pub commit_interval_ms: u64,
    /// librdkafka's `partition.assignment.strategy`.
    pub partition_assignment_strategy: String,
    /// librdkafka's `session.timeout.ms`: how soon a crashed member's
    /// partitions go to the others.
    pub session_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Spans held in memory at most: buffered, decided and not yet committed.
    /// At the limit the consumer pauses its partitions; it resumes below
    /// `resume_ratio` of the limit. Nothing is dropped to make room.
    pub max_buffered_spans: usize,
    pub resume_ratio: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    pub inactivity_timeout_secs: f64,
    pub max_trace_duration_secs: f64,
    pub max_spans_per_trace: usize,
    pub always_sample_errors: bool,
    pub latency_threshold_ms: f64,
    pub baseline_sample_rate: f64,
    pub decision_ttl_secs: u64,
    /// 0 picks one worker per CPU.
    pub workers: usize,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    Iceberg,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub storage_type: StorageType,
    pub flush_max_rows: usize,
    pub flush_interval_secs: f64,
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
            .field("s3_access_key_id", &self.s3_access_key_id.as_ref().map(|_| "***"))
            .field(
                "s3_secret_access_key",
                &self.s3_secret_access_key.as_ref().map(|_| "***"),
            )
            .field("s3_region", &self.s3_region)
            .field("s3_path_style", &self.s3_path_style)
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
            format!("{}://{}:***{}", &uri[..scheme_end], &rest[..colon], &rest[at..])
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
    pub shutdown_timeout_secs: f64,
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
    pub timeout_secs: f64,
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
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the ranges that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.sampling;
        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must not be empty"));
        }
        if self.kafka.topic.trim().is_empty() {
            return Err(invalid("kafka.topic", "must not be empty"));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "must not be empty"));
        }
        if self.kafka.topic_partitions < 1 {
            return Err(invalid("kafka.topic_partitions", "must be at least 1"));
        }
        if self.kafka.max_message_bytes < 1024 {
            return Err(invalid("kafka.max_message_bytes", "must be at least 1024"));
        }
        if self.kafka.commit_interval_ms == 0 {
            return Err(invalid("kafka.commit_interval_ms", "must be positive"));
        }
        if !(s.inactivity_timeout_secs.is_finite() && s.inactivity_timeout_secs > 0.0) {
            return Err(invalid(
                "sampling.inactivity_timeout_secs",
                "must be a positive number of seconds",
            ));
        }
        if !(s.max_trace_duration_secs.is_finite() && s.max_trace_duration_secs > 0.0) {
            return Err(invalid(
                "sampling.max_trace_duration_secs",
                "must be a positive number of seconds",
            ));
        }
        if !(1000..=3_600_000).contains(&self.kafka.session_timeout_ms) {
            return Err(invalid("kafka.session_timeout_ms", "must be between 1000 and 3600000"));
        }
        if self.kafka.partition_assignment_strategy.trim().is_empty() {
            return Err(invalid("kafka.partition_assignment_strategy", "must not be empty"));
        }
        if self.buffer.max_buffered_spans < s.max_spans_per_trace {
            return Err(invalid(
                "buffer.max_buffered_spans",
                "must be at least sampling.max_spans_per_trace",
            ));
        }
        if !(self.buffer.resume_ratio > 0.0 && self.buffer.resume_ratio < 1.0) {
            return Err(invalid("buffer.resume_ratio", "must be between 0 and 1, exclusive"));
        }
        if !(self.server.shutdown_timeout_secs.is_finite() && self.server.shutdown_timeout_secs > 0.0) {
            return Err(invalid(
                "server.shutdown_timeout_secs",
                "must be a positive number of seconds",
            ));
        }
        if s.max_spans_per_trace == 0 {
            return Err(invalid("sampling.max_spans_per_trace", "must be at least 1"));
        }
        if !(s.latency_threshold_ms.is_finite() && s.latency_threshold_ms >= 0.0) {
            return Err(invalid(
                "sampling.latency_threshold_ms",
                "must be zero or a positive number of milliseconds",
            ));
        }
        if !(0.0..=1.0).contains(&s.baseline_sample_rate) {
            return Err(invalid(
                "sampling.baseline_sample_rate",
                "must be between 0.0 and 1.0",
            ));
        }
        if s.workers > 1024 {
            return Err(invalid("sampling.workers", "must be at most 1024"));
        }
        if self.rules.max_duration_secs < 1 {
            return Err(invalid("rules.max_duration_secs", "must be at least 1"));
        }
        if self.storage.flush_max_rows == 0 {
            return Err(invalid("storage.flush_max_rows", "must be at least 1"));
        }
        if !(self.storage.flush_interval_secs.is_finite() && self.storage.flush_interval_secs > 0.0)
        {
            return Err(invalid(
                "storage.flush_interval_secs",
                "must be a positive number of seconds",
            ));
        }
        let ice = &self.storage.iceberg;
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
        if self.query.max_rows == 0 {
            return Err(invalid("query.max_rows", "must be at least 1"));
        }
        if !(self.query.timeout_secs.is_finite() && self.query.timeout_secs > 0.0) {
            return Err(invalid("query.timeout_secs", "must be a positive number of seconds"));
        }
        if matches!(&self.admin.auth_token, Some(t) if t.trim().is_empty()) {
            return Err(invalid("admin.auth_token", "must not be empty when set"));
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
        assert_eq!(s.storage.iceberg.catalog_uri, "sqlite:data/catalog.db?mode=rwc");
        assert_eq!(s.storage.iceberg.warehouse, "data/warehouse");
        assert_eq!(s.storage.iceberg.s3_region, "us-east-1");
        assert!(s.storage.iceberg.s3_path_style);
        assert_eq!(s.server.admin_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(s.server.metrics_addr.to_string(), "0.0.0.0:9090");
        assert!(s.admin.auth_token.is_none());
        assert_eq!(s.query.max_rows, 10000);
        assert_eq!(s.query.timeout_secs, 30.0);
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
            ("TSS__SAMPLING__BASELINE_SAMPLE_RATE", "1.5", "sampling.baseline_sample_rate"),
            ("TSS__SAMPLING__INACTIVITY_TIMEOUT_SECS", "abc", "inactivity_timeout_secs"),
            ("TSS__SERVER__ADMIN_ADDR", "not-an-addr", "admin_addr"),
            ("TSS__STORAGE__ICEBERG__CATALOG_TYPE", "hive", "catalog_type"),
            ("TSS__KAFKA__TOPIC_PARTITIONS", "0", "kafka.topic_partitions"),
        ];
        for (k, v, needle) in cases {
            let err = Settings::load_with_env(None, env(&[(k, v)]))
                .expect_err(&format!("{k}={v} must be rejected"))
                .to_string();
            assert!(err.contains(needle), "{k}={v}: `{err}` does not name `{needle}`");
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
                ("TSS__STORAGE__ICEBERG__CATALOG_URI", "postgres://u:pw-secret@h/db"),
                ("TSS__STORAGE__ICEBERG__CREDENTIAL", "client:oauth-secret"),
                ("TSS__STORAGE__ICEBERG__TOKEN", "bearer-secret"),
            ]),
        )
        .expect("load");
        let dump = format!("{s:?}");
        for secret in ["hunter2", "tok-secret", "pw-secret", "oauth-secret", "bearer-secret"] {
            assert!(!dump.contains(secret), "{secret} leaked: {dump}");
        }
    }
}
