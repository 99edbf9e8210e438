//! The web console at `/ui`: one page of plain JavaScript and CSS, compiled
//! into the binary, so it ships with the server, needs no CDN and no build
//! step, and cannot drift from the API it calls (docs/console.md).
//!
//! Owns the three static assets and their headers; owns no data. Everything
//! the page shows it asks the API for, like any other client.
//!
//! **Why these routes need no token.** The assets are the same constant
//! bytes in every eventfold binary: they hold nothing of the log, the
//! plugins or the configuration, so anyone may read them. The page then
//! asks the operator for the token and sends it as `Authorization: Bearer`
//! on every API request, each of which the token middleware checks as
//! usual. The router merges these routes in after that middleware, and only
//! these exact paths: anything else under `/ui/` is a `404` that still needs
//! the token.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("console/index.html");
const APP: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/style.css");

/// The page may load its own script and style and call this server, and
/// nothing else: no inline script, no other origin, no framing. The token
/// the page keeps in `sessionStorage` can only go back to this server.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes: the page (`/ui`, `/ui/`) and its two assets.
pub fn router() -> Router {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(app))
        .route("/ui/style.css", get(style))
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

async fn app() -> Response {
    asset("text/javascript; charset=utf-8", APP)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// An asset with its type; `no-cache` makes the browser check again after
/// an upgrade of the server rather than run an old script against a new API.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}
