//! Values that must never reach a log line: passwords, tokens and keys
//! (`SecretString`, whose `Debug` is redacted and whose value is read with
//! `ExposeSecret::expose_secret`), and URIs that may embed a password.

use serde::{Deserialize, Deserializer};

pub use secrecy::SecretString;

/// An optional secret key: absent, or a `SecretString`.
pub(super) fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(SecretString::from))
}

/// A URI that may carry a password (`rediss://user:secret@host`, a
/// PostgreSQL catalog's URI). `Debug` shows it with the password hidden;
/// there is no `Display`, so it cannot be formatted whole by accident.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct CredentialUri(String);

impl CredentialUri {
    /// The URI with its password, to connect with.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for CredentialUri {
    fn from(uri: &str) -> Self {
        Self(uri.to_string())
    }
}

impl std::fmt::Debug for CredentialUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&redact_uri(&self.0), f)
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

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn secrets_and_passwords_in_uris_never_print() {
        let uri = CredentialUri::from("postgres://tss:hunter2@db:5432/catalog");
        let shown = format!("{uri:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("tss:***@db"), "{shown}");
        assert_eq!(uri.expose(), "postgres://tss:hunter2@db:5432/catalog");
        let token = SecretString::from("s3cr3t");
        assert!(!format!("{token:?}").contains("s3cr3t"));
        assert_eq!(token.expose_secret(), "s3cr3t");
    }
}
