//! [`Event`]: one event of the log, as a plugin sees it, and the reading of
//! the batch the host hands over (`event-encoding.packed`, WIT 0.3 and later).

use serde::de::DeserializeOwned;

use crate::Error;

/// One event of the log. Its strings and bytes are read in place from the
/// batch the host handed over: nothing is copied until the plugin asks
/// (`event.stream.to_owned()`, [`Event::decode`]).
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// Global position (gapless, from 1).
    pub position: u64,
    /// The stream it belongs to, e.g. `user-1`.
    pub stream: &'a str,
    /// 0-based version within the stream.
    pub version: u64,
    /// Its type, e.g. `UserCreated`.
    pub event_type: &'a str,
    /// Its id (a hyphenated UUID).
    pub id: &'a str,
    /// JSON, as appended.
    pub data: &'a [u8],
    /// A JSON object.
    pub metadata: &'a [u8],
    /// When the log recorded it, in microseconds since the Unix epoch.
    pub recorded_at: u64,
}

impl<'a> Event<'a> {
    /// The stream's category: the part of its name before the first `-`.
    pub fn category(&self) -> &'a str {
        self.stream.split_once('-').map_or(self.stream, |(c, _)| c)
    }

    /// Decodes `data` into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> crate::Result<T> {
        Ok(serde_json::from_slice(self.data)?)
    }

    /// Decodes the event into an enum tagged by event type, i.e. a type with
    /// `#[serde(tag = "type", content = "data")]` whose variants are named
    /// after the event types.
    pub fn decode_tagged<T: DeserializeOwned>(&self) -> crate::Result<T> {
        let mut json = Vec::with_capacity(self.data.len() + self.event_type.len() + 20);
        json.extend_from_slice(b"{\"type\":");
        serde_json::to_writer(&mut json, self.event_type)?;
        json.extend_from_slice(b",\"data\":");
        json.extend_from_slice(self.data);
        json.push(b'}');
        Ok(serde_json::from_slice(&json)?)
    }

    /// Decodes `metadata` into `T`.
    pub fn decode_metadata<T: DeserializeOwned>(&self) -> crate::Result<T> {
        Ok(serde_json::from_slice(self.metadata)?)
    }
}

/// Bytes of an event's fixed header: position, version and recorded-at
/// (u64 each), then the lengths of its five variable fields (u32 each).
const HEADER: usize = 3 * 8 + 5 * 4;

/// Reads the events of a packed batch one by one, in place.
pub(crate) struct Packed<'a> {
    rest: &'a [u8],
    remaining: u32,
}

impl<'a> Packed<'a> {
    /// The batch's event count, and a reader positioned at its first event.
    pub(crate) fn new(bytes: &'a [u8]) -> Result<Self, Error> {
        let (count, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| Error::msg("packed batch: shorter than its count"))?;
        Ok(Self {
            rest,
            remaining: u32::from_le_bytes(*count),
        })
    }

    fn next_event(&mut self) -> Result<Event<'a>, Error> {
        let (header, mut rest) = self
            .rest
            .split_first_chunk::<HEADER>()
            .ok_or_else(|| Error::msg("packed batch: an event header is cut short"))?;
        let u64_at =
            |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or_default());
        let len_at = |i: usize| {
            let at = 24 + 4 * i;
            u32::from_le_bytes(header[at..at + 4].try_into().unwrap_or_default()) as usize
        };
        let mut field = |i: usize| -> Result<&'a [u8], Error> {
            let len = len_at(i);
            if rest.len() < len {
                return Err(Error::msg("packed batch: an event's field is cut short"));
            }
            let (bytes, after) = rest.split_at(len);
            rest = after;
            Ok(bytes)
        };
        let text = |bytes: &'a [u8]| {
            std::str::from_utf8(bytes)
                .map_err(|_| Error::msg("packed batch: a string is not UTF-8"))
        };
        let stream = text(field(0)?)?;
        let event_type = text(field(1)?)?;
        let id = text(field(2)?)?;
        let data = field(3)?;
        let metadata = field(4)?;
        self.rest = rest;
        Ok(Event {
            position: u64_at(0),
            stream,
            version: u64_at(8),
            event_type,
            id,
            data,
            metadata,
            recorded_at: u64_at(16),
        })
    }
}

impl<'a> Iterator for Packed<'a> {
    type Item = Result<Event<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            // Bytes left over mean a count or a length that is wrong, and
            // then the events read may be wrong too.
            if !self.rest.is_empty() {
                self.rest = &[];
                return Some(Err(Error::msg("packed batch: bytes after its last event")));
            }
            return None;
        }
        self.remaining -= 1;
        let event = self.next_event();
        if event.is_err() {
            // Nothing after a damaged event can be found.
            self.remaining = 0;
            self.rest = &[];
        }
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(events: &[(u64, &str, &[u8])]) -> Vec<u8> {
        let mut out = (events.len() as u32).to_le_bytes().to_vec();
        for &(position, stream, data) in events {
            let id = "00000000-0000-0000-0000-000000000001";
            for n in [position, position - 1, 7] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            let fields: [&[u8]; 5] = [stream.as_bytes(), b"Said", id.as_bytes(), data, b"{}"];
            for f in fields {
                out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            }
            for f in fields {
                out.extend_from_slice(f);
            }
        }
        out
    }

    #[test]
    fn reads_every_field_in_place() {
        let bytes = pack(&[(1, "chat-1", b"{\"a\":1}"), (2, "dm-2", b"[]")]);
        let events: Vec<Event> = Packed::new(&bytes).unwrap().map(Result::unwrap).collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].position, 1);
        assert_eq!(events[0].stream, "chat-1");
        assert_eq!(events[0].category(), "chat");
        assert_eq!(events[0].version, 0);
        assert_eq!(events[0].event_type, "Said");
        assert_eq!(events[0].id, "00000000-0000-0000-0000-000000000001");
        assert_eq!(events[0].data, b"{\"a\":1}");
        assert_eq!(events[0].metadata, b"{}");
        assert_eq!(events[0].recorded_at, 7);
        assert_eq!(events[1].stream, "dm-2");
    }

    #[test]
    fn a_damaged_batch_is_an_error_not_a_panic() {
        let bytes = pack(&[(1, "chat-1", b"{}")]);
        for cut in 0..bytes.len() {
            let read: Result<Vec<Event>, Error> =
                Packed::new(&bytes[..cut]).and_then(|p| p.collect());
            assert!(read.is_err(), "cut at {cut} was read as whole");
        }
        let mut not_utf8 = bytes.clone();
        not_utf8[4 + HEADER] = 0xff;
        assert!(Packed::new(&not_utf8).unwrap().next().unwrap().is_err());
    }

    /// Cases of each fuzz test below. The SDK does not depend on proptest,
    /// not even for its tests: a seeded generator makes the inputs, and a
    /// failure names its case, which reruns alike.
    const CASES: u64 = 2000;

    /// xorshift64*: enough randomness to fuzz a decoder, no dependency.
    struct Rng(u64);

    impl Rng {
        fn new(case: u64) -> Self {
            Rng(case.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }

        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let len = self.below(max + 1);
            (0..len).map(|_| self.next() as u8).collect()
        }

        fn text(&mut self, max: usize) -> String {
            let chars = ['a', 'Z', '-', '"', '\0', 'é', '€', '😀'];
            let len = self.below(max + 1);
            (0..len).map(|_| chars[self.below(chars.len())]).collect()
        }
    }

    /// An event's fields, owned.
    type Fields = (u64, String, u64, String, String, Vec<u8>, Vec<u8>, u64);

    fn any_fields(rng: &mut Rng) -> Fields {
        (
            rng.next(),
            rng.text(8),
            rng.next(),
            rng.text(8),
            rng.text(36),
            rng.bytes(24),
            rng.bytes(12),
            rng.next(),
        )
    }

    fn fields(e: &Event) -> Fields {
        (
            e.position,
            e.stream.to_owned(),
            e.version,
            e.event_type.to_owned(),
            e.id.to_owned(),
            e.data.to_vec(),
            e.metadata.to_vec(),
            e.recorded_at,
        )
    }

    /// The batch as the host packs it (`host/src/runtime/batch.rs`), and
    /// where each event's five lengths are.
    fn pack_fields(events: &[Fields]) -> (Vec<u8>, Vec<usize>) {
        let mut out = (events.len() as u32).to_le_bytes().to_vec();
        let mut lengths = Vec::new();
        for (position, stream, version, event_type, id, data, metadata, recorded_at) in events {
            for n in [position, version, recorded_at] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            lengths.push(out.len());
            let fields: [&[u8]; 5] = [
                stream.as_bytes(),
                event_type.as_bytes(),
                id.as_bytes(),
                data,
                metadata,
            ];
            for f in fields {
                out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            }
            for f in fields {
                out.extend_from_slice(f);
            }
        }
        (out, lengths)
    }

    /// The whole batch read, or its first error; after an error the reader
    /// must yield nothing more.
    fn read_all(bytes: &[u8]) -> Result<Vec<Fields>, Error> {
        let mut reader = Packed::new(bytes)?;
        let mut events = Vec::new();
        for event in reader.by_ref() {
            match event {
                Ok(event) => events.push(fields(&event)),
                Err(error) => {
                    assert!(reader.next().is_none(), "an event after an error");
                    return Err(error);
                }
            }
        }
        Ok(events)
    }

    #[test]
    fn arbitrary_bytes_read_as_events_or_fail_cleanly() {
        for case in 0..CASES {
            let mut rng = Rng::new(case);
            let mut bytes = match case % 3 {
                0 => rng.bytes(128),
                // A small count, so that the reader goes on to the events.
                1 => [(rng.below(4) as u32).to_le_bytes().to_vec(), rng.bytes(128)].concat(),
                _ => {
                    let events: Vec<Fields> =
                        (0..rng.below(4)).map(|_| any_fields(&mut rng)).collect();
                    pack_fields(&events).0
                }
            };
            for _ in 0..rng.below(4) {
                if !bytes.is_empty() {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.next() as u8;
                }
            }
            let _ = read_all(&bytes);
        }
    }

    #[test]
    fn packed_batches_round_trip() {
        for case in 0..CASES {
            let mut rng = Rng::new(case);
            let events: Vec<Fields> = (0..rng.below(5)).map(|_| any_fields(&mut rng)).collect();
            let (bytes, _) = pack_fields(&events);
            assert_eq!(read_all(&bytes).unwrap(), events, "case {case}");
        }
    }

    /// Every cut is an error. The batch has no checksum: a changed count,
    /// or a changed length of the last event, is always caught (an event
    /// cut short, or bytes left over); other changes never panic.
    #[test]
    fn a_cut_or_changed_batch_is_an_error_not_a_panic() {
        for case in 0..CASES {
            let mut rng = Rng::new(case);
            let events: Vec<Fields> = (0..1 + rng.below(4))
                .map(|_| any_fields(&mut rng))
                .collect();
            let (bytes, lengths) = pack_fields(&events);
            for len in 0..bytes.len() {
                assert!(
                    read_all(&bytes[..len]).is_err(),
                    "case {case}: a cut at {len} read whole"
                );
            }
            let last = lengths[lengths.len() - 1];
            for at in (0..4).chain(last..last + 20) {
                let mut changed = bytes.clone();
                changed[at] ^= 1 + rng.below(255) as u8;
                assert!(
                    read_all(&changed).is_err(),
                    "case {case}: a change at {at} read whole"
                );
            }
            let mut changed = bytes.clone();
            let at = rng.below(changed.len());
            changed[at] ^= 1 + rng.below(255) as u8;
            let _ = read_all(&changed);
        }
    }
}
