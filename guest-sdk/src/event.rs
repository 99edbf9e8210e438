//! [`Event`]: one event of the log, as a plugin sees it.

use serde::de::DeserializeOwned;

use crate::wit::eventfold::plugin::types as wit_types;

/// One event of the log.
#[derive(Debug, Clone)]
pub struct Event {
    /// Global position (gapless, from 1).
    pub position: u64,
    /// The stream it belongs to, e.g. `user-1`.
    pub stream: String,
    /// 0-based version within the stream.
    pub version: u64,
    /// Its type, e.g. `UserCreated`.
    pub event_type: String,
    /// Its id (a UUID).
    pub id: String,
    /// JSON, as appended.
    pub data: Vec<u8>,
    /// A JSON object.
    pub metadata: Vec<u8>,
    /// When the log recorded it, in microseconds since the Unix epoch.
    pub recorded_at: u64,
}

impl Event {
    /// The stream's category: the part of its name before the first `-`.
    pub fn category(&self) -> &str {
        self.stream.split_once('-').map_or(&self.stream, |(c, _)| c)
    }

    /// Decodes `data` into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> crate::Result<T> {
        Ok(serde_json::from_slice(&self.data)?)
    }

    /// Decodes the event into an enum tagged by event type, i.e. a type with
    /// `#[serde(tag = "type", content = "data")]` whose variants are named
    /// after the event types.
    pub fn decode_tagged<T: DeserializeOwned>(&self) -> crate::Result<T> {
        let mut json = Vec::with_capacity(self.data.len() + self.event_type.len() + 20);
        json.extend_from_slice(b"{\"type\":");
        serde_json::to_writer(&mut json, &self.event_type)?;
        json.extend_from_slice(b",\"data\":");
        json.extend_from_slice(&self.data);
        json.push(b'}');
        Ok(serde_json::from_slice(&json)?)
    }

    /// Decodes `metadata` into `T`.
    pub fn decode_metadata<T: DeserializeOwned>(&self) -> crate::Result<T> {
        Ok(serde_json::from_slice(&self.metadata)?)
    }
}

impl From<wit_types::Event> for Event {
    fn from(e: wit_types::Event) -> Self {
        Self {
            position: e.position,
            stream: e.stream,
            version: e.version,
            event_type: e.event_type,
            id: e.id,
            data: e.data,
            metadata: e.metadata,
            recorded_at: e.recorded_at,
        }
    }
}
