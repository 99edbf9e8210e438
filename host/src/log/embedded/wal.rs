//! The write-ahead log: what makes an append durable before it is acknowledged.
//!
//! redb is copy-on-write: a durable commit fsyncs every B-tree page the group
//! touched, scattered over the file (one leaf per stream appended to, in the
//! stream index alone). So the writer commits groups to redb *without* fsync
//! and makes each group durable by appending one small record to this file and
//! fdatasyncing it — a sequential write into a preallocated file, the cheapest
//! fsync a disk does. Every so often a *checkpoint* makes redb durable (one
//! fsync for many groups) and the WAL starts over at offset 0.
//!
//! Record: `magic u32 | payload length u32 | crc32 of payload u32 | payload`,
//! payload: `first position u64 | count u32 | count × (stream id u64 | length u32 | encoded event)`.
//!
//! Recovery reads records from offset 0 while they are intact and their
//! positions follow on from each other; a torn or stale record (from before
//! the last checkpoint, with lower positions) ends the scan.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{LogError, Position};
use crate::durable;

const MAGIC: u32 = 0x4546_5731; // "EFW1"
const HEADER: usize = 12;
/// Size written with zeros when the WAL is created: overwriting blocks that
/// are already allocated and written needs no metadata in the fdatasync,
/// which makes it much cheaper than appending (`docs/design.md#notes`).
const PREALLOCATE: u64 = 16 << 20;
/// Past this offset the writer checkpoints after the group.
pub(super) const CHECKPOINT_BYTES: u64 = 12 << 20;

/// An event as the WAL records it: its stream's id and its encoded bytes.
pub(super) struct WalEvent<'a> {
    pub stream_id: u64,
    pub encoded: &'a [u8],
}

/// One group of appended events read back during recovery.
pub(super) struct WalRecord {
    pub first_position: Position,
    pub events: Vec<(u64, Vec<u8>)>,
}

/// The open WAL file and where the next record goes.
pub(super) struct Wal {
    file: File,
    offset: u64,
    len: u64,
}

/// Builds the payload of one record.
#[derive(Default)]
pub(super) struct RecordBuilder {
    buf: Vec<u8>,
    count: u32,
    first: Option<u64>,
}

impl RecordBuilder {
    /// Starts an empty record.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; HEADER + 12]);
        self.count = 0;
        self.first = None;
    }

    /// Adds the event at `position` (positions must follow each other).
    pub fn push(&mut self, position: u64, event: WalEvent<'_>) {
        self.first.get_or_insert(position);
        self.count += 1;
        self.buf.extend_from_slice(&event.stream_id.to_le_bytes());
        self.buf
            .extend_from_slice(&(event.encoded.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(event.encoded);
    }

    /// Whether no event was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn seal(&mut self) -> &[u8] {
        let first = self.first.unwrap_or(0);
        self.buf[HEADER..HEADER + 8].copy_from_slice(&first.to_le_bytes());
        self.buf[HEADER + 8..HEADER + 12].copy_from_slice(&self.count.to_le_bytes());
        let payload_len = (self.buf.len() - HEADER) as u32;
        let crc = crc32fast::hash(&self.buf[HEADER..]);
        self.buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        self.buf[4..8].copy_from_slice(&payload_len.to_le_bytes());
        self.buf[8..12].copy_from_slice(&crc.to_le_bytes());
        &self.buf
    }
}

impl Wal {
    /// Opens (or creates and preallocates) the WAL and reads every intact
    /// record that follows on from `head`'s successor chain.
    pub fn open(path: &Path) -> Result<(Self, Vec<WalRecord>), LogError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let records = parse(&bytes);
        let mut len = bytes.len() as u64;
        if len < PREALLOCATE {
            let zeros = vec![0u8; 1 << 20];
            while len < PREALLOCATE {
                file.write_all_at(&zeros, len)?;
                len += zeros.len() as u64;
            }
            file.sync_all()?;
        }
        // The file's existence is durable too.
        durable::sync_parent(path)?;
        Ok((
            Self {
                file,
                offset: 0,
                len,
            },
            records,
        ))
    }

    /// Appends the record and waits until it is on disk.
    pub fn append(&mut self, record: &mut RecordBuilder) -> Result<(), LogError> {
        let bytes = record.seal();
        let end = self.offset + bytes.len() as u64;
        self.file.write_all_at(bytes, self.offset)?;
        if end > self.len {
            // Growing changes metadata: fdatasync covers the new size as well.
            self.len = end;
        }
        self.file.sync_data()?;
        self.offset = end;
        Ok(())
    }

    /// Bytes written since the last checkpoint.
    pub fn written(&self) -> u64 {
        self.offset
    }

    /// After a checkpoint made redb durable: start over at offset 0. Records
    /// left beyond the new end carry older positions, so recovery stops at them.
    pub fn reset(&mut self) {
        self.offset = 0;
    }
}

/// Reads intact records whose positions follow on from each other.
fn parse(bytes: &[u8]) -> Vec<WalRecord> {
    let mut records = Vec::new();
    let mut at = 0usize;
    let mut expected_first: Option<u64> = None;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        if word(0) != MAGIC {
            break;
        }
        let len = word(4) as usize;
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc32fast::hash(payload) != word(8) {
            break;
        }
        let Some(record) = parse_payload(payload) else {
            break;
        };
        let count = record.events.len() as u64;
        if expected_first.is_some_and(|e| e != record.first_position.0) {
            break;
        }
        expected_first = Some(record.first_position.0 + count);
        records.push(record);
        at += HEADER + len;
    }
    records
}

fn parse_payload(payload: &[u8]) -> Option<WalRecord> {
    let first = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
    let count = u32::from_le_bytes(payload.get(8..12)?.try_into().ok()?);
    // Positions past u64::MAX are no group the writer made.
    first.checked_add(u64::from(count))?;
    let mut at = 12;
    // Each event takes at least 12 bytes: a count that claims more than
    // the payload holds must not size the allocation.
    let mut events = Vec::with_capacity((count as usize).min(payload.len() / 12));
    for _ in 0..count {
        let stream_id = u64::from_le_bytes(payload.get(at..at + 8)?.try_into().ok()?);
        let len = u32::from_le_bytes(payload.get(at + 8..at + 12)?.try_into().ok()?) as usize;
        let encoded = payload.get(at + 12..at + 12 + len)?.to_vec();
        events.push((stream_id, encoded));
        at += 12 + len;
    }
    (at == payload.len() && count > 0).then_some(WalRecord {
        first_position: Position(first),
        events,
    })
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::log::codec::tests::{any_event, encode};

    /// Cases per property test: all of them run in under a second (debug build).
    const CASES: u32 = 256;

    fn record(first: u64, n: usize) -> RecordBuilder {
        let mut builder = RecordBuilder::default();
        builder.clear();
        for i in 0..n {
            builder.push(
                first + i as u64,
                WalEvent {
                    stream_id: 7,
                    encoded: format!("event {i}").as_bytes(),
                },
            );
        }
        builder
    }

    #[test]
    fn records_round_trip_and_recovery_stops_at_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, records) = Wal::open(&path).unwrap();
        assert!(records.is_empty());
        wal.append(&mut record(1, 2)).unwrap();
        wal.append(&mut record(3, 1)).unwrap();
        let end = wal.written();
        drop(wal);
        let (_, records) = Wal::open(&path).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].first_position, Position(1));
        assert_eq!(records[0].events[1], (7, b"event 1".to_vec()));
        assert_eq!(records[1].first_position, Position(3));

        // A torn last record is ignored.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], end - 2).unwrap();
        let (_, records) = Wal::open(&path).unwrap();
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn after_a_reset_stale_records_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.append(&mut record(1, 1)).unwrap();
        wal.append(&mut record(2, 1)).unwrap();
        wal.append(&mut record(3, 1)).unwrap();
        wal.reset();
        // A longer record overwrites the first two; the third is stale.
        wal.append(&mut record(4, 3)).unwrap();
        drop(wal);
        let (_, records) = Wal::open(&path).unwrap();
        let firsts: Vec<u64> = records.iter().map(|r| r.first_position.0).collect();
        assert_eq!(firsts, vec![4]);
    }

    /// A group as the writer records it: (stream id, encoded event) pairs.
    type Group = Vec<(u64, Vec<u8>)>;

    /// A few groups of real encoded events.
    fn any_groups() -> impl Strategy<Value = Vec<Group>> {
        vec(
            vec((any::<u64>(), any_event().prop_map(|e| encode(&e))), 1..4),
            1..5,
        )
    }

    /// The groups' records as the WAL holds them, from position `first` on,
    /// and where each record ends.
    fn write(first: u64, groups: &[Group]) -> (Vec<u8>, Vec<usize>) {
        let (mut bytes, mut ends) = (Vec::new(), Vec::new());
        let mut position = first;
        for group in groups {
            let mut builder = RecordBuilder::default();
            builder.clear();
            for (stream_id, encoded) in group {
                let event = WalEvent {
                    stream_id: *stream_id,
                    encoded,
                };
                builder.push(position, event);
                position += 1;
            }
            bytes.extend_from_slice(builder.seal());
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    /// What `parse` read, comparable.
    fn read(bytes: &[u8]) -> Vec<(u64, Group)> {
        parse(bytes)
            .into_iter()
            .map(|r| (r.first_position.0, r.events))
            .collect()
    }

    /// The first `n` of `groups`, as `read` answers them.
    fn expected(first: u64, groups: &[Group], n: usize) -> Vec<(u64, Group)> {
        let mut position = first;
        groups[..n]
            .iter()
            .map(|group| {
                position += group.len() as u64;
                (position - group.len() as u64, group.clone())
            })
            .collect()
    }

    /// A record around `payload`, with its magic, length and checksum
    /// right, so that the payload's own parsing is what is tested.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_le_bytes().to_vec();
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Payloads with edge values in their first position and count, and
    /// events whose lengths may lie.
    fn any_payload() -> impl Strategy<Value = Vec<u8>> {
        let first = prop_oneof![
            Just(0),
            Just(1),
            (0..4u64).prop_map(|d| u64::MAX - d),
            any::<u64>()
        ];
        let count = prop_oneof![0..4u32, Just(u32::MAX), any::<u32>()];
        let event = (
            any::<u64>(),
            prop_oneof![0..16u32, any::<u32>()],
            vec(any::<u8>(), 0..16),
        );
        (first, count, vec(event, 0..4), vec(any::<u8>(), 0..4)).prop_map(
            |(first, count, events, tail)| {
                let mut out = first.to_le_bytes().to_vec();
                out.extend_from_slice(&count.to_le_bytes());
                for (stream_id, len, bytes) in events {
                    out.extend_from_slice(&stream_id.to_le_bytes());
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(&bytes);
                }
                out.extend(tail);
                out
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

        /// Whatever the file holds, recovery never panics nor allocates what
        /// a length claims, and each record it returns is exactly the bytes
        /// it read: written again, they are that part of the file.
        #[test]
        fn arbitrary_bytes_recover_only_what_they_say(
            noise in vec(any::<u8>(), 0..64),
            payloads in vec(any_payload(), 0..4),
        ) {
            let _ = parse(&noise);
            let mut bytes: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
            bytes.extend(noise);
            let records = parse(&bytes);
            let mut expected_first = None;
            let mut at = 0;
            for record in records {
                prop_assert!(!record.events.is_empty());
                prop_assert!(expected_first.is_none_or(|e| e == record.first_position.0));
                expected_first = record.first_position.0.checked_add(record.events.len() as u64);
                prop_assert!(expected_first.is_some(), "positions past u64::MAX");
                let group: Group = record.events;
                let (again, _) = write(record.first_position.0, &[group]);
                prop_assert_eq!(&bytes[at..at + again.len()], again.as_slice());
                at += again.len();
            }
        }

        #[test]
        fn records_round_trip(first in 1..1u64 << 40, groups in any_groups()) {
            let (mut bytes, _) = write(first, &groups);
            // What the preallocated file holds after the last record.
            bytes.extend_from_slice(&[0; 64]);
            prop_assert_eq!(read(&bytes), expected(first, &groups, groups.len()));
        }

        /// A cut (a torn write) keeps exactly the records before it; a
        /// changed byte, wherever it is, ends recovery at the record that
        /// holds it (the CRC catches every change of one byte).
        #[test]
        fn a_cut_or_changed_byte_ends_recovery_at_its_record(
            first in 1..1u64 << 40,
            groups in any_groups(),
            at in any::<prop::sample::Index>(),
            flip in 1..=u8::MAX,
        ) {
            let (mut bytes, ends) = write(first, &groups);
            for len in 0..=bytes.len() {
                let whole = ends.iter().filter(|&&end| end <= len).count();
                prop_assert_eq!(read(&bytes[..len]), expected(first, &groups, whole));
            }
            bytes.extend_from_slice(&[0; 16]);
            let at = at.index(bytes.len());
            bytes[at] ^= flip;
            let intact = ends.iter().filter(|&&end| end <= at).count();
            prop_assert_eq!(read(&bytes), expected(first, &groups, intact));
        }
    }
}
