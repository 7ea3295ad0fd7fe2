//! Why the configuration could not be loaded: every section's checks return
//! this, naming the key at fault.

/// Why the configuration could not be loaded. Every variant names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(config::ConfigError),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl From<config::ConfigError> for ConfigError {
    fn from(e: config::ConfigError) -> Self {
        ConfigError::Load(e)
    }
}
