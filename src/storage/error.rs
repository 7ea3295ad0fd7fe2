//! Why the storage stage could not write: the errors its parts share.

/// Why kept spans could not be turned into Arrow rows.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("arrow: {0}")]
    Arrow(datafusion::arrow::error::ArrowError),
    #[error("the table has column `{0}` of an unexpected type")]
    UnexpectedColumn(String),
}

/// Errors writing kept traces to the table.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("iceberg: {0}")]
    Iceberg(iceberg::Error),
    #[error("building rows: {0}")]
    Rows(RowError),
    #[error(transparent)]
    Table(#[from] crate::table::TableError),
    /// A commit that landed since the batch was checked recorded offsets
    /// past one of its messages: the batch is checked again.
    #[error("the table moved past the batch's offsets: {0}")]
    Overlap(String),
    /// Object storage did not finish in time; nothing was committed.
    #[error("{0} took longer than {1:.0} s (storage.write_timeout_secs)")]
    Timeout(&'static str, f64),
}

impl From<datafusion::arrow::error::ArrowError> for RowError {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        RowError::Arrow(e)
    }
}

impl From<iceberg::Error> for StorageError {
    fn from(e: iceberg::Error) -> Self {
        StorageError::Iceberg(e)
    }
}

impl From<RowError> for StorageError {
    fn from(e: RowError) -> Self {
        StorageError::Rows(e)
    }
}
