//! What a read of the log asks for and gets back, whichever backend holds
//! the log.

use super::{Position, RecordedEvent, category_of};

/// Which events a read of the global log returns. Empty lists match everything.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Stream categories (the part of the stream name before the first `-`).
    pub categories: Vec<String>,
    /// Event types.
    pub event_types: Vec<String>,
    /// One business process: events whose metadata's `correlation_id` is
    /// this, and the event whose id it is (the process's first event).
    pub correlation_id: Option<String>,
}

impl EventFilter {
    /// True when the filter lets every event through.
    pub fn is_empty(&self) -> bool {
        self.categories.is_empty() && self.event_types.is_empty() && self.correlation_id.is_none()
    }

    /// Whether an event of this stream and type passes.
    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        (self.categories.is_empty() || self.categories.iter().any(|c| c == category_of(stream)))
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
    }

    /// Whether an event that [`EventFilter::matches`] passes the rest: its
    /// correlation.
    pub fn admits(&self, event: &RecordedEvent) -> bool {
        let Some(wanted) = &self.correlation_id else {
            return true;
        };
        let mut id = uuid::Uuid::encode_buffer();
        if event.id.hyphenated().encode_lower(&mut id) == wanted.as_str() {
            return true;
        }
        // Most events do not name it at all: one scan, no parse.
        if memchr::memmem::find(&event.metadata, wanted.as_bytes()).is_none() {
            return false;
        }
        #[derive(serde::Deserialize)]
        struct Correlated {
            correlation_id: Option<String>,
        }
        serde_json::from_slice::<Correlated>(&event.metadata)
            .is_ok_and(|m| m.correlation_id.as_ref() == Some(wanted))
    }
}

/// A page of the global log.
#[derive(Debug, Clone)]
pub struct LogPage {
    /// Matching events, in position order.
    pub events: Vec<RecordedEvent>,
    /// Where the next page starts: one past the last event examined, which with
    /// a filter may be past the last event returned.
    pub next: Position,
    /// The last committed position when the page was read.
    pub head: Position,
}

/// Direction of a stream read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// A page of one stream.
#[derive(Debug, Clone)]
pub struct StreamPage {
    /// Events in the requested direction.
    pub events: Vec<RecordedEvent>,
    /// The version of the stream's last event.
    pub stream_version: u64,
    /// The version to read from for the next page, `None` at the end.
    pub next: Option<u64>,
}
