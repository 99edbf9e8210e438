//! Domain types of the event log: positions, stream names, expected versions,
//! and events as they are appended and as they are read back.

use std::collections::HashSet;
use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use super::LogError;

/// Longest stream name or event type accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// A global position in the log: gapless, strictly increasing, starting at 1.
/// `Position(0)` means "before the first event" (a checkpoint with nothing processed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Position(pub u64);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A validated stream name: non-empty UTF-8, at most 256 bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

impl StreamName {
    /// Validates `name` as a stream name.
    pub fn new(name: impl Into<String>) -> Result<Self, LogError> {
        let name = name.into();
        validate_name("stream name", &name)?;
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The stream's category: the part before the first `-` (`user-1` → `user`).
    pub fn category(&self) -> &str {
        category_of(&self.0)
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The category of a stream name: the part before the first `-`, or the whole
/// name when it has none.
pub fn category_of(stream: &str) -> &str {
    stream
        .split_once('-')
        .map_or(stream, |(category, _)| category)
}

/// A validated event type: non-empty, at most 256 bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventType(String);

impl EventType {
    /// Validates `name` as an event type.
    pub fn new(name: impl Into<String>) -> Result<Self, LogError> {
        let name = name.into();
        validate_name("event type", &name)?;
        Ok(Self(name))
    }

    /// The type as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_name(what: &'static str, name: &str) -> Result<(), LogError> {
    let problem = if name.is_empty() {
        "must not be empty".to_string()
    } else if name.len() > MAX_NAME_BYTES {
        format!("is {} bytes, the limit is {MAX_NAME_BYTES}", name.len())
    } else if name.chars().any(char::is_control) {
        "must not contain control characters".to_string()
    } else {
        return Ok(());
    };
    Err(LogError::InvalidName { what, problem })
}

/// What the writer of an append expects the stream's current version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must have no events.
    NoStream,
    /// The stream must have at least one event.
    Exists,
    /// The stream's last event must have this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose last event has version `current` (`None`: no
    /// events) satisfies this expectation.
    pub fn admits(self, current: Option<u64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::Exists => current.is_some(),
            ExpectedVersion::Exact(v) => current == Some(v),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no_stream"),
            ExpectedVersion::Exists => f.write_str("exists"),
            ExpectedVersion::Exact(v) => v.fmt(f),
        }
    }
}

/// An event to append. `data` and `metadata` are JSON text, kept as received.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Client-supplied id (for idempotent retries); `None` lets the writer
    /// generate a UUIDv7, new by construction.
    pub id: Option<Uuid>,
    /// The event's type.
    pub event_type: EventType,
    /// The payload: any JSON value, as the bytes received.
    pub data: Vec<u8>,
    /// A JSON object, `{}` when the client sent none.
    pub metadata: Vec<u8>,
}

/// All events of one append go to one stream, atomically.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    /// The stream appended to.
    pub stream: StreamName,
    /// The optimistic-concurrency check made before anything is written.
    pub expected_version: ExpectedVersion,
    /// At least one event.
    pub events: Vec<NewEvent>,
}

/// Where one append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AppendOutcome {
    /// Position of the first event of the append.
    pub first_position: Position,
    /// Position of the last event of the append.
    pub last_position: Position,
    /// The stream's version after the append: pass it as `expected_version` next time.
    pub next_expected_version: u64,
    /// True when every event was already in the log (an idempotent retry):
    /// nothing was appended and the original positions are returned.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// An event as it is stored and read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Global position.
    pub position: Position,
    /// The stream it belongs to.
    pub stream: String,
    /// 0-based version within the stream.
    pub version: u64,
    /// The event's type.
    pub event_type: String,
    /// The event's id.
    pub id: Uuid,
    /// JSON text, as appended.
    pub data: Vec<u8>,
    /// JSON object text, as appended.
    pub metadata: Vec<u8>,
    /// When the writer recorded it, in microseconds since the Unix epoch.
    pub recorded_at: u64,
}

impl RecordedEvent {
    /// Writes the event as the API's JSON object. `data` and `metadata` are
    /// spliced in as stored: they were validated as JSON when appended.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let string = |out: &mut Vec<u8>, s: &str| {
            // Serialising a &str into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, s);
        };
        out.extend_from_slice(b"{\"position\":");
        out.extend_from_slice(self.position.0.to_string().as_bytes());
        out.extend_from_slice(b",\"stream\":");
        string(out, &self.stream);
        out.extend_from_slice(b",\"version\":");
        out.extend_from_slice(self.version.to_string().as_bytes());
        out.extend_from_slice(b",\"type\":");
        string(out, &self.event_type);
        out.extend_from_slice(b",\"id\":\"");
        out.extend_from_slice(self.id.hyphenated().to_string().as_bytes());
        out.extend_from_slice(b"\",\"data\":");
        out.extend_from_slice(&self.data);
        out.extend_from_slice(b",\"metadata\":");
        out.extend_from_slice(&self.metadata);
        out.extend_from_slice(b",\"recorded_at\":\"");
        out.extend_from_slice(format_timestamp(self.recorded_at).as_bytes());
        out.extend_from_slice(b"\"}");
    }

    /// The event as a JSON string.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(128 + self.data.len() + self.metadata.len());
        self.write_json(&mut out);
        // Every piece written is UTF-8: validated JSON and serde-escaped strings.
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// RFC 3339 with microseconds, UTC (`2026-11-23T05:00:00.123456Z`).
pub fn format_timestamp(micros: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros);
    humantime::format_rfc3339_micros(time).to_string()
}

/// Rejects a request with an append of no events (which would have no
/// position to answer with) or that names the same client id twice.
pub(super) fn check_request(appends: &[StreamAppend]) -> Result<(), LogError> {
    if let Some(empty) = appends.iter().find(|a| a.events.is_empty()) {
        return Err(LogError::NoEvents(empty.stream.as_str().to_owned()));
    }
    let mut seen = HashSet::new();
    for id in appends
        .iter()
        .flat_map(|a| a.events.iter().filter_map(|e| e.id))
    {
        if !seen.insert(id) {
            return Err(LogError::DuplicateId(id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_validated() {
        assert!(StreamName::new("user-1").is_ok());
        assert!(StreamName::new("").is_err());
        assert!(StreamName::new("a\nb").is_err());
        assert!(StreamName::new("x".repeat(257)).is_err());
        assert!(StreamName::new("é".repeat(128)).is_ok());
        assert!(StreamName::new("é".repeat(129)).is_err());
    }

    #[test]
    fn category_is_the_part_before_the_first_dash() {
        assert_eq!(category_of("user-1"), "user");
        assert_eq!(category_of("order-2-x"), "order");
        assert_eq!(category_of("settings"), "settings");
    }

    #[test]
    fn expected_versions_admit_the_right_heads() {
        assert!(ExpectedVersion::Any.admits(None));
        assert!(ExpectedVersion::NoStream.admits(None));
        assert!(!ExpectedVersion::NoStream.admits(Some(0)));
        assert!(ExpectedVersion::Exists.admits(Some(0)));
        assert!(!ExpectedVersion::Exists.admits(None));
        assert!(ExpectedVersion::Exact(2).admits(Some(2)));
        assert!(!ExpectedVersion::Exact(2).admits(Some(1)));
    }

    #[test]
    fn recorded_event_renders_as_design_json() {
        let event = RecordedEvent {
            position: Position(17),
            stream: "user-\"1".into(),
            version: 0,
            event_type: "UserCreated".into(),
            id: Uuid::nil(),
            data: br#"{"userId": 1}"#.to_vec(),
            metadata: b"{}".to_vec(),
            recorded_at: 1_795_410_000_123_456,
        };
        let value: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(value["position"], 17);
        assert_eq!(value["stream"], "user-\"1");
        assert_eq!(value["data"]["userId"], 1);
        assert_eq!(
            value["recorded_at"],
            format_timestamp(1_795_410_000_123_456)
        );
        assert!(value["recorded_at"].as_str().unwrap().ends_with(".123456Z"));
    }
}
