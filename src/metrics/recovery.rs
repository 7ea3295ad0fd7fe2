//! What recovery jobs record: jobs by how they ended, what they read and
//! what they stored. A job's reading and deciding count here, never in the
//! live path's series.

use prometheus::{IntCounter, IntCounterVec, IntGauge};

use super::registrar::Registrar;

#[derive(Clone)]
pub struct RecoveryMetrics {
    pub jobs_running: IntGauge,
    pub jobs_total: IntCounterVec,
    pub messages_read_total: IntCounter,
    pub traces_recovered_total: IntCounter,
    pub spans_recovered_total: IntCounter,
}

/// How a job ends: the `state` label of `recovery_jobs_total`.
pub const FINAL_STATES: [&str; 3] = ["done", "failed", "cancelled"];

impl RecoveryMetrics {
    pub fn register(r: &Registrar) -> Result<Self, prometheus::Error> {
        let m = Self {
            jobs_running: r.gauge(
                "recovery_jobs_running",
                "Recovery jobs planning, waiting or reading",
            )?,
            jobs_total: r.counter_vec(
                "recovery_jobs_total",
                "Recovery jobs that ended, by state (done, failed, cancelled)",
                &["state"],
            )?,
            messages_read_total: r.counter(
                "recovery_messages_read_total",
                "Raw-topic messages read again by recovery jobs",
            )?,
            traces_recovered_total: r.counter(
                "recovery_traces_recovered_total",
                "Traces dropped live that recovery jobs stored",
            )?,
            spans_recovered_total: r.counter(
                "recovery_spans_recovered_total",
                "Spans recovery jobs stored",
            )?,
        };
        for state in FINAL_STATES {
            m.jobs_total.with_label_values(&[state]);
        }
        Ok(m)
    }
}
