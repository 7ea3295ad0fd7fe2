//! One place that turns `[kafka]` into librdkafka settings, for every client
//! the selector and its tools make: the group consumer, the dead-letter
//! producer, the admin client and the producers of `simple_producer` and
//! `load_generator`.
//!
//! A secured cluster fails in two ways. A setting librdkafka rejects (an
//! unknown property, a bad value, a missing CA file, a mechanism it can't
//! do) is found at startup by [`check`], before any retry loop. A broker that
//! rejects the client (a CA that doesn't sign its certificate, wrong SASL
//! credentials, a broker that can't do SASL) only shows up in librdkafka's
//! error callback while it retries in the background: [`SecurityWatch`]
//! catches those, so startup stops with librdkafka's own message instead of
//! retrying forever.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{ConfigError, KafkaConfig, Settings};

/// A client config with the brokers, the security keys and
/// `[kafka.properties]`; each client adds its own role's settings.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    // librdkafka's own logs go through `log` into `tracing` (target
    // `librdkafka`); `kafka.properties.debug` (for example `cgrp,broker`)
    // turns on its debug contexts.
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in cfg.security_properties() {
        c.set(k, v);
    }
    for (k, v) in cfg.properties.iter() {
        c.set(k, v);
    }
    c
}

/// The Kafka options of the command-line tools (`simple_producer`,
/// `load_generator`), flattened into each tool's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ToolArgs {
    /// The selector's config file: its `[kafka]` section (brokers, topic,
    /// TLS, SASL, properties) is used, with `TSS__KAFKA__…` overrides.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Overrides `kafka.brokers` (default 127.0.0.1:9092).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Overrides `kafka.topic` (default otel-traces-raw).
    #[arg(long)]
    pub topic: Option<String>,
    /// A librdkafka property, `-X security.protocol=ssl`; repeatable.
    #[arg(short = 'X', long = "property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
}

impl ToolArgs {
    /// The settings and the topic these options name.
    pub fn resolve(&self) -> Result<(KafkaConfig, String), ConfigError> {
        let cfg = tool_config(
            self.config.as_deref(),
            self.brokers.as_deref(),
            &self.properties,
        )?;
        let topic = self.topic.clone().unwrap_or_else(|| cfg.topic.clone());
        Ok((cfg, topic))
    }
}

/// The `[kafka]` settings of a command-line tool: the defaults, `--config
/// FILE` and `TSS__…` variables as the selector layers them, then
/// `--brokers` and `-X key=value` properties on top, so a tool reaches a
/// secured cluster exactly as the selector does.
pub fn tool_config(
    file: Option<&std::path::Path>,
    brokers: Option<&str>,
    properties: &[String],
) -> Result<KafkaConfig, ConfigError> {
    let mut cfg = Settings::load(file)?.kafka;
    if let Some(b) = brokers {
        cfg.brokers = b.to_string();
    }
    for p in properties {
        let Some((k, v)) = p.split_once('=') else {
            return Err(ConfigError::Invalid {
                key: format!("-X {p}"),
                reason: "must be KEY=VALUE".into(),
            });
        };
        cfg.properties.insert(k.trim().to_string(), v.to_string());
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Creates a producer and a consumer from `cfg` without connecting anywhere
/// it matters, so that every setting librdkafka checks at client creation is
/// checked now. The error names the property and says what is wrong.
pub fn check(cfg: &KafkaConfig) -> Result<(), KafkaError> {
    let _producer: BaseProducer = client_config(cfg).create()?;
    let mut consumer = client_config(cfg);
    consumer.set("group.id", &cfg.group_id);
    if let Some(id) = &cfg.group_instance_id {
        consumer.set("group.instance.id", id);
    }
    let _consumer: BaseConsumer = consumer.create()?;
    Ok(())
}

/// Connects to the brokers and asks for the cluster's metadata, for up to
/// `timeout`. A broker that rejects the client (TLS handshake, SASL login)
/// gives [`HandshakeError::Rejected`] with librdkafka's reason as soon as
/// librdkafka reports it; a broker that doesn't answer gives
/// [`HandshakeError::Unreachable`]. Blocking: call it off the runtime.
///
/// It uses a producer because a producer's `poll` serves librdkafka's main
/// queue, where those errors arrive; an admin client never polls it.
pub fn handshake(cfg: &KafkaConfig, timeout: Duration) -> Result<(), HandshakeError> {
    let watch = SecurityWatch::default();
    let producer: BaseProducer<SecurityWatch> = client_config(cfg)
        .create_with_context(watch.clone())
        .map_err(|e| HandshakeError::Unreachable(e.to_string()))?;
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = producer
            .client()
            .fetch_metadata(None, Duration::from_millis(500));
        // Serves the error events the attempt produced.
        producer.poll(Duration::ZERO);
        if let Some(reason) = watch.fatal() {
            return Err(HandshakeError::Rejected(reason));
        }
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(HandshakeError::Unreachable(e.to_string()))
            }
            Err(_) => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The broker refused the client's TLS or SASL settings.
    #[error("{0}")]
    Rejected(String),
    /// No broker answered within the timeout.
    #[error("{0}")]
    Unreachable(String),
}

/// A client context that remembers the first error that retrying can't fix:
/// a failed TLS handshake or a failed SASL authentication.
#[derive(Default, Clone)]
pub struct SecurityWatch {
    fatal: Arc<Mutex<Option<String>>>,
}

impl SecurityWatch {
    /// The broker's rejection, in librdkafka's words, once one happened.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().clone()
    }
}

/// Whether an error from librdkafka's error callback means the settings are
/// wrong, not that the broker is away.
pub fn is_security_error(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::SSL
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::IllegalSASLState
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
    )
}

/// Whether a transport failure is the broker refusing the TLS handshake with
/// an alert (`certificate required`, `unknown ca`, `bad certificate`, …),
/// which librdkafka reports as a transport failure, not as an SSL error.
/// A `close notify` (alert 0) is an ordinary close.
pub fn is_tls_alert(code: RDKafkaErrorCode, reason: &str) -> bool {
    code == RDKafkaErrorCode::BrokerTransportFailure
        && reason.contains("SSL alert number")
        && !reason.contains("SSL alert number 0)")
        && !reason.contains("SSL alert number 0 ")
}

impl ClientContext for SecurityWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code.is_some_and(|c| is_security_error(c) || is_tls_alert(c, reason)) {
            let mut fatal = self.fatal.lock();
            if fatal.is_none() {
                *fatal = Some(reason.to_string());
            }
        }
        tracing::warn!(error = %error, reason, "librdkafka error");
    }
}

impl ProducerContext for SecurityWatch {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(env: &[(&str, &str)]) -> KafkaConfig {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::load_with_env(None, env)
            .expect("config loads")
            .kafka
    }

    #[test]
    fn properties_and_security_keys_reach_librdkafka() {
        let cfg = kafka(&[
            ("TSS__KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
            ("TSS__KAFKA__SASL_MECHANISM", "SCRAM-SHA-512"),
            ("TSS__KAFKA__SASL_USERNAME", "alice"),
            ("TSS__KAFKA__SASL_PASSWORD", "pw"),
            ("TSS__KAFKA__PROPERTIES__SOCKET_KEEPALIVE_ENABLE", "true"),
            ("TSS__KAFKA__PROPERTIES__CLIENT_ID", "sel-1"),
        ]);
        let c = client_config(&cfg);
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.username"), Some("alice"));
        assert_eq!(c.get("sasl.password"), Some("pw"));
        assert_eq!(c.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(c.get("client.id"), Some("sel-1"));
        check(&cfg).expect("librdkafka accepts SCRAM over TLS");
    }

    #[test]
    fn an_unknown_property_is_named() {
        let cfg = kafka(&[("TSS__KAFKA__PROPERTIES__NO_SUCH_SETTING", "1")]);
        let err = check(&cfg).expect_err("unknown property").to_string();
        assert!(err.contains("no.such.setting"), "{err}");
    }

    #[test]
    fn an_invalid_value_is_named() {
        let cfg = kafka(&[("TSS__KAFKA__PROPERTIES__SOCKET_TIMEOUT_MS", "soon")]);
        let err = check(&cfg).expect_err("invalid value").to_string();
        assert!(err.contains("socket.timeout.ms"), "{err}");
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let cfg = kafka(&[
            ("TSS__KAFKA__SECURITY_PROTOCOL", "ssl"),
            ("TSS__KAFKA__SSL_CA_LOCATION", "/nonexistent/ca.pem"),
        ]);
        let err = check(&cfg).expect_err("missing CA").to_string();
        assert!(err.contains("ssl.ca.location"), "{err}");
    }

    #[test]
    fn tools_take_a_config_file_and_properties_on_top() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[kafka]\nbrokers = \"file:9093\"\nsecurity_protocol = \"ssl\"\nssl_ca_location = \"ca.pem\"\n",
        )
        .expect("write");
        let props = vec!["client.id=loadgen".to_string(), "linger.ms=5".to_string()];
        let cfg = tool_config(Some(&path), Some("flag:9094"), &props).expect("tool config");
        let c = client_config(&cfg);
        assert_eq!(c.get("bootstrap.servers"), Some("flag:9094"));
        assert_eq!(c.get("security.protocol"), Some("ssl"));
        assert_eq!(c.get("ssl.ca.location"), Some("ca.pem"));
        assert_eq!(c.get("client.id"), Some("loadgen"));
        assert_eq!(c.get("linger.ms"), Some("5"));

        let err = tool_config(None, None, &["linger.ms".to_string()]).expect_err("no value");
        assert!(err.to_string().contains("-X linger.ms"), "{err}");
        let err = tool_config(None, None, &["group.id=x".to_string()]).expect_err("reserved");
        assert!(
            err.to_string().contains("kafka.properties.group.id"),
            "{err}"
        );
    }

    #[test]
    fn security_errors_are_told_from_outages() {
        assert!(is_security_error(RDKafkaErrorCode::SSL));
        assert!(is_security_error(RDKafkaErrorCode::Authentication));
        assert!(!is_security_error(RDKafkaErrorCode::BrokerTransportFailure));
        assert!(!is_security_error(RDKafkaErrorCode::AllBrokersDown));
        let alert = "ssl://h:9093/bootstrap: Receive failed: error:0A00045C:SSL routines::tlsv13 alert \
                     certificate required: SSL alert number 116 (after 1ms in state APIVERSION_QUERY)";
        assert!(is_tls_alert(
            RDKafkaErrorCode::BrokerTransportFailure,
            alert
        ));
        assert!(!is_tls_alert(
            RDKafkaErrorCode::BrokerTransportFailure,
            "Connection refused"
        ));
        assert!(!is_tls_alert(RDKafkaErrorCode::AllBrokersDown, alert));
    }
}
