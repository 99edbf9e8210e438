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

/// Reads the version of an encoded event.
pub fn decode_version(position: Position, bytes: &[u8]) -> Result<u64, LogError> {
    let mut cursor = Cursor { bytes, position };
    check_format(&mut cursor)?;
    Ok(u64::from_le_bytes(cursor.array()?))
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
pub(super) mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    /// Cases per property test: all of them run in under a second (debug build).
    const CASES: u32 = 512;

    /// Any event the codec can store: names of any characters (the codec
    /// does not validate them), any integers, any payload bytes. The chunk
    /// and WAL tests build on it.
    pub(in crate::log) fn any_event() -> impl Strategy<Value = RecordedEvent> {
        let text = "(?s).{0,12}";
        (
            (any::<u64>(), text, any::<u64>(), text),
            (any::<u128>(), vec(any::<u8>(), 0..48)),
            (vec(any::<u8>(), 0..24), any::<u64>()),
        )
            .prop_map(
                |((position, stream, version, event_type), (id, data), (metadata, recorded_at))| {
                    RecordedEvent {
                        position: Position(position),
                        stream,
                        version,
                        event_type,
                        id: Uuid::from_u128(id),
                        data,
                        metadata,
                        recorded_at,
                    }
                },
            )
    }

    /// The event as the real encoder writes it.
    pub(in crate::log) fn encode(event: &RecordedEvent) -> Vec<u8> {
        let encoder = EncodeEvent {
            stream: &event.stream,
            version: event.version,
            recorded_at: event.recorded_at,
            id: event.id,
            event_type: &event.event_type,
            metadata: &event.metadata,
            data: &event.data,
        };
        let mut out = Vec::new();
        encoder.encode(&mut out);
        assert_eq!(out.len(), encoder.encoded_len());
        out
    }

    /// Random bytes, half of them starting with the format byte so that
    /// the decoder gets past it.
    fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            vec(any::<u8>(), 0..96),
            vec(any::<u8>(), 1..96).prop_map(|mut bytes| {
                bytes[0] = FORMAT;
                bytes
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_decode_or_fail_cleanly(position in any::<u64>(), bytes in any_bytes()) {
            let position = Position(position);
            let header = decode_header(position, &bytes);
            match decode(position, &bytes) {
                Ok(event) => {
                    let header = header.unwrap();
                    prop_assert_eq!(
                        (header.stream, header.event_type),
                        (event.stream.as_str(), event.event_type.as_str())
                    );
                }
                Err(error) => prop_assert!(matches!(error, LogError::Corrupt(_))),
            }
        }

        #[test]
        fn encoded_events_round_trip(event in any_event()) {
            let bytes = encode(&event);
            prop_assert_eq!(&decode(event.position, &bytes).unwrap(), &event);
            let header = decode_header(event.position, &bytes).unwrap();
            prop_assert_eq!(header.stream, &event.stream);
            prop_assert_eq!(header.event_type, &event.event_type);
        }

        /// The encoding has no length for `data` (the rest) and no checksum:
        /// chunks and WAL records frame it. A cut before `data` is an error; a
        /// cut inside it reads as a shorter `data`, every other field intact.
        #[test]
        fn a_cut_is_an_error_or_a_shorter_data(event in any_event()) {
            let bytes = encode(&event);
            let data_at = bytes.len() - event.data.len();
            for len in 0..bytes.len() {
                match decode(event.position, &bytes[..len]) {
                    Err(error) => {
                        prop_assert!(matches!(error, LogError::Corrupt(_)));
                        prop_assert!(len < data_at, "a cut at {} of {} failed", len, bytes.len());
                    }
                    Ok(read) => {
                        prop_assert!(len >= data_at, "a cut at {} read as an event", len);
                        let mut expected = event.clone();
                        expected.data.truncate(len - data_at);
                        prop_assert_eq!(read, expected);
                    }
                }
            }
        }

        /// Without a checksum a changed byte is only caught where it breaks
        /// the structure (the format byte, a length, UTF-8); a changed
        /// integer or id reads as what is there, and nothing else moves.
        #[test]
        fn a_changed_byte_never_panics(
            event in any_event(),
            at in any::<prop::sample::Index>(),
            flip in 1..=u8::MAX,
        ) {
            let mut bytes = encode(&event);
            let at = at.index(bytes.len());
            bytes[at] ^= flip;
            let read = decode(event.position, &bytes);
            let _ = decode_header(event.position, &bytes);
            if at == 0 {
                prop_assert!(matches!(read, Err(LogError::Corrupt(_))));
            } else if at < FIXED {
                let read = read.unwrap();
                let fixed = |e: &RecordedEvent| (e.version, e.recorded_at, e.id);
                prop_assert_ne!(fixed(&read), fixed(&event));
                prop_assert_eq!(
                    RecordedEvent { version: 0, recorded_at: 0, id: Uuid::nil(), ..read },
                    RecordedEvent { version: 0, recorded_at: 0, id: Uuid::nil(), ..event }
                );
            } else if let Err(error) = read {
                prop_assert!(matches!(error, LogError::Corrupt(_)));
            }
        }
    }

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
