//! What the HTTP surface records: requests refused as cross-site, and
//! what trace lookups read and skipped.

use prometheus::{IntCounter, IntCounterVec};

use super::registrar::Registrar;

#[derive(Clone)]
pub struct ApiMetrics {
    pub admin_requests_refused_total: IntCounterVec,
    pub trace_lookups_total: IntCounter,
    pub trace_lookup_files_total: IntCounterVec,
    pub trace_lookup_row_groups_total: IntCounterVec,
}

impl ApiMetrics {
    pub fn register(r: &Registrar) -> Result<Self, prometheus::Error> {
        Ok(Self {
            admin_requests_refused_total: r.counter_vec(
                "admin_requests_refused_total",
                "Requests to the admin port refused as cross-site, by reason: host (Host not served, 403), origin (another site's Origin, 403) or content_type (a body that is not JSON, 415)",
                &["reason"],
            )?,
            trace_lookups_total: r.counter("trace_lookups_total", "GET /admin/traces/{id} lookups")?,
            trace_lookup_files_total: r.counter_vec(
                "trace_lookup_files_total",
                "Data files trace lookups planned, by outcome: read, skipped_by_statistics (no row group's trace_id min/max covers the id) or skipped_by_bloom (the rest ruled out by trace_id bloom filters)",
                &["outcome"],
            )?,
            trace_lookup_row_groups_total: r.counter_vec(
                "trace_lookup_row_groups_total",
                "Row groups in the files trace lookups planned (planned), those their trace_id min/max ruled out (skipped_by_statistics), and those their trace_id bloom filter ruled out (skipped_by_bloom)",
                &["outcome"],
            )?,
        })
    }
}
