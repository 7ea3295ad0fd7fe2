//! `[redis]`: the decision cache's and the rule store's Redis.

use serde::Deserialize;

use super::checks::invalid;
use super::duration::Milliseconds;
use super::error::ConfigError;
use super::secret::CredentialUri;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host:port[/db]`, or `rediss://…` for TLS.
    /// A user and password in the URL log in as that ACL user.
    pub url: CredentialUri,
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
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout_ms.duration().is_zero() {
            return Err(invalid("redis.timeout_ms", "must be positive"));
        }
        let tls = self.url.expose().starts_with("rediss://");
        if !tls
            && !self.url.expose().starts_with("redis://")
            && !self.url.expose().starts_with("unix://")
        {
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
