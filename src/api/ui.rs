//! The web UI: a single page served at `/` from assets compiled into the
//! binary, so that it needs neither the internet nor Node.js at run time.
//!
//! The page itself is public; everything it shows comes from the `/admin/*`
//! API, which asks for the bearer token when `admin.auth_token` is set. The
//! Content-Security-Policy allows only the page's own script and style, so
//! nothing injected into a trace's attributes can run next to the token.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_CSS: &str = include_str!("ui/app.css");

/// The page's ES modules, served as they are (no build step): `app.js`
/// routes, the others are the shared DOM helpers, the API client and one
/// module per page.
const MODULES: [(&str, &str); 11] = [
    ("app.js", include_str!("ui/app.js")),
    ("dom.js", include_str!("ui/dom.js")),
    ("api.js", include_str!("ui/api.js")),
    ("search.js", include_str!("ui/search.js")),
    ("trace.js", include_str!("ui/trace.js")),
    ("like.js", include_str!("ui/like.js")),
    ("jobs.js", include_str!("ui/jobs.js")),
    ("sampling.js", include_str!("ui/sampling.js")),
    ("rules.js", include_str!("ui/rules.js")),
    ("sql.js", include_str!("ui/sql.js")),
    ("overview.js", include_str!("ui/overview.js")),
];

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`, `GET /ui/app.css` and `GET /ui/{module}.js`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        );
    for (name, body) in MODULES {
        router = router.route(
            &format!("/ui/{name}"),
            get(move || async move { asset("text/javascript; charset=utf-8", body) }),
        );
    }
    router
}
