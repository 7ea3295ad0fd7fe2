//! The spans table: the catalog connection, the table's schema, and its
//! creation when missing.
//!
//! Part of the shared core: the storage writer appends to the table, the
//! query engine reads it, and both reach it through [`TableHandle`].

pub mod bounded;
pub mod columns;
pub mod layout;
pub mod manifest_cache;
pub mod offsets;
pub mod schema;
pub mod write;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use iceberg::io::{
    LocalFsStorageFactory, StorageFactory, S3_ACCESS_KEY_ID, S3_ENDPOINT, S3_PATH_STYLE_ACCESS,
    S3_REGION, S3_SECRET_ACCESS_KEY,
};
use iceberg::memory::{MemoryCatalogBuilder, MEMORY_CATALOG_WAREHOUSE};
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_rest::{
    RestCatalogBuilder, REST_CATALOG_PROP_URI, REST_CATALOG_PROP_WAREHOUSE,
};
use iceberg_catalog_sql::{
    SqlBindStyle, SqlCatalogBuilder, SQL_CATALOG_PROP_BIND_STYLE, SQL_CATALOG_PROP_URI,
    SQL_CATALOG_PROP_WAREHOUSE,
};
use iceberg_storage_opendal::OpenDalStorageFactory;

use secrecy::ExposeSecret;

use crate::config::{CatalogType, IcebergConfig, SecretString};

/// The catalog name the selector registers under. A SQL catalog stores it in
/// every row, so other readers (pyiceberg's `SqlCatalog`) must use the same name.
pub const CATALOG_NAME: &str = "tail_sampling";

/// Errors opening the catalog or the table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("iceberg: {0}")]
    Iceberg(iceberg::Error),
    #[error("warehouse `{path}`: {error}")]
    Warehouse { path: String, error: std::io::Error },
}

/// The catalog and the identity of the spans table.
#[derive(Clone)]
pub struct TableHandle {
    pub catalog: Arc<dyn Catalog>,
    pub ident: TableIdent,
    /// Held while this process commits to the table: the writer's appends
    /// and maintenance's rewrites in one process take turns instead of
    /// racing. A rewrite that lost the race to an append has to be rebuilt;
    /// with flushes several times a second it could lose every time. Other
    /// processes still race, and the catalog's compare-and-set settles it.
    pub commits: Arc<tokio::sync::Mutex<()>>,
}

impl TableHandle {
    /// Connects to the catalog, then creates the namespace and table if missing.
    pub async fn open(cfg: &IcebergConfig) -> Result<Self, TableError> {
        let catalog = connect_catalog(cfg).await?;
        let namespace = NamespaceIdent::from_strs(cfg.namespace.split('.'))?;
        let ident = TableIdent::new(namespace, cfg.table_name.clone());
        let handle = Self {
            catalog,
            ident,
            commits: Arc::default(),
        };
        handle.ensure_table().await?;
        Ok(handle)
    }

    pub async fn load(&self) -> Result<Table, TableError> {
        Ok(self.catalog.load_table(&self.ident).await?)
    }

    async fn ensure_table(&self) -> Result<(), TableError> {
        let ns = self.ident.namespace();
        if !self.catalog.namespace_exists(ns).await? {
            match self.catalog.create_namespace(ns, HashMap::new()).await {
                Ok(_) => tracing::info!(namespace = ?ns, "created namespace"),
                // Another instance may have created it in the meantime.
                Err(e) if self.catalog.namespace_exists(ns).await.unwrap_or(false) => {
                    tracing::debug!(error = %e, "namespace appeared concurrently")
                }
                Err(e) => return Err(e.into()),
            }
        }
        if self.catalog.table_exists(&self.ident).await? {
            return self.evolve().await;
        }
        let creation = TableCreation::builder()
            .name(self.ident.name().to_string())
            .schema(schema::table_schema()?)
            .partition_spec(schema::partition_spec()?)
            .properties([
                (
                    "write.parquet.compression-codec".to_string(),
                    "zstd".to_string(),
                ),
                ("write.format.default".to_string(), "parquet".to_string()),
            ])
            .build();
        match self.catalog.create_table(ns, creation).await {
            Ok(t) => {
                tracing::info!(table = %self.ident, location = %t.metadata().location(), "created table");
                Ok(())
            }
            Err(e)
                if self
                    .catalog
                    .table_exists(&self.ident)
                    .await
                    .unwrap_or(false) =>
            {
                tracing::debug!(error = %e, "table appeared concurrently");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl TableHandle {
    /// Adds the columns a table made by an older version lacks (Iceberg
    /// schema evolution: new optional columns, no data rewritten, older rows
    /// read null). Another instance may evolve it at the same time: a failed
    /// commit is checked against the reloaded table and retried once.
    async fn evolve(&self) -> Result<(), TableError> {
        for attempt in 0..2 {
            let table = self.load().await?;
            let schema = table.metadata().current_schema();
            let missing: Vec<_> = schema::added_columns()
                .into_iter()
                .filter(|(name, _)| schema.field_by_name(name).is_none())
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            let names: Vec<&str> = missing.iter().map(|(n, _)| *n).collect();
            let tx = Transaction::new(&table);
            let action = missing
                .into_iter()
                .fold(tx.update_schema(), |a, (name, ty)| {
                    a.add_column(AddColumn::optional(name, ty))
                });
            let committed = action.apply(tx)?.commit(self.catalog.as_ref()).await;
            match committed {
                Ok(_) => {
                    tracing::info!(table = %self.ident, columns = ?names, "added columns to the table");
                    return Ok(());
                }
                Err(e) if attempt == 0 => {
                    tracing::debug!(error = %e, "schema evolution raced another instance; checking again")
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Builds the configured catalog with the storage backend its warehouse needs.
pub async fn connect_catalog(cfg: &IcebergConfig) -> Result<Arc<dyn Catalog>, TableError> {
    let (factory, mut props) = storage_for(cfg)?;
    let catalog: Arc<dyn Catalog> = match cfg.catalog_type {
        CatalogType::Memory => {
            props.insert(
                MEMORY_CATALOG_WAREHOUSE.into(),
                warehouse_uri(&cfg.warehouse)?,
            );
            Arc::new(
                MemoryCatalogBuilder::default()
                    .with_storage_factory(factory)
                    .load(CATALOG_NAME, props)
                    .await?,
            )
        }
        CatalogType::Sql => {
            let bind = if cfg.catalog_uri.expose().starts_with("postgres") {
                SqlBindStyle::DollarNumeric
            } else {
                SqlBindStyle::QMark
            };
            props.insert(
                SQL_CATALOG_PROP_URI.into(),
                cfg.catalog_uri.expose().to_string(),
            );
            props.insert(
                SQL_CATALOG_PROP_WAREHOUSE.into(),
                warehouse_uri(&cfg.warehouse)?,
            );
            props.insert(SQL_CATALOG_PROP_BIND_STYLE.into(), bind.to_string());
            prepare_sqlite_dir(cfg.catalog_uri.expose())?;
            Arc::new(
                SqlCatalogBuilder::default()
                    .with_storage_factory(factory)
                    .load(CATALOG_NAME, props)
                    .await?,
            )
        }
        CatalogType::Rest => {
            props.extend(rest_props(cfg));
            Arc::new(
                RestCatalogBuilder::default()
                    .with_client(rest_client(cfg)?)
                    .with_storage_factory(factory)
                    .load(CATALOG_NAME, props)
                    .await?,
            )
        }
    };
    Ok(Arc::new(bounded::BoundedCatalog::new(
        catalog,
        cfg.request_timeout_secs.duration(),
    )))
}

/// The HTTP client of the REST catalog (the table's and maintenance's
/// commits alike): every request bounded by `request_timeout_secs`.
pub fn rest_client(cfg: &IcebergConfig) -> Result<reqwest_catalog::Client, TableError> {
    reqwest_catalog::Client::builder()
        .timeout(cfg.request_timeout_secs.duration())
        .connect_timeout(
            cfg.request_timeout_secs
                .duration()
                .min(std::time::Duration::from_secs(10)),
        )
        .build()
        .map_err(|e| {
            TableError::Iceberg(
                iceberg::Error::new(iceberg::ErrorKind::Unexpected, "building the REST client")
                    .with_source(e),
            )
        })
}

/// The REST catalog's properties, as iceberg-rust's `RestCatalogBuilder`
/// reads them: every `header.*` key becomes a request header (Lakekeeper's
/// project), `credential` is exchanged for a token, `token` is sent as is.
pub fn rest_props(cfg: &IcebergConfig) -> HashMap<String, String> {
    let mut props = HashMap::from([
        (
            REST_CATALOG_PROP_URI.to_string(),
            cfg.catalog_uri.expose().to_string(),
        ),
        (
            REST_CATALOG_PROP_WAREHOUSE.to_string(),
            cfg.warehouse.clone(),
        ),
    ]);
    let secret = |s: &Option<SecretString>| s.as_ref().map(|s| s.expose_secret().to_string());
    let optional = [
        ("header.x-project-id", cfg.project_id.clone()),
        ("credential", secret(&cfg.credential)),
        ("token", secret(&cfg.token)),
        ("oauth2-server-uri", cfg.oauth2_server_uri.clone()),
        ("scope", cfg.scope.clone()),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            props.insert(key.to_string(), v);
        }
    }
    props
}

/// A storage factory and the file IO properties it needs.
type StorageSetup = (Arc<dyn StorageFactory>, HashMap<String, String>);

/// S3 when an endpoint or an `s3://` warehouse is configured, local files otherwise.
/// Either way behind a [`manifest_cache`] of `iceberg.manifest_cache_bytes`.
fn storage_for(cfg: &IcebergConfig) -> Result<StorageSetup, TableError> {
    let (inner, props) = backend_for(cfg);
    let cache = manifest_cache::ManifestCache::new(cfg.manifest_cache_bytes);
    let factory = manifest_cache::CachingStorageFactory::new(inner, cache);
    Ok((Arc::new(factory), props))
}

/// The storage backend of the warehouse and its properties.
fn backend_for(cfg: &IcebergConfig) -> StorageSetup {
    let mut props = HashMap::new();
    let s3 = cfg.s3_endpoint.is_some()
        || cfg.warehouse.starts_with("s3://")
        || cfg.catalog_type == CatalogType::Rest;
    if !s3 {
        return (Arc::new(LocalFsStorageFactory), props);
    }
    if let Some(endpoint) = &cfg.s3_endpoint {
        props.insert(S3_ENDPOINT.into(), endpoint.clone());
    }
    if let Some(key) = &cfg.s3_access_key_id {
        props.insert(S3_ACCESS_KEY_ID.into(), key.expose_secret().to_string());
    }
    if let Some(secret) = &cfg.s3_secret_access_key {
        props.insert(
            S3_SECRET_ACCESS_KEY.into(),
            secret.expose_secret().to_string(),
        );
    }
    props.insert(S3_REGION.into(), cfg.s3_region.clone());
    props.insert(S3_PATH_STYLE_ACCESS.into(), cfg.s3_path_style.to_string());
    (
        Arc::new(OpenDalStorageFactory::S3 {
            customized_credential_load: None,
        }),
        props,
    )
}

/// What lists the files under a table's location: iceberg's `FileIO` reads,
/// writes and deletes, but cannot list.
pub struct Listing {
    pub operator: opendal::Operator,
    /// The location as a path of the operator, ending in `/`.
    pub prefix: String,
    /// What turns a listed path back into the URI the table's metadata uses.
    pub uri_base: String,
}

impl Listing {
    /// A listing of `location` (`file://…`, `s3://…` or `s3a://…`) with the
    /// storage settings the table's `FileIO` gets.
    pub fn for_location(cfg: &IcebergConfig, location: &str) -> Result<Listing, TableError> {
        let unsupported = |why: &str| {
            TableError::Iceberg(iceberg::Error::new(
                iceberg::ErrorKind::FeatureUnsupported,
                format!("listing `{location}`: {why}"),
            ))
        };
        let opendal_error = |e: opendal::Error| unsupported(&e.to_string());
        let (scheme, rest) = location
            .split_once("://")
            .ok_or_else(|| unsupported("not a URI"))?;
        match scheme {
            "file" => {
                let operator = opendal::Operator::new(opendal::services::Fs::default().root("/"))
                    .map_err(opendal_error)?
                    .finish();
                Ok(Listing {
                    operator,
                    prefix: format!("{}/", rest.trim_matches('/')),
                    uri_base: "file:///".into(),
                })
            }
            "s3" | "s3a" => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                let mut s3 = opendal::services::S3::default()
                    .bucket(bucket)
                    .region(&cfg.s3_region);
                if let Some(endpoint) = &cfg.s3_endpoint {
                    s3 = s3.endpoint(endpoint);
                }
                if let Some(key) = &cfg.s3_access_key_id {
                    s3 = s3.access_key_id(key.expose_secret());
                }
                if let Some(secret) = &cfg.s3_secret_access_key {
                    s3 = s3.secret_access_key(secret.expose_secret());
                }
                if !cfg.s3_path_style {
                    s3 = s3.enable_virtual_host_style();
                }
                let operator = opendal::Operator::new(s3).map_err(opendal_error)?.finish();
                Ok(Listing {
                    operator,
                    prefix: format!("{}/", key.trim_matches('/')),
                    uri_base: format!("{scheme}://{bucket}/"),
                })
            }
            other => Err(unsupported(&format!(
                "the `{other}` scheme cannot be listed"
            ))),
        }
    }
}

/// A local warehouse path becomes an absolute `file://` URI (created if
/// missing), so that every reader resolves it the same way; URIs pass through.
pub fn warehouse_uri(warehouse: &str) -> Result<String, TableError> {
    if warehouse.contains("://") {
        return Ok(warehouse.to_string());
    }
    let path = Path::new(warehouse);
    std::fs::create_dir_all(path).map_err(|error| TableError::Warehouse {
        path: warehouse.to_string(),
        error,
    })?;
    let abs = std::fs::canonicalize(path).map_err(|error| TableError::Warehouse {
        path: warehouse.to_string(),
        error,
    })?;
    Ok(format!("file://{}", abs.display()))
}

/// SQLite creates its file with `mode=rwc` but not the directory holding it.
fn prepare_sqlite_dir(uri: &str) -> Result<(), TableError> {
    let Some(rest) = uri.strip_prefix("sqlite:") else {
        return Ok(());
    };
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|error| TableError::Warehouse {
            path: dir.display().to_string(),
            error,
        })?;
    }
    Ok(())
}

impl From<iceberg::Error> for TableError {
    fn from(e: iceberg::Error) -> Self {
        TableError::Iceberg(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn iceberg(env: &[(&str, &str)]) -> IcebergConfig {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::load_with_env(None, env)
            .expect("settings")
            .storage
            .iceberg
    }

    #[test]
    fn lakekeeper_settings_become_rest_properties() {
        let cfg = iceberg(&[
            ("TSS__STORAGE__ICEBERG__CATALOG_TYPE", "rest"),
            (
                "TSS__STORAGE__ICEBERG__CATALOG_URI",
                "http://lakekeeper:8181/catalog",
            ),
            ("TSS__STORAGE__ICEBERG__WAREHOUSE", "traces"),
            (
                "TSS__STORAGE__ICEBERG__PROJECT_ID",
                "00000000-0000-0000-0000-000000000000",
            ),
            ("TSS__STORAGE__ICEBERG__CREDENTIAL", "client:secret"),
            ("TSS__STORAGE__ICEBERG__SCOPE", "lakekeeper"),
        ]);
        let props = rest_props(&cfg);
        assert_eq!(props["uri"], "http://lakekeeper:8181/catalog");
        assert_eq!(props["warehouse"], "traces");
        assert_eq!(
            props["header.x-project-id"],
            "00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(props["credential"], "client:secret");
        assert_eq!(props["scope"], "lakekeeper");
        assert!(!props.contains_key("token"));
    }

    #[test]
    fn s3_settings_become_file_io_properties() {
        let cfg = iceberg(&[
            ("TSS__STORAGE__ICEBERG__WAREHOUSE", "s3://bucket/wh"),
            ("TSS__STORAGE__ICEBERG__S3_ENDPOINT", "http://minio:9000"),
            ("TSS__STORAGE__ICEBERG__S3_ACCESS_KEY_ID", "key"),
            ("TSS__STORAGE__ICEBERG__S3_SECRET_ACCESS_KEY", "secret"),
        ]);
        let (_, props) = storage_for(&cfg).expect("storage");
        assert_eq!(props[S3_ENDPOINT], "http://minio:9000");
        assert_eq!(props[S3_ACCESS_KEY_ID], "key");
        assert_eq!(props[S3_SECRET_ACCESS_KEY], "secret");
        assert_eq!(props[S3_REGION], "us-east-1");
        assert_eq!(props[S3_PATH_STYLE_ACCESS], "true");
        let (_, local) = storage_for(&iceberg(&[])).expect("storage");
        assert!(local.is_empty(), "the embedded default uses local files");
    }
}
