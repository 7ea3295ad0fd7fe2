//! Commits that iceberg-rust 0.10's public API cannot make: a snapshot that
//! removes files (compaction, retention). Its transaction actions are
//! crate-private, so the commit goes through the catalog's own protocol:
//! - SQL (SQLite, PostgreSQL), as iceberg-catalog-sql does it: apply the
//!   updates to the metadata, check the requirements, write the new
//!   `metadata.json`, then compare-and-set the table's `metadata_location`
//!   in `iceberg_tables`;
//! - REST: `POST /v1/{prefix}/namespaces/{ns}/tables/{table}` with the
//!   requirements and updates, as the Iceberg REST spec defines it; the
//!   catalog checks the requirements and writes the metadata (409 when they
//!   fail).
//!
//! A concurrent commit (an append by the writer) makes either fail with
//! `Conflict`; the caller rebases on the new metadata and tries again.

use std::str::FromStr;

use iceberg::spec::TableMetadata;
use iceberg::table::Table;
use iceberg::{MetadataLocation, TableRequirement, TableUpdate};
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

use super::error::MaintenanceError;
use crate::config::{CatalogType, IcebergConfig};
use crate::table::CATALOG_NAME;

/// How a catalog takes a commit.
pub enum Committer {
    /// `iceberg_tables` in SQLite or PostgreSQL.
    Sql {
        pool: AnyPool,
        dollar_binds: bool,
        timeout: std::time::Duration,
    },
    /// An Iceberg REST catalog.
    Rest(RestCommitter),
}

/// The REST catalog's commit endpoint, with the same settings (OAuth2
/// client credentials or a token, headers) the catalog client uses.
pub struct RestCommitter {
    http: reqwest_catalog::Client,
    uri: String,
    prefix: Option<String>,
    headers: Vec<(String, String)>,
    token: Option<String>,
    credential: Option<(Option<String>, String)>,
    token_endpoint: String,
    scope: String,
}

impl Committer {
    pub async fn connect(cfg: &IcebergConfig) -> Result<Self, MaintenanceError> {
        match cfg.catalog_type {
            CatalogType::Sql => {
                sqlx::any::install_default_drivers();
                let pool = AnyPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(cfg.request_timeout_secs.duration())
                    .connect(cfg.catalog_uri.expose())
                    .await
                    .map_err(MaintenanceError::SqlCatalog)?;
                Ok(Committer::Sql {
                    pool,
                    dollar_binds: cfg.catalog_uri.expose().starts_with("postgres"),
                    timeout: cfg.request_timeout_secs.duration(),
                })
            }
            CatalogType::Rest => Ok(Committer::Rest(RestCommitter::connect(cfg).await?)),
            CatalogType::Memory => Err(MaintenanceError::Unsupported(
                "table maintenance needs a SQL or REST catalog; the memory catalog is for tests"
                    .into(),
            )),
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
        match self {
            Committer::Sql {
                pool,
                dollar_binds,
                timeout,
            } => {
                let commit = commit_sql(pool, *dollar_binds, table, requirements, updates);
                match tokio::time::timeout(*timeout, commit).await {
                    Ok(done) => done,
                    Err(_) => Err(MaintenanceError::CommitStateUnknown(format!(
                        "the SQL catalog did not answer within {:.0} s (storage.iceberg.request_timeout_secs)",
                        timeout.as_secs_f64()
                    ))),
                }
            }
            Committer::Rest(rest) => rest.commit(table, requirements, updates).await,
        }
    }
}

/// Applies, checks, writes the metadata, then compare-and-sets it.
async fn commit_sql(
    pool: &AnyPool,
    dollar_binds: bool,
    table: &Table,
    requirements: Vec<TableRequirement>,
    updates: Vec<TableUpdate>,
) -> Result<(), MaintenanceError> {
    for r in &requirements {
        r.check(Some(table.metadata()))
            .map_err(|e| MaintenanceError::Conflict(e.to_string()))?;
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
    let ident = table.identifier();
    let done = sqlx::query(&swap_sql(dollar_binds))
        .bind(&new)
        .bind(&current)
        .bind(CATALOG_NAME)
        .bind(ident.name())
        .bind(ident.namespace().join("."))
        .bind(&current)
        .execute(pool)
        .await
        // The UPDATE may have applied before the error (a connection lost
        // while the answer was on its way).
        .map_err(|e| MaintenanceError::CommitStateUnknown(format!("committing: {e}")))?;
    if done.rows_affected() == 0 {
        // Never published: nobody reads it.
        let _ = table.file_io().delete(&new).await;
        return Err(MaintenanceError::Conflict(format!(
            "{ident} changed since it was loaded"
        )));
    }
    Ok(())
}

fn rest_error(what: &'static str, e: impl std::fmt::Display) -> MaintenanceError {
    MaintenanceError::RestCatalog {
        what,
        reason: e.to_string(),
    }
}

impl RestCommitter {
    async fn connect(cfg: &IcebergConfig) -> Result<Self, MaintenanceError> {
        let props = crate::table::rest_props(cfg);
        let uri = cfg.catalog_uri.expose().trim_end_matches('/').to_string();
        let credential = props.get("credential").map(|c| match c.split_once(':') {
            Some((id, secret)) => (Some(id.to_string()), secret.to_string()),
            None => (None, c.clone()),
        });
        let mut rest = Self {
            http: crate::table::rest_client(cfg)?,
            token_endpoint: props
                .get("oauth2-server-uri")
                .cloned()
                .unwrap_or_else(|| format!("{uri}/v1/oauth/tokens")),
            scope: props
                .get("scope")
                .cloned()
                .unwrap_or_else(|| "catalog".into()),
            headers: props
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("header.")?.to_string(), v.clone())))
                .collect(),
            token: props.get("token").cloned(),
            credential,
            prefix: None,
            uri,
        };
        rest.prefix = rest.load_prefix(&cfg.warehouse).await?;
        Ok(rest)
    }

    /// A bearer token: the configured one, or one exchanged for the
    /// client credentials (fresh per commit: maintenance commits rarely).
    async fn bearer(&self) -> Result<Option<String>, MaintenanceError> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        let Some((id, secret)) = &self.credential else {
            return Ok(None);
        };
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_secret", secret.as_str()),
            ("scope", self.scope.as_str()),
        ];
        if let Some(id) = id {
            form.push(("client_id", id.as_str()));
        }
        let response = self
            .http
            .post(&self.token_endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| rest_error("token", e))?;
        if !response.status().is_success() {
            return Err(rest_error(
                "token",
                format!("{} from {}", response.status(), self.token_endpoint),
            ));
        }
        let body: serde_json::Value = response.json().await.map_err(|e| rest_error("token", e))?;
        Ok(body["access_token"].as_str().map(str::to_string))
    }

    async fn request(
        &self,
        method: reqwest_catalog::Method,
        url: &str,
    ) -> Result<reqwest_catalog::RequestBuilder, MaintenanceError> {
        let mut r = self.http.request(method, url);
        for (k, v) in &self.headers {
            r = r.header(k, v);
        }
        if let Some(t) = self.bearer().await? {
            r = r.bearer_auth(t);
        }
        Ok(r)
    }

    /// The warehouse's prefix, from `GET /v1/config`.
    async fn load_prefix(&self, warehouse: &str) -> Result<Option<String>, MaintenanceError> {
        let url = format!("{}/v1/config", self.uri);
        let response = self
            .request(reqwest_catalog::Method::GET, &url)
            .await?
            .query(&[("warehouse", warehouse)])
            .send()
            .await
            .map_err(|e| rest_error("config", e))?;
        if !response.status().is_success() {
            return Err(rest_error("config", response.status()));
        }
        let body: serde_json::Value = response.json().await.map_err(|e| rest_error("config", e))?;
        Ok(["overrides", "defaults"]
            .iter()
            .find_map(|k| body[k]["prefix"].as_str().map(str::to_string)))
    }

    async fn commit(
        &self,
        table: &Table,
        requirements: Vec<TableRequirement>,
        updates: Vec<TableUpdate>,
    ) -> Result<(), MaintenanceError> {
        let ident = table.identifier();
        let mut parts = vec![self.uri.clone(), "v1".into()];
        parts.extend(self.prefix.clone());
        parts.extend([
            "namespaces".into(),
            ident.namespace().to_url_string(),
            "tables".into(),
            ident.name().to_string(),
        ]);
        let url = parts.join("/");
        let body = serde_json::json!({
            "identifier": { "namespace": ident.namespace().clone().inner(), "name": ident.name() },
            "requirements": requirements,
            "updates": updates,
        });
        let response = self
            .request(reqwest_catalog::Method::POST, &url)
            .await?
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                // Refused before the request went out: it never reached the catalog.
                if e.is_connect() || e.is_builder() {
                    rest_error("commit", e)
                } else {
                    MaintenanceError::CommitStateUnknown(format!("REST catalog commit: {e}"))
                }
            })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match status {
            s if s.is_success() => Ok(()),
            reqwest_catalog::StatusCode::CONFLICT => Err(MaintenanceError::Conflict(format!(
                "{ident}: a requirement failed"
            ))),
            // The Iceberg REST spec: the commit state is unknown after a
            // 500, 502, 503 or 504 (a gateway may answer after forwarding).
            s if s.is_server_error() => Err(MaintenanceError::CommitStateUnknown(format!(
                "REST catalog commit: {s}: {text}"
            ))),
            s => Err(rest_error("commit", format!("{s}: {text}"))),
        }
    }
}

/// Whether the snapshot `snapshot_id` is in the table as `handle` loads it
/// now: after a commit of unknown outcome, whether it landed. `None` when
/// the table cannot be loaded either (then nothing may be deleted).
pub async fn landed(handle: &crate::table::TableHandle, snapshot_id: i64) -> Option<bool> {
    match handle.load().await {
        Ok(table) => Some(table.metadata().snapshot_by_id(snapshot_id).is_some()),
        Err(e) => {
            tracing::warn!(error = %e, "reloading the table to learn a commit's outcome failed");
            None
        }
    }
}

/// iceberg-catalog-sql's compare-and-set of `metadata_location`.
fn swap_sql(dollar: bool) -> String {
    let p = |n: usize| {
        if dollar {
            format!("${n}")
        } else {
            "?".to_string()
        }
    };
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
        assert!(
            super::swap_sql(true).contains("metadata_location = $1")
                && super::swap_sql(true).ends_with("= $6")
        );
    }
}
