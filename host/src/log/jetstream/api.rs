//! The JetStream requests the log makes, sent as plain NATS requests so that
//! every answer's `err_code` is seen: a stale expected sequence (10071), a
//! check refused while the last write still replicates (10164), a retried
//! batch (10201).
//!
//! Reads that must see every acknowledged write (a stream's last message)
//! go to the stream's leader (`STREAM.MSG.GET`); bulk reads use direct gets
//! (`DIRECT.GET`, any replica), whose callers check that the answer reaches
//! as far as they know the log goes.

use std::time::Duration;

use async_nats::{Client, HeaderMap};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::log::LogError;

/// A stale `Nats-Expected-Last-Subject-Sequence`.
pub const WRONG_LAST_SEQUENCE: u64 = 10071;
/// A conditional publish refused while an earlier one to the subject is
/// still being replicated: right, but early; retry it.
pub const PROPOSAL_IN_FLIGHT: u64 = 10164;
/// An atomic batch whose message ids are all stored already.
pub const BATCH_DUPLICATE: u64 = 10201;

/// A message as the stream holds it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its sequence: the event's position.
    pub sequence: u64,
    /// What was published: the encoded event.
    pub payload: Bytes,
}

/// How a publish ended.
#[derive(Debug)]
pub enum Published {
    /// Stored: the last message's sequence and how many were stored (a
    /// duplicate stores nothing and answers the original's sequence).
    Stored {
        /// The sequence of the (last) message.
        last: u64,
        /// Messages stored: 1, or the batch's size.
        count: u64,
        /// Already stored under its `Nats-Msg-Id`.
        duplicate: bool,
    },
    /// Refused by JetStream with this error code.
    Refused {
        /// JetStream's `err_code`.
        code: u64,
        /// What JetStream said.
        description: String,
    },
}

#[derive(Deserialize)]
struct Ack {
    seq: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    count: Option<u64>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct MsgGet {
    message: Option<RawMessage>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct RawMessage {
    seq: u64,
    #[serde(default)]
    data: String,
}

/// JetStream's error code for "no message found".
const NO_MESSAGE: u64 = 10037;

/// The requests of one stream.
#[derive(Clone)]
pub struct Api {
    client: Client,
    stream: String,
    timeout: Duration,
}

impl Api {
    /// Requests on stream `stream` through `client`, each answered within
    /// `timeout`.
    pub fn new(client: Client, stream: &str, timeout: Duration) -> Self {
        Self {
            client,
            stream: stream.to_owned(),
            timeout,
        }
    }

    /// How long one request waits for its answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Publishes one message and waits for JetStream's answer.
    pub async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Published, LogError> {
        let reply = self
            .client
            .request_with_headers(subject, headers, payload)
            .await
            .map_err(unavailable)?;
        published(&reply.payload)
    }

    /// Publishes `messages` as one atomic batch (all stored, or none).
    pub async fn publish_batch(
        &self,
        messages: Vec<(String, HeaderMap, Bytes)>,
    ) -> Result<Published, LogError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let count = messages.len();
        let mut reply = None;
        for (index, (subject, mut headers, payload)) in messages.into_iter().enumerate() {
            headers.insert("Nats-Batch-Id", id.as_str());
            headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
            if index + 1 < count {
                self.client
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(unavailable)?;
            } else {
                headers.insert("Nats-Batch-Commit", "1");
                let answer = self
                    .client
                    .request_with_headers(subject, headers, payload)
                    .await
                    .map_err(unavailable)?;
                reply = Some(answer);
            }
        }
        let reply = reply.ok_or_else(|| LogError::Internal("an empty batch".into()))?;
        published(&reply.payload)
    }

    /// The last message of `subject`, from the stream's leader: it holds
    /// every acknowledged write.
    pub async fn last_for_subject(&self, subject: &str) -> Result<Option<Stored>, LogError> {
        let request = json!({ "last_by_subj": subject }).to_string();
        let reply = self
            .client
            .request(
                format!("$JS.API.STREAM.MSG.GET.{}", self.stream),
                request.into(),
            )
            .await
            .map_err(unavailable)?;
        let answer: MsgGet = serde_json::from_slice(&reply.payload)
            .map_err(|e| LogError::Internal(format!("JetStream's answer to a get: {e}")))?;
        if let Some(error) = answer.error {
            return match error.err_code {
                NO_MESSAGE => Ok(None),
                _ => Err(api_error(error)),
            };
        }
        let message = answer
            .message
            .ok_or_else(|| LogError::Internal("JetStream answered a get with no message".into()))?;
        let payload = BASE64
            .decode(message.data)
            .map_err(|e| LogError::Corrupt(format!("message {}: {e}", message.seq)))?;
        Ok(Some(Stored {
            sequence: message.seq,
            payload: payload.into(),
        }))
    }

    /// Up to `batch` messages at or after sequence `from`, of `subject` (a
    /// filter) if given, and at most about `max_bytes`: a direct get, which
    /// any replica answers, so it may end short of the last write.
    ///
    /// Without a subject the messages come without their headers (`no_hdr`,
    /// three quarters of a small event's bytes, and most of the client's
    /// work): the log is gapless, so the n-th message is sequence
    /// `from + n`, which the batch's last sequence confirms.
    pub async fn read(
        &self,
        from: u64,
        subject: Option<&str>,
        batch: usize,
        max_bytes: usize,
    ) -> Result<Vec<Stored>, LogError> {
        let from = from.max(1);
        let mut request = json!({ "seq": from, "batch": batch, "max_bytes": max_bytes });
        match subject {
            Some(subject) => request["next_by_subj"] = subject.into(),
            None => request["no_hdr"] = true.into(),
        }
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(unavailable)?;
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.stream),
                inbox,
                request.to_string().into(),
            )
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(batch.min(1024));
        loop {
            let next = tokio::time::timeout(self.timeout, replies.next()).await;
            let Ok(Some(message)) = next else {
                return Err(LogError::Unavailable(
                    "JetStream did not finish answering a read in time".into(),
                ));
            };
            match message.status.map(|s| s.as_u16()) {
                None if subject.is_none() => out.push(Stored {
                    sequence: from + out.len() as u64,
                    payload: message.payload,
                }),
                None => out.push(stored(message)?),
                // 204: the end of the batch.
                Some(204) => {
                    if subject.is_none() {
                        check_gapless(&message, from, out.len())?;
                    }
                    break;
                }
                // 404: nothing there.
                Some(404) => break,
                Some(status) => {
                    return Err(LogError::Unavailable(format!(
                        "JetStream answered a read with status {status}: {}",
                        message.description.unwrap_or_default()
                    )));
                }
            }
        }
        let _ = replies.unsubscribe().await;
        Ok(out)
    }
}

/// Checks that the `count` messages of a batch read from `from` without
/// headers were sequences `from..from + count`: the end-of-batch answer
/// names the last one sent.
fn check_gapless(end: &async_nats::Message, from: u64, count: usize) -> Result<(), LogError> {
    let last: Option<u64> = end
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Last-Sequence"))
        .and_then(|v| v.as_str().parse().ok());
    match (count, last) {
        (0, _) => Ok(()),
        (_, Some(last)) if last == from + count as u64 - 1 => Ok(()),
        _ => Err(LogError::Corrupt(format!(
            "the JetStream stream has a gap: {count} messages from sequence {from} ended at {last:?}"
        ))),
    }
}

/// A direct get's message as [`Stored`].
fn stored(message: async_nats::Message) -> Result<Stored, LogError> {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .and_then(|v| v.as_str().parse().ok())
    };
    let sequence = header("Nats-Sequence")
        .ok_or_else(|| LogError::Internal("a direct get without Nats-Sequence".into()))?;
    Ok(Stored {
        sequence,
        payload: message.payload,
    })
}

/// JetStream's answer to a publish.
fn published(payload: &[u8]) -> Result<Published, LogError> {
    let ack: Ack = serde_json::from_slice(payload)
        .map_err(|e| LogError::Internal(format!("JetStream's answer to a publish: {e}")))?;
    if let Some(error) = ack.error {
        return match error.code {
            503 => Err(api_error(error)),
            _ => Ok(Published::Refused {
                code: error.err_code,
                description: error.description,
            }),
        };
    }
    let last = ack
        .seq
        .ok_or_else(|| LogError::Internal("JetStream acknowledged without a sequence".into()))?;
    Ok(Published::Stored {
        last,
        count: ack.count.unwrap_or(1),
        duplicate: ack.duplicate,
    })
}

/// A JetStream API error: unavailable (retry) when JetStream says so.
fn api_error(error: ApiError) -> LogError {
    let message = format!("JetStream: {} (code {})", error.description, error.err_code);
    match error.code {
        503 | 408 => LogError::Unavailable(message),
        _ => LogError::Internal(message),
    }
}

/// A request NATS could not carry (no connection, no responder, a timeout):
/// the log is unavailable for now.
fn unavailable(error: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("JetStream did not answer: {error}"))
}
