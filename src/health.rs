//! Component health for `/health` and `/health/ready`, updated by the pipeline
//! and by a background prober; the HTTP handlers only read it.

use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ComponentStatus {
    Unknown,
    Ok,
    Down {
        reason: String,
    },
    /// Turned off in the configuration (the catalog when `storage.enabled`
    /// is false): never a reason to be unready.
    Off,
}

impl ComponentStatus {
    fn usable(&self) -> bool {
        matches!(self, ComponentStatus::Ok | ComponentStatus::Off)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub ready: bool,
    pub kafka: ComponentStatus,
    pub catalog: ComponentStatus,
    pub redis: ComponentStatus,
    pub storage_writes: ComponentStatus,
    /// Down while the consumer is paused because the buffer is full.
    pub buffer: ComponentStatus,
    /// How far stream time trails the wall clock while a backlog is read;
    /// absent when the selector is caught up. Not a reason to be unready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catching_up: Option<String>,
    /// The last table-maintenance run on this instance: unknown before the
    /// first, down after a failed one. Not a reason to be unready: the
    /// pipeline keeps its guarantees while maintenance falls behind.
    pub maintenance: ComponentStatus,
    /// Down once a pipeline stage died: the process is draining and exits
    /// non-zero, and `/health/live` answers 503.
    pub stages: ComponentStatus,
    /// Where kept traces go besides the table: `sampled_topic` and each
    /// forwarder (`otlp/<name>`). A sink that is down makes the selector
    /// degraded, not unready: its backlog waits in Kafka.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sinks: std::collections::BTreeMap<String, ComponentStatus>,
    /// True while a sink or maintenance is down: the selector keeps its
    /// promise, but something it serves is behind.
    pub degraded: bool,
}

#[derive(Debug)]
struct State {
    kafka: ComponentStatus,
    catalog: ComponentStatus,
    redis: ComponentStatus,
    storage_error: Option<String>,
    backpressure: Option<String>,
    catching_up: Option<String>,
    maintenance: ComponentStatus,
    dead_stage: Option<String>,
    sinks: std::collections::BTreeMap<String, ComponentStatus>,
}

/// Cheap to clone; all clones share one state.
#[derive(Debug, Clone)]
pub struct Health {
    state: Arc<RwLock<State>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: Arc::new(RwLock::new(State {
                kafka: ComponentStatus::Unknown,
                catalog: ComponentStatus::Unknown,
                redis: ComponentStatus::Unknown,
                storage_error: None,
                backpressure: None,
                catching_up: None,
                maintenance: ComponentStatus::Unknown,
                dead_stage: None,
                sinks: Default::default(),
            })),
        }
    }
}

fn status(r: Result<(), String>) -> ComponentStatus {
    match r {
        Ok(()) => ComponentStatus::Ok,
        Err(reason) => ComponentStatus::Down { reason },
    }
}

impl Health {
    pub fn set_kafka(&self, r: Result<(), String>) {
        self.state.write().kafka = status(r);
    }

    pub fn set_catalog(&self, r: Result<(), String>) {
        self.state.write().catalog = status(r);
    }

    pub fn set_maintenance(&self, r: Result<(), String>) {
        self.state.write().maintenance = status(r);
    }

    pub fn set_redis(&self, r: Result<(), String>) {
        self.state.write().redis = status(r);
    }

    /// The last storage write error, or `None` after a successful commit.
    pub fn set_storage_error(&self, e: Option<String>) {
        self.state.write().storage_error = e;
    }

    /// Why consumption is paused, or `None` once it runs again.
    pub fn set_backpressure(&self, reason: Option<String>) {
        self.state.write().backpressure = reason;
    }

    /// How far behind the stream is while a backlog is read, or `None` once
    /// the selector is caught up.
    pub fn set_catching_up(&self, detail: Option<String>) {
        self.state.write().catching_up = detail;
    }

    /// How a sink (`sampled_topic`, `otlp/<name>`) is doing.
    pub fn set_sink(&self, sink: &str, r: Result<(), String>) {
        self.state.write().sinks.insert(sink.to_string(), status(r));
    }

    /// The table is turned off: the catalog is not needed.
    pub fn set_catalog_off(&self) {
        self.state.write().catalog = ComponentStatus::Off;
    }

    /// A pipeline stage died: the first cause is kept.
    pub fn set_stage_dead(&self, cause: String) {
        self.state.write().dead_stage.get_or_insert(cause);
    }

    /// `Err` with the cause once a stage died: the process is not live.
    pub fn live(&self) -> Result<(), String> {
        match &self.state.read().dead_stage {
            None => Ok(()),
            Some(cause) => Err(cause.clone()),
        }
    }

    /// The catch-up detail, for the readiness answer.
    pub fn catching_up(&self) -> Option<String> {
        self.state.read().catching_up.clone()
    }

    pub fn report(&self) -> HealthReport {
        let s = self.state.read();
        let down_if = |reason: &Option<String>| match reason {
            None => ComponentStatus::Ok,
            Some(reason) => ComponentStatus::Down {
                reason: reason.clone(),
            },
        };
        let storage_writes = down_if(&s.storage_error);
        let buffer = down_if(&s.backpressure);
        let stages = down_if(&s.dead_stage);
        let ready = [
            &s.kafka,
            &s.catalog,
            &s.redis,
            &storage_writes,
            &buffer,
            &stages,
        ]
        .iter()
        .all(|c| c.usable());
        let degraded = !s.maintenance.usable() && s.maintenance != ComponentStatus::Unknown
            || s.sinks.values().any(|c| !c.usable());
        HealthReport {
            ready,
            kafka: s.kafka.clone(),
            catalog: s.catalog.clone(),
            redis: s.redis.clone(),
            storage_writes,
            buffer,
            catching_up: s.catching_up.clone(),
            maintenance: s.maintenance.clone(),
            stages,
            sinks: s.sinks.clone(),
            degraded,
        }
    }

    /// `Err` names every component that is not usable, and why.
    pub fn ready(&self) -> Result<(), String> {
        let r = self.report();
        if r.ready {
            return Ok(());
        }
        let reasons: Vec<String> = [
            ("kafka", &r.kafka),
            ("catalog", &r.catalog),
            ("redis", &r.redis),
            ("storage_writes", &r.storage_writes),
            ("buffer", &r.buffer),
            ("stages", &r.stages),
        ]
        .into_iter()
        .filter_map(|(name, c)| match c {
            ComponentStatus::Ok | ComponentStatus::Off => None,
            ComponentStatus::Unknown => Some(format!("{name}: not checked yet")),
            ComponentStatus::Down { reason } => Some(format!("{name}: {reason}")),
        })
        .collect();
        Err(reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_component_is_ok() {
        let h = Health::default();
        assert!(h.ready().unwrap_err().contains("kafka: not checked yet"));
        h.set_kafka(Ok(()));
        h.set_catalog(Ok(()));
        h.set_redis(Err("connection refused".into()));
        let err = h.ready().unwrap_err();
        assert!(err.contains("redis: connection refused"), "{err}");
        assert!(!err.contains("kafka"), "{err}");
        h.set_redis(Ok(()));
        assert!(h.ready().is_ok());
        h.set_storage_error(Some("s3 down".into()));
        assert!(h.ready().unwrap_err().contains("storage_writes: s3 down"));
        h.set_storage_error(None);
        h.set_backpressure(Some("paused".into()));
        assert!(h.ready().unwrap_err().contains("buffer: paused"));
        h.set_backpressure(None);
        assert!(h.ready().is_ok());
        h.set_maintenance(Err("compaction failed".into()));
        assert!(
            h.ready().is_ok(),
            "maintenance never makes the selector unready"
        );
        assert!(matches!(
            h.report().maintenance,
            ComponentStatus::Down { .. }
        ));
        assert!(h.report().degraded);
        h.set_maintenance(Ok(()));
        h.set_sink("otlp/tempo", Err("HTTP 503".into()));
        assert!(
            h.ready().is_ok(),
            "a sink that is down never makes it unready"
        );
        assert!(h.report().degraded);
        h.set_sink("otlp/tempo", Ok(()));
        assert!(!h.report().degraded);
        h.set_catalog_off();
        assert!(h.ready().is_ok(), "a catalog turned off is not needed");
        assert!(h.live().is_ok());
        h.set_stage_dead("storage writer panicked: boom".into());
        h.set_stage_dead("a later cause".into());
        assert_eq!(h.live().unwrap_err(), "storage writer panicked: boom");
        assert!(h
            .ready()
            .unwrap_err()
            .contains("stages: storage writer panicked"));
    }
}
