//! Why the maintenance stage failed: the error its parts share.

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error(transparent)]
    Sort(#[from] datafusion::error::DataFusionError),
    /// The catalog or the table could not be reached or read.
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("the table: {0}")]
    Table(crate::table::TableError),
    #[error("connecting to the SQL catalog: {0}")]
    SqlCatalog(sqlx::Error),
    /// A REST catalog's call failed: the request, or the answer's status.
    #[error("REST catalog {what}: {reason}")]
    RestCatalog { what: &'static str, reason: String },
    #[error("listing {prefix}: {error}")]
    Listing {
        prefix: String,
        error: opendal::Error,
    },
    #[error("encoding the offsets checkpoint: {0}")]
    Checkpoint(serde_json::Error),
    /// Another commit came first; rebuild on the new metadata.
    #[error("commit conflict: {0}")]
    Conflict(String),
    /// The catalog may or may not have taken the commit (a 5xx, a cut or
    /// timed-out connection after the request went out). Nothing it wrote
    /// may be deleted until a reload tells ([`landed`](super::commit::landed)).
    #[error("commit state unknown: {0}")]
    CommitStateUnknown(String),
    /// The work no longer applies (another run did it).
    #[error("aborted: {0}")]
    Aborted(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("redis: {0}")]
    Redis(redis::RedisError),
    #[error(transparent)]
    RedisSetup(#[from] crate::redis_client::RedisSetupError),
    #[error("metrics: {0}")]
    Metrics(prometheus::Error),
}

impl From<crate::table::TableError> for MaintenanceError {
    fn from(e: crate::table::TableError) -> Self {
        MaintenanceError::Table(e)
    }
}

impl From<redis::RedisError> for MaintenanceError {
    fn from(e: redis::RedisError) -> Self {
        MaintenanceError::Redis(e)
    }
}

impl From<prometheus::Error> for MaintenanceError {
    fn from(e: prometheus::Error) -> Self {
        MaintenanceError::Metrics(e)
    }
}
