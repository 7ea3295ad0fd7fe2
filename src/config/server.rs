//! `[server]` and `[admin]`: the HTTP ports, the hosts served, and the
//! admin token.

use std::net::SocketAddr;

use secrecy::ExposeSecret;
use serde::Deserialize;

use super::secret::{self, SecretString};

use super::checks::{invalid, seconds};
use super::duration::Seconds;
use super::error::ConfigError;

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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default, deserialize_with = "secret::optional")]
    pub auth_token: Option<SecretString>,
}

impl ServerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        seconds("server.shutdown_timeout_secs", self.shutdown_timeout_secs)?;
        Ok(())
    }
}

impl AdminConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if matches!(&self.auth_token, Some(t) if t.expose_secret().trim().is_empty()) {
            return Err(invalid("admin.auth_token", "must not be empty when set"));
        }
        Ok(())
    }
}
