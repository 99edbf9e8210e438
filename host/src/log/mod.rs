//! The event log: an append-only sequence of events, gapless positions from
//! 1 and 0-based versions per stream, behind one handle ([`EventLog`]) with
//! two backends:
//! - [`embedded`]: one redb database in the data directory (the default);
//! - [`jetstream`]: a NATS JetStream stream, replicated by its cluster.
//!
//! Shared by both: the types of appends and events (`types`), of reads
//! (`read`), the errors (`error`), the binary form of one event
//! (`codec`), and the rules for the JSON an event may hold
//! (`portable_json`). It knows nothing of HTTP or plugins: the API and the
//! plugin runners use [`EventLog`].

mod codec;
pub mod embedded;
mod error;
pub mod jetstream;
pub mod portable_json;
mod read;
mod types;

use std::path::Path;

use tokio::sync::watch;

pub use embedded::{EmbeddedLog, LOG_FILE, LogOptions, WAL_FILE};
pub use error::LogError;
pub use jetstream::{JetStreamLog, JetStreamOptions};
pub use read::{Direction, EventFilter, LogPage, StreamPage};
pub use types::{
    AppendOutcome, EventType, ExpectedVersion, MAX_NAME_BYTES, NewEvent, Position, RecordedEvent,
    StreamAppend, StreamName, category_of, format_timestamp,
};

use crate::metrics::Metrics;

/// A handle on the event log, whichever backend holds it; cheap to clone,
/// shared by every task. Each call is one `match` on the backend: static
/// dispatch, nothing the embedded log's hot path pays for.
#[derive(Clone)]
pub struct EventLog {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Embedded(EmbeddedLog),
    JetStream(JetStreamLog),
}

impl From<EmbeddedLog> for EventLog {
    fn from(log: EmbeddedLog) -> Self {
        Self {
            backend: Backend::Embedded(log),
        }
    }
}

impl From<JetStreamLog> for EventLog {
    fn from(log: JetStreamLog) -> Self {
        Self {
            backend: Backend::JetStream(log),
        }
    }
}

impl EventLog {
    /// Opens (or creates) the embedded log in `data_dir` with default options.
    pub fn open(data_dir: &Path, metrics: Metrics) -> Result<Self, LogError> {
        Self::open_with(data_dir, metrics, LogOptions::default())
    }

    /// Opens (or creates) the embedded log in `data_dir`.
    pub fn open_with(
        data_dir: &Path,
        metrics: Metrics,
        options: LogOptions,
    ) -> Result<Self, LogError> {
        EmbeddedLog::open_with(data_dir, metrics, options).map(Self::from)
    }

    /// The embedded backend, for its own tests.
    #[cfg(test)]
    fn embedded(&self) -> &EmbeddedLog {
        match &self.backend {
            Backend::Embedded(log) => log,
            Backend::JetStream(_) => unreachable!("a test of the embedded log"),
        }
    }

    /// Appends events to one stream, atomically. Returns once they are durable.
    pub async fn append(&self, append: StreamAppend) -> Result<AppendOutcome, LogError> {
        let mut outcomes = self.append_all(vec![append]).await?;
        outcomes
            .pop()
            .ok_or_else(|| LogError::Internal("the log returned no outcome".into()))
    }

    /// Appends to several streams in one atomic step: every append's
    /// `expected_version` must hold, or nothing is appended. Returns once durable.
    pub async fn append_all(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendOutcome>, LogError> {
        types::check_request(&appends)?;
        if appends.is_empty() {
            return Ok(Vec::new());
        }
        match &self.backend {
            Backend::Embedded(log) => log.append_all(appends).await,
            Backend::JetStream(log) => log.append_all(appends).await,
        }
    }

    /// Most events one append (`append_all`) may hold: JetStream's atomic
    /// batch limit; the embedded log has none of its own.
    pub fn max_events_per_append(&self) -> Option<usize> {
        match &self.backend {
            Backend::Embedded(_) => None,
            Backend::JetStream(_) => Some(jetstream::MAX_EVENTS),
        }
    }

    /// The last position this node knows committed (0 for an empty log).
    pub fn head(&self) -> Position {
        match &self.backend {
            Backend::Embedded(log) => log.head(),
            Backend::JetStream(log) => log.head(),
        }
    }

    /// Why appends are refused, when the storage failed under the log and
    /// it has not recovered yet (`None`: appends are accepted).
    pub fn storage_failure(&self) -> Option<String> {
        match &self.backend {
            Backend::Embedded(log) => log.storage_failure(),
            Backend::JetStream(log) => log.storage_failure(),
        }
    }

    /// A receiver that changes whenever the head moves: the way to wait for
    /// new events without polling.
    pub fn watch_head(&self) -> watch::Receiver<Position> {
        match &self.backend {
            Backend::Embedded(log) => log.watch_head(),
            Backend::JetStream(log) => log.watch_head(),
        }
    }

    /// Reads up to `limit` events of the global log at or after `from` that
    /// pass `filter`, examining at most `max_scan` events.
    pub async fn read_log(
        &self,
        from: Position,
        limit: usize,
        filter: EventFilter,
        max_scan: usize,
    ) -> Result<LogPage, LogError> {
        match &self.backend {
            Backend::Embedded(log) => log.read_log(from, limit, filter, max_scan).await,
            Backend::JetStream(log) => log.read_log(from, limit, &filter, max_scan).await,
        }
    }

    /// Reads one stream from version `from` (the start, or the end when
    /// backward, if `None`); `None` when it has no events.
    pub async fn read_stream(
        &self,
        stream: StreamName,
        from: Option<u64>,
        limit: usize,
        direction: Direction,
    ) -> Result<Option<StreamPage>, LogError> {
        match &self.backend {
            Backend::Embedded(log) => log.read_stream(stream, from, limit, direction).await,
            Backend::JetStream(log) => log.read_stream(&stream, from, limit, direction).await,
        }
    }

    /// Reads synchronously, for callers off the async runtime (plugin
    /// runners, benchmarks).
    pub fn read_log_blocking(
        &self,
        from: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<LogPage, LogError> {
        match &self.backend {
            Backend::Embedded(log) => log.read_log_blocking(from, limit, filter),
            Backend::JetStream(log) => log.read_log_blocking(from, limit, filter),
        }
    }

    /// Commits (or waits for) every append already under way, refuses new
    /// ones, and stops. Idempotent.
    pub async fn shutdown(&self) {
        match &self.backend {
            Backend::Embedded(log) => log.shutdown().await,
            Backend::JetStream(log) => log.shutdown().await,
        }
    }
}
