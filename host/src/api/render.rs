//! Writing events into JSON responses without re-encoding their payloads.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::log::RecordedEvent;

/// `{"events": [ … ], <fields>}` as an `application/json` response.
pub fn events_response(events: &[RecordedEvent], fields: &[(&str, Value)]) -> Response {
    let payload: usize = events
        .iter()
        .map(|e| 160 + e.data.len() + e.metadata.len())
        .sum();
    let mut out = Vec::with_capacity(payload + 64);
    out.extend_from_slice(b"{\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        event.write_json(&mut out);
    }
    out.push(b']');
    for (key, value) in fields {
        out.push(b',');
        // Serialising strings and values into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, key);
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, value);
    }
    out.push(b'}');
    ([(header::CONTENT_TYPE, "application/json")], out).into_response()
}
