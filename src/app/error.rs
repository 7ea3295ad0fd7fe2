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
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
    #[error("invalid sampling policy: {0}")]
    Policy(#[from] crate::matching::FieldError),
    /// A pipeline stage died; the others were drained.
    #[error("pipeline stage failed: {0}")]
    StageFailed(crate::supervise::StageExit),
    #[error(transparent)]
    Publish(#[from] crate::publish::PublishError),
    #[error("kept traces have nowhere to go: enable storage, the sampled topic, or both")]
    NoSink,
    #[error("no [[forward]] entry is configured")]
    NoForwarders,
    #[error(transparent)]
    Forward(#[from] crate::forward::ForwardError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}
