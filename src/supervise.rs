//! Supervision of the pipeline's long-running tasks. A stage's task ends
//! only at the drain; one that ends before (a panic, an error it could not
//! handle, a loop that returned) is a dead stage. The supervisor notices it
//! at once ([`StageTask::ended`]), the process drains the other stages and
//! exits non-zero, so that systemd or Kubernetes restart it: what the dead
//! stage held stays uncommitted in Kafka and is read again.

use std::future::Future;

use tokio::task::{JoinError, JoinHandle, JoinSet};

/// Why a stage's task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageExit {
    pub stage: &'static str,
    pub cause: String,
}

impl std::fmt::Display for StageExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.stage, self.cause)
    }
}

impl StageExit {
    fn of(stage: &'static str, result: Result<(), JoinError>) -> Self {
        let cause = match result {
            Ok(()) => "stopped before shutdown".to_string(),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
            Err(_) => "was cancelled".to_string(),
        };
        Self { stage, cause }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// One stage's task, awaited once: either when it ends early or at the drain.
pub struct StageTask {
    stage: &'static str,
    handle: Option<JoinHandle<()>>,
}

impl StageTask {
    pub fn spawn<F>(stage: &'static str, task: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Self {
            stage,
            handle: Some(tokio::spawn(task)),
        }
    }

    /// Resolves when the task ends; never after it was seen to end.
    /// Cancel-safe, for a `select!` against shutdown.
    pub async fn ended(&mut self) -> StageExit {
        let Some(handle) = self.handle.as_mut() else {
            return std::future::pending().await;
        };
        let result = handle.await;
        self.handle = None;
        StageExit::of(self.stage, result)
    }

    /// Waits for the task at the drain, unless it already ended.
    pub async fn join(&mut self) {
        if let Some(handle) = self.handle.take() {
            if let Err(e) = handle.await {
                let exit = StageExit::of(self.stage, Err(e));
                tracing::error!(stage = exit.stage, cause = %exit.cause, "stage failed while draining");
            }
        }
    }
}

/// A stage of several equal tasks (the deciding workers).
pub struct StageTasks {
    stage: &'static str,
    tasks: JoinSet<()>,
}

impl StageTasks {
    pub fn new(stage: &'static str) -> Self {
        Self {
            stage,
            tasks: JoinSet::new(),
        }
    }

    pub fn spawn<F>(&mut self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Resolves when any task ends. Cancel-safe.
    pub async fn ended(&mut self) -> StageExit {
        match self.tasks.join_next().await {
            Some(result) => StageExit::of(self.stage, result),
            None => std::future::pending().await,
        }
    }

    /// Waits for every task at the drain.
    pub async fn join(&mut self) {
        while let Some(result) = self.tasks.join_next().await {
            if let Err(e) = result {
                let exit = StageExit::of(self.stage, Err(e));
                tracing::error!(stage = exit.stage, cause = %exit.cause, "stage failed while draining");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_reported_with_its_message_once() {
        let mut t = StageTask::spawn("storage writer", async { panic!("disk on fire") });
        let exit = t.ended().await;
        assert_eq!(exit.to_string(), "storage writer panicked: disk on fire");
        // Seen once: the drain's join returns at once, a second `ended` never does.
        t.join().await;
        let again = tokio::time::timeout(std::time::Duration::from_millis(50), t.ended()).await;
        assert!(again.is_err());
    }

    #[tokio::test]
    async fn an_early_return_is_a_failure_too() {
        let mut set = StageTasks::new("decide worker");
        set.spawn(async {});
        set.spawn(std::future::pending());
        assert_eq!(set.ended().await.cause, "stopped before shutdown");
        let mut formatted = StageTask::spawn("ingest", async { panic!("{} of {}", 3, 4) });
        assert_eq!(formatted.ended().await.cause, "panicked: 3 of 4");
    }
}
