//! `[kafka]`: the brokers, the raw topic and the consumer group, TLS and
//! SASL, and librdkafka properties passed through.

use std::collections::BTreeMap;

use secrecy::ExposeSecret;
use serde::Deserialize;

use super::secret::{self, SecretString};

use super::checks::{invalid, invalid_owned};
use super::duration::Milliseconds;
use super::error::ConfigError;

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
    #[serde(default, deserialize_with = "secret::optional")]
    pub sasl_password: Option<SecretString>,
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
    #[serde(default, deserialize_with = "secret::optional")]
    pub ssl_key_password: Option<SecretString>,
    /// Any other librdkafka property, passed as it is to the consumer, the
    /// dead-letter producer and the admin client. Nested TOML tables are
    /// joined with dots, and `_` in a key reads as `.`, so that
    /// `TSS__KAFKA__PROPERTIES__SOCKET_KEEPALIVE_ENABLE=true` sets
    /// `socket.keepalive.enable`.
    #[serde(default, deserialize_with = "KafkaProperties::deserialize")]
    pub properties: KafkaProperties,
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

/// `[kafka.properties]` as librdkafka keys. `Debug` hides the values of the
/// secret ones ([`is_secret_property`]), so a logged config holds none.
#[derive(Clone, Default, PartialEq)]
pub struct KafkaProperties(BTreeMap<String, String>);

impl std::ops::Deref for KafkaProperties {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl KafkaProperties {
    fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        properties::deserialize(d).map(Self)
    }

    /// Sets one property (the command line's `-X KEY=VALUE`).
    pub fn insert(&mut self, key: String, value: String) {
        self.0.insert(key, value);
    }
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if is_secret_property(k) { "***" } else { v };
                (k, shown)
            }))
            .finish()
    }
}

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
        put(
            "sasl.password",
            self.sasl_password.as_ref().map(|s| s.expose_secret()),
        );
        put("ssl.ca.location", self.ssl_ca_location.as_deref());
        put(
            "ssl.certificate.location",
            self.ssl_certificate_location.as_deref(),
        );
        put("ssl.key.location", self.ssl_key_location.as_deref());
        put(
            "ssl.key.password",
            self.ssl_key_password.as_ref().map(|s| s.expose_secret()),
        );
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
