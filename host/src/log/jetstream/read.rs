//! Reads on JetStream, as direct gets in batches (any replica answers).
//!
//! A replica may not yet hold the last writes, so every read knows how far
//! it must reach (this node's head, or a stream's last message read from
//! the leader) and reads again until the answer gets there: a read on a
//! node sees every append that node has acknowledged or seen.

use std::time::Duration;

use futures_util::StreamExt;

use super::Inner;
use super::api::Stored;
use crate::log::codec;
use crate::log::{
    Direction, EventFilter, LogError, LogPage, Position, RecordedEvent, StreamName, StreamPage,
};

/// Most messages one direct get asks for.
const BATCH: usize = 1000;
/// Direct gets of one page in flight at once.
const READ_AHEAD: usize = 4;
/// Most bytes one direct get asks for.
const BATCH_BYTES: usize = 8 << 20;
/// How long a read waits for a lagging replica before it says so.
const CATCH_UP: Duration = Duration::from_secs(5);
/// The pause between asking a lagging replica again.
const CATCH_UP_PAUSE: Duration = Duration::from_millis(2);

/// A stream's last message.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    /// Its sequence (position).
    pub sequence: u64,
    /// Its version.
    pub version: u64,
}

impl Head {
    /// The head a stream has when `event` is its last.
    pub fn of(event: &RecordedEvent) -> Self {
        Self {
            sequence: event.position.0,
            version: event.version,
        }
    }
}

/// Reads up to `limit` events at or after `from` that pass `filter`,
/// examining at most `max_scan`: the same page as the embedded log's.
///
/// Positions are the stream's sequences, gapless, so the batches a page
/// needs are known in advance: up to [`READ_AHEAD`] of them are asked for
/// at once and used in order. A batch that comes back short (a lagging
/// replica, the byte cap) ends the round, and the next round asks again
/// from where it ended.
pub async fn read_log(
    inner: &Inner,
    from: Position,
    limit: usize,
    filter: &EventFilter,
    max_scan: usize,
) -> Result<LogPage, LogError> {
    let head = inner.head.borrow().0;
    let mut next = from.0.max(1);
    let mut events = Vec::new();
    let mut scanned = 0usize;
    let mut lagging = Lagging::new();
    while events.len() < limit && scanned < max_scan && next <= head {
        // Unfiltered, the page needs `limit` positions; filtered, as many
        // as it may scan.
        let wanted = match filter.is_empty() {
            true => (limit - events.len()).min(max_scan - scanned),
            false => max_scan - scanned,
        };
        let span = (head - next + 1).min(wanted as u64);
        let base = next;
        let starts = (0..span.div_ceil(BATCH as u64)).map(move |k| base + k * BATCH as u64);
        let mut batches = futures_util::stream::iter(starts)
            .map(|start| {
                let want = (base + span - start).min(BATCH as u64) as usize;
                async move { (want, inner.api.read(start, None, want, BATCH_BYTES).await) }
            })
            .buffered(READ_AHEAD);
        let mut progressed = false;
        while let Some((want, batch)) = batches.next().await {
            let batch = batch?;
            let Some(first) = batch.first() else { break };
            if first.sequence != next {
                break; // an earlier batch came back short
            }
            progressed = true;
            for stored in &batch {
                if events.len() >= limit || scanned >= max_scan {
                    break;
                }
                scanned += 1;
                next = stored.sequence + 1;
                if !filter.is_empty() {
                    let header = codec::decode_header(Position(stored.sequence), &stored.payload)?;
                    if !filter.matches(header.stream, header.event_type) {
                        continue;
                    }
                }
                let event = decode(stored)?;
                if filter.admits(&event) {
                    events.push(event);
                }
            }
            if batch.len() < want || events.len() >= limit || scanned >= max_scan {
                break;
            }
        }
        if !progressed {
            // This replica does not hold `next` yet.
            lagging.wait().await?;
        }
    }
    Ok(LogPage {
        events,
        next: Position(next),
        head: Position(head.max(next - 1)),
    })
}

/// Reads one stream: the same page as the embedded log's.
pub async fn read_stream(
    inner: &Inner,
    stream: &StreamName,
    from: Option<u64>,
    limit: usize,
    direction: Direction,
) -> Result<Option<StreamPage>, LogError> {
    let Some(last) = last_event(inner, stream).await? else {
        return Ok(None);
    };
    let head = Head::of(&last);
    let top = head.version;
    let (events, next) = match direction {
        Direction::Forward => {
            let from = from.unwrap_or(0);
            let count = match from > top {
                true => 0,
                false => (top - from + 1).min(limit as u64),
            };
            let events = stream_events(inner, stream, head, from, count as usize).await?;
            let next = (count > 0 && from + count <= top).then_some(from + count);
            (events, next)
        }
        Direction::Backward => {
            let from = from.unwrap_or(top).min(top);
            let lowest = (from + 1).saturating_sub(limit as u64);
            let count = (from + 1 - lowest) as usize;
            let mut events = stream_events(inner, stream, head, lowest, count).await?;
            events.reverse();
            let next = (lowest > 0 && count > 0).then(|| lowest - 1);
            (events, next)
        }
    };
    Ok(Some(StreamPage {
        events,
        stream_version: top,
        next,
    }))
}

/// The stream's last event, from the stream's leader.
pub async fn last_event(
    inner: &Inner,
    stream: &StreamName,
) -> Result<Option<RecordedEvent>, LogError> {
    let subject = inner.subjects.stream(stream.category(), stream.as_str());
    inner
        .api
        .last_for_subject(&subject)
        .await?
        .map(|stored| decode(&stored))
        .transpose()
}

/// The event at `position`, which this node knows is stored.
pub async fn event_at(inner: &Inner, position: u64) -> Result<RecordedEvent, LogError> {
    let mut lagging = Lagging::new();
    loop {
        let batch = inner.api.read(position, None, 1, BATCH_BYTES).await?;
        match batch.first() {
            Some(stored) if stored.sequence == position => return decode(stored),
            Some(stored) => {
                return Err(LogError::Corrupt(format!(
                    "position {position} is missing: the next message is {}",
                    stored.sequence
                )));
            }
            None => lagging.wait().await?,
        }
    }
}

/// `count` events of `stream` from version `from`, given its last message
/// `head`.
pub async fn stream_events(
    inner: &Inner,
    stream: &StreamName,
    head: Head,
    from: u64,
    count: usize,
) -> Result<Vec<RecordedEvent>, LogError> {
    if count == 0 || from > head.version {
        return Ok(Vec::new());
    }
    let subject = inner.subjects.stream(stream.category(), stream.as_str());
    let until = (from + count as u64 - 1).min(head.version);
    let mut sequence = sequence_of(inner, &subject, head, from).await?;
    let mut events: Vec<RecordedEvent> = Vec::with_capacity(count);
    let mut lagging = Lagging::new();
    while events.last().is_none_or(|e| e.version < until) {
        let want = (until + 1 - from) as usize - events.len();
        let batch = inner
            .api
            .read(sequence, Some(&subject), want.min(BATCH), BATCH_BYTES)
            .await?;
        if batch.is_empty() {
            lagging.wait().await?;
            continue;
        }
        for stored in &batch {
            let event = decode(stored)?;
            sequence = stored.sequence + 1;
            if event.version > until {
                break;
            }
            events.push(event);
        }
    }
    Ok(events)
}

/// The sequence of version `version` of the stream on `subject`: a binary
/// search over sequences, each probe a direct get of the first message of
/// the subject at or after a sequence (versions grow with sequences).
async fn sequence_of(
    inner: &Inner,
    subject: &str,
    head: Head,
    version: u64,
) -> Result<u64, LogError> {
    if version == head.version {
        return Ok(head.sequence);
    }
    let (mut low, mut high) = (1, head.sequence);
    let mut lagging = Lagging::new();
    while low <= high {
        let middle = low + (high - low) / 2;
        let batch = inner
            .api
            .read(middle, Some(subject), 1, BATCH_BYTES)
            .await?;
        let Some(stored) = batch.first() else {
            lagging.wait().await?;
            continue;
        };
        let found = codec::decode_version(Position(stored.sequence), &stored.payload)?;
        match found.cmp(&version) {
            std::cmp::Ordering::Equal => return Ok(stored.sequence),
            std::cmp::Ordering::Less => low = stored.sequence + 1,
            std::cmp::Ordering::Greater => high = middle - 1,
        }
    }
    Err(LogError::Corrupt(format!(
        "version {version} of {subject} is missing from the stream"
    )))
}

fn decode(stored: &Stored) -> Result<RecordedEvent, LogError> {
    codec::decode(Position(stored.sequence), &stored.payload)
}

/// Waits while a replica catches up, up to [`CATCH_UP`] in all.
struct Lagging {
    since: tokio::time::Instant,
}

impl Lagging {
    fn new() -> Self {
        Self {
            since: tokio::time::Instant::now(),
        }
    }

    async fn wait(&mut self) -> Result<(), LogError> {
        if self.since.elapsed() > CATCH_UP {
            return Err(LogError::Unavailable(
                "the JetStream replicas that answered do not hold the last writes yet".into(),
            ));
        }
        tokio::time::sleep(CATCH_UP_PAUSE).await;
        Ok(())
    }
}
