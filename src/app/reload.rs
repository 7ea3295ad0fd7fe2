//! Reloads the sampling policy list without a restart: on SIGHUP, and when
//! the `--config` file's content changes (checked every
//! `sampling.policy_watch_interval_secs`; content, not mtime, so that a
//! Kubernetes ConfigMap's symlink swap counts too).
//!
//! A reload reads the whole layered config again, so an entry is refused
//! exactly as it would be at start-up. A bad reload keeps the policies in
//! force, logs why and counts `tail_sampling_policy_reloads_total{result="error"}`.
//! Policies whose entry did not change keep their sampler state.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::decide::policy::{PolicySet, SharedPolicies};
use crate::metrics::Metrics;

pub(super) struct Reloader {
    pub file: Option<PathBuf>,
    pub interval: Duration,
    pub policies: SharedPolicies,
    pub metrics: Metrics,
}

impl Reloader {
    pub async fn run(self, stop: CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; policies reload only when the file changes");
                None
            }
        };
        let mut seen = self.read_file();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    seen = self.read_file();
                    self.reload("SIGHUP");
                }
                _ = tick.tick() => {
                    let now = self.read_file();
                    if now.is_some() && now != seen {
                        seen = now;
                        self.reload("the config file changed");
                    }
                }
            }
        }
    }

    fn read_file(&self) -> Option<Vec<u8>> {
        std::fs::read(self.file.as_ref()?).ok()
    }

    fn reload(&self, why: &str) {
        let outcome = Settings::load(self.file.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|s| {
                PolicySet::build(&s.sampling, Some(&self.policies.load()))
                    .map_err(|e| e.to_string())
            });
        match outcome {
            Ok(set) => {
                let names: Vec<String> = set.names().iter().map(|n| n.to_string()).collect();
                self.metrics.decide.policies_loaded.set(names.len() as i64);
                self.policies.store(std::sync::Arc::new(set));
                self.metrics
                    .decide
                    .policy_reloads_total
                    .with_label_values(&["ok"])
                    .inc();
                tracing::info!(trigger = why, policies = ?names, "sampling policies reloaded");
            }
            Err(e) => {
                self.metrics
                    .decide
                    .policy_reloads_total
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(trigger = why, error = %e, "sampling policies not reloaded; the previous list stays in force");
            }
        }
    }
}
