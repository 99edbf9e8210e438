//! Reads of the log. Each runs in its own redb read transaction (MVCC): it sees
//! one committed snapshot and never blocks the writer.

use redb::{Database, ReadableDatabase};

use super::chunk::{self, Chunk, ChunkCursor};
use super::tables::{EVENT_CHUNKS, STREAM_RUNS, STREAMS};
use super::{LogError, Position, RecordedEvent, category_of};
use super::{codec, runs};

/// Which events a read of the global log returns. Empty lists match everything.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Stream categories (the part of the stream name before the first `-`).
    pub categories: Vec<String>,
    /// Event types.
    pub event_types: Vec<String>,
}

impl EventFilter {
    /// True when the filter lets every event through.
    pub fn is_empty(&self) -> bool {
        self.categories.is_empty() && self.event_types.is_empty()
    }

    /// Whether an event of this stream and type passes.
    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        (self.categories.is_empty() || self.categories.iter().any(|c| c == category_of(stream)))
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
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

/// Reads up to `limit` matching events at or after `from`, examining at most
/// `max_scan` events so that a sparse filter cannot make one read unbounded.
pub fn read_log(
    db: &Database,
    from: Position,
    limit: usize,
    filter: &EventFilter,
    max_scan: usize,
) -> Result<LogPage, LogError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(EVENT_CHUNKS)?;
    let head = Position(chunk::last_position(&table)?);
    let mut events = Vec::new();
    let mut next = from.max(Position(1));
    let mut scanned = 0;
    // The chunk holding `next`, then the ones after it.
    let start = chunk::chunk_at(&table, next.0)?.map_or(next.0, |(first, _)| first);
    'chunks: for entry in table.range(start..)? {
        let (key, value) = entry?;
        for event in Chunk::new(key.value(), value.value())?.events_from(next.0) {
            if events.len() >= limit || scanned >= max_scan {
                break 'chunks;
            }
            let (position, bytes) = event?;
            scanned += 1;
            next = Position(position.0 + 1);
            if !filter.is_empty() {
                let header = codec::decode_header(position, bytes)?;
                if !filter.matches(header.stream, header.event_type) {
                    continue;
                }
            }
            events.push(codec::decode(position, bytes)?);
        }
    }
    Ok(LogPage { events, next, head })
}

/// Reads up to `limit` events of one stream starting at version `from`
/// (default: the first version forward, the last one backward). `None` when
/// the stream has no events.
pub fn read_stream(
    db: &Database,
    stream: &str,
    from: Option<u64>,
    limit: usize,
    direction: Direction,
) -> Result<Option<StreamPage>, LogError> {
    let txn = db.begin_read()?;
    let streams = txn.open_table(STREAMS)?;
    let Some(id) = streams.get(stream)?.map(|g| g.value()) else {
        return Ok(None);
    };
    let index = txn.open_table(STREAM_RUNS)?;
    let chunks = txn.open_table(EVENT_CHUNKS)?;
    let stream_version = runs::head(&index, id, stream)?;

    // One more than the limit is taken to learn where the next page starts.
    let take = limit.saturating_add(1);
    let positions = match direction {
        Direction::Forward => runs::forward(&index, id, from.unwrap_or(0), take)?,
        Direction::Backward => runs::backward(&index, id, from.unwrap_or(stream_version), take)?,
    };
    let next = positions.get(limit).map(|(version, _)| *version);
    let mut events = Vec::with_capacity(positions.len().min(limit));
    let mut cursor = ChunkCursor::new(&chunks);
    for (_, position) in positions.into_iter().take(limit) {
        let stored = cursor.get(position)?.ok_or_else(|| {
            LogError::Corrupt(format!("stream index points at missing event {position}"))
        })?;
        events.push(codec::decode(Position(position), stored)?);
    }
    Ok(Some(StreamPage {
        events,
        stream_version,
        next,
    }))
}
