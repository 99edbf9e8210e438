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
use crate::log::AppendOutcome;

/// Bytes read from the socket at a time. tungstenite zeroes this much before
/// every read, so its default, 128 KiB, costs a noticeable share of the
/// server's CPU when many clients append one event at a time; 8 KiB, as hyper
/// starts with for HTTP, costs little (`docs/design.md#notes`). A larger
/// message takes more reads.
const READ_BUFFER_BYTES: usize = 8 << 10;

/// Upgrades the request to a WebSocket of appends; a plain request gets a
/// JSON error saying what is missing.
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

/// Applies one message's append and renders the reply.
async fn append(state: &AppState, body: &[u8]) -> String {
    let result = state
        .append_one(|| {
            let item: BatchItem<'_> = parse_json(body)?;
            item.into_append(&state.limits)
        })
        .await;
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
