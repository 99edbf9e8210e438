//! A batch of events in the form its plugin takes them: the records of WIT
//! 0.1; from 0.2 on, records or one JSON array; from 0.3 on (0.4 too), also
//! one packed byte buffer — as the plugin asked in `describe`. Built by the runner off
//! the plugin's thread, beside the call.

use std::io::Write;

use super::bindings::types::Event;
use super::bindings::{v0_2, v0_3, v0_4};
use crate::log::RecordedEvent;

/// How a plugin takes its events: the WIT version it was built against and,
/// from 0.2 on, the encoding it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventForm {
    /// WIT 0.1: a list of `event` records.
    RecordsV0_1,
    /// WIT 0.2, `event-encoding.records`.
    RecordsV0_2,
    /// WIT 0.2, `event-encoding.json`: one JSON array per batch.
    JsonV0_2,
    /// WIT 0.3, `event-encoding.records`.
    RecordsV0_3,
    /// WIT 0.3, `event-encoding.json`.
    JsonV0_3,
    /// WIT 0.3, `event-encoding.packed`: one byte buffer per batch.
    PackedV0_3,
    /// WIT 0.4, `event-encoding.records`.
    RecordsV0_4,
    /// WIT 0.4, `event-encoding.json`.
    JsonV0_4,
    /// WIT 0.4, `event-encoding.packed`.
    PackedV0_4,
}

impl EventForm {
    /// The WIT package version it was built against.
    pub fn wit_version(self) -> WitVersion {
        match self {
            EventForm::RecordsV0_1 => WitVersion::V0_1,
            EventForm::RecordsV0_2 | EventForm::JsonV0_2 => WitVersion::V0_2,
            EventForm::RecordsV0_3 | EventForm::JsonV0_3 | EventForm::PackedV0_3 => {
                WitVersion::V0_3
            }
            EventForm::RecordsV0_4 | EventForm::JsonV0_4 | EventForm::PackedV0_4 => {
                WitVersion::V0_4
            }
        }
    }

    /// How its batches are encoded.
    pub fn encoding(self) -> Encoding {
        match self {
            EventForm::RecordsV0_1
            | EventForm::RecordsV0_2
            | EventForm::RecordsV0_3
            | EventForm::RecordsV0_4 => Encoding::Records,
            EventForm::JsonV0_2 | EventForm::JsonV0_3 | EventForm::JsonV0_4 => Encoding::Json,
            EventForm::PackedV0_3 | EventForm::PackedV0_4 => Encoding::Packed,
        }
    }
}

/// A released version of the `eventfold:plugin` WIT package (`wit/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub enum WitVersion {
    /// `0.1.0`: records only.
    #[serde(rename = "0.1.0")]
    V0_1,
    /// `0.2.0`: records or JSON.
    #[serde(rename = "0.2.0")]
    V0_2,
    /// `0.3.0`: records, JSON or packed.
    #[serde(rename = "0.3.0")]
    V0_3,
    /// `0.4.0`: 0.3 and the reactor world.
    #[serde(rename = "0.4.0")]
    V0_4,
}

impl WitVersion {
    /// The version as the package names it (`0.4.0`).
    pub fn as_str(self) -> &'static str {
        match self {
            WitVersion::V0_1 => "0.1.0",
            WitVersion::V0_2 => "0.2.0",
            WitVersion::V0_3 => "0.3.0",
            WitVersion::V0_4 => "0.4.0",
        }
    }
}

/// How a batch of events reaches the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// A list of `event` records.
    Records,
    /// One JSON array.
    Json,
    /// One packed byte buffer.
    Packed,
}

/// The `event` record of a WIT version (every version has the same fields).
macro_rules! record {
    ($record:path, $event:expr) => {{
        let event: RecordedEvent = $event;
        $record {
            position: event.position.0,
            stream: event.stream,
            version: event.version,
            event_type: event.event_type,
            id: event.id.hyphenated().to_string(),
            data: event.data,
            metadata: event.metadata,
            recorded_at: event.recorded_at,
        }
    }};
}

/// The events of one `handle` call, ready to be lowered into the plugin.
pub enum EventBatch {
    /// For a WIT 0.1 plugin.
    V0_1(Vec<Event>),
    /// For a WIT 0.2 plugin, in its encoding.
    V0_2(v0_2::types::Events),
    /// For a WIT 0.3 plugin, in its encoding.
    V0_3(v0_3::types::Events),
    /// For a WIT 0.4 plugin, in its encoding.
    V0_4(v0_4::types::Events),
}

impl EventBatch {
    /// Converts `events` (in log order) into `form`.
    pub fn new(form: EventForm, events: Vec<RecordedEvent>) -> Self {
        match form {
            EventForm::RecordsV0_1 => {
                EventBatch::V0_1(events.into_iter().map(|e| record!(Event, e)).collect())
            }
            EventForm::RecordsV0_2 => EventBatch::V0_2(v0_2::types::Events::Records(
                events
                    .into_iter()
                    .map(|e| record!(v0_2::types::Event, e))
                    .collect(),
            )),
            EventForm::JsonV0_2 => EventBatch::V0_2(v0_2::types::Events::Json(json(&events))),
            EventForm::RecordsV0_3 => EventBatch::V0_3(v0_3::types::Events::Records(
                events
                    .into_iter()
                    .map(|e| record!(v0_3::types::Event, e))
                    .collect(),
            )),
            EventForm::JsonV0_3 => EventBatch::V0_3(v0_3::types::Events::Json(json(&events))),
            EventForm::PackedV0_3 => EventBatch::V0_3(v0_3::types::Events::Packed(packed(&events))),
            EventForm::RecordsV0_4 => EventBatch::V0_4(v0_4::types::Events::Records(
                events
                    .into_iter()
                    .map(|e| record!(v0_4::types::Event, e))
                    .collect(),
            )),
            EventForm::JsonV0_4 => EventBatch::V0_4(v0_4::types::Events::Json(json(&events))),
            EventForm::PackedV0_4 => EventBatch::V0_4(v0_4::types::Events::Packed(packed(&events))),
        }
    }
}

/// The events as the JSON of `event-encoding.json`: an array of arrays,
/// `[position, stream, version, type, id, data, metadata, recorded_at]`.
fn json(events: &[RecordedEvent]) -> Vec<u8> {
    let size: usize = events
        .iter()
        .map(|e| 100 + e.stream.len() + e.event_type.len() + e.data.len() + e.metadata.len())
        .sum();
    let mut out = Vec::with_capacity(size + 2);
    let mut id = uuid::Uuid::encode_buffer();
    // Writing into a Vec cannot fail.
    let _ = (|| -> std::io::Result<()> {
        out.push(b'[');
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write!(out, "[{},", e.position.0)?;
            serde_json::to_writer(&mut out, &e.stream)?;
            write!(out, ",{},", e.version)?;
            serde_json::to_writer(&mut out, &e.event_type)?;
            write!(out, ",\"{}\",", e.id.hyphenated().encode_lower(&mut id))?;
            // Validated as JSON when appended: spliced in as stored.
            out.extend_from_slice(&e.data);
            out.push(b',');
            out.extend_from_slice(&e.metadata);
            write!(out, ",{}]", e.recorded_at)?;
        }
        out.push(b']');
        Ok(())
    })();
    out
}

/// Bytes of an event's fixed header in `event-encoding.packed`: position,
/// version and recorded-at (u64 each), then five field lengths (u32 each).
const PACKED_HEADER: usize = 3 * 8 + 5 * 4;

/// The events as the buffer of `event-encoding.packed`: their count (u32),
/// then per event its header and its five variable fields, little-endian.
fn packed(events: &[RecordedEvent]) -> Vec<u8> {
    const ID: usize = uuid::fmt::Hyphenated::LENGTH;
    let size: usize = events
        .iter()
        .map(|e| {
            PACKED_HEADER
                + ID
                + e.stream.len()
                + e.event_type.len()
                + e.data.len()
                + e.metadata.len()
        })
        .sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    let mut id = uuid::Uuid::encode_buffer();
    for e in events {
        let id = e.id.hyphenated().encode_lower(&mut id).as_bytes();
        out.extend_from_slice(&e.position.0.to_le_bytes());
        out.extend_from_slice(&e.version.to_le_bytes());
        out.extend_from_slice(&e.recorded_at.to_le_bytes());
        let fields = [
            e.stream.as_bytes(),
            e.event_type.as_bytes(),
            id,
            &e.data,
            &e.metadata,
        ];
        for field in fields {
            // Every field is capped far below 4 GiB when appended.
            out.extend_from_slice(&(field.len() as u32).to_le_bytes());
        }
        for field in fields {
            out.extend_from_slice(field);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::log::Position;

    /// Cases per property test: both run in under a second (debug build).
    const CASES: u32 = 256;

    fn event(position: u64, stream: &str, data: &[u8]) -> RecordedEvent {
        RecordedEvent {
            position: Position(position),
            stream: stream.into(),
            version: position - 1,
            event_type: "Said".into(),
            id: uuid::Uuid::from_u128(position as u128),
            data: data.to_vec(),
            metadata: b"{}".to_vec(),
            recorded_at: 1_764_250_619_123_456,
        }
    }

    #[test]
    fn json_batches_are_arrays_of_the_event_fields_in_order() {
        let events = vec![
            event(1, "chat-1", br#"{"text":"hi"}"#),
            event(2, "chat-\"q\"", b"[1,2]"),
        ];
        let parsed: serde_json::Value = serde_json::from_slice(&json(&events)).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!([
                [1, "chat-1", 0, "Said", "00000000-0000-0000-0000-000000000001",
                 {"text": "hi"}, {}, 1_764_250_619_123_456u64],
                [2, "chat-\"q\"", 1, "Said", "00000000-0000-0000-0000-000000000002",
                 [1, 2], {}, 1_764_250_619_123_456u64],
            ])
        );
        assert_eq!(json(&[]), b"[]");
    }

    #[test]
    fn packed_batches_follow_the_documented_layout() {
        let events = vec![
            event(1, "chat-1", br#"{"text":"hi"}"#),
            event(2, "émoji-2", b"[]"),
        ];
        let bytes = packed(&events);
        let mut at = 0;
        let mut take = |n: usize| {
            at += n;
            &bytes[at - n..at]
        };
        let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap()) as usize;
        let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
        assert_eq!(u32_at(take(4)), 2);
        for e in &events {
            assert_eq!(u64_at(take(8)), e.position.0);
            assert_eq!(u64_at(take(8)), e.version);
            assert_eq!(u64_at(take(8)), e.recorded_at);
            let lens: Vec<usize> = (0..5).map(|_| u32_at(take(4))).collect();
            let id = e.id.hyphenated().to_string();
            let expected: [&[u8]; 5] =
                [e.stream.as_bytes(), b"Said", id.as_bytes(), &e.data, b"{}"];
            for (len, field) in lens.into_iter().zip(expected) {
                assert_eq!(take(len), field);
            }
        }
        assert_eq!(at, bytes.len(), "nothing after the last event");
        assert_eq!(packed(&[]), 0u32.to_le_bytes());
    }

    /// An event's fields in a packed batch: position, version, recorded-at,
    /// then stream, type, id, data and metadata.
    type Packed = (u64, u64, u64, [Vec<u8>; 5]);

    /// Reads a packed batch by the layout in `docs/design.md` (the guest
    /// SDK's reader, `guest-sdk/src/event.rs`, is fuzzed beside it): every
    /// byte is accounted for, or `None`.
    fn unpack(bytes: &[u8]) -> Option<Vec<Packed>> {
        let (count, mut rest) = bytes.split_first_chunk::<4>()?;
        let mut take = |n: usize| {
            let (head, tail) = rest.split_at_checked(n)?;
            rest = tail;
            Some(head)
        };
        let mut events = Vec::new();
        for _ in 0..u32::from_le_bytes(*count) {
            let mut number = || Some(u64::from_le_bytes(take(8)?.try_into().ok()?));
            let (position, version, recorded_at) = (number()?, number()?, number()?);
            let mut lens = [0; 5];
            for len in &mut lens {
                *len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            }
            let fields = lens.map(|len| take(len).map(<[u8]>::to_vec));
            let fields = fields.into_iter().collect::<Option<Vec<_>>>()?;
            events.push((position, version, recorded_at, fields.try_into().ok()?));
        }
        rest.is_empty().then_some(events)
    }

    /// Events with any names and valid JSON payloads (as intake makes them).
    fn any_events() -> impl Strategy<Value = Vec<RecordedEvent>> {
        let json = prop_oneof![
            Just("null".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            "(?s).{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
            vec(any::<u32>(), 0..4).prop_map(|v| serde_json::to_string(&v).unwrap_or_default()),
        ];
        let event = (
            (any::<u64>(), "(?s).{0,12}", any::<u64>(), "(?s).{0,12}"),
            (any::<u128>(), json, any::<bool>(), any::<u64>()),
        )
            .prop_map(
                |((position, stream, version, event_type), (id, data, meta, recorded_at))| {
                    RecordedEvent {
                        position: Position(position),
                        stream,
                        version,
                        event_type,
                        id: uuid::Uuid::from_u128(id),
                        data: data.into_bytes(),
                        metadata: if meta {
                            br#"{"k":[1]}"#.to_vec()
                        } else {
                            b"{}".to_vec()
                        },
                        recorded_at,
                    }
                },
            );
        vec(event, 0..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

        /// A packed batch is exactly its events by the documented layout,
        /// nothing before, between or after them.
        #[test]
        fn packed_batches_read_back_exactly(events in any_events()) {
            let bytes = packed(&events);
            let expected: Vec<Packed> = events
                .iter()
                .map(|e| {
                    let id = e.id.hyphenated().to_string().into_bytes();
                    let fields = [
                        e.stream.clone().into_bytes(),
                        e.event_type.clone().into_bytes(),
                        id,
                        e.data.clone(),
                        e.metadata.clone(),
                    ];
                    (e.position.0, e.version, e.recorded_at, fields)
                })
                .collect();
            prop_assert_eq!(unpack(&bytes), Some(expected));
            for len in 0..bytes.len() {
                prop_assert_eq!(unpack(&bytes[..len]), None);
            }
        }

        /// A JSON batch parses, and each array holds its event's fields.
        #[test]
        fn json_batches_parse_to_the_events(events in any_events()) {
            let parsed: serde_json::Value = serde_json::from_slice(&json(&events)).unwrap();
            let expected: Vec<serde_json::Value> = events
                .iter()
                .map(|e| {
                    let payload =
                        |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
                    serde_json::json!([
                        e.position.0,
                        e.stream,
                        e.version,
                        e.event_type,
                        e.id.hyphenated().to_string(),
                        payload(&e.data),
                        payload(&e.metadata),
                        e.recorded_at,
                    ])
                })
                .collect();
            prop_assert_eq!(parsed, serde_json::Value::Array(expected));
        }
    }
}
