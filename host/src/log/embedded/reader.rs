//! Reads of the log. Each runs in its own redb read transaction (MVCC): it sees
//! one committed snapshot and never blocks the writer.

use redb::{Database, ReadableDatabase};

use super::chunk::{self, Chunk, ChunkCursor};
use super::tables::{EVENT_CHUNKS, STREAM_RUNS, STREAMS};
use super::{Direction, EventFilter, LogError, LogPage, Position, StreamPage};
use super::{codec, runs};

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
            let event = codec::decode(position, bytes)?;
            if filter.admits(&event) {
                events.push(event);
            }
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
