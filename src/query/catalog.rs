//! A read-only view of the catalog that shows the spans table and nothing else.
//!
//! DataFusion's Iceberg catalog provider loads every table of every namespace
//! when it is created, and fails as a whole if any one of them cannot be
//! loaded; in a shared catalog, someone else's broken table would take SQL
//! down. Showing only our table avoids that, and refusing every change makes
//! the SQL path unable to alter the catalog whatever statement gets through.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation,
    TableIdent,
};

#[derive(Debug)]
pub struct SingleTableCatalog {
    inner: Arc<dyn Catalog>,
    table: TableIdent,
}

impl SingleTableCatalog {
    pub fn new(inner: Arc<dyn Catalog>, table: TableIdent) -> Self {
        Self { inner, table }
    }

    fn read_only<T>(&self) -> Result<T> {
        Err(Error::new(
            ErrorKind::FeatureUnsupported,
            "the SQL interface is read-only",
        ))
    }

    fn check(&self, table: &TableIdent) -> Result<()> {
        if *table == self.table {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::TableNotFound,
                format!("no table {table}"),
            ))
        }
    }
}

#[async_trait]
impl Catalog for SingleTableCatalog {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> Result<Vec<NamespaceIdent>> {
        Ok(match parent {
            None => vec![self.table.namespace().clone()],
            Some(_) => vec![],
        })
    }

    async fn create_namespace(
        &self,
        _: &NamespaceIdent,
        _: HashMap<String, String>,
    ) -> Result<Namespace> {
        self.read_only()
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        Ok(namespace == self.table.namespace())
    }

    async fn update_namespace(&self, _: &NamespaceIdent, _: HashMap<String, String>) -> Result<()> {
        self.read_only()
    }

    async fn drop_namespace(&self, _: &NamespaceIdent) -> Result<()> {
        self.read_only()
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        Ok(if namespace == self.table.namespace() {
            vec![self.table.clone()]
        } else {
            vec![]
        })
    }

    async fn create_table(&self, _: &NamespaceIdent, _: TableCreation) -> Result<Table> {
        self.read_only()
    }

    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        self.check(table)?;
        self.inner.load_table(table).await
    }

    async fn drop_table(&self, _: &TableIdent) -> Result<()> {
        self.read_only()
    }

    async fn purge_table(&self, _: &TableIdent) -> Result<()> {
        self.read_only()
    }

    async fn table_exists(&self, table: &TableIdent) -> Result<bool> {
        Ok(*table == self.table && self.inner.table_exists(table).await?)
    }

    async fn rename_table(&self, _: &TableIdent, _: &TableIdent) -> Result<()> {
        self.read_only()
    }

    async fn register_table(&self, _: &TableIdent, _: String) -> Result<Table> {
        self.read_only()
    }

    async fn update_table(&self, _: TableCommit) -> Result<Table> {
        self.read_only()
    }
}
