//! Commits that iceberg-rust 0.10's public API cannot make: a snapshot that
//! removes files (compaction, retention). Its transaction actions are
//! crate-private, so the commit goes through the catalog's own protocol, as
//! iceberg-catalog-sql does it: apply the updates to the metadata, check the
//! requirements, write the new `metadata.json`, then compare-and-set the
//! table's `metadata_location` in `iceberg_tables`. A concurrent commit (an
//! append by the writer) makes the compare-and-set fail; the caller rebases
//! on the new metadata and tries again.

use std::str::FromStr;

use iceberg::spec::TableMetadata;
use iceberg::table::Table;
use iceberg::{MetadataLocation, TableRequirement, TableUpdate};
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

use super::MaintenanceError;
use crate::config::{CatalogType, IcebergConfig};
use crate::table::CATALOG_NAME;

/// How a catalog takes a commit.
pub enum Committer {
    /// `iceberg_tables` in SQLite or PostgreSQL.
    Sql { pool: AnyPool, dollar_binds: bool },
}

impl Committer {
    pub async fn connect(cfg: &IcebergConfig) -> Result<Self, MaintenanceError> {
        match cfg.catalog_type {
            CatalogType::Sql => {
                sqlx::any::install_default_drivers();
                let pool = AnyPoolOptions::new()
                    .max_connections(2)
                    .connect(&cfg.catalog_uri)
                    .await
                    .map_err(|e| MaintenanceError::Catalog(format!("connecting to the SQL catalog: {e}")))?;
                Ok(Committer::Sql { pool, dollar_binds: cfg.catalog_uri.starts_with("postgres") })
            }
            other => Err(MaintenanceError::Unsupported(format!(
                "table maintenance commits through the SQL catalog only so far; catalog_type {other:?} is not supported"
            ))),
        }
    }

    /// Applies `updates` to the table's metadata under `requirements` and
    /// commits the result. `Err(Conflict)` when another commit came first.
    pub async fn commit(
        &self,
        table: &Table,
        requirements: Vec<TableRequirement>,
        updates: Vec<TableUpdate>,
    ) -> Result<(), MaintenanceError> {
        for r in &requirements {
            r.check(Some(table.metadata())).map_err(|e| MaintenanceError::Conflict(e.to_string()))?;
        }
        let current = table
            .metadata_location()
            .ok_or_else(|| MaintenanceError::Catalog("the table has no metadata location".into()))?
            .to_string();
        let mut builder = table.metadata().clone().into_builder(Some(current.clone()));
        for u in updates {
            builder = u.apply(builder)?;
        }
        let metadata: TableMetadata = builder.build()?.metadata;
        let location = MetadataLocation::from_str(&current)?
            .with_next_version()
            .with_new_metadata(&metadata);
        metadata.write_to(table.file_io(), &location).await?;
        let new = location.to_string();
        match self {
            Committer::Sql { pool, dollar_binds } => {
                let sql = swap_sql(*dollar_binds);
                let ident = table.identifier();
                let done = sqlx::query(&sql)
                    .bind(&new)
                    .bind(&current)
                    .bind(CATALOG_NAME)
                    .bind(ident.name())
                    .bind(ident.namespace().join("."))
                    .bind(&current)
                    .execute(pool)
                    .await
                    .map_err(|e| MaintenanceError::Catalog(format!("committing: {e}")))?;
                if done.rows_affected() == 0 {
                    // Never published: nobody reads it.
                    let _ = table.file_io().delete(&new).await;
                    return Err(MaintenanceError::Conflict(format!("{ident} changed since it was loaded")));
                }
            }
        }
        Ok(())
    }
}

/// iceberg-catalog-sql's compare-and-set of `metadata_location`.
fn swap_sql(dollar: bool) -> String {
    let p = |n: usize| if dollar { format!("${n}") } else { "?".to_string() };
    format!(
        "UPDATE iceberg_tables SET metadata_location = {}, previous_metadata_location = {} \
         WHERE catalog_name = {} AND table_name = {} AND table_namespace = {} \
         AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = {}",
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_swap_binds_in_each_dialect() {
        assert!(super::swap_sql(false).ends_with("metadata_location = ?"));
        assert!(super::swap_sql(true).contains("metadata_location = $1") && super::swap_sql(true).ends_with("= $6"));
    }
}
