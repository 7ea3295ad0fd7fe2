//! Cross-site protection for the admin port, for every route: a web page
//! open in a local browser must not be able to change or read anything.
//!
//! - **Content type.** A request with a body (`POST`, `PUT`, `PATCH`) must be
//!   `application/json`, or it gets 415. A page on another site can send a
//!   `text/plain` or form body without a CORS preflight; it cannot send JSON
//!   without one, and the admin API answers no preflight.
//! - **Host.** DNS rebinding points a name the attacker owns at 127.0.0.1,
//!   so the browser sends that name as `Host`. A request is served only when
//!   `Host` is an IP address (a rebinding always carries a name), a
//!   `localhost` name, or one of `server.allowed_hosts`; else 403.
//! - **Origin.** When a browser sends `Origin`, it must be the selector's
//!   own origin (the same authority as `Host`) or an allowed host; else 403.
//! - **Headers.** Every response says `nosniff`, may not be framed, and
//!   leaks no referrer; the UI's assets add their own Content-Security-Policy.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;

/// Which `Host` and `Origin` values the admin port serves.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    /// Lower-cased entries of `server.allowed_hosts`: `name`, `name:port`,
    /// or `*` for any host.
    allowed: Vec<String>,
    /// `admin_requests_refused_total`, by reason: `host`, `origin` or
    /// `content_type`.
    refused: Option<prometheus::IntCounterVec>,
}

impl HostPolicy {
    pub fn new(allowed: &[String]) -> Self {
        Self {
            allowed: allowed
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            refused: None,
        }
    }

    /// Counts refused requests in `counter`, labelled by reason.
    pub fn counting_refusals(mut self, counter: prometheus::IntCounterVec) -> Self {
        for reason in [HOST, ORIGIN, CONTENT_TYPE] {
            counter.with_label_values(&[reason]);
        }
        self.refused = Some(counter);
        self
    }

    /// Whether a `Host` value (`name[:port]`, `ip[:port]`, `[v6][:port]`)
    /// may be served.
    pub fn allows(&self, authority: &str) -> bool {
        let authority = authority.trim().to_ascii_lowercase();
        let host = host_of(&authority);
        if host.parse::<IpAddr>().is_ok() || host == "localhost" || host.ends_with(".localhost") {
            return true;
        }
        self.allowed
            .iter()
            .any(|a| a == "*" || *a == authority || *a == host)
    }
}

/// The host part of an authority, without port or IPv6 brackets.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// The authority of an `Origin` value (`scheme://authority`), if it has one.
fn origin_authority(origin: &str) -> Option<&str> {
    let (_, rest) = origin.split_once("://")?;
    Some(rest.trim_end_matches('/'))
}

/// The reasons a request is refused, as the metric labels them.
const HOST: &str = "host";
const ORIGIN: &str = "origin";
const CONTENT_TYPE: &str = "content_type";

/// Why a request is refused, if it is: the reason's label and the answer.
pub fn check(
    policy: &HostPolicy,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), (&'static str, ApiError)> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(host) = host {
        if !policy.allows(host) {
            return Err((
                HOST,
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("host {host:?} is not served here; add it to server.allowed_hosts"),
                ),
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        let same = match (origin_authority(origin), host) {
            (Some(a), Some(h)) => a.eq_ignore_ascii_case(h) || policy.allowed_origin(a),
            (Some(a), None) => policy.allowed_origin(a),
            (None, _) => false,
        };
        if !same {
            return Err((
                ORIGIN,
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("requests from origin {origin:?} are not served here"),
                ),
            ));
        }
    }
    if [Method::POST, Method::PUT, Method::PATCH].contains(method) && !is_json(headers) {
        return Err((
            CONTENT_TYPE,
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            ),
        ));
    }
    Ok(())
}

impl HostPolicy {
    /// An `Origin` other than the selector's own is served only when listed
    /// explicitly (a `*` lets any `Host` in, not any page).
    fn allowed_origin(&self, authority: &str) -> bool {
        let authority = authority.to_ascii_lowercase();
        let host = host_of(&authority);
        self.allowed.iter().any(|a| *a == authority || *a == host)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// The middleware: refuses what [`check`] refuses, and adds the security
/// headers to every response.
pub async fn cross_site(
    State(policy): State<Arc<HostPolicy>>,
    req: Request,
    next: Next,
) -> Response {
    let mut response = match check(&policy, req.method(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err((reason, e)) => {
            if let Some(refused) = &policy.refused {
                refused.with_label_values(&[reason]).inc();
            }
            tracing::info!(
                reason,
                method = %req.method(),
                path = %req.uri().path(),
                host = ?req.headers().get(header::HOST),
                origin = ?req.headers().get(header::ORIGIN),
                "refused a cross-site request"
            );
            axum::response::IntoResponse::into_response(e)
        }
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn status(policy: &HostPolicy, method: Method, pairs: &[(&str, &str)]) -> u16 {
        match check(policy, &method, &headers(pairs)) {
            Ok(()) => 200,
            Err((_, e)) => e.status.as_u16(),
        }
    }

    #[test]
    fn hosts_by_address_name_and_list() {
        let p = HostPolicy::new(&["selector".into(), "ui.example.com:443".into()]);
        for ok in [
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "localhost:8080",
            "app.localhost",
            "selector:8080",
            "SELECTOR",
            "ui.example.com:443",
        ] {
            assert!(p.allows(ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:8080",
            "ui.example.com:8443",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
        ] {
            assert!(!p.allows(refused), "{refused}");
        }
        assert!(HostPolicy::new(&["*".into()]).allows("anything.example"));
    }

    #[test]
    fn bodies_must_be_json() {
        let p = HostPolicy::default();
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(
            status(&p, Method::POST, &[host, ("content-type", "text/plain")]),
            415
        );
        assert_eq!(
            status(
                &p,
                Method::POST,
                &[host, ("content-type", "application/x-www-form-urlencoded")]
            ),
            415
        );
        assert_eq!(status(&p, Method::POST, &[host]), 415);
        assert_eq!(
            status(
                &p,
                Method::POST,
                &[host, ("content-type", "application/json; charset=utf-8")]
            ),
            200
        );
        assert_eq!(
            status(
                &p,
                Method::POST,
                &[host, ("content-type", "application/merge-patch+json")]
            ),
            200
        );
        assert_eq!(status(&p, Method::GET, &[host]), 200);
        assert_eq!(status(&p, Method::DELETE, &[host]), 200);
    }

    #[test]
    fn foreign_hosts_and_origins_are_refused() {
        let p = HostPolicy::new(&["*".into()]);
        let json = ("content-type", "application/json");
        assert_eq!(
            status(
                &HostPolicy::default(),
                Method::GET,
                &[("host", "evil.example")]
            ),
            403
        );
        assert_eq!(
            status(
                &p,
                Method::POST,
                &[
                    ("host", "127.0.0.1:8080"),
                    ("origin", "http://127.0.0.1:8080"),
                    json
                ]
            ),
            200
        );
        assert_eq!(
            status(
                &p,
                Method::POST,
                &[
                    ("host", "127.0.0.1:8080"),
                    ("origin", "http://127.0.0.1:9999"),
                    json
                ]
            ),
            403
        );
        assert_eq!(
            status(
                &p,
                Method::POST,
                &[("host", "127.0.0.1:8080"), ("origin", "null"), json]
            ),
            403
        );
        assert_eq!(
            status(
                &p,
                Method::GET,
                &[
                    ("host", "127.0.0.1:8080"),
                    ("origin", "https://evil.example")
                ]
            ),
            403
        );
        let listed = HostPolicy::new(&["grafana.example".into()]);
        assert_eq!(
            status(
                &listed,
                Method::GET,
                &[
                    ("host", "127.0.0.1:8080"),
                    ("origin", "https://grafana.example")
                ]
            ),
            200
        );
    }
}
