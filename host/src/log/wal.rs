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
    let mut at = 12;
    let mut events = Vec::with_capacity(count as usize);
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
    use super::*;

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
}
