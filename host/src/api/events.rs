//! `GET /events` (read the global log) and `GET /events/live` (follow it over SSE).

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use super::AppState;
use super::error::ApiError;
use super::extract::{Query, last_event_id};
use super::render::events_response;
use crate::log::{EventFilter, EventLog, Position, RecordedEvent};

/// Most events examined by one read when a filter skips most of them: the
/// answer's `next` says where to go on.
const MAX_SCAN: usize = 100_000;
/// Events a live feed reads from the log at a time.
const LIVE_PAGE: usize = 512;

/// Query of a read of the global log.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadLogQuery {
    /// First position to return (inclusive; default 1, the start of the log).
    from: Option<u64>,
    /// Most events to return.
    limit: Option<usize>,
    /// Comma-separated stream categories to keep.
    category: Option<String>,
    /// Comma-separated event types to keep.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Only the events of this business process (see `filter`).
    correlation_id: Option<String>,
}

/// Query of a live feed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    /// First position to send (inclusive); `Last-Event-ID` takes precedence.
    from: Option<u64>,
    /// Comma-separated stream categories to keep.
    category: Option<String>,
    /// Comma-separated event types to keep.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Only the events of this business process (see `filter`).
    correlation_id: Option<String>,
}

/// The filter of a read: categories and types as comma-separated lists,
/// and a correlation id, which keeps the events whose metadata names it as
/// `correlation_id` and the event whose id it is.
fn filter(
    category: Option<String>,
    event_type: Option<String>,
    correlation_id: Option<String>,
) -> EventFilter {
    let list = |s: Option<String>| -> Vec<String> {
        s.iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    EventFilter {
        categories: list(category),
        event_types: list(event_type),
        correlation_id: correlation_id.filter(|id| !id.is_empty()),
    }
}

/// Reads the global log: `{"events", "next", "head"}`. With a filter, `next`
/// can be past the last event returned; continue from it.
#[utoipa::path(
    get,
    path = "/events",
    tag = "log",
    params(("from" = Option<u64>, Query, description = "First position (default 1)"), ("limit" = Option<u32>, Query, minimum = 1, description = "Most events (default 1000)"), ("category" = Option<String>, Query, description = "Comma-separated stream categories to keep"), ("type" = Option<String>, Query, description = "Comma-separated event types to keep"), ("correlation_id" = Option<String>, Query, description = "Only one business process: the events whose metadata's `correlation_id` is this, and the event whose id it is")),
    responses(
        (status = 200, description = "A page of the global log", body = crate::api::openapi::LogPage),
        (status = 400, description = "`invalid_query`", body = crate::api::openapi::Error),
        (status = 503, description = "`log_unavailable`", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn read(
    State(state): State<AppState>,
    Query(query): Query<ReadLogQuery>,
) -> Result<Response, ApiError> {
    let limit = state.read_limit(query.limit)?;
    let from = Position(query.from.unwrap_or(1));
    let filter = filter(query.category, query.event_type, query.correlation_id);
    let page = state.log.read_log(from, limit, filter, MAX_SCAN).await?;
    Ok(events_response(
        &page.events,
        &[("next", json!(page.next.0)), ("head", json!(page.head.0))],
    ))
}

/// Server-Sent Events: every event from `from` (or after `Last-Event-ID`),
/// then each new one as it is committed. The feed reads the log at the
/// client's pace, so a slow client holds one page in memory and never slows
/// the writer.
#[utoipa::path(
    get,
    path = "/events/live",
    tag = "log",
    params(("from" = Option<u64>, Query, description = "First position (default 1); `Last-Event-ID` takes precedence"), ("category" = Option<String>, Query, description = "Comma-separated stream categories to keep"), ("type" = Option<String>, Query, description = "Comma-separated event types to keep"), ("correlation_id" = Option<String>, Query, description = "Only one business process: the events whose metadata's `correlation_id` is this, and the event whose id it is"), ("last-event-id" = Option<u64>, Header, description = "Resume after this position")),
    responses(
        (status = 200, description = "Server-Sent Events: `event: event`, `id: <position>`, `data: <Event>`, until the client goes", content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_query` or `invalid_last_event_id`", body = crate::api::openapi::Error),
        (status = 503, description = "`too_many_live_feeds` or `log_unavailable`", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn live(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<LiveQuery>,
) -> Result<Response, ApiError> {
    let resume = last_event_id(&headers)?.map(|position| position.saturating_add(1));
    let slot = state.slots.live_feed()?;
    let from = Position(resume.or(query.from).unwrap_or(1).max(1));
    let cursor = LiveCursor {
        log: state.log.clone(),
        next: from,
        buffered: VecDeque::new(),
        head: state.log.watch_head(),
        filter: filter(query.category, query.event_type, query.correlation_id),
    };
    let stream = live_events(cursor)
        .take_until(state.shutdown.clone().cancelled_owned())
        .map(move |event| {
            let _held = &slot;
            event
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(state.sse_keep_alive))
        .into_response())
}

struct LiveCursor {
    log: EventLog,
    next: Position,
    buffered: VecDeque<RecordedEvent>,
    head: watch::Receiver<Position>,
    filter: EventFilter,
}

fn live_events(cursor: LiveCursor) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(event) = c.buffered.pop_front() {
                let sse = Event::default()
                    .id(event.position.0.to_string())
                    .data(event.to_json());
                return Some((Ok(sse), c));
            }
            let next = c.next;
            if c.head.borrow().0 >= next.0 {
                match c
                    .log
                    .read_log(next, LIVE_PAGE, c.filter.clone(), MAX_SCAN)
                    .await
                {
                    Ok(page) => {
                        c.next = page.next;
                        c.buffered.extend(page.events);
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "live feed stopped");
                        return None;
                    }
                }
            }
            // Wait for a commit past `next`; the writer going away ends the feed.
            if c.head.wait_for(|head| head.0 >= next.0).await.is_err() {
                return None;
            }
        }
    })
}
