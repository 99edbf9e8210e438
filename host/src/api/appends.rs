//! `GET /appends`: appends over one WebSocket, for a client that appends
//! often. One message is one append, `{"stream", "expected_version",
//! "events"}` (an item of `POST /batch`); one reply comes back for each, in
//! the order sent: `{"status": 201, "first_position", …}` as `POST
//! /streams/{stream}` answers, or `{"status": 409, "error": {…}}`. A client
//! may send the next append before the last reply: they are applied in order.
//!
//! What it saves against HTTP is per request: no headers to write and parse
//! on either side, no routing, and a client without a connection pool.

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite;

use super::AppState;
use super::error::ApiError;
use super::extract::parse_json;
use super::intake::BatchItem;
use crate::config::Limits;
use crate::log::{AppendOutcome, StreamAppend};

/// Bytes read from the socket at a time. tungstenite zeroes this much before
/// every read, so its default, 128 KiB, costs a noticeable share of the
/// server's CPU when many clients append one event at a time; 8 KiB, as hyper
/// starts with for HTTP, costs little (`docs/design.md#notes`). A larger
/// message takes more reads.
const READ_BUFFER_BYTES: usize = 8 << 10;

/// Upgrades the request to a WebSocket of appends; a plain request gets a
/// JSON error saying what is missing.
#[utoipa::path(
    get,
    path = "/appends",
    tag = "log",
    responses(
        (status = 101, description = "A WebSocket: each text message an append `{\"stream\", \"expected_version\", \"events\"}`, each reply `{\"status\", …}` in order (docs/api.md#the-append-socket)"),
        (status = 400, description = "`websocket_required`", body = crate::api::openapi::Error),
        (status = 405, description = "`websocket_required`", body = crate::api::openapi::Error),
        (status = 426, description = "`websocket_required`: upgrade to a WebSocket", body = crate::api::openapi::Error),
        (status = 503, description = "`too_many_append_sockets`", body = crate::api::openapi::Error),
        crate::api::openapi::EveryRoute
    )
)]
pub async fn upgrade(
    State(state): State<AppState>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            "websocket_required",
            format!(
                "GET /appends is a WebSocket: {}",
                rejection.body_text().to_lowercase()
            ),
        )
    })?;
    let slot = state.slots.append_socket()?;
    let max = state.limits.max_request_bytes;
    Ok(upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            serve(socket, state).await;
            drop(slot);
        }))
}

/// One reply: the outcome, or the error, with the status HTTP would give.
#[derive(Serialize)]
struct Reply {
    status: u16,
    #[serde(flatten)]
    outcome: Option<AppendOutcome>,
    #[serde(flatten)]
    error: Option<Value>,
}

/// Answers appends until the client closes, the connection fails, or the
/// server shuts down (a close frame, "going away", between two appends).
async fn serve(mut socket: WebSocket, state: AppState) {
    loop {
        let message = tokio::select! {
            message = socket.recv() => message,
            () = state.shutdown.cancelled() => {
                close(&mut socket, close_code::AWAY, "the server is shutting down").await;
                return;
            }
        };
        let body = match message {
            Some(Ok(Message::Text(text))) => text.into(),
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return,
            Some(Err(error)) => {
                let (code, reason) = match error.into_inner().downcast::<tungstenite::Error>() {
                    Ok(error) if matches!(*error, tungstenite::Error::Capacity(_)) => (
                        close_code::SIZE,
                        format!(
                            "a message is larger than the limit of {} bytes",
                            state.limits.max_request_bytes
                        ),
                    ),
                    Ok(error) => (close_code::PROTOCOL, error.to_string()),
                    Err(error) => (close_code::ERROR, error.to_string()),
                };
                tracing::debug!(reason, "append socket closed");
                close(&mut socket, code, &reason).await;
                return;
            }
        };
        let reply = append(&state, &body).await;
        if socket.send(Message::Text(reply.into())).await.is_err() {
            return;
        }
    }
}

/// Reads one message, text or binary, as an append.
fn parse_append(body: &[u8], limits: &Limits) -> Result<StreamAppend, ApiError> {
    let item: BatchItem<'_> = parse_json(body)?;
    item.into_append(limits)
}

/// Applies one message's append and renders the reply.
async fn append(state: &AppState, body: &[u8]) -> String {
    let result = state.append_one(|| parse_append(body, &state.limits)).await;
    let (status, outcome, error) = match result {
        Ok(outcome) => (super::streams::status_of(&outcome), Some(outcome), None),
        Err(error) => {
            let (status, body) = error.into_body();
            (status, None, Some(body))
        }
    };
    render(&Reply {
        status: status.as_u16(),
        outcome,
        error,
    })
}

fn render(reply: &Reply) -> String {
    // Serialising a status, an outcome and a JSON value does not fail.
    serde_json::to_string(reply).unwrap_or_else(|_| {
        r#"{"status":500,"error":{"code":"internal","message":"cannot render the reply"}}"#
            .to_owned()
    })
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    // A close reason is at most 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: reason[..end].into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;
    use uuid::Uuid;

    use serde_json::value::RawValue;

    use super::*;
    use crate::log::ExpectedVersion;

    /// Cases per property test: all of them run in about a second (debug build).
    const CASES: u32 = 256;

    /// Any JSON value a few levels deep.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON has no NaN", |f| f.is_finite())
                .prop_map(Value::from),
            "(?s).{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                btree_map("(?s).{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Any JSON object (for `metadata`).
    fn any_object() -> impl Strategy<Value = Value> {
        btree_map("\\PC{0,6}", any_json(), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    /// A valid message, as a JSON value: a stream, maybe an expected
    /// version, and one to three events with maybe metadata and an id.
    fn any_message() -> impl Strategy<Value = Value> {
        let expected = prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            prop_oneof![Just("any"), Just("no_stream"), Just("exists")]
                .prop_map(|s| Some(Value::from(s))),
            any::<u64>().prop_map(|v| Some(Value::from(v))),
        ];
        let metadata = prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            any_object().prop_map(Some)
        ];
        let event = ("\\PC{1,16}", any_json(), metadata, any::<Option<u128>>()).prop_map(
            |(event_type, data, metadata, id)| {
                let mut event = serde_json::Map::new();
                event.insert("type".into(), event_type.into());
                event.insert("data".into(), data);
                if let Some(metadata) = metadata {
                    event.insert("metadata".into(), metadata);
                }
                if let Some(id) = id {
                    event.insert("id".into(), Uuid::from_u128(id).to_string().into());
                }
                Value::Object(event)
            },
        );
        ("\\PC{1,16}", expected, vec(event, 1..4)).prop_map(|(stream, expected, events)| {
            let mut message = serde_json::Map::new();
            message.insert("stream".into(), stream.into());
            if let Some(expected) = expected {
                message.insert("expected_version".into(), expected);
            }
            message.insert("events".into(), events.into());
            Value::Object(message)
        })
    }

    /// Tokens of the message's grammar, to fuzz past the first byte.
    fn any_token_soup() -> impl Strategy<Value = Vec<u8>> {
        let token = prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\"stream\"",
            "\"events\"",
            "\"type\"",
            "\"data\"",
            "\"metadata\"",
            "\"id\"",
            "\"expected_version\"",
            "\"s-1\"",
            "\"T\"",
            "\"\"",
            "1",
            "-1",
            "1.5",
            "1e999",
            "18446744073709551616",
            "null",
            "true",
            "\"any\"",
            "\"no_stream\"",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "\"\\\"",
            "\u{7f}",
            "\u{ff}",
            "\"00000000-0000-0000-0000-000000000001\"",
        ]);
        let soup = |n| vec(token.clone(), 0..n).prop_map(|tokens| tokens.concat());
        // An append's skeleton, each hole holding a valid value or a little
        // soup, reaches the checks behind the JSON syntax.
        let hole = |valid: &'static str| prop_oneof![4 => Just(valid.to_owned()), 1 => soup(3)];
        let holes = (
            (hole(r#""s-1""#), hole("3"), hole(r#""T""#)),
            (hole("[1]"), hole("{}"), hole("null")),
        )
            .prop_map(|((stream, expected, event_type), (data, metadata, id))| {
                let event = format!(
                    r#"{{"type":{event_type},"data":{data},"metadata":{metadata},"id":{id}}}"#
                );
                format!(r#"{{"stream":{stream},"expected_version":{expected},"events":[{event}]}}"#)
            });
        prop_oneof![soup(40), holes].prop_map(String::into_bytes)
    }

    /// What a message says, read field by field with serde_json's own maps
    /// (not the intake's types), payloads kept as their raw text: the
    /// reference a decoded append must agree with. `None` when it is no
    /// append.
    type Said = (
        String,
        ExpectedVersion,
        Vec<(String, Vec<u8>, Vec<u8>, Option<Uuid>)>,
    );

    type Fields = std::collections::HashMap<String, Box<RawValue>>;

    fn said(bytes: &[u8]) -> Option<Said> {
        fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
            fields.get(name).map(|raw| raw.get())
        }
        let message: Fields = serde_json::from_slice(bytes).ok()?;
        let expected =
            match serde_json::from_str(field(&message, "expected_version").unwrap_or("null"))
                .ok()?
            {
                Value::Null => ExpectedVersion::Any,
                Value::String(s) if s == "any" => ExpectedVersion::Any,
                Value::String(s) if s == "no_stream" => ExpectedVersion::NoStream,
                Value::String(s) if s == "exists" => ExpectedVersion::Exists,
                v => ExpectedVersion::Exact(v.as_u64()?),
            };
        let events: Vec<Fields> = serde_json::from_str(field(&message, "events")?).ok()?;
        let events = events.iter().map(|e| {
            let metadata = match field(e, "metadata") {
                None | Some("null") => "{}",
                Some(m) => m,
            };
            let id = match field(e, "id") {
                None | Some("null") => None,
                Some(id) => Some(Uuid::parse_str(&serde_json::from_str::<String>(id).ok()?).ok()?),
            };
            Some((
                serde_json::from_str(field(e, "type")?).ok()?,
                field(e, "data")?.as_bytes().to_vec(),
                metadata.as_bytes().to_vec(),
                id,
            ))
        });
        Some((
            serde_json::from_str(field(&message, "stream")?).ok()?,
            expected,
            events.collect::<Option<_>>()?,
        ))
    }

    /// The append in the same terms.
    fn read(append: &StreamAppend) -> Said {
        let events = append.events.iter().map(|e| {
            (
                e.event_type.as_str().to_owned(),
                e.data.clone(),
                e.metadata.clone(),
                e.id,
            )
        });
        (
            append.stream.as_str().to_owned(),
            append.expected_version,
            events.collect(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

        /// Any message gets an append or an error to send back, never a
        /// panic; an append is always what the message says.
        #[test]
        fn arbitrary_messages_are_an_append_or_an_error(
            bytes in prop_oneof![vec(any::<u8>(), 0..64), any_token_soup()],
        ) {
            if let Ok(append) = parse_append(&bytes, &Limits::default()) {
                prop_assert_eq!(Some(read(&append)), said(&bytes));
            }
        }

        /// A message reads back as sent: the payloads byte for byte.
        #[test]
        fn messages_round_trip(message in any_message()) {
            let bytes = serde_json::to_vec(&message).unwrap();
            let append = parse_append(&bytes, &Limits::default()).unwrap();
            prop_assert_eq!(Some(read(&append)), said(&bytes));
            // And the reference reads the payloads as they were written.
            for (event, sent) in append.events.iter().zip(message["events"].as_array().unwrap()) {
                prop_assert_eq!(&event.data, &serde_json::to_vec(&sent["data"]).unwrap());
                let metadata = match sent.get("metadata") {
                    None | Some(Value::Null) => b"{}".to_vec(),
                    Some(m) => serde_json::to_vec(m).unwrap(),
                };
                prop_assert_eq!(&event.metadata, &metadata);
            }
        }

        /// Every cut of a message (a text message has no checksum) is a 400;
        /// a changed byte is an error or an append that says what the
        /// changed message says, never a panic.
        #[test]
        fn a_cut_or_changed_message_is_an_error_or_what_it_says(
            message in any_message(),
            at in any::<prop::sample::Index>(),
            flip in 1..=u8::MAX,
        ) {
            let mut bytes = serde_json::to_vec(&message).unwrap();
            for len in 0..bytes.len() {
                let cut = parse_append(&bytes[..len], &Limits::default());
                prop_assert_eq!(cut.err().map(|e| e.status()), Some(StatusCode::BAD_REQUEST));
            }
            let at = at.index(bytes.len());
            bytes[at] ^= flip;
            if let Ok(append) = parse_append(&bytes, &Limits::default()) {
                prop_assert_eq!(Some(read(&append)), said(&bytes));
            }
        }
    }
}
