//! A catalog that commits an append on exactly the base it was checked on.
//!
//! iceberg-rust's `Transaction::commit` reloads the table before it sends a
//! commit, and re-applies the append on whatever it finds; after a
//! conflict it retries the same way. Either skips the replay check the
//! writer made on its own base: a zombie owner's batch, or a batch whose
//! earlier commit of unknown outcome did land, would be stored twice.
//! Wrapped in [`PinnedCatalog`], the transaction sees the base the writer
//! checked, the commit carries that base's snapshot id as its requirement,
//! and a conflict comes back to the writer instead of being retried: the
//! writer reloads, looks at what landed in between ([`landed_over`]), and
//! commits on the new base only when nothing there overlaps its batch.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use iceberg::table::Table;
use iceberg::{Catalog, ErrorKind, Result, TableCommit, TableIdent};

use crate::handoff::KeptTrace;
use crate::table::bounded::delegate_catalog;
use crate::table::offsets::{self, SNAPSHOT_KAFKA_OFFSETS_KEY, SNAPSHOT_RECOVERY_JOB_KEY};

/// Delegates to `inner`, but loads `base` for its table, and reports a
/// commit conflict as final.
#[derive(Debug)]
pub struct PinnedCatalog<'a> {
    inner: &'a dyn Catalog,
    base: Table,
    conflicted: AtomicBool,
}

impl<'a> PinnedCatalog<'a> {
    pub fn new(inner: &'a dyn Catalog, base: Table) -> Self {
        Self {
            inner,
            base,
            conflicted: AtomicBool::new(false),
        }
    }

    async fn through<T>(
        &self,
        _call: &str,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        f.await
    }

    /// Whether the commit failed because the table moved past the base.
    pub fn conflicted(&self) -> bool {
        self.conflicted.load(Ordering::Relaxed)
    }
}

delegate_catalog!(PinnedCatalog<'_>, inner, through, {
    /// The pinned base: the transaction applies its append there and nowhere else.
    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        if table == self.base.identifier() {
            return Ok(self.base.clone());
        }
        self.inner.load_table(table).await
    }
    /// A conflict is final here: the writer decides what to do on the new base.
    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        self.inner.update_table(commit).await.map_err(|e| {
            if e.kind() == ErrorKind::CatalogCommitConflicts {
                self.conflicted.store(true, Ordering::Relaxed);
                e.with_retryable(false)
            } else {
                e
            }
        })
    }
});

/// The snapshots in `newer` that are not in `base`.
fn landed<'a>(
    base: &Table,
    newer: &'a Table,
) -> impl Iterator<Item = &'a iceberg::spec::SnapshotRef> + 'a {
    let known: HashSet<i64> = base
        .metadata()
        .snapshots()
        .map(|s| s.snapshot_id())
        .collect();
    newer
        .metadata()
        .snapshots()
        .filter(move |s| !known.contains(&s.snapshot_id()))
}

/// Whether a recovery job appended between `base` and `newer`: a recovery
/// batch checked on `base` must then be checked again, since that job may
/// have stored some of the same traces.
pub fn recovery_landed(base: &Table, newer: &Table) -> bool {
    landed(base, newer).any(|s| {
        s.summary()
            .additional_properties
            .contains_key(SNAPSHOT_RECOVERY_JOB_KEY)
    })
}

/// Whether a snapshot that is in `newer` but not in `base` recorded Kafka
/// offsets (of `topic`, from any owner, this one included) past a message
/// of `batch`: then some of the batch may be stored already, and it must be
/// checked against the table again before it is committed.
pub fn landed_over(base: &Table, newer: &Table, topic: &str, batch: &[KeptTrace]) -> bool {
    let mut high: HashMap<(i32, String), i64> = HashMap::new();
    for snapshot in landed(base, newer) {
        if let Some(raw) = snapshot
            .summary()
            .additional_properties
            .get(SNAPSHOT_KAFKA_OFFSETS_KEY)
        {
            offsets::add_summary(&mut high, raw, topic);
        }
    }
    let mut by_partition: HashMap<i32, i64> = HashMap::new();
    for ((partition, _owner), next) in high {
        let e = by_partition.entry(partition).or_insert(next);
        *e = (*e).max(next);
    }
    batch.iter().flat_map(|t| t.hold.msgs().iter()).any(|m| {
        by_partition
            .get(&m.partition)
            .is_some_and(|next| m.offset < *next)
    })
}
