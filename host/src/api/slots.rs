//! Live feeds (SSE) and append sockets (WebSocket) hold their connection for
//! as long as the client likes. Each takes a slot for its whole life, and
//! when every slot is taken the next one is refused with `503` and a message
//! naming the limit, so a flood of subscribers cannot exhaust file
//! descriptors or memory (`docs/operations.md#limits`).

use std::sync::Arc;

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::config::Limits;
use crate::metrics::Metrics;

/// The slots of long-lived requests, shared by every request.
#[derive(Clone)]
pub struct Slots {
    live_feeds: Kind,
    append_sockets: Kind,
}

/// A slot held: released when dropped, with the feed or socket.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

#[derive(Clone)]
struct Kind {
    free: Arc<Semaphore>,
    limit: usize,
    code: &'static str,
    what: &'static str,
    flag: &'static str,
}

impl Slots {
    /// Slots for the limits configured.
    pub fn new(limits: &Limits) -> Self {
        Self {
            live_feeds: Kind::new(
                limits.max_live_feeds,
                "too_many_live_feeds",
                "live feeds",
                "--max-live-feeds",
            ),
            append_sockets: Kind::new(
                limits.max_append_sockets,
                "too_many_append_sockets",
                "append sockets",
                "--max-append-sockets",
            ),
        }
    }

    /// A slot for a live feed, or `503 too_many_live_feeds`.
    pub fn live_feed(&self) -> Result<Slot, ApiError> {
        self.live_feeds.take()
    }

    /// A slot for an append socket, or `503 too_many_append_sockets`.
    pub fn append_socket(&self) -> Result<Slot, ApiError> {
        self.append_sockets.take()
    }

    /// Has `metrics` read the live feeds and append sockets open from these
    /// slots when scraped.
    pub fn export(&self, metrics: &Metrics) {
        let live_feeds = self.live_feeds.clone();
        metrics
            .connections
            .live_feeds
            .sample_from(move || live_feeds.taken());
        let append_sockets = self.append_sockets.clone();
        metrics
            .connections
            .append_sockets
            .sample_from(move || append_sockets.taken());
    }
}

impl Kind {
    fn new(limit: usize, code: &'static str, what: &'static str, flag: &'static str) -> Self {
        Self {
            free: Arc::new(Semaphore::new(limit)),
            limit,
            code,
            what,
            flag,
        }
    }

    /// How many slots are taken.
    fn taken(&self) -> i64 {
        self.limit.saturating_sub(self.free.available_permits()) as i64
    }

    fn take(&self) -> Result<Slot, ApiError> {
        let permit = self.free.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                self.code,
                format!(
                    "the server holds its limit of {} open {} ({}); retry later",
                    self.limit, self.what, self.flag
                ),
            )
            .with("limit", self.limit)
            .retry_after(1)
        })?;
        Ok(Slot { _permit: permit })
    }
}
