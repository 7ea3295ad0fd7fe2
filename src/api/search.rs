//! `GET /admin/traces` (trace search) and `GET /admin/services` (the filter
//! lists): query parameters in, 400 naming the parameter at fault.

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::error::ApiError;
use super::state::{engine, AppState};
use crate::query::search::{SearchOrder, ServiceNames, StatusFilter, TraceSearch, TraceSummary};

/// Results per search when `limit` is not given, and the most it may ask.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 1_000;
/// The range searched when `from` is not given: this far before `to`.
pub const DEFAULT_RANGE_MICROS: i64 = 3_600 * 1_000_000;
/// The range `GET /admin/services` lists when `from` is not given.
pub const SERVICES_DEFAULT_RANGE_MICROS: i64 = 24 * 3_600 * 1_000_000;

/// The parameters of a query string, empty values dropped (a form's blank
/// field means "any"); an unknown name is refused.
fn parameters(raw: Option<&str>, known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if let Some((name, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            name.clone(),
            format!("unknown parameter `{name}`; known: {}", known.join(", ")),
        ));
    }
    Ok(pairs)
}

/// A time as RFC 3339 or Unix milliseconds, in Unix microseconds.
fn parse_time(name: &str, value: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = value.parse::<i64>() {
        return ms
            .checked_mul(1_000)
            .ok_or_else(|| ApiError::invalid(name, format!("{name}: {value} is out of range")));
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_micros())
        .map_err(|e| {
            ApiError::invalid(
                name,
                format!("{name}: `{value}` is neither RFC 3339 (2026-12-03T10:00:00Z) nor Unix milliseconds: {e}"),
            )
        })
}

fn parse_duration_ms(name: &str, value: &str) -> Result<f64, ApiError> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| {
            ApiError::invalid(
                name,
                format!("{name}: `{value}` is not a number of milliseconds ≥ 0"),
            )
        })
}

/// `[from, to)` from the parameters, `to` defaulting to now and `from` to
/// `default_range` before it.
fn range(pairs: &[(String, String)], default_range: i64) -> Result<(i64, i64), ApiError> {
    let get = |k: &str| {
        pairs
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let to = match get("to") {
        Some(v) => parse_time("to", v)?,
        None => chrono::Utc::now().timestamp_micros() + 1,
    };
    let from = match get("from") {
        Some(v) => parse_time("from", v)?,
        None => to.saturating_sub(default_range),
    };
    if from >= to {
        return Err(ApiError::invalid("from", "from must be before to"));
    }
    Ok((from, to))
}

const SEARCH_PARAMETERS: [&str; 11] = [
    "service",
    "name",
    "status",
    "reason",
    "min_duration_ms",
    "max_duration_ms",
    "from",
    "to",
    "attr",
    "limit",
    "sort",
];

/// The search a query string asks for.
pub fn parse_search(raw: Option<&str>) -> Result<TraceSearch, ApiError> {
    let pairs = parameters(raw, &SEARCH_PARAMETERS)?;
    let (from_micros, to_micros) = range(&pairs, DEFAULT_RANGE_MICROS)?;
    let mut q = TraceSearch {
        from_micros,
        to_micros,
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    for (name, value) in pairs {
        match name.as_str() {
            "service" => q.service = Some(value),
            "name" => q.name = Some(value),
            "reason" => q.reason = Some(value),
            "status" => {
                q.status = Some(StatusFilter::parse(&value).ok_or_else(|| {
                    ApiError::invalid(
                        "status",
                        format!("status: `{value}` is not one of error, ok, unset"),
                    )
                })?)
            }
            "min_duration_ms" => {
                q.min_duration_ms = Some(parse_duration_ms("min_duration_ms", &value)?)
            }
            "max_duration_ms" => {
                q.max_duration_ms = Some(parse_duration_ms("max_duration_ms", &value)?)
            }
            "attr" => {
                let (key, val) = value
                    .split_once('=')
                    .filter(|(k, _)| !k.trim().is_empty())
                    .ok_or_else(|| {
                        ApiError::invalid("attr", format!("attr: `{value}` is not key=value"))
                    })?;
                q.attributes
                    .push((key.trim().to_string(), val.trim().to_string()));
            }
            "limit" => {
                q.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "limit",
                            format!("limit: `{value}` is not a whole number from 1 to {MAX_LIMIT}"),
                        )
                    })?
            }
            "sort" => {
                q.order = match value.as_str() {
                    "start" => SearchOrder::Start,
                    "duration" => SearchOrder::Duration,
                    _ => {
                        return Err(ApiError::invalid(
                            "sort",
                            format!("sort: `{value}` is not start or duration"),
                        ))
                    }
                }
            }
            _ => {}
        }
    }
    if let (Some(min), Some(max)) = (q.min_duration_ms, q.max_duration_ms) {
        if min > max {
            return Err(ApiError::invalid(
                "min_duration_ms",
                "min_duration_ms must not exceed max_duration_ms",
            ));
        }
    }
    Ok(q)
}

/// `GET /admin/traces`: trace summaries, newest (or longest) first.
pub async fn traces(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_search(raw.as_deref())?;
    let result = engine(&state)?.search(&q).await.inspect_err(|e| {
        tracing::info!(error = %e, "trace search failed");
    })?;
    let micros = |us: i64| chrono::DateTime::from_timestamp_micros(us).map(|t| t.to_rfc3339());
    Ok(Json(SearchAnswer {
        from: micros(q.from_micros),
        to: micros(q.to_micros),
        count: result.traces.len(),
        limit: q.limit,
        truncated: result.truncated,
        elapsed_ms: result.elapsed_ms,
        timing: Timing {
            match_ms: result.match_ms,
            summarise_ms: result.elapsed_ms.saturating_sub(result.match_ms),
        },
        traces: result.traces,
    })
    .into_response())
}

/// The answer of `GET /admin/traces` (docs/api.md, "GET /admin/traces (search)").
#[derive(Debug, Serialize)]
struct SearchAnswer {
    /// The range searched, RFC 3339.
    from: Option<String>,
    to: Option<String>,
    count: usize,
    limit: usize,
    /// More traces matched than `limit`.
    truncated: bool,
    elapsed_ms: u64,
    timing: Timing,
    traces: Vec<TraceSummary>,
}

/// Where a search's time went: finding the traces, then summarising them.
#[derive(Debug, Serialize)]
struct Timing {
    match_ms: u64,
    summarise_ms: u64,
}

/// The answer of `GET /admin/services`.
#[derive(Debug, Serialize)]
struct ServiceList {
    services: Vec<ServiceNames>,
}

/// `GET /admin/services`: services and their span names in the range.
pub async fn services(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = parameters(raw.as_deref(), &["from", "to"])?;
    let (from, to) = range(&pairs, SERVICES_DEFAULT_RANGE_MICROS)?;
    let services = engine(&state)?.services(from, to).await?;
    Ok(Json(ServiceList { services }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(raw: &str) -> String {
        let e = parse_search(Some(raw)).expect_err(raw);
        let body = format!("{e:?}");
        body.split("field: Some(\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn bad_parameters_are_named() {
        for (raw, name) in [
            ("limit=0", "limit"),
            ("limit=abc", "limit"),
            ("limit=1001", "limit"),
            ("status=broken", "status"),
            ("min_duration_ms=-1", "min_duration_ms"),
            ("max_duration_ms=x", "max_duration_ms"),
            ("min_duration_ms=5&max_duration_ms=2", "min_duration_ms"),
            ("from=yesterday", "from"),
            ("to=2026-13-01T00:00:00Z", "to"),
            ("from=2000&to=1000", "from"),
            ("attr=novalue", "attr"),
            ("attr==x", "attr"),
            ("sort=name", "sort"),
            ("servce=x", "servce"),
        ] {
            assert_eq!(field(raw), name, "{raw}");
        }
    }

    #[test]
    fn a_search_reads_every_parameter() {
        let q = parse_search(Some(
            "service=web&name=GET%20%2F&status=ERROR&reason=error&min_duration_ms=1.5&max_duration_ms=900\
             &from=2026-12-03T10:00:00Z&to=1796295600000&attr=http.route%3D%2Fa%3Db&attr=k%3Dv&limit=50&sort=duration&reason=",
        ))
        .expect("valid");
        assert_eq!(q.service.as_deref(), Some("web"));
        assert_eq!(q.name.as_deref(), Some("GET /"));
        assert_eq!(q.status, Some(StatusFilter::Error));
        assert_eq!(
            q.reason.as_deref(),
            Some("error"),
            "a blank repeat means any, not empty"
        );
        assert_eq!(
            (q.min_duration_ms, q.max_duration_ms),
            (Some(1.5), Some(900.0))
        );
        assert_eq!(q.from_micros, 1_796_292_000_000_000);
        assert_eq!(q.to_micros, 1_796_295_600_000_000, "Unix milliseconds");
        assert_eq!(
            q.attributes,
            vec![
                ("http.route".into(), "/a=b".into()),
                ("k".into(), "v".into())
            ]
        );
        assert_eq!((q.limit, q.order), (50, SearchOrder::Duration));
    }

    #[test]
    fn defaults_are_the_last_hour() {
        let q = parse_search(None).expect("valid");
        assert_eq!(q.to_micros - q.from_micros, DEFAULT_RANGE_MICROS);
        assert_eq!((q.limit, q.order), (DEFAULT_LIMIT, SearchOrder::Start));
        assert!(q.service.is_none() && q.attributes.is_empty());
    }
}
