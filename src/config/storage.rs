//! `[storage]` and `[storage.iceberg]`: the spans table, its catalog and
//! object storage, and what a stored span may hold.

use serde::Deserialize;

use super::secret::{self, CredentialUri, SecretString};

use super::checks::{invalid, seconds};
use super::duration::Seconds;
use super::error::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    Iceberg,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Write kept traces to the Iceberg table and serve SQL over it. A
    /// deployment that only forwards turns it off.
    pub enabled: bool,
    pub storage_type: StorageType,
    pub flush_max_rows: usize,
    /// Most bytes of Arrow rows built at a time: a flush writes its batch in
    /// chunks of this size, so no column's offsets can pass 2 GiB and what
    /// the writer holds is bounded whatever the spans expand to.
    pub flush_max_bytes: usize,
    pub flush_interval_secs: Seconds,
    /// Longest a flush may spend reading back stored spans (the replay
    /// check) and writing its data files to object storage: a hung S3 then
    /// fails the attempt, which is retried, instead of stopping every
    /// flush. Files of a failed attempt are left to orphan cleanup.
    pub write_timeout_secs: Seconds,
    /// Longest stored attribute value, in bytes (OpenTelemetry's
    /// `AttributeValueLengthLimit`); longer values are cut on a character
    /// boundary and the row marked `tss.truncated`.
    pub attribute_value_max_bytes: usize,
    /// Most attributes (and events) stored per resource, span and event
    /// (OpenTelemetry's `AttributeCountLimit`); the rest are dropped and the
    /// row marked `tss.truncated`.
    pub attribute_max_count: usize,
    /// Rows per Parquet row group: the unit a trace lookup skips or reads.
    pub parquet_row_group_rows: usize,
    /// False-positive probability of the bloom filter on `trace_id` in every
    /// row group.
    pub trace_id_bloom_fpp: f64,
    /// Day partitions older than this many days are removed by maintenance;
    /// 0 keeps everything.
    pub retention_days: u32,
    pub iceberg: IcebergConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogType {
    Sql,
    Rest,
    Memory,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcebergConfig {
    pub catalog_type: CatalogType,
    pub catalog_uri: CredentialUri,
    pub warehouse: String,
    pub namespace: String,
    pub table_name: String,
    #[serde(default)]
    pub project_id: Option<String>,
    /// OAuth2 client credential for the REST catalog, `client_id:client_secret`.
    #[serde(default, deserialize_with = "secret::optional")]
    pub credential: Option<SecretString>,
    /// A bearer token for the REST catalog, used as is (it is not refreshed).
    #[serde(default, deserialize_with = "secret::optional")]
    pub token: Option<SecretString>,
    /// The token endpoint for `credential`; the catalog's own when unset.
    #[serde(default)]
    pub oauth2_server_uri: Option<String>,
    /// The OAuth2 scope asked for with `credential`.
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    #[serde(default, deserialize_with = "secret::optional")]
    pub s3_access_key_id: Option<SecretString>,
    #[serde(default, deserialize_with = "secret::optional")]
    pub s3_secret_access_key: Option<SecretString>,
    pub s3_region: String,
    pub s3_path_style: bool,
    /// Longest a catalog call (load, commit, …) may take; a commit that
    /// times out has an unknown outcome and is checked before its retry.
    pub request_timeout_secs: Seconds,
    /// Manifest lists and manifests kept in memory once read, in bytes:
    /// every table load would otherwise read each manifest of the current
    /// snapshot again. 0 keeps none.
    pub manifest_cache_bytes: usize,
}

impl StorageConfig {
    /// The caps on stored attributes.
    pub fn attribute_limits(&self) -> crate::model::AttributeLimits {
        crate::model::AttributeLimits {
            value_max_bytes: self.attribute_value_max_bytes,
            max_count: self.attribute_max_count,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.flush_max_rows == 0 {
            return Err(invalid("storage.flush_max_rows", "must be at least 1"));
        }
        if self.write_timeout_secs.duration().is_zero() {
            return Err(invalid("storage.write_timeout_secs", "must be positive"));
        }
        if !(1 << 20..=1 << 30).contains(&self.flush_max_bytes) {
            return Err(invalid(
                "storage.flush_max_bytes",
                "must be between 1048576 (1 MiB) and 1073741824 (1 GiB)",
            ));
        }
        if !(64..=1 << 24).contains(&self.attribute_value_max_bytes) {
            return Err(invalid(
                "storage.attribute_value_max_bytes",
                "must be between 64 and 16777216",
            ));
        }
        if !(1..=65536).contains(&self.attribute_max_count) {
            return Err(invalid(
                "storage.attribute_max_count",
                "must be between 1 and 65536",
            ));
        }
        // One row at the caps must fit a chunk many times over.
        let row_max = self.attribute_max_count * self.attribute_value_max_bytes;
        if row_max.saturating_mul(4) > self.flush_max_bytes {
            return Err(invalid(
                "storage.flush_max_bytes",
                format!(
                    "must be at least 4 × attribute_max_count × attribute_value_max_bytes \
                     ({} bytes), so that a chunk holds several rows at the caps",
                    row_max.saturating_mul(4)
                ),
            ));
        }
        seconds("storage.flush_interval_secs", self.flush_interval_secs)?;
        if !(1024..=1 << 24).contains(&self.parquet_row_group_rows) {
            return Err(invalid(
                "storage.parquet_row_group_rows",
                "must be between 1024 and 16777216",
            ));
        }
        if !(self.trace_id_bloom_fpp > 0.0 && self.trace_id_bloom_fpp < 0.5) {
            return Err(invalid(
                "storage.trace_id_bloom_fpp",
                "must be greater than 0 and less than 0.5",
            ));
        }
        let ice = &self.iceberg;
        seconds(
            "storage.iceberg.request_timeout_secs",
            ice.request_timeout_secs,
        )?;
        if ice.namespace.trim().is_empty() {
            return Err(invalid("storage.iceberg.namespace", "must not be empty"));
        }
        if ice.table_name.trim().is_empty() {
            return Err(invalid("storage.iceberg.table_name", "must not be empty"));
        }
        if ice.catalog_type != CatalogType::Memory && ice.catalog_uri.expose().trim().is_empty() {
            return Err(invalid("storage.iceberg.catalog_uri", "must not be empty"));
        }
        if ice.warehouse.trim().is_empty() {
            return Err(invalid("storage.iceberg.warehouse", "must not be empty"));
        }
        Ok(())
    }
}
