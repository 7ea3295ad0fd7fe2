//! What the service runs beside its pipeline: tracked tasks stopped together,
//! and the slot the query engine is set in once the table is reachable.

use std::sync::Arc;

use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::query::QueryEngine;

/// Tasks that live as long as the service (probes, the rule sync, the query
/// engine's retry): tracked, and stopped together at the end.
#[derive(Default)]
pub(super) struct Background {
    pub(super) tasks: TaskTracker,
    pub(super) stop: CancellationToken,
}

impl Background {
    pub(super) fn spawn<F, Fut>(&self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task(self.stop.clone()));
    }

    /// Cancels the tasks and waits briefly for them to end.
    pub(super) async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        let limit = std::time::Duration::from_secs(2);
        if tokio::time::timeout(limit, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within 2 s");
        }
    }
}

// The query engine is set once; the API answers 503 until then.
pub(super) type QueryCell = Arc<OnceCell<QueryEngine>>;
