//! Appends on JetStream. A stream's version comes from its last message;
//! the request's expectation is checked here and then made JetStream's own
//! check (`Nats-Expected-Last-Subject-Sequence`), so that no other writer,
//! on this node or another, can slip in between. Several events go as one
//! atomic batch. A refused check means someone else appended: the heads
//! are read again and the request planned again, and a retry of an append
//! that already landed is recognised by its event ids.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use bytes::Bytes;
use uuid::Uuid;

use super::api::{BATCH_DUPLICATE, PROPOSAL_IN_FLIGHT, Published, WRONG_LAST_SEQUENCE};
use super::read::{self, Head};
use super::{Inner, JetStreamLog};
use crate::log::codec::EncodeEvent;
use crate::log::{AppendOutcome, LogError, Position, StreamAppend};

/// Most events one request may hold: JetStream's atomic batch limit.
pub const MAX_EVENTS: usize = 1000;
/// How often a request is planned again after racing other writers.
const MAX_ATTEMPTS: u32 = 32;
/// How far back in a stream a retry's events are looked for.
const RETRY_LOOKBACK: usize = 1000;

/// A request turned into messages.
struct Plan {
    /// What to publish, in order.
    messages: Vec<(String, HeaderMap, Bytes)>,
    /// Per append: an earlier append's outcome (a retry), or which messages
    /// are its events, with the version of its last.
    appends: Vec<Planned>,
}

enum Planned {
    Retry(AppendOutcome),
    Messages {
        stream: String,
        first: usize,
        count: usize,
        last_version: u64,
    },
}

impl JetStreamLog {
    /// Appends to several streams in one atomic step; see
    /// [`EventLog::append_all`](crate::log::EventLog::append_all).
    pub async fn append_all(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendOutcome>, LogError> {
        let events: usize = appends.iter().map(|a| a.events.len()).sum();
        if events > MAX_EVENTS {
            return Err(LogError::TooManyEvents {
                events,
                limit: MAX_EVENTS,
            });
        }
        let inner = &self.inner;
        let mut raced = false;
        let mut duplicates = 0;
        for attempt in 0..MAX_ATTEMPTS {
            let heads = heads(inner, &appends, raced).await?;
            let plan = plan(inner, &appends, heads, raced).await?;
            if plan.messages.is_empty() {
                return Ok(outcomes(inner, plan, 0));
            }
            let published = match plan.messages.len() {
                1 => {
                    let (subject, headers, payload) = plan.messages[0].clone();
                    inner.api.publish(subject, headers, payload).await
                }
                _ => inner.api.publish_batch(plan.messages.clone()).await,
            };
            // An unanswered publish may have landed: the heads are unknown.
            let published = published.inspect_err(|_| forget(inner, &appends))?;
            match published {
                Published::Stored {
                    last,
                    duplicate: true,
                    ..
                } => {
                    // On a replicated stream JetStream checks the id before
                    // the expected sequence: the heads this plan used are stale.
                    forget(inner, &appends);
                    return retried_publish(inner, plan, last).await;
                }
                Published::Stored { last, count, .. } => {
                    let first = last + 1 - count;
                    inner.saw(last);
                    return Ok(outcomes(inner, plan, first));
                }
                Published::Refused {
                    code: BATCH_DUPLICATE,
                    ..
                } if duplicates > 0 => {
                    // Planned again from the leader's heads and still holding
                    // a stored id: not a retry of one append that landed.
                    return Err(idempotency_conflict(inner, &appends).await);
                }
                Published::Refused { code, .. }
                    if code == WRONG_LAST_SEQUENCE || code == BATCH_DUPLICATE =>
                {
                    duplicates += u32::from(code == BATCH_DUPLICATE);
                    raced = true;
                    forget(inner, &appends);
                }
                Published::Refused {
                    code: PROPOSAL_IN_FLIGHT,
                    ..
                } => {
                    tokio::time::sleep(Duration::from_millis(2 << attempt.min(6))).await;
                }
                Published::Refused { code, description } => {
                    tracing::warn!(code, %description, "JetStream refused an append");
                    return Err(LogError::Internal(format!(
                        "JetStream refused the append: {description} (code {code})"
                    )));
                }
            }
        }
        Err(LogError::Unavailable(format!(
            "the append lost the race for its streams {MAX_ATTEMPTS} times; try again"
        )))
    }
}

/// The last message of every stream the request names: remembered, or read
/// from the stream's leader (always, after a race).
async fn heads(
    inner: &Inner,
    appends: &[StreamAppend],
    fresh: bool,
) -> Result<HashMap<String, Option<Head>>, LogError> {
    let mut heads = HashMap::new();
    for append in appends {
        let name = append.stream.as_str();
        if heads.contains_key(name) {
            continue;
        }
        let cached = match fresh {
            true => None,
            false => inner.heads.lock().get(name).copied(),
        };
        let head = match cached {
            Some(head) => Some(head),
            None => read::last_event(inner, &append.stream)
                .await?
                .as_ref()
                .map(Head::of),
        };
        heads.insert(name.to_owned(), head);
    }
    Ok(heads)
}

/// Checks every append's expectation against `heads` and builds the
/// messages. After a race (`raced`), an append with event ids may be a
/// retry of one that landed: its ids are looked for first.
async fn plan(
    inner: &Inner,
    appends: &[StreamAppend],
    mut heads: HashMap<String, Option<Head>>,
    raced: bool,
) -> Result<Plan, LogError> {
    let recorded_at = now_micros();
    let mut plan = Plan {
        messages: Vec::new(),
        appends: Vec::with_capacity(appends.len()),
    };
    let mut expected_set: std::collections::HashSet<String> = Default::default();
    for (index, append) in appends.iter().enumerate() {
        let name = append.stream.as_str();
        let head = heads.get(name).copied().flatten();
        let current = head.map(|h| h.version);
        let admitted = append.expected_version.admits(current);
        if append.events.first().and_then(|e| e.id).is_some()
            && (raced || !admitted)
            && let Some(outcome) = find_retry(inner, append, head).await?
        {
            plan.appends.push(Planned::Retry(outcome));
            continue;
        }
        if !admitted {
            return Err(LogError::WrongExpectedVersion {
                stream: name.to_owned(),
                expected: append.expected_version,
                actual: current,
                append_index: index,
            });
        }
        let subject = inner
            .subjects
            .stream(append.stream.category(), append.stream.as_str());
        let first = plan.messages.len();
        let first_version = current.map_or(0, |v| v + 1);
        for (offset, event) in append.events.iter().enumerate() {
            let id = event.id.unwrap_or_else(Uuid::now_v7);
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.hyphenated().to_string().as_str());
            if offset == 0 && expected_set.insert(name.to_owned()) {
                let last = head.map_or(0, |h| h.sequence);
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence",
                    last.to_string().as_str(),
                );
            }
            let encoded = EncodeEvent {
                stream: name,
                version: first_version + offset as u64,
                recorded_at,
                id,
                event_type: event.event_type.as_str(),
                metadata: &event.metadata,
                data: &event.data,
            };
            let mut payload = Vec::new();
            encoded.encode(&mut payload);
            plan.messages
                .push((subject.clone(), headers, Bytes::from(payload)));
        }
        let last_version = first_version + append.events.len() as u64 - 1;
        heads.insert(
            name.to_owned(),
            Some(Head {
                sequence: 0,
                version: last_version,
            }),
        );
        plan.appends.push(Planned::Messages {
            stream: name.to_owned(),
            first,
            count: append.events.len(),
            last_version,
        });
    }
    Ok(plan)
}

/// The outcomes of a plan whose messages were stored from sequence `first`;
/// remembers each stream's new head.
fn outcomes(inner: &Inner, plan: Plan, first: u64) -> Vec<AppendOutcome> {
    let mut heads = inner.heads.lock();
    plan.appends
        .into_iter()
        .map(|planned| match planned {
            Planned::Retry(outcome) => outcome,
            Planned::Messages {
                stream,
                first: index,
                count,
                last_version,
            } => {
                let first_position = first + index as u64;
                let last_position = first_position + count as u64 - 1;
                heads.insert(
                    stream.into_boxed_str(),
                    Head {
                        sequence: last_position,
                        version: last_version,
                    },
                );
                AppendOutcome {
                    first_position: Position(first_position),
                    last_position: Position(last_position),
                    next_expected_version: last_version,
                    duplicate: false,
                }
            }
        })
        .collect()
}

/// A single event JetStream already held under its id (a retry within the
/// duplicate window): the original's outcome.
async fn retried_publish(
    inner: &Inner,
    plan: Plan,
    sequence: u64,
) -> Result<Vec<AppendOutcome>, LogError> {
    let original = read::event_at(inner, sequence).await?;
    let mut outcomes = Vec::with_capacity(plan.appends.len());
    for planned in plan.appends {
        outcomes.push(match planned {
            Planned::Retry(outcome) => outcome,
            Planned::Messages { .. } => AppendOutcome {
                first_position: Position(sequence),
                last_position: Position(sequence),
                next_expected_version: original.version,
                duplicate: true,
            },
        });
    }
    Ok(outcomes)
}

/// The conflict of a request holding an event id that is stored already
/// (JetStream refused the batch for it): the id is looked for among the
/// last events of the request's streams, else the request's first id is
/// named.
async fn idempotency_conflict(inner: &Inner, appends: &[StreamAppend]) -> LogError {
    let ids: Vec<Uuid> = appends
        .iter()
        .flat_map(|a| a.events.iter().filter_map(|e| e.id))
        .collect();
    for append in appends {
        let Ok(Some(last)) = read::last_event(inner, &append.stream).await else {
            continue;
        };
        let head = Head::of(&last);
        let from = (head.version + 1).saturating_sub(RETRY_LOOKBACK as u64);
        let Ok(tail) = read::stream_events(inner, &append.stream, head, from, RETRY_LOOKBACK).await
        else {
            continue;
        };
        if let Some(stored) = tail.iter().find(|e| ids.contains(&e.id)) {
            return LogError::IdempotencyConflict { id: stored.id };
        }
    }
    match ids.first() {
        Some(&id) => LogError::IdempotencyConflict { id },
        None => LogError::Internal("JetStream refused a batch without event ids".into()),
    }
}

/// Forgets the remembered heads of the request's streams.
fn forget(inner: &Inner, appends: &[StreamAppend]) {
    let mut heads = inner.heads.lock();
    for append in appends {
        heads.remove(append.stream.as_str());
    }
}

/// If `append`'s first event id is among the stream's last events, the
/// append is a retry of the one that wrote them: every event must be there,
/// in order, and the original positions are the answer.
async fn find_retry(
    inner: &Inner,
    append: &StreamAppend,
    head: Option<Head>,
) -> Result<Option<AppendOutcome>, LogError> {
    let (Some(head), Some(first_id)) = (head, append.events.first().and_then(|e| e.id)) else {
        return Ok(None);
    };
    let from = (head.version + 1).saturating_sub(RETRY_LOOKBACK as u64);
    let tail = read::stream_events(inner, &append.stream, head, from, RETRY_LOOKBACK).await?;
    let Some(start) = tail.iter().position(|e| e.id == first_id) else {
        return Ok(None);
    };
    let found = &tail[start..];
    for (offset, event) in append.events.iter().enumerate() {
        let matches = found
            .get(offset)
            .is_some_and(|stored| Some(stored.id) == event.id);
        if !matches {
            return Err(LogError::IdempotencyConflict {
                id: event.id.unwrap_or(first_id),
            });
        }
    }
    let last = &found[append.events.len() - 1];
    Ok(Some(AppendOutcome {
        first_position: found[0].position,
        last_position: last.position,
        next_expected_version: last.version,
        duplicate: true,
    }))
}

/// Microseconds since the Unix epoch.
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
