//! A Redis client connected on first use, shared by the decision cache and
//! the force-rule store, with the key prefix every key is made with.
//!
//! Part of the shared core: stages reach Redis only through it.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisConfig;

#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("redis.{key}: reading `{path}`: {error}")]
    File {
        key: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("redis.url: {0}")]
    Client(redis::RedisError),
}

/// A Redis connection made on first use, so the selector starts without
/// Redis and picks it up when it comes back.
pub struct LazyRedis {
    client: redis::Client,
    prefix: String,
    /// `redis.timeout_ms`: connecting, and each command's answer.
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
}

impl LazyRedis {
    /// A client for `cfg.url`: TLS for `rediss://`, trusting `tls_ca_location`
    /// (or the system's roots) and presenting a client certificate when one
    /// is configured; an ACL user and password in the URL log in as that user.
    pub fn new(cfg: &RedisConfig) -> Result<Self, RedisSetupError> {
        let client = if cfg.url.expose().starts_with("rediss://") {
            install_crypto_provider();
            let read = |key: &'static str, path: &Option<String>| {
                path.as_ref()
                    .map(|p| {
                        std::fs::read(p).map_err(|error| RedisSetupError::File {
                            key,
                            path: p.clone(),
                            error,
                        })
                    })
                    .transpose()
            };
            let root_cert = read("tls_ca_location", &cfg.tls_ca_location)?;
            let client_cert = read("tls_certificate_location", &cfg.tls_certificate_location)?;
            let client_key = read("tls_key_location", &cfg.tls_key_location)?;
            let client_tls = client_cert
                .zip(client_key)
                .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                });
            redis::Client::build_with_tls(
                cfg.url.expose(),
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )?
        } else {
            redis::Client::open(cfg.url.expose())?
        };
        Ok(Self {
            client,
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout_ms.duration(),
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// `redis.key_prefix` followed by `name`: every key and channel the
    /// selector uses is made here.
    pub fn key(&self, name: impl std::fmt::Display) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// `PING`, for the readiness probe.
    pub async fn ping(&self) -> Result<(), redis::RedisError> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    pub async fn conn(&self) -> Result<ConnectionManager, redis::RedisError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let c = tokio::time::timeout(
            self.timeout * 2,
            self.client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
        *guard = Some(c.clone());
        Ok(c)
    }
}

/// rustls needs one process-wide crypto provider; with more than one compiled
/// in (the S3 client brings its own), it can't pick by itself.
fn install_crypto_provider() {
    // An error means one is installed already, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl From<redis::RedisError> for RedisSetupError {
    fn from(e: redis::RedisError) -> Self {
        RedisSetupError::Client(e)
    }
}
