//! Every tunable of the selector in one typed struct.
//!
//! Layers, later wins: the embedded `config/default.toml`, an optional file given
//! with `--config`, then `TSS__SECTION__KEY` environment variables. The defaults
//! live in exactly one place (the TOML file), so the binary, the docs and the
//! compose file cannot drift apart.

use std::path::Path;

use serde::Deserialize;

mod buffer;
mod checks;
mod duration;
mod error;
mod kafka;
mod maintenance;
pub mod policy;
mod query;
mod recovery;
mod redis;
mod rules;
mod sampling;
mod secret;
mod server;
mod sinks;
mod storage;
pub use buffer::{BackpressureConfig, BufferMode};
use checks::{invalid, invalid_owned};
pub use duration::{ConfigDuration, Milliseconds, Seconds};
pub use error::ConfigError;
pub use kafka::{
    is_secret_property, KafkaConfig, KafkaProperties, SaslMechanism, SecurityProtocol,
};
pub use maintenance::MaintenanceConfig;
pub use policy::{ActionSpec, PolicyAction, PolicySpec};
pub use query::QueryConfig;
pub use recovery::RecoveryConfig;
pub use redis::RedisConfig;
pub use rules::RulesConfig;
pub use sampling::SamplingConfig;
pub use secret::{redact_uri, CredentialUri, SecretString};
pub use server::{AdminConfig, ServerConfig};
pub use sinks::{Compression, ForwardConfig, OtlpProtocol, SampledTopicConfig};
pub use storage::{CatalogType, IcebergConfig, StorageConfig, StorageType};

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
    /// Recovery jobs: re-reading the raw topic for traces dropped live.
    pub recovery: RecoveryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Label sets (service, span name, kind, status) the RED metrics keep
    /// at most; past it, new ones share one `other` series.
    pub max_series: usize,
}

impl MetricsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1_000_000).contains(&self.max_series) {
            return Err(invalid(
                "metrics.max_series",
                "must be between 1 and 1000000",
            ));
        }
        Ok(())
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
        self.server.validate()?;
        self.query.validate()?;
        self.maintenance.validate()?;
        self.recovery.validate()?;
        self.metrics.validate()?;
        self.admin.validate()?;
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
            s.storage.iceberg.catalog_uri.expose(),
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
