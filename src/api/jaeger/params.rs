//! The query parameters of Jaeger's legacy HTTP API, read as its query
//! parser read them (jaegertracing/jaeger, `query_parser.go` before the
//! legacy endpoints left it): times in Unix microseconds, durations as Go
//! duration strings, tags as repeated `tag=k:v` or one JSON object `tags`,
//! and unknown parameters ignored.

use std::collections::BTreeMap;

use crate::query::search::{StatusFilter, TraceSearch};

/// Results per search when `limit` is not given (Jaeger's default), and the
/// most one search may ask.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1_000;
/// The range searched when `start` is not given: this far before `end`.
pub const DEFAULT_LOOKBACK_MICROS: i64 = 3_600 * 1_000_000;
/// The range the dependency graph covers when `lookback` is not given.
pub const DEFAULT_DEPENDENCY_LOOKBACK_MS: i64 = 24 * 3_600 * 1_000;

/// A parameter that does not parse, in Jaeger's words.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("unable to parse param '{param}': {reason}")]
pub struct ParamError {
    pub param: &'static str,
    pub reason: String,
}

fn bad(param: &'static str, reason: impl Into<String>) -> ParamError {
    ParamError {
        param,
        reason: reason.into(),
    }
}

/// The parameters of a query string, in order.
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(raw: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
                .collect(),
        )
    }

    /// The first non-empty value of `name`, as Go's `Query().Get` reads it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn integer(&self, name: &'static str) -> Result<Option<i64>, ParamError> {
        self.get(name)
            .map(|v| v.parse::<i64>().map_err(|e| bad(name, e.to_string())))
            .transpose()
    }
}

/// A Go duration string (`1.5s`, `300ms`, `1h30m`, `250us`, `10µs`, `5ns`)
/// in microseconds.
pub fn go_duration_micros(text: &str) -> Result<f64, String> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(0.0);
    }
    if rest.is_empty() {
        return Err(format!("time: invalid duration \"{text}\""));
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("time: invalid duration \"{text}\""))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let micros_per_unit = match &rest[..unit_len] {
            "ns" => 0.001,
            "us" | "µs" | "μs" => 1.0,
            "ms" => 1_000.0,
            "s" => 1_000_000.0,
            "m" => 60_000_000.0,
            "h" => 3_600_000_000.0,
            "" => return Err(format!("time: missing unit in duration \"{text}\"")),
            unit => {
                return Err(format!(
                    "time: unknown unit \"{unit}\" in duration \"{text}\""
                ))
            }
        };
        total += number * micros_per_unit;
        rest = &rest[unit_len..];
    }
    Ok(if negative { -total } else { total })
}

/// Tags from `tag=k:v` (repeated) and `tags={"k":"v"}`.
fn tags(params: &Params) -> Result<BTreeMap<String, String>, ParamError> {
    let mut out = BTreeMap::new();
    for tag in params.all("tag").filter(|t| !t.is_empty()) {
        let (k, v) = tag.split_once(':').ok_or_else(|| {
            bad(
                "tag",
                format!("malformed 'tag' parameter, expecting key:value, received: {tag}"),
            )
        })?;
        out.insert(k.to_string(), v.to_string());
    }
    for json in params.all("tags").filter(|t| !t.is_empty()) {
        let map: BTreeMap<String, String> = serde_json::from_str(json).map_err(|e| {
            bad(
                "tags",
                format!("malformed 'tags' parameter, cannot unmarshal JSON: {e}"),
            )
        })?;
        out.extend(map);
    }
    Ok(out)
}

/// `GET /api/traces`: the search the parameters ask for, at `now_micros`;
/// tags as [`search_tags`] reads them.
pub fn trace_search(params: &Params, now_micros: i64) -> Result<TraceSearch, ParamError> {
    let end = params.integer("end")?.unwrap_or(now_micros + 1);
    let start = match params.integer("start")? {
        Some(s) => s,
        None => end.saturating_sub(lookback_micros(params)?),
    };
    if start >= end {
        return Err(bad("start", "'start' should be before 'end'"));
    }
    let mut q = TraceSearch {
        from_micros: start,
        to_micros: end,
        service: params.get("service").map(str::to_string),
        name: params.get("operation").map(str::to_string),
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    if let Some(limit) = params.integer("limit")? {
        q.limit = usize::try_from(limit)
            .ok()
            .filter(|n| *n > 0)
            .map_or(DEFAULT_LIMIT, |n| n.min(MAX_LIMIT));
    }
    let duration = |name: &'static str| {
        params
            .get(name)
            .map(|v| {
                go_duration_micros(v)
                    .map(|us| us / 1_000.0)
                    .map_err(|e| bad(name, e))
            })
            .transpose()
    };
    q.min_duration_ms = duration("minDuration")?;
    q.max_duration_ms = duration("maxDuration")?;
    if let (Some(min), Some(max)) = (q.min_duration_ms, q.max_duration_ms) {
        if max < min {
            return Err(bad(
                "maxDuration",
                "'maxDuration' should be greater than 'minDuration'",
            ));
        }
    }
    search_tags(&mut q, tags(params)?);
    Ok(q)
}

/// Tags into the search: the ones Jaeger derives from a span's status
/// (`error=true`, `otel.status_code`) search the status, `sampling.reason`
/// why the trace was kept, every other one
/// an attribute of the span or of its resource.
pub fn search_tags(q: &mut TraceSearch, tags: BTreeMap<String, String>) {
    for (key, value) in tags {
        match (key.as_str(), value.as_str()) {
            ("error", "true") => q.status = Some(StatusFilter::Error),
            ("otel.status_code", code) if StatusFilter::parse(code).is_some() => {
                q.status = StatusFilter::parse(code)
            }
            // The tag every span of a kept trace carries: why it was kept.
            ("sampling.reason", reason) => q.reason = Some(reason.to_string()),
            _ => q.attributes.push((key, value)),
        }
    }
}

/// `lookback` as the Jaeger UI sends it (`1h`, `2d`, `custom`), in
/// microseconds; the default when absent or `custom`.
fn lookback_micros(params: &Params) -> Result<i64, ParamError> {
    match params.get("lookback") {
        None | Some("custom") => Ok(DEFAULT_LOOKBACK_MICROS),
        Some(text) => {
            let days = text
                .strip_suffix('d')
                .and_then(|d| d.parse::<f64>().ok())
                .map(|d| d * 86_400_000_000.0);
            days.map_or_else(|| go_duration_micros(text), Ok)
                .map(|us| us as i64)
                .map_err(|e| bad("lookback", e))
        }
    }
}

/// `GET /api/dependencies`: `[endTs - lookback, endTs)` in microseconds, from
/// milliseconds.
pub fn dependency_range(params: &Params, now_micros: i64) -> Result<(i64, i64), ParamError> {
    let end_ms = params.integer("endTs")?.unwrap_or(now_micros / 1_000 + 1);
    let lookback_ms = params
        .integer("lookback")?
        .unwrap_or(DEFAULT_DEPENDENCY_LOOKBACK_MS);
    if lookback_ms <= 0 {
        return Err(bad("lookback", "must be positive"));
    }
    let end = end_ms.saturating_mul(1_000);
    Ok((end.saturating_sub(lookback_ms.saturating_mul(1_000)), end))
}

/// A trace id as Jaeger reads it: up to 32 hex digits, left-padded with
/// zeros, lowercase.
pub fn trace_id(text: &str) -> Result<String, ParamError> {
    if text.is_empty() || text.len() > 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(
            "traceID",
            format!("TraceID cannot be longer than 32 hex characters: {text}"),
        ));
    }
    Ok(format!("{:0>32}", text.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        for (text, micros) in [
            ("0", 0.0),
            ("1.5s", 1_500_000.0),
            ("300ms", 300_000.0),
            ("1h30m", 5_400_000_000.0),
            ("250us", 250.0),
            ("10µs", 10.0),
            ("5ns", 0.005),
        ] {
            assert_eq!(go_duration_micros(text), Ok(micros), "{text}");
        }
        for text in ["", "5", "1x", "s", "1..5s"] {
            assert!(go_duration_micros(text).is_err(), "{text}");
        }
    }

    #[test]
    fn a_search_reads_jaegers_parameters() {
        let p = Params::parse(Some(
            "service=shop&operation=GET%20%2F&start=1000000&end=5000000&limit=20\
             &minDuration=1.5ms&maxDuration=2s&tag=http.method:GET&tag=url:http://x\
             &tags=%7B%22error%22%3A%22true%22%2C%22k%22%3A%22v%22%7D&lookback=custom&spanKind=server",
        ));
        let q = trace_search(&p, 9_000_000).expect("valid");
        assert_eq!(q.service.as_deref(), Some("shop"));
        assert_eq!(q.name.as_deref(), Some("GET /"));
        assert_eq!((q.from_micros, q.to_micros), (1_000_000, 5_000_000));
        assert_eq!(q.limit, 20);
        assert_eq!(
            (q.min_duration_ms, q.max_duration_ms),
            (Some(1.5), Some(2_000.0))
        );
        assert_eq!(q.status, Some(StatusFilter::Error));
        assert_eq!(
            q.attributes,
            vec![
                ("http.method".to_string(), "GET".to_string()),
                ("k".to_string(), "v".to_string()),
                ("url".to_string(), "http://x".to_string()),
            ]
        );
    }

    #[test]
    fn the_sampling_reason_tag_searches_why_a_trace_was_kept() {
        let mut q = TraceSearch::default();
        let tags = BTreeMap::from([
            ("sampling.reason".to_string(), "force_rule".to_string()),
            ("otel.status_code".to_string(), "OK".to_string()),
        ]);
        search_tags(&mut q, tags);
        assert_eq!(q.reason.as_deref(), Some("force_rule"));
        assert_eq!(q.status, Some(StatusFilter::Ok));
        assert!(q.attributes.is_empty());
    }

    #[test]
    fn defaults_and_errors() {
        let q = trace_search(&Params::parse(Some("lookback=2h")), 10_000_000_000).expect("valid");
        assert_eq!(q.to_micros - q.from_micros, 7_200_000_000);
        assert_eq!(q.limit, DEFAULT_LIMIT);
        let q = trace_search(&Params::parse(Some("lookback=2d&limit=0")), 1 << 40).expect("valid");
        assert_eq!(q.to_micros - q.from_micros, 2 * 86_400_000_000);
        assert_eq!(q.limit, DEFAULT_LIMIT);
        for (raw, param) in [
            ("start=abc", "start"),
            ("minDuration=5", "minDuration"),
            ("minDuration=2s&maxDuration=1s", "maxDuration"),
            ("tag=novalue", "tag"),
            ("tags=notjson", "tags"),
            ("limit=x", "limit"),
            ("start=5&end=5", "start"),
        ] {
            let e = trace_search(&Params::parse(Some(raw)), 1 << 40).expect_err(raw);
            assert_eq!(e.param, param, "{raw}: {e}");
        }
    }

    #[test]
    fn trace_ids_are_padded_and_checked() {
        assert_eq!(
            trace_id("ABCdef").expect("valid"),
            "00000000000000000000000000abcdef"
        );
        assert!(trace_id("xyz").is_err());
        assert!(trace_id(&"a".repeat(33)).is_err());
    }

    #[test]
    fn dependencies_are_milliseconds() {
        let p = Params::parse(Some("endTs=2000&lookback=500"));
        assert_eq!(dependency_range(&p, 0), Ok((1_500_000, 2_000_000)));
        assert!(dependency_range(&Params::parse(Some("lookback=0")), 0).is_err());
    }
}
