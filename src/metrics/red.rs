//! RED metrics (rate, errors, duration) of every span, kept or dropped:
//! `tail_sampling_span_calls_total` and `tail_sampling_span_duration_seconds`
//! by service, span name, span kind and status code.
//!
//! They cost little on the hot path: each worker adds a span to a local
//! series found through two string-keyed maps (service, then span name),
//! reading only what the ingest scan read, and merges its local series into
//! the shared ones once per tick. No atomic or lock is taken per span.
//!
//! At most `metrics.max_series` label sets exist; spans of further ones go
//! to one series whose labels are all `other`, and
//! `tail_sampling_span_metrics_overflow_spans_total` counts them.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::IntCounter;
use rustc_hash::FxHashMap;

use crate::model::SpanRecord;
use crate::otlp::format::{kind_name, status_name};

/// Grafana Tempo's span-metrics buckets, in seconds.
pub const DURATION_BUCKETS_SECS: [f64; 14] = [
    0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192,
    16.384,
];

const LABELS: [&str; 4] = ["service", "span_name", "span_kind", "status_code"];
/// The kind and status of the `other` series.
const OTHER: u8 = u8::MAX;
/// Span kinds (0 to 5) times status codes (0 to 2): the slots per name.
const SLOTS: usize = 18;

/// One label set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub service: Box<str>,
    pub span_name: Box<str>,
    pub kind: u8,
    pub status: u8,
}

impl SeriesKey {
    fn other() -> Self {
        Self {
            service: "other".into(),
            span_name: "other".into(),
            kind: OTHER,
            status: OTHER,
        }
    }

    fn labels(&self) -> [&str; 4] {
        let (kind, status) = if self.kind == OTHER {
            ("other", "other")
        } else {
            (kind_name(self.kind as i32), status_name(self.status as i32))
        };
        [&self.service, &self.span_name, kind, status]
    }
}

/// Counts and a histogram; buckets are not cumulative here.
#[derive(Debug, Clone, Copy, Default)]
struct Accum {
    count: u64,
    sum_secs: f64,
    buckets: [u64; DURATION_BUCKETS_SECS.len()],
}

impl Accum {
    fn observe(&mut self, secs: f64) {
        self.count += 1;
        self.sum_secs += secs;
        let i = DURATION_BUCKETS_SECS.partition_point(|b| *b < secs);
        if i < DURATION_BUCKETS_SECS.len() {
            self.buckets[i] += 1;
        }
    }

    fn merge(&mut self, o: &Accum) {
        self.count += o.count;
        self.sum_secs += o.sum_secs;
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
    }
}

/// The shared series, registered with the metrics registry as a collector.
pub struct RedSeries {
    max_series: usize,
    series: Mutex<HashMap<SeriesKey, Accum>>,
    overflow_spans: IntCounter,
    descs: [Desc; 2],
}

const CALLS: &str = "tail_sampling_span_calls_total";
const DURATION: &str = "tail_sampling_span_duration_seconds";

impl RedSeries {
    pub fn new(max_series: usize, overflow_spans: IntCounter) -> Result<Self, prometheus::Error> {
        let labels: Vec<String> = LABELS.iter().map(|s| s.to_string()).collect();
        let desc = |name: &str, help: &str| {
            Desc::new(name.into(), help.into(), labels.clone(), HashMap::new())
        };
        Ok(Self {
            max_series,
            series: Mutex::new(HashMap::new()),
            overflow_spans,
            descs: [
                desc(CALLS, "Spans read, kept or dropped, by service, span name, kind and status")?,
                desc(DURATION, "Durations of the spans read, kept or dropped, by service, span name, kind and status")?,
            ],
        })
    }

    /// The key itself while there is room, else the `other` key.
    fn admit(&self, key: SeriesKey) -> SeriesKey {
        let mut series = self.series.lock();
        if series.contains_key(&key) || series.len() < self.max_series {
            series.entry(key.clone()).or_default();
            key
        } else {
            SeriesKey::other()
        }
    }

    fn merge(&self, local: &mut [(SeriesKey, Accum)], overflowed: u64) {
        let mut series = self.series.lock();
        for (key, acc) in local.iter_mut().filter(|(_, a)| a.count > 0) {
            series.entry(key.clone()).or_default().merge(acc);
            *acc = Accum::default();
        }
        drop(series);
        self.overflow_spans.inc_by(overflowed);
    }

    /// Label sets in use, the `other` one included.
    pub fn series_count(&self) -> usize {
        self.series.lock().len()
    }
}

impl Collector for RedSeries {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let series = self.series.lock();
        let mut calls = Vec::with_capacity(series.len());
        let mut durations = Vec::with_capacity(series.len());
        for (key, acc) in series.iter() {
            let labels: Vec<LabelPair> = LABELS
                .iter()
                .zip(key.labels())
                .map(|(name, value)| {
                    let mut l = LabelPair::default();
                    l.set_name(name.to_string());
                    l.set_value(value.to_string());
                    l
                })
                .collect();
            let mut counter = Counter::default();
            counter.set_value(acc.count as f64);
            let mut m = Metric::from_label(labels.clone());
            m.set_counter(counter);
            calls.push(m);
            let mut h = Histogram::default();
            h.set_sample_count(acc.count);
            h.set_sample_sum(acc.sum_secs);
            let mut cumulative = 0;
            h.set_bucket(
                DURATION_BUCKETS_SECS
                    .iter()
                    .zip(acc.buckets)
                    .map(|(bound, n)| {
                        cumulative += n;
                        let mut b = Bucket::default();
                        b.set_upper_bound(*bound);
                        b.set_cumulative_count(cumulative);
                        b
                    })
                    .collect(),
            );
            let mut m = Metric::from_label(labels);
            m.set_histogram(h);
            durations.push(m);
        }
        let family = |name: &str, help: &str, kind, metrics| {
            let mut f = MetricFamily::default();
            f.set_name(name.into());
            f.set_help(help.into());
            f.set_field_type(kind);
            f.set_metric(metrics);
            f
        };
        vec![
            family(
                CALLS,
                self.descs[0].help.as_str(),
                MetricType::COUNTER,
                calls,
            ),
            family(
                DURATION,
                self.descs[1].help.as_str(),
                MetricType::HISTOGRAM,
                durations,
            ),
        ]
    }
}

/// One worker's local series. `record` on every decided trace, `flush` on
/// every tick and at the end.
pub struct RedRecorder {
    shared: Arc<RedSeries>,
    /// service → its span names' index in `names`.
    services: FxHashMap<Box<str>, usize>,
    /// span name, by the hash the ingest scan took (the name's bytes are
    /// cold by decision time) → slot (kind × status) → index + 1 into
    /// `series`.
    names: Vec<FxHashMap<u64, [u32; SLOTS]>>,
    series: Vec<(SeriesKey, Accum)>,
    positions: HashMap<SeriesKey, u32>,
    other: Option<u32>,
    overflowed: u64,
    /// Span names cached in `names`, all services together: at most
    /// `max_series`, like the services themselves, so that input with ever
    /// new names cannot grow a worker's maps once the series are full.
    cached_names: usize,
}

impl RedRecorder {
    pub fn new(shared: Arc<RedSeries>) -> Self {
        Self {
            shared,
            services: FxHashMap::default(),
            names: Vec::new(),
            series: Vec::new(),
            positions: HashMap::new(),
            other: None,
            overflowed: 0,
            cached_names: 0,
        }
    }

    pub fn record<'a>(&mut self, spans: impl IntoIterator<Item = &'a SpanRecord>) {
        // Spans of one resource share an origin: look its service up once.
        let mut last: Option<(*const crate::model::Origin, Option<usize>)> = None;
        for s in spans {
            let origin = Arc::as_ptr(&s.origin);
            let service = match last {
                Some((o, i)) if o == origin => i,
                _ => {
                    let i = self.service_index(&s.origin.service_name);
                    last = Some((origin, i));
                    i
                }
            };
            let i = match service {
                Some(service) => self.slot(service, s),
                None => self.position(SeriesKey::other()),
            };
            if Some(i) == self.other {
                self.overflowed += 1;
            }
            self.series[i as usize]
                .1
                .observe(s.duration_nanos() as f64 / 1e9);
        }
    }

    /// The service's index in `names`; `None` once `max_series` services
    /// are cached and this is not one of them (its spans go to `other`:
    /// every series of it would overflow anyway).
    fn service_index(&mut self, service: &str) -> Option<usize> {
        if let Some(i) = self.services.get(service) {
            return Some(*i);
        }
        if self.services.len() >= self.shared.max_series {
            return None;
        }
        let i = self.names.len();
        self.names.push(FxHashMap::default());
        self.services.insert(service.into(), i);
        Some(i)
    }

    fn slot(&mut self, service: usize, s: &SpanRecord) -> u32 {
        let slot = (s.kind.min(5) as usize) * 3 + s.status_code.min(2) as usize;
        if let Some(slots) = self.names[service].get(&s.name_hash) {
            if slots[slot] > 0 {
                return slots[slot] - 1;
            }
        }
        let key = SeriesKey {
            service: s.origin.service_name.clone(),
            span_name: s.name().into(),
            kind: s.kind.min(5),
            status: s.status_code.min(2),
        };
        let i = self.position(self.shared.admit(key));
        let names = &mut self.names[service];
        if let Some(slots) = names.get_mut(&s.name_hash) {
            slots[slot] = i + 1;
        } else if self.cached_names < self.shared.max_series {
            let mut slots = [0; SLOTS];
            slots[slot] = i + 1;
            names.insert(s.name_hash, slots);
            self.cached_names += 1;
        }
        i
    }

    /// The index in `series` of an admitted key, added when new. The keys
    /// are those the shared series admitted, so there are at most
    /// `max_series` + 1 of them.
    fn position(&mut self, admitted: SeriesKey) -> u32 {
        let is_other = admitted.kind == OTHER;
        let i = match self.positions.get(&admitted) {
            Some(i) => *i,
            None => {
                let i = self.series.len() as u32;
                self.series.push((admitted.clone(), Accum::default()));
                self.positions.insert(admitted, i);
                i
            }
        };
        if is_other {
            self.other = Some(i);
        }
        i
    }

    /// Merges what was recorded since the last flush into the shared series.
    pub fn flush(&mut self) {
        self.shared.merge(&mut self.series, self.overflowed);
        self.overflowed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Origin;
    use bytes::Bytes;

    fn span(service: &str, name: &str, status: u8, ms: u64) -> SpanRecord {
        let mut bytes = vec![0u8; 2];
        bytes.extend_from_slice(name.as_bytes());
        SpanRecord {
            bytes: Bytes::from(bytes),
            origin: Arc::new(Origin {
                service_name: service.into(),
                ..Default::default()
            }),
            start_unix_nano: 1_000_000_000,
            end_unix_nano: 1_000_000_000 + ms * 1_000_000,
            name_range: (2, 2 + name.len() as u32),
            name_hash: crate::model::name_hash(name.as_bytes()),
            kind: 2,
            status_code: status,
            ..Default::default()
        }
    }

    fn text(series: RedSeries) -> String {
        let registry = prometheus::Registry::new();
        registry.register(Box::new(series)).expect("register");
        let mut buf = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut buf,
        )
        .expect("encode");
        String::from_utf8(buf).expect("utf8")
    }

    #[test]
    fn counts_and_durations_by_label_set_across_workers() {
        let overflow = IntCounter::new("o", "o").expect("counter");
        let shared = Arc::new(RedSeries::new(10, overflow.clone()).expect("series"));
        let mut a = RedRecorder::new(shared.clone());
        let mut b = RedRecorder::new(shared.clone());
        a.record(&[
            span("cart", "GET /cart", 0, 3),
            span("cart", "GET /cart", 2, 300),
        ]);
        b.record(&[span("cart", "GET /cart", 0, 5)]);
        a.flush();
        b.flush();
        a.flush(); // nothing new: nothing doubles
        assert_eq!(overflow.get(), 0);
        drop((a, b));
        let shared = Arc::try_unwrap(shared).ok().expect("sole owner");
        let t = text(shared);
        let ok = r#"service="cart",span_name="GET /cart",span_kind="SERVER",status_code="UNSET""#;
        let err = r#"service="cart",span_name="GET /cart",span_kind="SERVER",status_code="ERROR""#;
        assert!(
            t.contains(&format!("tail_sampling_span_calls_total{{{ok}}} 2")),
            "{t}"
        );
        assert!(
            t.contains(&format!("tail_sampling_span_calls_total{{{err}}} 1")),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "tail_sampling_span_duration_seconds_bucket{{{ok},le=\"0.004\"}} 1"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "tail_sampling_span_duration_seconds_bucket{{{ok},le=\"0.008\"}} 2"
            )),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "tail_sampling_span_duration_seconds_count{{{err}}} 1"
            )),
            "{t}"
        );
    }

    #[test]
    fn past_the_cap_new_label_sets_share_the_other_series() {
        let overflow = IntCounter::new("o", "o").expect("counter");
        let shared = Arc::new(RedSeries::new(2, overflow.clone()).expect("series"));
        let mut r = RedRecorder::new(shared.clone());
        let spans: Vec<_> = (0..5)
            .map(|i| span("svc", &format!("op-{i}"), 0, 1))
            .collect();
        r.record(&spans);
        r.record(&spans[..1]);
        r.flush();
        assert_eq!(overflow.get(), 3, "op-2, op-3 and op-4 went to `other`");
        assert_eq!(shared.series_count(), 3, "two label sets and `other`");
        drop(r);
        let shared = Arc::try_unwrap(shared).ok().expect("sole owner");
        let t = text(shared);
        assert!(t.contains(r#"tail_sampling_span_calls_total{service="other",span_name="other",span_kind="other",status_code="other"} 3"#), "{t}");
        assert!(t.contains(r#"tail_sampling_span_calls_total{service="svc",span_name="op-0",span_kind="SERVER",status_code="UNSET"} 2"#), "{t}");
    }

    #[test]
    fn new_names_past_the_limit_grow_no_worker_map() {
        let overflow = IntCounter::new("o", "o").expect("counter");
        let shared = Arc::new(RedSeries::new(5, overflow.clone()).expect("series"));
        let mut w = RedRecorder::new(shared.clone());
        let spans: Vec<SpanRecord> = (0..10_000)
            .map(|i| span(&format!("svc-{}", i % 50), &format!("name-{i}"), 0, 1))
            .collect();
        w.record(&spans);
        w.flush();
        assert!(w.services.len() <= 5, "{} services", w.services.len());
        assert!(w.cached_names <= 5);
        let names: usize = w.names.iter().map(|m| m.len()).sum();
        assert!(names <= 5, "{names} names cached");
        assert!(w.series.len() <= 6, "{} series", w.series.len());
        assert_eq!(shared.series_count(), 6, "five label sets and `other`");
        assert_eq!(overflow.get(), 10_000 - 5);
    }
}
