//! The HTTP API (axum): one file per resource, thin handlers over the log.
//!
//! Owns routing, request parsing and error rendering; owns no state of its own
//! beyond [`AppState`], which every handler receives.

mod appends;
mod auth;
mod batch;
mod cluster;
mod console;
mod error;
mod events;
mod extract;
mod health;
mod intake;
mod notifications;
mod openapi;
mod plugins;
mod plugins_live;
mod render;
mod slots;
mod streams;

pub use slots::Slots;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::config::{Config, Limits};
use crate::log::{AppendOutcome, EventLog, StreamAppend};
use crate::metrics::Metrics;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The event log.
    pub log: EventLog,
    /// The server's metrics.
    pub metrics: Metrics,
    /// The deployed plugins (reads).
    pub plugins: crate::plugins::Plugins,
    /// Where changes to plugins go: this node's registry, or the cluster.
    pub deployments: crate::cluster::Deployments,
    /// Size limits.
    pub limits: Limits,
    /// Cancelled when the server shuts down: ends live feeds.
    pub shutdown: CancellationToken,
    /// Keep-alive interval of live feeds.
    pub sse_keep_alive: Duration,
    /// The slots of live feeds and append sockets.
    pub slots: Slots,
}

impl AppState {
    /// The number of events a read may return: the client's `limit`, within the maximum.
    fn read_limit(&self, requested: Option<usize>) -> Result<usize, ApiError> {
        let max = self.limits.max_read_count;
        match requested {
            None => Ok(max.min(1000)),
            Some(0) => Err(ApiError::bad_request(
                "invalid_query",
                "limit must be at least 1",
            )),
            Some(n) => Ok(n.min(max)),
        }
    }

    /// Runs one append request, from parsing (`request`) to the durable
    /// outcome, and records its latency and outcome.
    async fn append_one(
        &self,
        request: impl FnOnce() -> Result<StreamAppend, ApiError>,
    ) -> Result<AppendOutcome, ApiError> {
        let started = Instant::now();
        let result = async {
            let append = request()?;
            let events = append.events.len();
            Ok::<_, ApiError>((self.log.append(append).await?, events))
        }
        .await;
        self.record_append(
            started,
            result.as_ref().ok().map(|(o, n)| (*n, o.duplicate)),
        );
        result.map(|(outcome, _)| outcome)
    }

    /// Records an append request's latency and outcome; `appended` is the
    /// number of events and whether they were all duplicates, `None` if refused.
    fn record_append(&self, started: Instant, appended: Option<(usize, bool)>) {
        match appended {
            Some((events, duplicate)) => {
                self.metrics.appends.inc();
                if !duplicate {
                    self.metrics.events_appended.inc_by(events as u64);
                }
                self.metrics
                    .append_latency
                    .observe(started.elapsed().as_secs_f64());
            }
            None => {
                self.metrics.appends_refused.inc();
            }
        }
    }
}

/// The whole API as a router, ready to serve.
pub fn router(state: AppState, config: &Config) -> Router {
    let timeout = config.request_timeout;
    let bounded = Router::new()
        .route(
            "/streams/{stream}",
            post(streams::append).get(streams::read),
        )
        .route("/events", get(events::read))
        .route("/batch", post(batch::append_batch))
        .route("/plugins", get(plugins::list))
        .route("/plugins/{name}/replay", post(plugins::replay))
        .route("/plugins/{name}/pause", post(plugins::pause))
        .route("/plugins/{name}/resume", post(plugins::resume))
        .route("/plugins/{name}/skip", post(plugins::skip))
        .route("/plugins/{name}/parked", get(plugins::parked))
        .route("/plugins/{name}/state", get(plugins::state_scan))
        .route("/plugins/{name}/state/{*key}", get(plugins::state_get))
        .route("/plugins/{name}/query", post(plugins::query))
        .route(
            "/plugins/{name}/webhook",
            put(notifications::put_webhook)
                .get(notifications::get_webhook)
                .delete(notifications::delete_webhook),
        )
        .route("/plugins/{name}/notifications", get(notifications::list))
        .route(
            "/plugins/{name}/dead-letters",
            get(notifications::dead_letters),
        )
        .route(
            "/plugins/{name}/dead-letters/{id}/retry",
            post(notifications::retry_dead_letter),
        )
        .route("/cluster", get(cluster::view))
        .route("/openapi.json", get(openapi::serve))
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            with_timeout(timeout, req, next)
        }));
    // Live feeds and append sockets last as long as the client keeps them
    // open: no request timeout.
    // A deploy carries a component of up to `max_plugin_bytes` and compiles
    // it (seconds for Python/JS): its own body limit, no request timeout.
    let plugin = put(plugins::deploy)
        .layer(DefaultBodyLimit::max(config.max_plugin_bytes))
        .get(plugins::status)
        .delete(plugins::remove);
    let mut app = Router::new()
        .route("/appends", get(appends::upgrade))
        .route("/events/live", get(events::live))
        .route("/notifications/live", get(notifications::live))
        .route("/plugins/live", get(plugins_live::live))
        .route("/plugins/{name}", plugin)
        .merge(bounded)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.limits.max_request_bytes))
        .with_state(state);
    if let Some(token) = &config.token {
        let token: Arc<str> = token.as_str().into();
        app = app.layer(middleware::from_fn_with_state(token, auth::require_token));
    }
    // After the token's layer: the console's static assets load without it
    // (they hold no data; console.rs says why), its API calls do not.
    app.merge(console::router())
}

/// The length of a page of plugin state, notifications or dead letters:
/// the client's `limit` (at least 1, at most 10,000), 100 by default.
fn page_limit(requested: Option<usize>) -> Result<usize, ApiError> {
    match requested {
        Some(0) => Err(ApiError::bad_request(
            "invalid_query",
            "limit must be at least 1",
        )),
        Some(n) => Ok(n.min(10_000)),
        None => Ok(100),
    }
}

async fn with_timeout(
    timeout: Duration,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    tokio::time::timeout(timeout, next.run(request))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the request took longer than {timeout:?}"),
            )
        })
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(
        "no_route",
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}
