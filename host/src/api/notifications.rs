//! A notifier's notifications: its webhook sink, its pull API, its dead
//! letters, and the live SSE feed of every notifier (`/notifications/live`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::AppState;
use super::error::ApiError;
use super::extract::{JsonBytes, Path, Query, last_event_id, parse_json};
use crate::log::format_timestamp;
use crate::notify::{FeedItem, Mailbox, StoredNotification, WebhookRequest};
use crate::plugins::PluginName;

/// Notifications a live feed reads from a mailbox at a time when catching up.
const CATCH_UP_PAGE: usize = 512;

fn mailbox(state: &AppState, raw: String) -> Result<Arc<Mailbox>, ApiError> {
    let name = PluginName::new(raw)?;
    Ok(state.plugins.mailbox(&name)?)
}

/// Sets the notifier's webhook sink (the secret is kept, never shown back).
#[utoipa::path(
    put,
    path = "/plugins/{name}/webhook",
    tag = "notifiers",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit")),
    request_body = crate::notify::WebhookRequest,
    responses(
        (status = 200, description = "The settings, without the secret", body = crate::api::openapi::WebhookAnswer),
        (status = 400, description = "`invalid_plugin_name`, `invalid_body` or `invalid_webhook`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found`", body = crate::api::openapi::Error),
        (status = 409, description = "`conflict`: a projection has no webhook", body = crate::api::openapi::Error),
        (status = 415, description = "`unsupported_media_type`", body = crate::api::openapi::Error),
        (status = 503, description = "`plugin_compiling`: try again once it has started", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn put_webhook(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let name = PluginName::new(raw)?;
    state.plugins.mailbox(&name)?;
    let request: WebhookRequest = parse_json(&body)?;
    let config = request
        .validate()
        .map_err(crate::plugins::PluginError::from)?;
    let view = config.view();
    state.deployments.set_webhook(&name, Some(config)).await?;
    Ok(axum::Json(json!({ "webhook": view })).into_response())
}

/// The notifier's webhook settings (without the secret), `null` when none.
#[utoipa::path(
    get,
    path = "/plugins/{name}/webhook",
    tag = "notifiers",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit")),
    responses(
        (status = 200, description = "The settings without the secret, or null", body = crate::api::openapi::WebhookAnswer),
        (status = 400, description = "`invalid_plugin_name`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found`", body = crate::api::openapi::Error),
        (status = 409, description = "`conflict`: a projection has no webhook", body = crate::api::openapi::Error),
        (status = 503, description = "`plugin_compiling`: try again once it has started", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn get_webhook(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let mailbox = mailbox(&state, raw)?;
    let webhook = blocking(move || mailbox.webhook()).await?;
    Ok(axum::Json(json!({ "webhook": webhook.map(|w| w.view()) })).into_response())
}

/// Removes the webhook: notifications wait in the mailbox until one is set.
#[utoipa::path(
    delete,
    path = "/plugins/{name}/webhook",
    tag = "notifiers",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit")),
    responses(
        (status = 200, description = "`{\"webhook\": null}`", body = crate::api::openapi::WebhookAnswer),
        (status = 400, description = "`invalid_plugin_name`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found`", body = crate::api::openapi::Error),
        (status = 409, description = "`conflict`: a projection has no webhook", body = crate::api::openapi::Error),
        (status = 503, description = "`plugin_compiling`: try again once it has started", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn delete_webhook(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let name = PluginName::new(raw)?;
    state.plugins.mailbox(&name)?;
    state.deployments.set_webhook(&name, None).await?;
    Ok(axum::Json(json!({ "webhook": null })).into_response())
}

/// Query of a page of notifications or dead letters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Start after this sequence (the previous page's `next`; default 0).
    after: Option<u64>,
    /// Most entries (default 100, at most 10,000).
    limit: Option<usize>,
}

impl PageQuery {
    /// Where the page starts (after this sequence) and how long it is.
    fn bounds(&self) -> Result<(u64, usize), ApiError> {
        Ok((self.after.unwrap_or(0), super::page_limit(self.limit)?))
    }
}

/// The notifier's notifications in order: `{"notifications": [...], "next"}`.
#[utoipa::path(
    get,
    path = "/plugins/{name}/notifications",
    tag = "notifiers",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit"), ("after" = Option<u64>, Query, description = "Start after this sequence (default 0)"), ("limit" = Option<u32>, Query, minimum = 1, description = "Most entries (default 100, at most 10,000)")),
    responses(
        (status = 200, description = "Notifications in order", body = crate::api::openapi::NotificationPage),
        (status = 400, description = "`invalid_plugin_name` or `invalid_query`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found`", body = crate::api::openapi::Error),
        (status = 409, description = "`conflict`: a projection has no notifications", body = crate::api::openapi::Error),
        (status = 503, description = "`plugin_compiling`: try again once it has started", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let (after, limit) = query.bounds()?;
    let mailbox = mailbox(&state, raw)?;
    let plugin = mailbox.plugin().clone();
    let page = blocking(move || mailbox.read(after, limit)).await?;
    let next = page.last().map_or(after, |n| n.sequence);
    let notifications: Vec<Value> = page.iter().map(|n| n.to_json(&plugin)).collect();
    Ok(axum::Json(json!({ "notifications": notifications, "next": next })).into_response())
}

/// The notifier's dead letters: `{"dead_letters": [{"notification", "attempts", "error", "at", "retrying"}], "next"}`.
#[utoipa::path(
    get,
    path = "/plugins/{name}/dead-letters",
    tag = "notifiers",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit"), ("after" = Option<u64>, Query, description = "Start after this sequence (default 0)"), ("limit" = Option<u32>, Query, minimum = 1, description = "Most entries (default 100, at most 10,000)")),
    responses(
        (status = 200, description = "Dead letters in order", body = crate::api::openapi::DeadLetterPage),
        (status = 400, description = "`invalid_plugin_name` or `invalid_query`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found`", body = crate::api::openapi::Error),
        (status = 409, description = "`conflict`: a projection has no dead letters", body = crate::api::openapi::Error),
        (status = 503, description = "`plugin_compiling`: try again once it has started", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn dead_letters(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let (after, limit) = query.bounds()?;
    let mailbox = mailbox(&state, raw)?;
    let plugin = mailbox.plugin().clone();
    let page = blocking(move || mailbox.dead_letters(after, limit)).await?;
    let next = page.last().map_or(after, |d| d.notification.sequence);
    let dead: Vec<Value> = page
        .iter()
        .map(|d| {
            json!({
                "id": d.notification.sequence,
                "notification": d.notification.to_json(&plugin),
                "attempts": d.attempts,
                "error": d.error,
                "at": format_timestamp(d.at),
                "retrying": d.retrying,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "dead_letters": dead, "next": next })).into_response())
}

/// Sends a dead letter again (its `id` is its sequence).
#[utoipa::path(
    post,
    path = "/plugins/{name}/dead-letters/{id}/retry",
    tag = "notifiers",
    params(("name" = String, Path, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "counter", description = "The plugin: 1-64 of a-z, 0-9, - and _, starting with a letter or digit"), ("id" = u64, Path, description = "The dead letter's id (its sequence)")),
    responses(
        (status = 202, description = "`{\"retrying\": id}`", body = crate::api::openapi::CommandAnswer),
        (status = 400, description = "`invalid_plugin_name` or `invalid_path`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found` or `dead_letter_not_found`", body = crate::api::openapi::Error),
        (status = 409, description = "`conflict`: a projection has no dead letters", body = crate::api::openapi::Error),
        (status = 503, description = "`plugin_compiling`: try again once it has started", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn retry_dead_letter(
    State(state): State<AppState>,
    Path((raw, id)): Path<(String, u64)>,
) -> Result<Response, ApiError> {
    let mailbox = mailbox(&state, raw)?;
    let plugin = mailbox.plugin().clone();
    if blocking(move || mailbox.retry_dead_letter(id)).await? {
        Ok((StatusCode::ACCEPTED, axum::Json(json!({ "retrying": id }))).into_response())
    } else {
        Err(ApiError::not_found(
            "dead_letter_not_found",
            format!("plugin {plugin} has no dead letter {id}"),
        ))
    }
}

/// Query of the live feed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    /// Only this notifier's notifications.
    plugin: Option<String>,
    /// Only notifications on this channel.
    channel: Option<String>,
    /// With `plugin`: first send its notifications after this sequence
    /// (`Last-Event-ID` takes precedence), then follow.
    after: Option<u64>,
}

/// Server-Sent Events: each notification as notifiers emit it (`event:
/// notification`, `id: <sequence>`, `data: <the notification's JSON>`).
/// With `plugin`, a feed can start from a sequence and resume with
/// `Last-Event-ID`; without, it is live only.
#[utoipa::path(
    get,
    path = "/notifications/live",
    tag = "notifiers",
    params(("plugin" = Option<String>, Query, description = "Only this notifier's"), ("channel" = Option<String>, Query, description = "Only this channel"), ("after" = Option<u64>, Query, description = "Catch up after this sequence (needs `plugin`)"), ("last-event-id" = Option<u64>, Header, description = "Resume after this sequence (needs `plugin`)")),
    responses(
        (status = 200, description = "Server-Sent Events: `event: notification`, `data: <Notification>`", content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_query`, `invalid_plugin_name` or `invalid_last_event_id`", body = crate::api::openapi::Error),
        (status = 404, description = "`plugin_not_found`", body = crate::api::openapi::Error),
        (status = 409, description = "`conflict`: not a notifier", body = crate::api::openapi::Error),
        (status = 503, description = "`too_many_live_feeds` or `plugin_compiling`", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn live(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<LiveQuery>,
) -> Result<Response, ApiError> {
    let slot = state.slots.live_feed()?;
    // Subscribed before reading the mailbox, so nothing falls between the two.
    let receiver = state.plugins.feed().subscribe();
    let mailbox = match query.plugin {
        Some(raw) => Some(mailbox(&state, raw)?),
        None => None,
    };
    let resume = last_event_id(&headers)?;
    let (sent, catching_up) = match &mailbox {
        Some(mailbox) => match resume.or(query.after) {
            Some(after) => (Some(after), true),
            None => {
                let mailbox = mailbox.clone();
                let last = blocking(move || mailbox.stats()).await?.emitted;
                (Some(last), false)
            }
        },
        None if query.after.is_some() => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "after needs plugin: sequences are per notifier",
            ));
        }
        None => (None, false),
    };
    let feed = LiveFeed {
        receiver,
        mailbox,
        channel: query.channel,
        sent,
        catching_up,
        buffered: VecDeque::new(),
    };
    let stream = live_notifications(feed)
        .take_until(state.shutdown.clone().cancelled_owned())
        .map(move |notification| {
            let _held = &slot;
            notification
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(state.sse_keep_alive))
        .into_response())
}

struct LiveFeed {
    receiver: broadcast::Receiver<Arc<FeedItem>>,
    /// Set when the feed is for one notifier: it can catch up from its mailbox.
    mailbox: Option<Arc<Mailbox>>,
    channel: Option<String>,
    /// The last sequence sent (one notifier only).
    sent: Option<u64>,
    /// Reading the mailbox rather than the broadcast.
    catching_up: bool,
    buffered: VecDeque<StoredNotification>,
}

impl LiveFeed {
    fn wants(&self, plugin: &str, notification: &StoredNotification) -> bool {
        self.mailbox
            .as_ref()
            .is_none_or(|m| &**m.plugin() == plugin)
            && self
                .channel
                .as_ref()
                .is_none_or(|c| *c == notification.channel)
            && self.sent.is_none_or(|sent| notification.sequence > sent)
    }

    fn event(&mut self, plugin: &str, notification: &StoredNotification) -> Event {
        if self.mailbox.is_some() {
            self.sent = Some(notification.sequence);
        }
        Event::default()
            .event("notification")
            .id(notification.sequence.to_string())
            .data(notification.to_json(plugin).to_string())
    }
}

fn live_notifications(feed: LiveFeed) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(mailbox) = f.mailbox.clone() {
                let plugin = mailbox.plugin().clone();
                while let Some(n) = f.buffered.pop_front() {
                    if f.wants(&plugin, &n) {
                        let event = f.event(&plugin, &n);
                        return Some((Ok(event), f));
                    }
                }
                if f.catching_up {
                    let after = f.sent.unwrap_or(0);
                    match blocking(move || mailbox.read(after, CATCH_UP_PAGE)).await {
                        Ok(page) if !page.is_empty() => {
                            f.buffered.extend(page);
                            continue;
                        }
                        Ok(_) => f.catching_up = false,
                        Err(error) => {
                            tracing::warn!(?error, "notification feed stopped");
                            return None;
                        }
                    }
                }
            }
            match f.receiver.recv().await {
                Ok(item) => {
                    if f.wants(&item.plugin, &item.notification) {
                        let event = f.event(&item.plugin, &item.notification);
                        return Some((Ok(event), f));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    if f.mailbox.is_some() {
                        // Read what was missed from the mailbox.
                        f.catching_up = true;
                    } else {
                        let comment = Event::default()
                            .comment(format!("lagged: {missed} notifications missed"));
                        return Some((Ok(comment), f));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// A mailbox operation, off the runtime's threads (`crate::blocking`).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::notify::NotifyError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(crate::blocking::run(move || f().map_err(crate::plugins::PluginError::from)).await?)
}
