//! Catalog wrappers. [`BoundedCatalog`] puts a time limit on every call, so
//! that a catalog connection that hangs (a dead load balancer, a stuck
//! PostgreSQL lock) fails the call instead of stopping every append behind
//! it; [`delegate_catalog!`] writes the methods a wrapper only passes on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use iceberg::table::Table;
use iceberg::{Catalog, Error, ErrorKind, Result, TableCommit, TableIdent};

/// Implements [`Catalog`] for `$ty`: the methods given in the braces as
/// written, every other one by passing the call to `self.$inner` through
/// `self.$through(name, future)`. The whole impl block is generated so that
/// `#[async_trait]` sees the generated methods too.
macro_rules! delegate_catalog {
    ($ty:ty, $inner:ident, $through:ident, { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl iceberg::Catalog for $ty {
        $($own)*
        async fn list_namespaces(&self, parent: Option<&iceberg::NamespaceIdent>) -> iceberg::Result<Vec<iceberg::NamespaceIdent>> {
            self.$through("list_namespaces", self.$inner.list_namespaces(parent)).await
        }
        async fn create_namespace(
            &self,
            namespace: &iceberg::NamespaceIdent,
            properties: std::collections::HashMap<String, String>,
        ) -> iceberg::Result<iceberg::Namespace> {
            self.$through("create_namespace", self.$inner.create_namespace(namespace, properties)).await
        }
        async fn get_namespace(&self, namespace: &iceberg::NamespaceIdent) -> iceberg::Result<iceberg::Namespace> {
            self.$through("get_namespace", self.$inner.get_namespace(namespace)).await
        }
        async fn namespace_exists(&self, namespace: &iceberg::NamespaceIdent) -> iceberg::Result<bool> {
            self.$through("namespace_exists", self.$inner.namespace_exists(namespace)).await
        }
        async fn update_namespace(
            &self,
            namespace: &iceberg::NamespaceIdent,
            properties: std::collections::HashMap<String, String>,
        ) -> iceberg::Result<()> {
            self.$through("update_namespace", self.$inner.update_namespace(namespace, properties)).await
        }
        async fn drop_namespace(&self, namespace: &iceberg::NamespaceIdent) -> iceberg::Result<()> {
            self.$through("drop_namespace", self.$inner.drop_namespace(namespace)).await
        }
        async fn list_tables(&self, namespace: &iceberg::NamespaceIdent) -> iceberg::Result<Vec<iceberg::TableIdent>> {
            self.$through("list_tables", self.$inner.list_tables(namespace)).await
        }
        async fn create_table(
            &self,
            namespace: &iceberg::NamespaceIdent,
            creation: iceberg::TableCreation,
        ) -> iceberg::Result<iceberg::table::Table> {
            self.$through("create_table", self.$inner.create_table(namespace, creation)).await
        }
        async fn drop_table(&self, table: &iceberg::TableIdent) -> iceberg::Result<()> {
            self.$through("drop_table", self.$inner.drop_table(table)).await
        }
        async fn purge_table(&self, table: &iceberg::TableIdent) -> iceberg::Result<()> {
            self.$through("purge_table", self.$inner.purge_table(table)).await
        }
        async fn table_exists(&self, table: &iceberg::TableIdent) -> iceberg::Result<bool> {
            self.$through("table_exists", self.$inner.table_exists(table)).await
        }
        async fn rename_table(&self, src: &iceberg::TableIdent, dest: &iceberg::TableIdent) -> iceberg::Result<()> {
            self.$through("rename_table", self.$inner.rename_table(src, dest)).await
        }
        async fn register_table(
            &self,
            table: &iceberg::TableIdent,
            metadata_location: String,
        ) -> iceberg::Result<iceberg::table::Table> {
            self.$through("register_table", self.$inner.register_table(table, metadata_location)).await
        }
        }
    };
}

pub(crate) use delegate_catalog;

/// Every call of `inner` bounded by `timeout`. A commit that times out may
/// still land: its error says the commit state is unknown, and the writer
/// checks the batch against the table before it tries again.
#[derive(Debug)]
pub struct BoundedCatalog {
    inner: Arc<dyn Catalog>,
    timeout: Duration,
}

impl BoundedCatalog {
    pub fn new(inner: Arc<dyn Catalog>, timeout: Duration) -> Self {
        Self { inner, timeout }
    }

    async fn bounded<T>(&self, call: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::Unexpected,
                format!(
                    "catalog call {call} took longer than {:.0} s (storage.iceberg.request_timeout_secs){}",
                    self.timeout.as_secs_f64(),
                    if call == "update_table" { "; the commit state is unknown" } else { "" }
                ),
            )),
        }
    }
}

delegate_catalog!(BoundedCatalog, inner, bounded, {
    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        self.bounded("load_table", self.inner.load_table(table))
            .await
    }

    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        self.bounded("update_table", self.inner.update_table(commit))
            .await
    }
});

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::memory::{MemoryCatalogBuilder, MEMORY_CATALOG_WAREHOUSE};
    use iceberg::{CatalogBuilder, NamespaceIdent};

    /// A catalog call that never answers fails after the timeout.
    #[tokio::test]
    async fn a_call_that_hangs_fails_in_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = MemoryCatalogBuilder::default()
            .with_storage_factory(Arc::new(iceberg::io::LocalFsStorageFactory))
            .load(
                "t",
                [(
                    MEMORY_CATALOG_WAREHOUSE.to_string(),
                    format!("file://{}", dir.path().display()),
                )]
                .into(),
            )
            .await
            .expect("memory catalog");
        let c = BoundedCatalog::new(Arc::new(inner), Duration::from_millis(50));
        assert!(!c
            .namespace_exists(&NamespaceIdent::new("n".into()))
            .await
            .expect("answers in time"));
        let hung = c
            .bounded("update_table", std::future::pending::<Result<()>>())
            .await;
        let message = hung.expect_err("times out").to_string();
        assert!(message.contains("commit state is unknown"), "{message}");
    }
}
