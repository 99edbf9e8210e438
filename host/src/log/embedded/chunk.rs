//! Chunks: how events are laid out in the `event_chunks` table.
//!
//! One table entry holds a run of consecutive events, keyed by the position
//! of its first one, instead of one entry per event. The writer fills a chunk
//! with the events of a group commit up to [`CHUNK_BYTES`], so a batch of 100
//! events costs one or a few B-tree inserts instead of 100, and 1 KB events
//! fill redb's pages instead of leaving part of each empty
//! (`docs/design.md#chunks`). An event bigger than that gets a chunk of its own.
//!
//! ```text
//! u32 count
//! count × (u32 length, encoded event (`codec`))
//! ```
//! Integers are little-endian.

use std::ops::Range;

use redb::{AccessGuard, ReadableTable, Table};

use super::{LogError, Position};

/// Most bytes a chunk of several events holds: just under 32 KiB, so that a
/// full chunk fills a 32 KiB redb page of its own (redb gives an entry
/// bigger than a 4 KiB page a page of the next power of two).
pub const CHUNK_BYTES: usize = (32 << 10) - 64;

const COUNT: usize = 4;
const LENGTH: usize = 4;

/// A chunk being filled by the writer, not yet in the table.
#[derive(Default)]
pub struct ChunkBuilder {
    buf: Vec<u8>,
    first: u64,
    count: u32,
}

impl ChunkBuilder {
    /// Empties the builder; the next event pushed is at `first`.
    pub fn start(&mut self, first: u64) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; COUNT]);
        self.first = first;
        self.count = 0;
    }

    /// Whether no event was pushed since [`Self::start`].
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether an event of `len` encoded bytes no longer fits. An empty
    /// chunk takes any event.
    pub fn is_full_for(&self, len: usize) -> bool {
        !self.is_empty() && self.buf.len() + LENGTH + len > CHUNK_BYTES
    }

    /// Position the next pushed event gets.
    pub fn next_position(&self) -> u64 {
        self.first + u64::from(self.count)
    }

    /// Appends one event of `len` encoded bytes that `encode` writes, first
    /// storing the chunk in `table` and starting the next one when the event
    /// does not fit. Answers where the event's bytes are.
    pub fn append(
        &mut self,
        table: &mut Table<'_, u64, &'static [u8]>,
        len: usize,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Range<usize>, LogError> {
        if self.is_full_for(len) {
            self.flush(table)?;
        }
        Ok(self.push(encode))
    }

    /// Stores what the chunk holds in `table` and starts the next one.
    pub fn flush(&mut self, table: &mut Table<'_, u64, &'static [u8]>) -> Result<(), LogError> {
        if !self.is_empty() {
            table.insert(self.first, self.buf.as_slice())?;
            self.start(self.next_position());
        }
        Ok(())
    }

    fn push(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; LENGTH]);
        encode(&mut self.buf);
        let len = (self.buf.len() - at - LENGTH) as u32;
        self.buf[at..at + LENGTH].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
        self.buf[..COUNT].copy_from_slice(&self.count.to_le_bytes());
        at + LENGTH..self.buf.len()
    }

    /// The bytes of a pushed event.
    pub fn bytes_of(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// The chunk as the table stores it.
    #[cfg(test)]
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The encoded event at `position`, if this chunk holds it.
    pub fn get(&self, position: u64) -> Result<Option<&[u8]>, LogError> {
        if self.is_empty() {
            return Ok(None);
        }
        Chunk::new(self.first, &self.buf)?.get(position)
    }
}

/// A stored chunk, read.
#[derive(Clone, Copy)]
pub struct Chunk<'a> {
    first: u64,
    count: u64,
    /// The events, after the count.
    body: &'a [u8],
}

impl<'a> Chunk<'a> {
    /// The chunk stored under `first`.
    pub fn new(first: u64, bytes: &'a [u8]) -> Result<Self, LogError> {
        let count = bytes
            .get(..COUNT)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .filter(|&count| count > 0 && first.checked_add(u64::from(count)).is_some())
            .ok_or_else(|| corrupt(first))?;
        Ok(Self {
            first,
            count: u64::from(count),
            body: &bytes[COUNT..],
        })
    }

    /// Position of its last event.
    pub fn last(&self) -> u64 {
        self.first + self.count - 1
    }

    /// Whether it holds the event at `position`.
    pub fn holds(&self, position: u64) -> bool {
        position >= self.first && position - self.first < self.count
    }

    /// Its events from `from` on, with their positions.
    pub fn events_from(self, from: u64) -> ChunkEvents<'a> {
        ChunkEvents {
            chunk: self,
            index: 0,
            rest: self.body,
            from,
        }
    }

    /// The encoded event at `position`, if it holds it.
    pub fn get(self, position: u64) -> Result<Option<&'a [u8]>, LogError> {
        if !self.holds(position) {
            return Ok(None);
        }
        self.events_from(position)
            .next()
            .transpose()
            .map(|found| found.map(|(_, bytes)| bytes))
    }
}

/// The events of a chunk from a position on.
pub struct ChunkEvents<'a> {
    chunk: Chunk<'a>,
    index: u64,
    rest: &'a [u8],
    from: u64,
}

impl<'a> Iterator for ChunkEvents<'a> {
    type Item = Result<(Position, &'a [u8]), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.index == self.chunk.count {
                let trailing = !self.rest.is_empty();
                self.rest = &[];
                return trailing.then(|| Err(corrupt(self.chunk.first)));
            }
            let position = self.chunk.first + self.index;
            let Some(bytes) = self
                .rest
                .get(..LENGTH)
                .map(|len| u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize)
                .and_then(|len| self.rest.get(LENGTH..LENGTH + len))
            else {
                // Nothing after this can be trusted: end here.
                self.index = self.chunk.count;
                self.rest = &[];
                return Some(Err(corrupt(self.chunk.first)));
            };
            self.rest = &self.rest[LENGTH + bytes.len()..];
            self.index += 1;
            if position >= self.from {
                return Some(Ok((Position(position), bytes)));
            }
        }
    }
}

fn corrupt(first: u64) -> LogError {
    LogError::Corrupt(format!(
        "the chunk of events from {first} is truncated or malformed"
    ))
}

/// A stored chunk: the key it is stored under and its bytes.
pub type StoredChunk<'t> = (u64, AccessGuard<'t, &'static [u8]>);

/// The stored chunk that holds `position`.
pub fn chunk_at<'t>(
    table: &'t impl ReadableTable<u64, &'static [u8]>,
    position: u64,
) -> Result<Option<StoredChunk<'t>>, LogError> {
    let Some(entry) = table.range(..=position)?.next_back() else {
        return Ok(None);
    };
    let (key, value) = entry?;
    let first = key.value();
    Ok(Chunk::new(first, value.value())?
        .holds(position)
        .then_some((first, value)))
}

/// The last position a chunk table holds (0 when empty).
pub fn last_position(table: &impl ReadableTable<u64, &'static [u8]>) -> Result<u64, LogError> {
    match table.last()? {
        Some((key, value)) => Ok(Chunk::new(key.value(), value.value())?.last()),
        None => Ok(0),
    }
}

/// Looks events up by position, keeping the last chunk it read and where
/// each of its events starts: events read in order mostly come from the same
/// chunk, and then each costs no B-tree lookup and no scan.
pub struct ChunkCursor<'t, T> {
    table: &'t T,
    current: Option<Loaded<'t>>,
}

struct Loaded<'t> {
    first: u64,
    guard: AccessGuard<'t, &'static [u8]>,
    /// Byte range of each event in the stored value.
    events: Vec<Range<usize>>,
}

impl<'t, T: ReadableTable<u64, &'static [u8]>> ChunkCursor<'t, T> {
    /// A cursor over `table`.
    pub fn new(table: &'t T) -> Self {
        Self {
            table,
            current: None,
        }
    }

    /// The encoded event at `position`, if the table holds it.
    pub fn get(&mut self, position: u64) -> Result<Option<&[u8]>, LogError> {
        let cached = self
            .current
            .as_ref()
            .is_some_and(|c| position >= c.first && position - c.first < c.events.len() as u64);
        if !cached {
            self.current = None;
            let Some((first, guard)) = chunk_at(self.table, position)? else {
                return Ok(None);
            };
            let bytes = guard.value();
            let base = bytes.as_ptr() as usize;
            let events = Chunk::new(first, bytes)?
                .events_from(first)
                .map(|e| {
                    e.map(|(_, event)| {
                        let start = event.as_ptr() as usize - base;
                        start..start + event.len()
                    })
                })
                .collect::<Result<_, _>>()?;
            self.current = Some(Loaded {
                first,
                guard,
                events,
            });
        }
        Ok(self.current.as_ref().map(|c| {
            let range = c.events[(position - c.first) as usize].clone();
            &c.guard.value()[range]
        }))
    }
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use redb::{Database, ReadableDatabase, TableDefinition};

    use super::*;
    use crate::log::RecordedEvent;
    use crate::log::codec::{self, tests::any_event, tests::encode};

    /// Cases per property test: all of them run in under a second (debug build).
    const CASES: u32 = 256;

    const CHUNKS: TableDefinition<u64, &'static [u8]> = TableDefinition::new("chunks");

    fn builder(first: u64, events: &[&[u8]]) -> ChunkBuilder {
        let mut chunk = ChunkBuilder::default();
        chunk.start(first);
        for event in events {
            chunk.push(|buf| buf.extend_from_slice(event));
        }
        chunk
    }

    #[test]
    fn events_come_back_by_position() {
        let chunk = builder(10, &[b"a", b"", b"ccc"]);
        assert_eq!(chunk.next_position(), 13);
        let read = Chunk::new(10, chunk.bytes()).unwrap();
        assert_eq!(read.last(), 12);
        let all: Vec<_> = read.events_from(0).map(Result::unwrap).collect();
        assert_eq!(
            all,
            vec![
                (Position(10), &b"a"[..]),
                (Position(11), &b""[..]),
                (Position(12), &b"ccc"[..])
            ]
        );
        assert_eq!(read.events_from(12).count(), 1);
        assert_eq!(read.get(11).unwrap(), Some(&b""[..]));
        assert_eq!(read.get(13).unwrap(), None);
        assert_eq!(read.get(9).unwrap(), None);
        assert_eq!(chunk.get(12).unwrap(), Some(&b"ccc"[..]));
        let mut empty = ChunkBuilder::default();
        empty.start(13);
        assert_eq!(empty.get(13).unwrap(), None);
    }

    #[test]
    fn a_chunk_fills_up_to_its_size_but_takes_one_big_event() {
        let mut chunk = ChunkBuilder::default();
        chunk.start(1);
        assert!(!chunk.is_full_for(CHUNK_BYTES * 4));
        chunk.push(|buf| buf.resize(buf.len() + 1000, 7));
        assert!(!chunk.is_full_for(CHUNK_BYTES - 1000 - 3 * LENGTH));
        assert!(chunk.is_full_for(CHUNK_BYTES - 1000));
    }

    #[test]
    fn truncation_is_corruption_not_a_panic() {
        let chunk = builder(1, &[b"first", b"second"]);
        let bytes = chunk.bytes();
        for len in 0..bytes.len() {
            let read = Chunk::new(1, &bytes[..len]);
            let failed = match read {
                Err(_) => true,
                Ok(read) => read.events_from(0).any(|e| e.is_err()),
            };
            assert!(failed, "{len} bytes read as a whole chunk");
        }
    }

    /// The whole chunk read: its events, or the first error.
    fn read_all(first: u64, bytes: &[u8]) -> Result<Vec<(Position, &[u8])>, LogError> {
        Chunk::new(first, bytes)?.events_from(first).collect()
    }

    /// Where a chunk is stored: small keys, and keys whose chunk reaches
    /// the end of the positions.
    fn any_first() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..1000u64,
            (0..8u64).prop_map(|d| u64::MAX - d),
            any::<u64>()
        ]
    }

    /// Random bytes; a small count and random bytes; and valid chunks of
    /// short events with a few bytes overwritten.
    fn any_chunk_bytes() -> impl Strategy<Value = Vec<u8>> {
        let damaged = (
            vec(vec(any::<u8>(), 0..12), 0..6),
            vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        )
            .prop_map(|(events, writes)| {
                let events: Vec<&[u8]> = events.iter().map(Vec::as_slice).collect();
                let mut bytes = builder(1, &events).bytes().to_vec();
                for (at, byte) in writes {
                    let at = at.index(bytes.len());
                    bytes[at] = byte;
                }
                bytes
            });
        prop_oneof![
            vec(any::<u8>(), 0..96),
            (0..6u32, vec(any::<u8>(), 0..96)).prop_map(|(count, rest)| {
                let mut bytes = count.to_le_bytes().to_vec();
                bytes.extend(rest);
                bytes
            }),
            damaged,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

        /// Reading any bytes as a chunk, directly or through a stored table
        /// and a cursor, gives events at consecutive positions and ends at
        /// the first error; it never panics.
        #[test]
        fn arbitrary_bytes_read_as_events_or_fail_cleanly(
            first in any_first(),
            bytes in any_chunk_bytes(),
            probe in any::<u64>(),
        ) {
            if let Ok(chunk) = Chunk::new(first, &bytes) {
                let mut next = first;
                let mut failed = false;
                for event in chunk.events_from(first) {
                    prop_assert!(!failed, "an event after an error");
                    match event {
                        Ok((position, event)) => {
                            prop_assert_eq!(position, Position(next));
                            let _ = codec::decode(position, event);
                            next += 1;
                        }
                        Err(error) => {
                            prop_assert!(matches!(error, LogError::Corrupt(_)));
                            failed = true;
                        }
                    }
                }
                prop_assert!(failed || next - 1 == chunk.last());
                for position in [probe, first, chunk.last()] {
                    let _ = chunk.get(position);
                }
            }

            let db = Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(CHUNKS).unwrap().insert(first, bytes.as_slice()).unwrap();
            txn.commit().unwrap();
            let txn = db.begin_read().unwrap();
            let table = txn.open_table(CHUNKS).unwrap();
            let _ = last_position(&table);
            let mut cursor = ChunkCursor::new(&table);
            for position in (0..6).map(|i| first.wrapping_add(i)).chain([probe]) {
                let direct = Chunk::new(first, &bytes).and_then(|c| c.get(position));
                let via_cursor = cursor.get(position);
                if let Ok(Some(event)) = via_cursor {
                    prop_assert_eq!(direct.ok().flatten(), Some(event));
                }
            }
        }

        #[test]
        fn chunks_of_encoded_events_round_trip(
            first in 1..1u64 << 40,
            events in vec(any_event(), 1..8),
        ) {
            let encoded: Vec<Vec<u8>> = events.iter().map(encode).collect();
            let slices: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
            let chunk = builder(first, &slices);
            let read = read_all(first, chunk.bytes()).unwrap();
            prop_assert_eq!(read.len(), events.len());
            for (i, ((position, bytes), event)) in read.into_iter().zip(&events).enumerate() {
                let position_i = first + i as u64;
                prop_assert_eq!(position, Position(position_i));
                let expected = RecordedEvent { position, ..event.clone() };
                prop_assert_eq!(codec::decode(position, bytes).unwrap(), expected);
                prop_assert_eq!(chunk.get(position_i).unwrap(), Some(slices[i]));
                let stored = Chunk::new(first, chunk.bytes()).unwrap();
                prop_assert_eq!(stored.events_from(position_i).count(), events.len() - i);
            }
            let stored = Chunk::new(first, chunk.bytes()).unwrap();
            prop_assert_eq!(stored.last(), first + events.len() as u64 - 1);
            prop_assert_eq!(stored.get(first - 1).unwrap(), None);
            prop_assert_eq!(stored.get(stored.last() + 1).unwrap(), None);
        }

        /// Every cut of a chunk is an error. A chunk has no checksum: a
        /// changed count is always caught (an event missing, or bytes left
        /// over), a changed length almost always, a changed byte inside an
        /// event not at all; none of them may panic.
        #[test]
        fn a_cut_or_changed_chunk_is_an_error_not_a_panic(
            events in vec(any_event(), 1..6),
            at in any::<prop::sample::Index>(),
            flip in 1..=u8::MAX,
        ) {
            let encoded: Vec<Vec<u8>> = events.iter().map(encode).collect();
            let slices: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
            let chunk = builder(1, &slices);
            let bytes = chunk.bytes();
            for len in 0..bytes.len() {
                prop_assert!(read_all(1, &bytes[..len]).is_err(), "a cut at {} read whole", len);
            }
            let mut changed = bytes.to_vec();
            let at = at.index(changed.len());
            changed[at] ^= flip;
            let read = read_all(1, &changed);
            if at < COUNT {
                prop_assert!(read.is_err(), "a changed count read whole");
            }
            for (position, event) in read.into_iter().flatten() {
                let _ = codec::decode(position, event);
            }
        }
    }

    #[test]
    fn a_count_of_four_billion_allocates_nothing() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[1, 0, 0, 0, 7]);
        let chunk = Chunk::new(1, &bytes).unwrap();
        assert_eq!(chunk.last(), u64::from(u32::MAX));
        let mut events = chunk.events_from(1);
        assert_eq!(events.next().unwrap().unwrap(), (Position(1), &[7][..]));
        assert!(events.next().unwrap().is_err());
        assert!(events.next().is_none());
    }
}
