//! Why the service could not start or stopped: the error of the start-up
//! path and its parts.

use std::net::SocketAddr;

use crate::ingest::IngestError;
use crate::redis_client::RedisSetupError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("metrics: {0}")]
    Metrics(prometheus::Error),
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
    #[error("invalid sampling policy: {0}")]
    Policy(crate::matching::FieldError),
    /// A pipeline stage died; the others were drained.
    #[error("pipeline stage failed: {0}")]
    StageFailed(crate::supervise::StageExit),
    #[error(transparent)]
    Publish(#[from] crate::publish::PublishError),
    #[error(transparent)]
    Reread(#[from] crate::reread::RereadError),
    #[error("kept traces have nowhere to go: enable storage, the sampled topic, or both")]
    NoSink,
    #[error("no [[forward]] entry is configured")]
    NoForwarders,
    #[error(transparent)]
    Forward(#[from] crate::forward::ForwardError),
    #[error(transparent)]
    Table(#[from] crate::table::TableError),
    #[error(transparent)]
    Recovery(#[from] crate::recovery::RecoveryError),
    #[error("binding {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

impl From<prometheus::Error> for AppError {
    fn from(e: prometheus::Error) -> Self {
        AppError::Metrics(e)
    }
}

impl From<crate::matching::FieldError> for AppError {
    fn from(e: crate::matching::FieldError) -> Self {
        AppError::Policy(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `main` prints: the error, then each cause in its chain.
    fn chain(e: &(dyn std::error::Error + 'static)) -> String {
        std::iter::successors(Some(e), |e| e.source())
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(": ")
    }

    #[test]
    fn a_cause_is_printed_once() {
        let bind = AppError::Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            error: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        let text = chain(&bind);
        assert_eq!(text.matches("address in use").count(), 1, "{text}");
        let storage = crate::storage::StorageError::from(iceberg::Error::new(
            iceberg::ErrorKind::DataInvalid,
            "bad manifest",
        ));
        let text = chain(&storage);
        assert_eq!(text.matches("bad manifest").count(), 1, "{text}");
    }
}
