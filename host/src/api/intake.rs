//! The JSON shape of appends, and its translation into the log's types.
//! Every rule a request can break is checked here, before the log sees it.

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::error::ApiError;
use crate::config::Limits;
use crate::log::{EventType, ExpectedVersion, NewEvent, StreamAppend, StreamName, portable_json};

/// The body of `POST /streams/{stream}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendBody<'a> {
    #[serde(default)]
    expected_version: Option<serde_json::Value>,
    #[serde(borrow)]
    events: Vec<EventBody<'a>>,
}

/// One append of `POST /batch`: an [`AppendBody`] with its stream.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchItem<'a> {
    stream: String,
    #[serde(default)]
    expected_version: Option<serde_json::Value>,
    #[serde(borrow)]
    events: Vec<EventBody<'a>>,
}

/// The body of `POST /batch`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody<'a> {
    /// The appends, applied all together or not at all.
    #[serde(borrow)]
    pub appends: Vec<BatchItem<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody<'a> {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(default)]
    id: Option<Uuid>,
}

impl AppendBody<'_> {
    /// Validates the body as an append to `stream`.
    pub fn into_append(
        self,
        stream: StreamName,
        limits: &Limits,
    ) -> Result<StreamAppend, ApiError> {
        to_append(stream, self.expected_version, self.events, limits)
    }
}

impl BatchItem<'_> {
    /// Validates the item as an append.
    pub fn into_append(self, limits: &Limits) -> Result<StreamAppend, ApiError> {
        let stream = StreamName::new(self.stream)?;
        to_append(stream, self.expected_version, self.events, limits)
    }
}

fn to_append(
    stream: StreamName,
    expected_version: Option<serde_json::Value>,
    events: Vec<EventBody<'_>>,
    limits: &Limits,
) -> Result<StreamAppend, ApiError> {
    let expected_version = parse_expected_version(expected_version)?;
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "no_events",
            "`events` must hold at least one event",
        ));
    }
    let events = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| to_event(e, limits).map_err(|err| err.with("event_index", i)))
        .collect::<Result<_, _>>()?;
    Ok(StreamAppend {
        stream,
        expected_version,
        events,
    })
}

fn to_event(event: EventBody<'_>, limits: &Limits) -> Result<NewEvent, ApiError> {
    let event_type = EventType::new(event.event_type)?;
    let data = event.data.get().as_bytes();
    let metadata = match event.metadata.map(RawValue::get) {
        None | Some("null") => b"{}".as_slice(),
        Some(raw) if raw.starts_with('{') => raw.as_bytes(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_metadata",
                "`metadata` must be a JSON object",
            ));
        }
    };
    for (field, json) in [("data", data), ("metadata", metadata)] {
        portable_json::check(field, json, limits.max_json_depth)
            .map_err(|problem| ApiError::bad_request("invalid_body", problem))?;
    }
    let size = event_type.as_str().len() + data.len() + metadata.len();
    if size > limits.max_event_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "event_too_large",
            format!(
                "event is {size} bytes, the limit is {}",
                limits.max_event_bytes
            ),
        ));
    }
    Ok(NewEvent {
        id: event.id,
        event_type,
        data: data.to_vec(),
        metadata: metadata.to_vec(),
    })
}

/// `"any"` (also when absent), `"no_stream"`, `"exists"`, or the integer
/// version of the stream's last event.
fn parse_expected_version(value: Option<serde_json::Value>) -> Result<ExpectedVersion, ApiError> {
    use serde_json::Value;
    match value {
        None | Some(Value::Null) => Ok(ExpectedVersion::Any),
        Some(Value::String(s)) if s == "any" => Ok(ExpectedVersion::Any),
        Some(Value::String(s)) if s == "no_stream" => Ok(ExpectedVersion::NoStream),
        Some(Value::String(s)) if s == "exists" => Ok(ExpectedVersion::Exists),
        Some(Value::Number(n)) if n.as_u64().is_some() => {
            Ok(ExpectedVersion::Exact(n.as_u64().unwrap_or_default()))
        }
        Some(other) => Err(ApiError::bad_request(
            "invalid_expected_version",
            format!(
                "expected_version must be \"any\", \"no_stream\", \"exists\" or a non-negative integer, got {other}"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<StreamAppend, ApiError> {
        let body: AppendBody<'_> = serde_json::from_str(body)
            .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
        body.into_append(StreamName::new("s-1").unwrap(), &Limits::default())
    }

    #[test]
    fn keeps_data_as_sent() {
        let append = parse(r#"{"events":[{"type":"T","data":{ "a" :  1 }}]}"#).unwrap();
        assert_eq!(append.events[0].data, br#"{ "a" :  1 }"#);
        assert_eq!(append.events[0].metadata, b"{}");
        assert_eq!(append.expected_version, ExpectedVersion::Any);
    }

    #[test]
    fn expected_versions_parse() {
        for (text, expected) in [
            ("\"any\"", ExpectedVersion::Any),
            ("\"no_stream\"", ExpectedVersion::NoStream),
            ("\"exists\"", ExpectedVersion::Exists),
            ("7", ExpectedVersion::Exact(7)),
        ] {
            let body =
                format!(r#"{{"expected_version":{text},"events":[{{"type":"T","data":1}}]}}"#);
            assert_eq!(parse(&body).unwrap().expected_version, expected);
        }
        for bad in ["-1", "1.5", "\"some\"", "[]"] {
            let body =
                format!(r#"{{"expected_version":{bad},"events":[{{"type":"T","data":1}}]}}"#);
            assert_eq!(
                parse(&body).err().unwrap().status(),
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn refuses_data_and_metadata_nested_beyond_the_limit() {
        let deep = |n| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let ok = format!(r#"{{"events":[{{"type":"T","data":{}}}]}}"#, deep(128));
        assert!(parse(&ok).is_ok());
        let data = format!(r#"{{"events":[{{"type":"T","data":{}}}]}}"#, deep(129));
        let (status, body) = parse(&data).err().unwrap().into_body();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid_body");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("`data`") && message.contains("128"),
            "{message}"
        );
        let metadata = format!(
            r#"{{"events":[{{"type":"T","data":1,"metadata":{{"a":{}}}}}]}}"#,
            deep(128)
        );
        assert_eq!(
            parse(&metadata).err().unwrap().status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn rejects_bad_events() {
        for body in [
            r#"{"events":[]}"#,
            r#"{"events":[{"type":"","data":1}]}"#,
            r#"{"events":[{"type":"T","data":1,"metadata":[1]}]}"#,
        ] {
            assert_eq!(
                parse(body).err().unwrap().status(),
                StatusCode::BAD_REQUEST,
                "{body}"
            );
        }
    }
}
