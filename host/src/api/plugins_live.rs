//! `GET /plugins/live`: every plugin's status as Server-Sent Events, what
//! the console (`/ui`) shows live.
//!
//! Each message is the whole picture, `event: plugins` with `data:
//! {"plugins": [status, …], "head": N}`, so a client never merges deltas
//! and a reconnect needs no `Last-Event-ID`. The first is sent at once;
//! after that the feed looks every [`INTERVAL`] and sends only when
//! something changed. A status changes for reasons no single watch reports
//! (a checkpoint moves, a plugin fails, a webhook attempt fails, a rebuild
//! ends), so the feed compares what it would send with what it sent last
//! rather than waiting on each cause. Looking costs what `GET /plugins`
//! costs, twice a second, for each open feed; feeds are bounded by the
//! live-feed slots.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde_json::json;
use tokio::time::{Interval, MissedTickBehavior};

use super::AppState;
use super::error::ApiError;

/// The shortest time between two messages of one feed.
const INTERVAL: Duration = Duration::from_millis(500);

/// Server-Sent Events of every plugin's status: at once, then at most every
/// 500 ms when something changed. Ends when the server shuts down.
#[utoipa::path(
    get,
    path = "/plugins/live",
    tag = "plugins",
    responses(
        (status = 200, description = "Server-Sent Events: `event: plugins`, `data: {\"plugins\": [status…], \"head\"}` at once and whenever something changed (at most every 500 ms)", content_type = "text/event-stream", body = String),
        (status = 503, description = "`too_many_live_feeds`", body = crate::api::openapi::Error),
        (status = 401, description = "`unauthorized`: a token is required and missing or wrong", body = crate::api::openapi::Error)
    )
)]
pub async fn live(State(state): State<AppState>) -> Result<Response, ApiError> {
    let slot = state.slots.live_feed()?;
    // Read once before answering, so that a failure is an error status
    // rather than a feed that ends at once.
    let first = snapshot(&state).await?;
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick completes at once: it stands for the snapshot just read.
    ticker.tick().await;
    let feed = Feed {
        state: state.clone(),
        ticker,
        last: None,
        pending: Some(first),
    };
    let stream = statuses(feed)
        .take_until(state.shutdown.clone().cancelled_owned())
        .map(move |event| {
            let _held = &slot;
            event
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(state.sse_keep_alive))
        .into_response())
}

struct Feed {
    state: AppState,
    ticker: Interval,
    /// The data of the last message sent.
    last: Option<String>,
    /// A snapshot read and not yet compared (the first one).
    pending: Option<String>,
}

fn statuses(feed: Feed) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(feed, |mut f| async move {
        loop {
            let data = match f.pending.take() {
                Some(data) => data,
                None => {
                    f.ticker.tick().await;
                    match snapshot(&f.state).await {
                        Ok(data) => data,
                        Err(error) => {
                            tracing::warn!(?error, "plugin status feed stopped");
                            return None;
                        }
                    }
                }
            };
            if f.last.as_deref() != Some(data.as_str()) {
                let event = Event::default().event("plugins").data(&data);
                f.last = Some(data);
                return Some((Ok(event), f));
            }
        }
    })
}

/// `{"plugins": [status, …], "head": N}` as JSON text. Statuses serialise
/// their fields in a fixed order, so equal pictures give equal texts.
async fn snapshot(state: &AppState) -> Result<String, ApiError> {
    let plugins = state.plugins.list().await?;
    let head = state.log.head().0;
    Ok(json!({ "plugins": plugins, "head": head }).to_string())
}
