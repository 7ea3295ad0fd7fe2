//! Realistic trace traffic for the load generator and the benchmarks.
//!
//! A scenario is a list of services. Some are entry points with a rate of
//! their own; each calls its downstream services, so a trace is a tree: a
//! SERVER span per service, a CLIENT span per call, database calls as CLIENT
//! spans with database attributes. Latencies jitter by ±20% around each
//! service's base, errors happen at each service's rate and propagate to the
//! callers as HTTP 500s, and two anomalies can be injected: every Nth trace
//! of a service 10× slower, and an error burst for a period.
//!
//! Attributes follow the OpenTelemetry semantic conventions for HTTP and
//! database spans, 8 to 15 per span, so the encoded size is close to what an
//! instrumented service sends.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::Deserialize;

use crate::testkit::synth::{kv, kv_int};

/// What a service is: an HTTP service, or a database reached by its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    #[default]
    Http,
    Database,
}

/// One service of a scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    #[serde(default)]
    pub kind: ServiceKind,
    /// Traces per second that start at this service; 0 for internal services.
    #[serde(default)]
    pub rate_per_sec: f64,
    /// The service's own latency, jittered by ±20%.
    pub base_latency_ms: f64,
    /// Share of calls that fail, 0.0 to 1.0.
    #[serde(default)]
    pub error_rate: f64,
    /// Services this one calls, in order, for every request.
    #[serde(default)]
    pub calls: Vec<String>,
    /// The HTTP route of the service's endpoint.
    #[serde(default = "default_route")]
    pub route: String,
}

fn default_route() -> String {
    "/api".to_string()
}

/// Every Nth trace of `service` takes 10× its latency.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencySpike {
    pub service: String,
    pub every: u64,
}

/// From `start_secs` for `duration_secs`, `service` fails at `error_rate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBurst {
    pub service: String,
    pub start_secs: f64,
    pub duration_secs: f64,
    pub error_rate: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub services: Vec<ServiceSpec>,
    #[serde(default)]
    pub latency_spike: Option<LatencySpike>,
    #[serde(default)]
    pub error_burst: Option<ErrorBurst>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario: {0}")]
    Parse(toml::de::Error),
    #[error("scenario: service `{0}` calls unknown service `{1}`")]
    UnknownCall(String, String),
    #[error("scenario: `{0}` names no service")]
    UnknownService(String),
    #[error("scenario: no service has a rate_per_sec above 0")]
    NoEntryPoint,
    #[error("scenario: the calls of `{0}` form a cycle")]
    Cycle(String),
}

impl Scenario {
    /// A shop: a frontend and a mobile API as entry points, calling a
    /// catalog, a checkout and their databases. About 55 traces/s, 9 spans
    /// per frontend trace; payments fail 2% of the time.
    pub fn demo() -> Self {
        let svc = |name: &str, kind, rate, latency, error_rate, calls: &[&str], route: &str| {
            ServiceSpec {
                name: name.into(),
                kind,
                rate_per_sec: rate,
                base_latency_ms: latency,
                error_rate,
                calls: calls.iter().map(|c| c.to_string()).collect(),
                route: route.into(),
            }
        };
        use ServiceKind::{Database, Http};
        Scenario {
            services: vec![
                svc(
                    "frontend",
                    Http,
                    40.0,
                    30.0,
                    0.002,
                    &["catalog", "checkout"],
                    "/product/{id}",
                ),
                svc(
                    "mobile-api",
                    Http,
                    15.0,
                    20.0,
                    0.002,
                    &["catalog"],
                    "/v1/products",
                ),
                svc(
                    "catalog",
                    Http,
                    0.0,
                    25.0,
                    0.001,
                    &["catalog-db"],
                    "/products/{id}",
                ),
                svc(
                    "checkout",
                    Http,
                    0.0,
                    60.0,
                    0.005,
                    &["payments", "orders-db"],
                    "/checkout",
                ),
                svc("payments", Http, 0.0, 120.0, 0.02, &[], "/charge"),
                svc("catalog-db", Database, 0.0, 4.0, 0.0, &[], ""),
                svc("orders-db", Database, 0.0, 8.0, 0.0, &[], ""),
            ],
            latency_spike: Some(LatencySpike {
                service: "checkout".into(),
                every: 50,
            }),
            error_burst: None,
        }
    }

    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), ScenarioError> {
        let names: HashMap<&str, &ServiceSpec> =
            self.services.iter().map(|s| (s.name.as_str(), s)).collect();
        for s in &self.services {
            for c in &s.calls {
                if !names.contains_key(c.as_str()) {
                    return Err(ScenarioError::UnknownCall(s.name.clone(), c.clone()));
                }
            }
            // A cycle would make every trace infinite.
            let mut stack: Vec<(&str, usize)> = vec![(s.name.as_str(), 0)];
            while let Some((n, depth)) = stack.pop() {
                if depth > self.services.len() {
                    return Err(ScenarioError::Cycle(s.name.clone()));
                }
                stack.extend(names[n].calls.iter().map(|c| (c.as_str(), depth + 1)));
            }
        }
        for named in [
            self.latency_spike.as_ref().map(|l| &l.service),
            self.error_burst.as_ref().map(|b| &b.service),
        ]
        .into_iter()
        .flatten()
        {
            if !names.contains_key(named.as_str()) {
                return Err(ScenarioError::UnknownService(named.clone()));
            }
        }
        if self.total_rate() <= 0.0 {
            return Err(ScenarioError::NoEntryPoint);
        }
        Ok(())
    }

    /// Traces per second over all entry points.
    pub fn total_rate(&self) -> f64 {
        self.services.iter().map(|s| s.rate_per_sec.max(0.0)).sum()
    }
}

/// One generated trace: its id and its spans grouped by service.
pub struct GeneratedTrace {
    pub trace_id: [u8; 16],
    pub root_service: usize,
    pub error: bool,
    pub spike: bool,
    /// (service index, spans) in first-seen order.
    pub spans_by_service: Vec<(usize, Vec<Span>)>,
}

impl GeneratedTrace {
    pub fn span_count(&self) -> usize {
        self.spans_by_service.iter().map(|(_, s)| s.len()).sum()
    }
}

/// Builds traces of a scenario. Deterministic for a given seed.
pub struct TraceGenerator {
    scenario: Scenario,
    index: HashMap<String, usize>,
    resources: Vec<Resource>,
    scope: InstrumentationScope,
    rng: SmallRng,
    /// Traces that have reached the latency-spike service so far.
    spike_visits: u64,
}

impl TraceGenerator {
    pub fn new(scenario: Scenario, seed: u64) -> Self {
        let index = scenario
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let resources = scenario
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| resource(s, i))
            .collect();
        Self {
            scenario,
            index,
            resources,
            scope: InstrumentationScope {
                name: "io.opentelemetry.http".into(),
                version: "2.9.0".into(),
                ..Default::default()
            },
            rng: SmallRng::seed_from_u64(seed),
            spike_visits: 0,
        }
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// Picks an entry point in proportion to the entry rates.
    pub fn pick_root(&mut self) -> usize {
        let total = self.scenario.total_rate();
        let mut x = self.rng.random::<f64>() * total;
        for (i, s) in self.scenario.services.iter().enumerate() {
            if s.rate_per_sec > 0.0 {
                if x < s.rate_per_sec {
                    return i;
                }
                x -= s.rate_per_sec;
            }
        }
        self.scenario
            .services
            .iter()
            .position(|s| s.rate_per_sec > 0.0)
            .unwrap_or(0)
    }

    /// One trace starting at `root` and ending at `end_unix_nano`, `elapsed_secs`
    /// into the run (which places it inside or outside an error burst).
    pub fn trace(&mut self, root: usize, end_unix_nano: u64, elapsed_secs: f64) -> GeneratedTrace {
        let mut trace_id = [0u8; 16];
        self.rng.fill_bytes(&mut trace_id);
        trace_id[0] |= 1;
        let mut b = Builder {
            trace_id,
            next_span: 0,
            out: Vec::new(),
            spike_service: self.spike_service(),
            spiked: None,
            burst: self.active_burst(elapsed_secs),
        };
        let tree = self.plan(root, &mut b, 0);
        let start = end_unix_nano.saturating_sub((tree.duration_ms * 1e6) as u64);
        let error = self.emit(&tree, start, None, &mut b);
        GeneratedTrace {
            trace_id,
            root_service: root,
            error,
            spike: b.spiked == Some(true),
            spans_by_service: b.out,
        }
    }

    fn spike_service(&self) -> Option<usize> {
        self.scenario
            .latency_spike
            .as_ref()
            .and_then(|l| self.index.get(&l.service).copied())
    }

    /// Whether this trace's calls to the spike service are spiked. A trace
    /// counts once, at its first call there, whether the service is its entry
    /// point or downstream; every Nth such trace is spiked.
    fn spike_reached(&mut self, b: &mut Builder) -> bool {
        *b.spiked.get_or_insert_with(|| {
            let every = self.scenario.latency_spike.as_ref().map_or(0, |l| l.every);
            self.spike_visits += 1;
            every > 0 && self.spike_visits % every == 0
        })
    }

    fn active_burst(&self, elapsed_secs: f64) -> Option<(usize, f64)> {
        let b = self.scenario.error_burst.as_ref()?;
        let active = elapsed_secs >= b.start_secs && elapsed_secs < b.start_secs + b.duration_secs;
        active.then(|| self.index.get(&b.service).map(|i| (*i, b.error_rate)))?
    }

    /// Decides durations and failures bottom-up.
    fn plan(&mut self, service: usize, b: &mut Builder, depth: usize) -> Call {
        let spiked = b.spike_service == Some(service) && self.spike_reached(b);
        let spec = &self.scenario.services[service];
        let jitter = self.rng.random_range(0.8..1.2);
        let mut own = spec.base_latency_ms * jitter;
        if spiked {
            own *= 10.0;
        }
        let error_rate = match b.burst {
            Some((s, rate)) if s == service => rate,
            _ => spec.error_rate,
        };
        let fails = self.rng.random::<f64>() < error_rate;
        let callees: Vec<usize> = if depth < 8 {
            spec.calls
                .iter()
                .filter_map(|c| self.index.get(c).copied())
                .collect()
        } else {
            Vec::new()
        };
        let children: Vec<Call> = callees
            .into_iter()
            .map(|c| self.plan(c, b, depth + 1))
            .collect();
        let children_ms: f64 = children.iter().map(|c| c.duration_ms + 0.3).sum();
        Call {
            service,
            duration_ms: own + children_ms,
            own_ms: own,
            fails,
            children,
        }
    }

    /// Emits the spans of one call (and its subtree); returns whether it failed.
    fn emit(&mut self, call: &Call, start: u64, parent: Option<[u8; 8]>, b: &mut Builder) -> bool {
        let spec = self.scenario.services[call.service].clone();
        let end = start + (call.duration_ms * 1e6) as u64;
        let id = b.span_id();
        // Children run one after the other, after half of the own time.
        let mut t = start + (call.own_ms * 0.5e6) as u64;
        let mut child_failed = false;
        let mut child_spans = Vec::new();
        for child in &call.children {
            let child_spec = self.scenario.services[child.service].clone();
            if child_spec.kind == ServiceKind::Database {
                let failed = child.fails;
                let s = self.db_span(
                    b,
                    id,
                    &child_spec,
                    t,
                    t + (child.duration_ms * 1e6) as u64,
                    failed,
                );
                child_spans.push((call.service, s));
                child_failed |= failed;
            } else {
                // The caller's CLIENT span wraps the callee's SERVER span.
                let client_id = b.span_id();
                let inner_start = t + 150_000;
                let failed = self.emit(child, inner_start, Some(client_id), b);
                let client_end = inner_start + (child.duration_ms * 1e6) as u64 + 150_000;
                let s = self.client_span(b, client_id, id, &child_spec, t, client_end, failed);
                child_spans.push((call.service, s));
                child_failed |= failed;
            }
            t += ((child.duration_ms + 0.3) * 1e6) as u64;
        }
        let failed = call.fails || child_failed;
        let server = self.server_span(b, id, parent, &spec, start, end, failed);
        b.push(call.service, server);
        for (svc, s) in child_spans {
            b.push(svc, s);
        }
        failed
    }

    #[allow(clippy::too_many_arguments)]
    fn server_span(
        &mut self,
        b: &Builder,
        id: [u8; 8],
        parent: Option<[u8; 8]>,
        spec: &ServiceSpec,
        start: u64,
        end: u64,
        failed: bool,
    ) -> Span {
        let status_code = if failed { 500 } else { 200 };
        let attributes = vec![
            kv(
                "http.request.method",
                if spec.route.contains("checkout") {
                    "POST"
                } else {
                    "GET"
                },
            ),
            kv("http.route", &spec.route),
            kv(
                "url.path",
                &spec
                    .route
                    .replace("{id}", &self.rng.random_range(1000..9999).to_string()),
            ),
            kv("url.scheme", "http"),
            kv("server.address", &spec.name),
            kv_int("server.port", 8080),
            kv_int("http.response.status_code", status_code),
            kv("network.protocol.version", "1.1"),
            kv(
                "client.address",
                &format!(
                    "10.0.{}.{}",
                    self.rng.random_range(0..8),
                    self.rng.random_range(1..250)
                ),
            ),
            kv(
                "user_agent.original",
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0",
            ),
            kv_int(
                "http.response.body.size",
                self.rng.random_range(200..20_000),
            ),
        ];
        span_of(
            b.trace_id,
            id,
            parent,
            format!(
                "{} {}",
                if spec.route.contains("checkout") {
                    "POST"
                } else {
                    "GET"
                },
                spec.route
            ),
            span::SpanKind::Server,
            start,
            end,
            attributes,
            failed,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn client_span(
        &mut self,
        b: &Builder,
        id: [u8; 8],
        parent: [u8; 8],
        callee: &ServiceSpec,
        start: u64,
        end: u64,
        failed: bool,
    ) -> Span {
        let attributes = vec![
            kv("http.request.method", "GET"),
            kv("server.address", &callee.name),
            kv_int("server.port", 8080),
            kv(
                "url.full",
                &format!("http://{}:8080{}", callee.name, callee.route),
            ),
            kv_int("http.response.status_code", if failed { 500 } else { 200 }),
            kv("network.protocol.version", "1.1"),
            kv(
                "network.peer.address",
                &format!("10.1.0.{}", self.rng.random_range(1..250)),
            ),
            kv_int("http.request.resend_count", 0),
        ];
        span_of(
            b.trace_id,
            id,
            Some(parent),
            "GET".into(),
            span::SpanKind::Client,
            start,
            end,
            attributes,
            failed,
        )
    }

    fn db_span(
        &mut self,
        b: &mut Builder,
        parent: [u8; 8],
        db: &ServiceSpec,
        start: u64,
        end: u64,
        failed: bool,
    ) -> Span {
        let table = if db.name.contains("orders") {
            "orders"
        } else {
            "products"
        };
        let op = if table == "orders" {
            "INSERT"
        } else {
            "SELECT"
        };
        let attributes = vec![
            kv("db.system", "postgresql"),
            kv("db.namespace", &db.name),
            kv("db.operation.name", op),
            kv("db.collection.name", table),
            kv(
                "db.query.text",
                &format!("{op} * FROM {table} WHERE id = $1"),
            ),
            kv("server.address", &db.name),
            kv_int("server.port", 5432),
            kv(
                "network.peer.address",
                &format!("10.2.0.{}", self.rng.random_range(1..250)),
            ),
            kv_int("db.response.returned_rows", self.rng.random_range(0..50)),
        ];
        let id = b.span_id();
        span_of(
            b.trace_id,
            id,
            Some(parent),
            format!("{op} {table}"),
            span::SpanKind::Client,
            start,
            end,
            attributes,
            failed,
        )
    }

    /// Groups a set of traces into one OTLP request: one `ResourceSpans` per
    /// service, as an SDK's batch exporter or the Collector sends them.
    pub fn request(&self, traces: Vec<GeneratedTrace>) -> ExportTraceServiceRequest {
        let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); self.resources.len()];
        for t in traces {
            for (svc, spans) in t.spans_by_service {
                by_service[svc].extend(spans);
            }
        }
        ExportTraceServiceRequest {
            resource_spans: by_service
                .into_iter()
                .enumerate()
                .filter(|(_, spans)| !spans.is_empty())
                .map(|(i, spans)| ResourceSpans {
                    resource: Some(self.resources[i].clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(self.scope.clone()),
                        spans,
                        schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                    }],
                    schema_url: String::new(),
                })
                .collect(),
        }
    }
}

/// A call's plan: its duration, own latency and failure, and its callees.
struct Call {
    service: usize,
    duration_ms: f64,
    own_ms: f64,
    fails: bool,
    children: Vec<Call>,
}

struct Builder {
    trace_id: [u8; 16],
    next_span: u64,
    out: Vec<(usize, Vec<Span>)>,
    spike_service: Option<usize>,
    /// Whether the trace is spiked, once it has reached the spike service.
    spiked: Option<bool>,
    burst: Option<(usize, f64)>,
}

impl Builder {
    fn span_id(&mut self) -> [u8; 8] {
        self.next_span += 1;
        let mut id = [0u8; 8];
        id[..4].copy_from_slice(&self.trace_id[12..16]);
        id[4..].copy_from_slice(&(self.next_span as u32).to_be_bytes());
        id
    }

    fn push(&mut self, service: usize, span: Span) {
        match self.out.iter_mut().find(|(s, _)| *s == service) {
            Some((_, spans)) => spans.push(span),
            None => self.out.push((service, vec![span])),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn span_of(
    trace_id: [u8; 16],
    id: [u8; 8],
    parent: Option<[u8; 8]>,
    name: String,
    kind: span::SpanKind,
    start: u64,
    end: u64,
    attributes: Vec<KeyValue>,
    failed: bool,
) -> Span {
    Span {
        trace_id: trace_id.to_vec(),
        span_id: id.to_vec(),
        parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
        name,
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end.max(start),
        attributes,
        status: Some(Status {
            message: if failed {
                "request failed".into()
            } else {
                String::new()
            },
            code: if failed {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Unset as i32
            },
        }),
        ..Default::default()
    }
}

fn resource(s: &ServiceSpec, i: usize) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", &s.name),
            kv("service.version", "1.4.2"),
            kv("service.instance.id", &format!("{}-{i}-7d9f8", s.name)),
            kv("deployment.environment.name", "production"),
            kv("host.name", &format!("node-{}", i % 3)),
            kv("telemetry.sdk.language", "java"),
            kv("telemetry.sdk.name", "opentelemetry"),
            kv("telemetry.sdk.version", "1.43.0"),
        ],
        ..Default::default()
    }
}

impl From<toml::de::Error> for ScenarioError {
    fn from(e: toml::de::Error) -> Self {
        ScenarioError::Parse(e)
    }
}

/// When each span of a trace would reach Kafka if every service sent its
/// own spans through an SDK's batch span processor (the OpenTelemetry
/// SDKs' default, every 5 s: `OTEL_BSP_SCHEDULE_DELAY`), each on a phase of
/// its own, through a Collector whose Kafka exporter keys by trace id.
/// A span goes out in the first export after it ends, so one trace's spans
/// come in several messages, up to one interval apart. The export a full
/// batch (512 spans) would trigger early is left out.
pub struct BatchExporters {
    interval_nanos: u64,
    /// Per service: where its exports fall within the interval.
    phase_nanos: Vec<u64>,
}

impl BatchExporters {
    pub fn new(services: usize, interval_ms: u64, seed: u64) -> Self {
        let interval_nanos = interval_ms.max(1) * 1_000_000;
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed_ba7c);
        Self {
            interval_nanos,
            phase_nanos: (0..services)
                .map(|_| rng.random_range(0..interval_nanos))
                .collect(),
        }
    }

    /// The first export of `service` after `unix_nano`.
    pub fn next_export(&self, service: usize, unix_nano: u64) -> u64 {
        let phase = self.phase_nanos.get(service).copied().unwrap_or(0);
        let ticks = unix_nano.saturating_sub(phase) / self.interval_nanos + 1;
        ticks * self.interval_nanos + phase
    }

    /// Moves `trace` to start at `start_unix_nano` and splits it into the
    /// exports that send it: (when, the spans of one service sent then),
    /// earliest first.
    pub fn split(&self, trace: GeneratedTrace, start_unix_nano: u64) -> Vec<(u64, GeneratedTrace)> {
        let first = trace
            .spans_by_service
            .iter()
            .flat_map(|(_, spans)| spans.iter().map(|s| s.start_time_unix_nano))
            .min()
            .unwrap_or(start_unix_nano);
        let shift = start_unix_nano.saturating_sub(first);
        let mut exports: std::collections::BTreeMap<(u64, usize), Vec<Span>> = Default::default();
        for (service, spans) in trace.spans_by_service {
            for mut span in spans {
                span.start_time_unix_nano += shift;
                span.end_time_unix_nano += shift;
                for event in &mut span.events {
                    event.time_unix_nano += shift;
                }
                let at = self.next_export(service, span.end_time_unix_nano);
                exports.entry((at, service)).or_default().push(span);
            }
        }
        exports
            .into_iter()
            .map(|((at, service), spans)| {
                let part = GeneratedTrace {
                    trace_id: trace.trace_id,
                    root_service: trace.root_service,
                    error: trace.error,
                    spike: trace.spike,
                    spans_by_service: vec![(service, spans)],
                };
                (at, part)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_exporters_send_each_span_in_its_services_first_export_after_it_ends() {
        let mut g = TraceGenerator::new(Scenario::demo(), 7);
        let t = g.trace(0, 2_000_000_000_000_000_000, 0.0);
        let (id, count) = (t.trace_id, t.span_count());
        let exporters = BatchExporters::new(g.scenario().services.len(), 5_000, 7);
        let start = 3_000_000_000_000_000_000;
        let parts = exporters.split(t, start);
        assert!(parts.windows(2).all(|w| w[0].0 <= w[1].0), "earliest first");
        assert_eq!(
            parts.iter().map(|(_, p)| p.span_count()).sum::<usize>(),
            count
        );
        let mut services = std::collections::HashSet::new();
        for (at, part) in &parts {
            assert_eq!(part.trace_id, id);
            let [(service, spans)] = &part.spans_by_service[..] else {
                panic!("one service per export");
            };
            services.insert(*service);
            for span in spans {
                assert!(
                    span.start_time_unix_nano >= start,
                    "moved to start at `start`"
                );
                assert!(*at > span.end_time_unix_nano, "sent after it ends");
                assert!(
                    *at - span.end_time_unix_nano <= 5_000_000_000,
                    "within one interval"
                );
                assert_eq!(
                    exporters.next_export(*service, span.end_time_unix_nano),
                    *at
                );
            }
        }
        assert!(services.len() > 1, "a frontend trace crosses services");
        assert!(parts.len() >= services.len());
        // Exports of one service are one interval apart.
        let a = exporters.next_export(1, start);
        assert_eq!(exporters.next_export(1, a), a + 5_000_000_000);
    }

    #[test]
    fn demo_traces_are_trees_with_realistic_spans() {
        let mut g = TraceGenerator::new(Scenario::demo(), 7);
        let frontend = 0;
        let t = g.trace(frontend, 2_000_000_000_000_000_000, 0.0);
        // frontend, catalog (client+server), catalog-db, checkout (client+server),
        // payments (client+server), orders-db.
        assert_eq!(t.span_count(), 9);
        let spans: Vec<&Span> = t.spans_by_service.iter().flat_map(|(_, s)| s).collect();
        let roots = spans.iter().filter(|s| s.parent_span_id.is_empty()).count();
        assert_eq!(roots, 1);
        let ids: std::collections::HashSet<&Vec<u8>> = spans.iter().map(|s| &s.span_id).collect();
        assert_eq!(ids.len(), 9, "span ids are unique");
        for s in &spans {
            assert!(
                (8..=15).contains(&s.attributes.len()),
                "{} has {} attributes",
                s.name,
                s.attributes.len()
            );
            assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
            assert!(s.parent_span_id.is_empty() || ids.contains(&s.parent_span_id));
        }
    }

    #[test]
    fn every_nth_trace_of_the_spiked_service_is_ten_times_slower() {
        let scenario = Scenario::from_toml(
            r#"
            latency_spike = { service = "api", every = 4 }
            [[services]]
            name = "api"
            rate_per_sec = 10
            base_latency_ms = 100
            "#,
        )
        .expect("scenario");
        let mut g = TraceGenerator::new(scenario, 1);
        let durations: Vec<(bool, f64)> = (0..8)
            .map(|_| {
                let t = g.trace(0, 2_000_000_000_000_000_000, 0.0);
                let s = &t.spans_by_service[0].1[0];
                (
                    t.spike,
                    (s.end_time_unix_nano - s.start_time_unix_nano) as f64 / 1e6,
                )
            })
            .collect();
        for (i, (spike, ms)) in durations.iter().enumerate() {
            assert_eq!(*spike, (i + 1) % 4 == 0);
            if *spike {
                assert!((800.0..=1200.0).contains(ms), "{ms}");
            } else {
                assert!((80.0..=120.0).contains(ms), "{ms}");
            }
        }
    }

    #[test]
    fn a_downstream_service_is_spiked_in_every_nth_trace_that_reaches_it() {
        let scenario = Scenario::from_toml(
            r#"
            latency_spike = { service = "db", every = 3 }
            [[services]]
            name = "api"
            rate_per_sec = 10
            base_latency_ms = 10
            calls = ["db"]
            [[services]]
            name = "db"
            base_latency_ms = 100
            "#,
        )
        .expect("scenario");
        let mut g = TraceGenerator::new(scenario, 1);
        for i in 1..=9 {
            let t = g.trace(0, 2_000_000_000_000_000_000, 0.0);
            let (_, db_spans) = t
                .spans_by_service
                .iter()
                .find(|(s, _)| *s == 1)
                .expect("db spans");
            let ms = |s: &Span| (s.end_time_unix_nano - s.start_time_unix_nano) as f64 / 1e6;
            let longest = db_spans.iter().map(ms).fold(0.0, f64::max);
            assert_eq!(t.spike, i % 3 == 0, "trace {i}");
            if t.spike {
                assert!((800.0..=1200.0).contains(&longest), "trace {i}: {longest}");
            } else {
                assert!(longest <= 120.0, "trace {i}: {longest}");
            }
        }
    }

    #[test]
    fn an_error_burst_fails_its_service_only_while_it_lasts() {
        let mut scenario = Scenario::demo();
        scenario.error_burst = Some(ErrorBurst {
            service: "payments".into(),
            start_secs: 10.0,
            duration_secs: 5.0,
            error_rate: 1.0,
        });
        for s in &mut scenario.services {
            s.error_rate = 0.0;
        }
        let mut g = TraceGenerator::new(scenario, 3);
        assert!(!g.trace(0, 2_000_000_000_000_000_000, 5.0).error);
        let during = g.trace(0, 2_000_000_000_000_000_000, 12.0);
        assert!(
            during.error,
            "payments fails, and the error reaches the root"
        );
        assert!(!g.trace(0, 2_000_000_000_000_000_000, 16.0).error);
    }

    #[test]
    fn the_shipped_scenario_file_is_the_demo() {
        let text = include_str!("../../config/loadgen-demo.toml");
        let file = Scenario::from_toml(text).expect("config/loadgen-demo.toml parses");
        let demo = Scenario::demo();
        assert_eq!(file.services.len(), demo.services.len());
        assert_eq!(file.total_rate(), demo.total_rate());
        for (a, b) in file.services.iter().zip(&demo.services) {
            assert_eq!(
                (a.name.as_str(), a.kind, &a.calls),
                (b.name.as_str(), b.kind, &b.calls)
            );
            assert_eq!(a.base_latency_ms, b.base_latency_ms);
        }
    }

    #[test]
    fn bad_scenarios_are_refused_with_the_reason() {
        let unknown =
            "[[services]]\nname = \"a\"\nrate_per_sec = 1\nbase_latency_ms = 1\ncalls = [\"b\"]\n";
        assert!(matches!(
            Scenario::from_toml(unknown),
            Err(ScenarioError::UnknownCall(..))
        ));
        let cycle =
            "[[services]]\nname = \"a\"\nrate_per_sec = 1\nbase_latency_ms = 1\ncalls = [\"a\"]\n";
        assert!(matches!(
            Scenario::from_toml(cycle),
            Err(ScenarioError::Cycle(..))
        ));
        let idle = "[[services]]\nname = \"a\"\nbase_latency_ms = 1\n";
        assert!(matches!(
            Scenario::from_toml(idle),
            Err(ScenarioError::NoEntryPoint)
        ));
    }
}
