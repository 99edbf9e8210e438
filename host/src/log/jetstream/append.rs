//! Appends on JetStream. A stream's version comes from its last message;
//! the request's expectation is checked here and then made JetStream's own
//! check (`Nats-Expected-Last-Subject-Sequence`), so that no other writer,
//! on this node or another, can slip in between. Several events go as one
//! atomic batch. A refused check means someone else appended: the heads
//! are read again and the request planned again, and a retry of an append
//! that already landed is recognised by its event ids.
//!
//! Every event has its id before the first attempt (the client's, or one
//! made here), so a request whose publish went unanswered (a leader
//! election, a slow cluster) is sent again by the node itself, for up to
//! twice the request timeout: JetStream stores each id once, and the
//! next plan recognises what landed.

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
/// The first pause before asking an unavailable cluster again (doubling).
const UNAVAILABLE_PAUSE: Duration = Duration::from_millis(50);

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
        let ids = event_ids(&appends);
        let mut attempts = Attempts::new(inner.api.timeout() * 2);
        let mut duplicates = 0;
        while let Some(state) = attempts.next() {
            let published = match attempt(inner, &appends, &ids, state).await {
                Ok(published) => published,
                Err(LogError::Unavailable(why)) => {
                    forget(inner, &appends);
                    attempts.unavailable(why).await?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let (plan, published) = match published {
                Attempted::Done(outcomes) => return Ok(outcomes),
                Attempted::Published(plan, published) => (plan, published),
            };
            match published {
                Published::Stored {
                    last,
                    duplicate: true,
                    ..
                } => {
                    // On a replicated stream JetStream checks the id before
                    // the expected sequence: the heads this plan used are stale.
                    forget(inner, &appends);
                    return retried_publish(inner, plan, last, &ids).await;
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
                    return Err(idempotency_conflict(inner, &appends, &ids).await);
                }
                Published::Refused { code, .. }
                    if code == WRONG_LAST_SEQUENCE || code == BATCH_DUPLICATE =>
                {
                    duplicates += u32::from(code == BATCH_DUPLICATE);
                    attempts.raced();
                    forget(inner, &appends);
                }
                Published::Refused {
                    code: PROPOSAL_IN_FLIGHT,
                    ..
                } => attempts.early().await,
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

/// What one attempt came to.
enum Attempted {
    /// Nothing to publish: every append is a retry of one that landed.
    Done(Vec<AppendOutcome>),
    /// Published, with JetStream's answer.
    Published(Plan, Published),
}

/// Plans the request from the heads and publishes it.
async fn attempt(
    inner: &Inner,
    appends: &[StreamAppend],
    ids: &EventIds,
    state: AttemptState,
) -> Result<Attempted, LogError> {
    let heads = heads(inner, appends, state.raced).await?;
    let plan = plan(inner, appends, ids, heads, state).await?;
    if plan.messages.is_empty() {
        return Ok(Attempted::Done(outcomes(inner, plan, 0)));
    }
    let published = match plan.messages.len() {
        1 => {
            let (subject, headers, payload) = plan.messages[0].clone();
            inner.api.publish(subject, headers, payload).await
        }
        _ => inner.api.publish_batch(plan.messages.clone()).await,
    }?;
    Ok(Attempted::Published(plan, published))
}

/// Every event's id, per append: the client's, or one made for it once, so
/// that every attempt publishes the same ids.
struct EventIds {
    ids: Vec<Vec<Uuid>>,
    /// Per append: whether the client gave the ids (else they were made here).
    given: Vec<bool>,
}

fn event_ids(appends: &[StreamAppend]) -> EventIds {
    EventIds {
        ids: appends
            .iter()
            .map(|a| {
                a.events
                    .iter()
                    .map(|e| e.id.unwrap_or_else(Uuid::now_v7))
                    .collect()
            })
            .collect(),
        given: appends
            .iter()
            .map(|a| a.events.first().is_some_and(|e| e.id.is_some()))
            .collect(),
    }
}

/// What the next attempt knows from the ones before it.
#[derive(Debug, Clone, Copy, Default)]
struct AttemptState {
    /// Someone else appended (or may have): read the heads from the leader.
    raced: bool,
    /// An earlier attempt went unanswered and may have landed.
    uncertain: bool,
}

/// The attempts of one request: at most [`MAX_ATTEMPTS`] races, and
/// unavailability retried until `budget` is spent.
struct Attempts {
    state: AttemptState,
    count: u32,
    started: tokio::time::Instant,
    budget: Duration,
    pause: Duration,
}

impl Attempts {
    fn new(budget: Duration) -> Self {
        Self {
            state: AttemptState::default(),
            count: 0,
            started: tokio::time::Instant::now(),
            budget,
            pause: UNAVAILABLE_PAUSE,
        }
    }

    fn next(&mut self) -> Option<AttemptState> {
        self.count += 1;
        (self.count <= MAX_ATTEMPTS).then_some(self.state)
    }

    fn raced(&mut self) {
        self.state.raced = true;
    }

    /// Refused as early (the subject's last write still replicates): waits
    /// a little longer each time.
    async fn early(&mut self) {
        tokio::time::sleep(Duration::from_millis(2 << (self.count - 1).min(6))).await;
    }

    /// The cluster did not answer: waits and lets the next attempt go, or
    /// gives up with `why` once the budget is spent.
    async fn unavailable(&mut self, why: String) -> Result<(), LogError> {
        if self.started.elapsed() + self.pause > self.budget {
            return Err(LogError::Unavailable(why));
        }
        tracing::debug!(%why, "JetStream unavailable; the append is tried again");
        self.state = AttemptState {
            raced: true,
            uncertain: true,
        };
        // Unavailability is not a race: it does not use up the attempts.
        self.count -= 1;
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(1));
        Ok(())
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
/// messages. After a race, an append with the client's event ids may be a
/// retry of one that landed, and after an unanswered attempt any append
/// may be: its ids are looked for first.
async fn plan(
    inner: &Inner,
    appends: &[StreamAppend],
    ids: &EventIds,
    mut heads: HashMap<String, Option<Head>>,
    state: AttemptState,
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
        let event_ids = &ids.ids[index];
        if (state.raced || !admitted)
            && (ids.given[index] || state.uncertain)
            && let Some(mut outcome) = find_retry(inner, append, event_ids, head).await?
        {
            // Ids made here were never sent before this request.
            outcome.duplicate = ids.given[index];
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
        let first = plan.messages.len();
        let first_version = current.map_or(0, |v| v + 1);
        // Only a stream's first message in the request carries the check.
        let expected = expected_set
            .insert(name.to_owned())
            .then(|| head.map_or(0, |h| h.sequence));
        let message = Message {
            append,
            first_version,
            recorded_at,
            expected,
        };
        plan.messages.extend(message.encode(inner, event_ids));
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

/// How one append's events become messages.
struct Message<'a> {
    append: &'a StreamAppend,
    first_version: u64,
    recorded_at: u64,
    /// The stream's last sequence JetStream must find, on the first message.
    expected: Option<u64>,
}

impl Message<'_> {
    /// The append's events as messages on its stream's subject, with `ids`.
    fn encode(
        &self,
        inner: &Inner,
        ids: &[Uuid],
    ) -> impl Iterator<Item = (String, HeaderMap, Bytes)> {
        let name = self.append.stream.as_str();
        let subject = inner.subjects.stream(self.append.stream.category(), name);
        self.append
            .events
            .iter()
            .zip(ids)
            .enumerate()
            .map(move |(offset, (event, &id))| {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.hyphenated().to_string().as_str());
                if let (0, Some(last)) = (offset, self.expected) {
                    headers.insert(
                        "Nats-Expected-Last-Subject-Sequence",
                        last.to_string().as_str(),
                    );
                }
                let encoded = EncodeEvent {
                    stream: name,
                    version: self.first_version + offset as u64,
                    recorded_at: self.recorded_at,
                    id,
                    event_type: event.event_type.as_str(),
                    metadata: &event.metadata,
                    data: &event.data,
                };
                let mut payload = Vec::new();
                encoded.encode(&mut payload);
                (subject.clone(), headers, Bytes::from(payload))
            })
    }
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
    ids: &EventIds,
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
                // An id made here was sent only by this request's attempts.
                duplicate: ids.given.iter().all(|&given| given),
            },
        });
    }
    Ok(outcomes)
}

/// The conflict of a request holding an event id that is stored already
/// (JetStream refused the batch for it): the id is looked for among the
/// last events of the request's streams, else the request's first id is
/// named.
async fn idempotency_conflict(inner: &Inner, appends: &[StreamAppend], ids: &EventIds) -> LogError {
    let ids: Vec<Uuid> = ids.ids.iter().flatten().copied().collect();
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
        None => LogError::Internal("JetStream refused an empty batch".into()),
    }
}

/// Forgets the remembered heads of the request's streams.
fn forget(inner: &Inner, appends: &[StreamAppend]) {
    let mut heads = inner.heads.lock();
    for append in appends {
        heads.remove(append.stream.as_str());
    }
}

/// If the first of `ids` is among the stream's last events, the append is
/// a retry of the one that wrote them: every event must be there, in
/// order, and the original positions are the answer.
async fn find_retry(
    inner: &Inner,
    append: &StreamAppend,
    ids: &[Uuid],
    head: Option<Head>,
) -> Result<Option<AppendOutcome>, LogError> {
    let (Some(head), Some(&first_id)) = (head, ids.first()) else {
        return Ok(None);
    };
    let from = (head.version + 1).saturating_sub(RETRY_LOOKBACK as u64);
    let tail = read::stream_events(inner, &append.stream, head, from, RETRY_LOOKBACK).await?;
    let Some(start) = tail.iter().position(|e| e.id == first_id) else {
        return Ok(None);
    };
    let found = &tail[start..];
    for (offset, &id) in ids.iter().enumerate() {
        if found.get(offset).is_none_or(|stored| stored.id != id) {
            return Err(LogError::IdempotencyConflict { id });
        }
    }
    let last = &found[ids.len() - 1];
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
