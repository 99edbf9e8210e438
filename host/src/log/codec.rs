//! The binary form of one event, as chunks (`chunk`) and the write-ahead
//! log hold it.
//!
//! ```text
//! u8  format (1)
//! u64 version            u64 recorded_at (µs since epoch)
//! [16] id
//! u16 stream length, stream bytes
//! u16 type length, type bytes
//! u32 metadata length, metadata bytes
//! data bytes (the rest)
//! ```
//! Integers are little-endian. The position is not stored here: it follows
//! from where the event is in its chunk.

use uuid::Uuid;

use super::{LogError, Position, RecordedEvent};

const FORMAT: u8 = 1;
const FIXED: usize = 1 + 8 + 8 + 16;

/// The fields of an event as the writer stores them.
pub struct EncodeEvent<'a> {
    /// Stream name.
    pub stream: &'a str,
    /// Version within the stream.
    pub version: u64,
    /// Recording time, µs since the epoch.
    pub recorded_at: u64,
    /// Event id.
    pub id: Uuid,
    /// Event type.
    pub event_type: &'a str,
    /// JSON object text.
    pub metadata: &'a [u8],
    /// JSON text.
    pub data: &'a [u8],
}

impl EncodeEvent<'_> {
    /// How many bytes [`Self::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        FIXED
            + 8
            + self.stream.len()
            + self.event_type.len()
            + self.metadata.len()
            + self.data.len()
    }

    /// Appends the encoded event to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.push(FORMAT);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.recorded_at.to_le_bytes());
        out.extend_from_slice(self.id.as_bytes());
        // Lengths fit: names are capped at 256 bytes and events at the
        // configured maximum, far below u32::MAX (checked at intake).
        out.extend_from_slice(&(self.stream.len() as u16).to_le_bytes());
        out.extend_from_slice(self.stream.as_bytes());
        out.extend_from_slice(&(self.event_type.len() as u16).to_le_bytes());
        out.extend_from_slice(self.event_type.as_bytes());
        out.extend_from_slice(&(self.metadata.len() as u32).to_le_bytes());
        out.extend_from_slice(self.metadata);
        out.extend_from_slice(self.data);
    }
}

/// A cursor over the encoded bytes that reports truncation as corruption.
struct Cursor<'a> {
    bytes: &'a [u8],
    position: Position,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LogError> {
        if self.bytes.len() < n {
            return Err(LogError::Corrupt(format!(
                "event {} is truncated",
                self.position
            )));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LogError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn text(&mut self, len: usize) -> Result<&'a str, LogError> {
        let position = self.position;
        std::str::from_utf8(self.take(len)?).map_err(|_| {
            LogError::Corrupt(format!("event {position} has a name that is not UTF-8"))
        })
    }
}

/// The header fields needed to filter an event without copying its payload.
pub struct EventHeader<'a> {
    /// Stream name.
    pub stream: &'a str,
    /// Event type.
    pub event_type: &'a str,
}

/// Reads the stream and type of an encoded event.
pub fn decode_header(position: Position, bytes: &[u8]) -> Result<EventHeader<'_>, LogError> {
    let mut cursor = Cursor { bytes, position };
    check_format(&mut cursor)?;
    cursor.take(FIXED - 1)?;
    let stream_len = u16::from_le_bytes(cursor.array()?) as usize;
    let stream = cursor.text(stream_len)?;
    let type_len = u16::from_le_bytes(cursor.array()?) as usize;
    let event_type = cursor.text(type_len)?;
    Ok(EventHeader { stream, event_type })
}

/// Decodes a whole event.
pub fn decode(position: Position, bytes: &[u8]) -> Result<RecordedEvent, LogError> {
    let mut cursor = Cursor { bytes, position };
    check_format(&mut cursor)?;
    let version = u64::from_le_bytes(cursor.array()?);
    let recorded_at = u64::from_le_bytes(cursor.array()?);
    let id = Uuid::from_bytes(cursor.array()?);
    let stream_len = u16::from_le_bytes(cursor.array()?) as usize;
    let stream = cursor.text(stream_len)?.to_owned();
    let type_len = u16::from_le_bytes(cursor.array()?) as usize;
    let event_type = cursor.text(type_len)?.to_owned();
    let metadata_len = u32::from_le_bytes(cursor.array()?) as usize;
    let metadata = cursor.take(metadata_len)?.to_vec();
    let data = cursor.bytes.to_vec();
    Ok(RecordedEvent {
        position,
        stream,
        version,
        event_type,
        id,
        data,
        metadata,
        recorded_at,
    })
}

fn check_format(cursor: &mut Cursor<'_>) -> Result<(), LogError> {
    match cursor.take(1)? {
        [FORMAT] => Ok(()),
        [other] => Err(LogError::Corrupt(format!(
            "event {} has unknown format {other}",
            cursor.position
        ))),
        _ => unreachable!("take(1) returns one byte"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, Uuid) {
        let id = Uuid::now_v7();
        let mut out = Vec::new();
        EncodeEvent {
            stream: "user-1",
            version: 3,
            recorded_at: 42,
            id,
            event_type: "UserCreated",
            metadata: b"{\"a\":1}",
            data: b"[1,2,3]",
        }
        .encode(&mut out);
        (out, id)
    }

    #[test]
    fn round_trips() {
        let (bytes, id) = sample();
        let event = decode(Position(9), &bytes).unwrap();
        assert_eq!(event.position, Position(9));
        assert_eq!(event.stream, "user-1");
        assert_eq!(event.version, 3);
        assert_eq!(event.recorded_at, 42);
        assert_eq!(event.id, id);
        assert_eq!(event.event_type, "UserCreated");
        assert_eq!(event.metadata, b"{\"a\":1}");
        assert_eq!(event.data, b"[1,2,3]");
        let header = decode_header(Position(9), &bytes).unwrap();
        assert_eq!(
            (header.stream, header.event_type),
            ("user-1", "UserCreated")
        );
    }

    #[test]
    fn truncation_is_corruption_not_a_panic() {
        let (bytes, _) = sample();
        for len in 0..FIXED + 10 {
            assert!(matches!(
                decode(Position(1), &bytes[..len]),
                Err(LogError::Corrupt(_))
            ));
        }
    }
}
