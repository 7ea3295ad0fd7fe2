//! Why the maintenance stage failed: the error its parts share.

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error(transparent)]
    Sort(#[from] datafusion::error::DataFusionError),
    #[error("catalog: {0}")]
    Catalog(String),
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
    Redis(String),
}

impl From<crate::table::TableError> for MaintenanceError {
    fn from(e: crate::table::TableError) -> Self {
        MaintenanceError::Catalog(e.to_string())
    }
}
