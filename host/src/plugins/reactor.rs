//! What a reactor's batch appends, and how it reaches the log exactly once
//! (`docs/design.md#reactors`):
//! - each event of a batch is a possible *source*: its id, its correlation
//!   id and its causation depth are read from its metadata when the batch
//!   is read ([`Sources`]), and the events the reactor appended itself are
//!   left out;
//! - each output gets an id derived from the reactor's name, the source's
//!   position and the output's index among the source's outputs
//!   ([`OutputIds`]), and the lineage metadata, and the batch's outputs go to the log as one atomic
//!   append before the checkpoint moves. A batch redone after a crash
//!   appends the same ids again, which the log answers as a retry;
//! - a rebuild suppresses the outputs of events at or below the serving
//!   generation's checkpoint: history is not emitted twice.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::watch;
use uuid::Uuid;

use super::PluginName;
use crate::log::{LogError, NewEvent, RecordedEvent, StreamAppend};
use crate::notify::Ownership;
use crate::runtime::Appended;

/// The longest chain of reactor outputs: an event at this depth causes
/// nothing more. A cycle between reactors stops here with a failure.
pub const MAX_CAUSATION_DEPTH: u64 = 16;

/// Where the nodes sharing a log record how far each reactor's outputs are
/// in it (`docs/design.md#reactors-on-several-nodes`): a node that takes a
/// reactor over suppresses the outputs of sources up to there, which an
/// earlier owner appended, however long ago.
pub trait OutputMarks: Send + Sync + std::fmt::Debug {
    /// The position through which `reactor`'s outputs are all in the log
    /// (0: none recorded).
    fn read<'a>(&'a self, reactor: &'a str) -> BoxFuture<'a, Result<u64, String>>;
    /// Records that `reactor`'s outputs through `position` are in the log.
    fn record<'a>(&'a self, reactor: &'a str, position: u64) -> BoxFuture<'a, Result<(), String>>;
}

/// The marks, as the registry hands them to the runners.
pub type SharedOutputMarks = Arc<dyn OutputMarks>;

/// A reactor's lease when nodes share the log: the reactor runs while this
/// node owns it, and then appends nothing for the sources up to the mark it
/// read when it took the lease over.
pub(super) struct ReactorLease {
    ownership: Ownership,
    marks: Option<SharedOutputMarks>,
    /// The mark read since this node last took the lease; `None` while it
    /// does not own it, or could not read the mark yet.
    through: Option<u64>,
}

impl ReactorLease {
    pub fn new(ownership: Ownership, marks: Option<SharedOutputMarks>) -> Self {
        Self {
            ownership,
            marks,
            through: None,
        }
    }

    /// Whether this node runs the reactor now. Having just taken the lease,
    /// it reads the mark first; a mark it cannot read yet keeps it idle
    /// (the runner asks again at its next wake).
    pub fn runs_here(&mut self, reactor: &PluginName, tokio: &tokio::runtime::Handle) -> bool {
        if !*self.ownership.owner.borrow() {
            self.through = None;
            return false;
        }
        if self.through.is_some() {
            return true;
        }
        let read = match &self.marks {
            Some(marks) => tokio.block_on(marks.read(reactor.as_str())),
            None => Ok(0),
        };
        match read {
            Ok(through) => {
                tracing::info!(plugin = %reactor, through, "running the reactor here: its outputs are in the log through {through}");
                self.through = Some(through);
                true
            }
            Err(error) => {
                tracing::warn!(plugin = %reactor, %error, "cannot read the reactor's mark yet");
                false
            }
        }
    }

    /// The position through which outputs are suppressed, as another owner
    /// appended them.
    pub fn through(&self) -> u64 {
        self.through.unwrap_or(0)
    }

    /// Changes whenever this node takes or loses the lease.
    pub fn owner(&self) -> watch::Receiver<bool> {
        self.ownership.owner.clone()
    }

    /// Where this node records the reactor's progress.
    pub fn marks(&self) -> Option<&dyn OutputMarks> {
        self.marks.as_deref()
    }
}

/// What a reactor's outputs need of each event of its batch.
#[derive(Debug, Default)]
pub(super) struct Sources {
    /// In the batch's order, which is position order.
    events: Vec<Source>,
}

/// One event of a batch, as the cause of outputs.
#[derive(Debug)]
struct Source {
    position: u64,
    id: Uuid,
    /// Its own `correlation_id`, if it has one (else its id is).
    correlation_id: Option<String>,
    /// Its own `causation_depth` (0 for an event a client appended).
    depth: u64,
}

/// The lineage keys of an event's metadata, as far as they are there.
#[derive(Deserialize)]
struct Lineage<'a> {
    #[serde(borrow, default)]
    correlation_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    causation_depth: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reactor: Option<&'a RawValue>,
}

impl Sources {
    /// Takes out of `events` those `reactor` appended itself, and notes the
    /// lineage of the rest, which are the reactor's batch.
    pub fn take(reactor: &PluginName, events: &mut Vec<RecordedEvent>) -> Self {
        let own = serde_json::to_string(reactor.as_str()).unwrap_or_default();
        let mut sources = Vec::with_capacity(events.len());
        events.retain(|event| {
            let lineage = lineage(&event.metadata);
            if lineage
                .as_ref()
                .and_then(|l| l.reactor)
                .is_some_and(|r| r.get() == own)
            {
                return false;
            }
            let correlation_id = lineage
                .as_ref()
                .and_then(|l| l.correlation_id)
                .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
            let depth = lineage
                .as_ref()
                .and_then(|l| l.causation_depth)
                .and_then(|raw| raw.get().parse::<u64>().ok())
                .unwrap_or(0);
            sources.push(Source {
                position: event.position.0,
                id: event.id,
                correlation_id,
                depth,
            });
            true
        });
        Self { events: sources }
    }

    /// The event at `position`, and its index in the batch.
    fn at(&self, position: u64) -> Option<(usize, &Source)> {
        let index = self
            .events
            .binary_search_by_key(&position, |s| s.position)
            .ok()?;
        Some((index, &self.events[index]))
    }
}

impl Source {
    /// The correlation id its outputs carry: its own, else its id.
    fn correlation_id(&self) -> String {
        match &self.correlation_id {
            Some(id) => id.clone(),
            None => self.id.hyphenated().to_string(),
        }
    }
}

/// The lineage keys of `metadata`; `None` when it has none (`{}`, the
/// common case, costs nothing).
fn lineage(metadata: &[u8]) -> Option<Lineage<'_>> {
    let named = |key: &[u8]| memchr::memmem::find(metadata, key).is_some();
    if metadata.len() <= 2 || !(named(b"\"c") || named(b"\"reactor\"")) {
        // No key that starts like a lineage key: nothing to parse.
        return None;
    }
    serde_json::from_slice(metadata).ok()
}

/// A batch's outputs, ready for the log.
#[derive(Debug)]
pub(super) struct Outputs {
    /// One append per output (each is recognised as a retry on its own).
    pub appends: Vec<StreamAppend>,
    /// Each append's event id, and its source's index in the batch: what a
    /// refusal is traced back with once the appends are gone to the log.
    pub ids: Vec<Uuid>,
    pub sources: Vec<usize>,
    /// Outputs dropped because their source is at or below the serving
    /// generation's checkpoint (a rebuild).
    pub suppressed: u64,
}

/// Why a batch's outputs cannot be appended: the failure of the event at
/// `index` of the batch.
#[derive(Debug)]
pub(super) struct OutputFailure {
    pub index: usize,
    pub message: String,
}

/// Turns what `reactor` appended while handling a batch into the log's
/// appends: ids, lineage metadata, and nothing for sources at or below
/// `suppress_through`.
pub(super) fn outputs(
    reactor: &PluginName,
    appended: Vec<Appended>,
    sources: &Sources,
    suppress_through: u64,
) -> Result<Outputs, OutputFailure> {
    let mut outputs = Outputs {
        appends: Vec::with_capacity(appended.len()),
        ids: Vec::with_capacity(appended.len()),
        sources: Vec::with_capacity(appended.len()),
        suppressed: 0,
    };
    let ids = OutputIds::of(reactor);
    let reactor_json = json_string(reactor.as_str());
    let mut per_source: HashMap<u64, u64> = HashMap::new();
    for output in appended {
        let Some((source_index, source)) = sources.at(output.source) else {
            return Err(OutputFailure {
                index: 0,
                message: format!(
                    "append to {} names source position {}, which is not an event of this batch",
                    output.stream, output.source
                ),
            });
        };
        let index = per_source.entry(output.source).or_default();
        let output_index = *index;
        *index += 1;
        if output.source <= suppress_through {
            outputs.suppressed += 1;
            continue;
        }
        if source.depth >= MAX_CAUSATION_DEPTH {
            return Err(OutputFailure {
                index: source_index,
                message: format!(
                    "causation depth limit: the event at {} is already {} reactor outputs away \
                     from the event a client appended (correlation {}), the most there may be \
                     ({MAX_CAUSATION_DEPTH}); its append to {} would go further. Do reactors \
                     trigger each other in a loop?",
                    output.source,
                    source.depth,
                    source.correlation_id(),
                    output.stream
                ),
            });
        }
        let metadata = output_metadata(&output.metadata, source, &reactor_json);
        let id = ids.id(output.source, output_index);
        outputs.ids.push(id);
        outputs.appends.push(StreamAppend {
            stream: output.stream,
            expected_version: output.expected,
            events: vec![NewEvent {
                id: Some(id),
                event_type: output.event_type,
                data: output.data,
                metadata,
            }],
        });
        outputs.sources.push(source_index);
    }
    Ok(outputs)
}

/// The ids of one reactor's outputs: UUIDv8s ordered by the source's
/// position, so that the log's id index grows at its end as a reactor moves
/// on (random ids, such as name-based UUIDv5s, scatter its writes: a third
/// of a reactor's append time). Most significant bits first:
///
/// ```text
/// 48 source position | 4 version (8) | 12 index, high | 2 variant (10)
///   | 8 index, low | 54 reactor: SHA-256 of its name, first bits
/// ```
///
/// Positions beyond 2^48 and indexes beyond 2^20 wrap (a call appends at
/// most 10,000 outputs).
#[derive(Debug, Clone, Copy)]
pub struct OutputIds {
    reactor: u64,
}

impl OutputIds {
    /// The output ids of `reactor`.
    pub fn of(reactor: &PluginName) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(reactor.as_str().as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self {
            reactor: u64::from_be_bytes(first) >> 10,
        }
    }

    /// The id of the `index`th output caused by the event at `source`.
    pub fn id(self, source: u64, index: u64) -> Uuid {
        let source = u128::from(source & ((1 << 48) - 1)) << 80;
        let high = u128::from((index >> 8) & 0xfff) << 64;
        let low = u128::from(index & 0xff) << 54;
        let version = 0x8 << 76;
        let variant = 0b10 << 62;
        Uuid::from_u128(source | version | high | variant | low | u128::from(self.reactor))
    }
}

/// An output's metadata: the reactor's own, and the lineage the host adds.
fn output_metadata(
    own: &serde_json::Map<String, serde_json::Value>,
    source: &Source,
    reactor_json: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + reactor_json.len());
    if own.is_empty() {
        out.push(b'{');
    } else {
        // A map of JSON values always serialises; its `}` makes way.
        out = serde_json::to_vec(own).unwrap_or_else(|_| b"{}".to_vec());
        out.pop();
        out.push(b',');
    }
    let mut id = Uuid::encode_buffer();
    let causation = source.id.hyphenated().encode_lower(&mut id);
    let correlation = json_string(&source.correlation_id());
    let depth = source.depth + 1;
    let lineage = format!(
        "\"causation_id\":\"{causation}\",\"correlation_id\":{correlation},\
         \"causation_depth\":{depth},\"reactor\":{reactor_json}}}"
    );
    out.extend_from_slice(lineage.as_bytes());
    out
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// What an append of outputs refused by the log means for the batch: the
/// failure of its source when the log says which append it refused (an
/// expectation, an id used by other events), given each append's id and
/// source; `None` for the log's own trouble, retried as storage.
pub(super) fn refused(
    error: &LogError,
    (ids, sources): (&[Uuid], &[usize]),
) -> Option<OutputFailure> {
    let (append, message) = match error {
        LogError::WrongExpectedVersion {
            append_index,
            stream,
            ..
        } => (
            *append_index,
            format!("append to {stream} refused: {error}"),
        ),
        LogError::IdempotencyConflict { id } => {
            let message = format!(
                "an output refused: {error} (a reactor of this name was deployed before, and \
                 appended otherwise)"
            );
            (ids.iter().position(|i| i == id)?, message)
        }
        _ => return None,
    };
    Some(OutputFailure {
        index: *sources.get(append)?,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{EventType, ExpectedVersion, Position, StreamName};

    fn event(position: u64, metadata: &str) -> RecordedEvent {
        RecordedEvent {
            position: Position(position),
            stream: "order-1".into(),
            version: position - 1,
            event_type: "OrderPlaced".into(),
            id: Uuid::from_u128(position as u128),
            data: b"{}".to_vec(),
            metadata: metadata.as_bytes().to_vec(),
            recorded_at: 0,
        }
    }

    fn appended(source: u64) -> Appended {
        Appended {
            source,
            stream: StreamName::new("shipment-1").unwrap(),
            event_type: EventType::new("ShipmentRequested").unwrap(),
            data: b"{}".to_vec(),
            metadata: serde_json::Map::new(),
            expected: ExpectedVersion::Any,
        }
    }

    #[test]
    fn outputs_carry_lineage_and_name_based_ids() {
        let name = PluginName::new("fulfil").unwrap();
        let mut events = vec![
            event(1, "{}"),
            event(
                2,
                r#"{"correlation_id":"flow-9","causation_depth":3,"reactor":"other"}"#,
            ),
            event(
                3,
                r#"{"correlation_id":"x","causation_depth":1,"reactor":"fulfil"}"#,
            ),
        ];
        let sources = Sources::take(&name, &mut events);
        assert_eq!(events.len(), 2, "its own output is left out");
        let mut own = appended(2);
        own.metadata.insert("tenant".into(), "t-1".into());
        let out = outputs(&name, vec![appended(1), own, appended(2)], &sources, 0).unwrap();
        let metadata: Vec<serde_json::Value> = out
            .appends
            .iter()
            .map(|a| serde_json::from_slice(&a.events[0].metadata).unwrap())
            .collect();
        assert_eq!(
            metadata[0]["correlation_id"],
            Uuid::from_u128(1).to_string()
        );
        assert_eq!(metadata[0]["causation_depth"], 1);
        assert_eq!(metadata[1]["correlation_id"], "flow-9");
        assert_eq!(metadata[1]["causation_id"], Uuid::from_u128(2).to_string());
        assert_eq!(metadata[1]["causation_depth"], 4);
        assert_eq!(
            metadata[1]["tenant"], "t-1",
            "the reactor's own metadata is kept"
        );
        assert_eq!(metadata[2]["reactor"], "fulfil");
        let ids: Vec<_> = out.appends.iter().map(|a| a.events[0].id).collect();
        let made = OutputIds::of(&name);
        assert_eq!(ids[1], Some(made.id(2, 0)));
        assert_eq!(ids[2], Some(made.id(2, 1)));
        assert!(
            made.id(2, 1) < made.id(3, 0),
            "ordered by source, then index"
        );
        assert_ne!(
            made.id(2, 0),
            OutputIds::of(&PluginName::new("other").unwrap()).id(2, 0)
        );
        assert_eq!(made.id(2, 0).get_version_num(), 8);
        assert_eq!(out.sources, [0, 1, 1]);
    }

    #[test]
    fn a_rebuild_suppresses_history_and_depth_is_limited() {
        let name = PluginName::new("fulfil").unwrap();
        let deep = format!(r#"{{"causation_depth":{MAX_CAUSATION_DEPTH}}}"#);
        let mut events = vec![event(1, "{}"), event(2, "{}"), event(3, &deep)];
        let sources = Sources::take(&name, &mut events);
        let out = outputs(&name, vec![appended(1), appended(2)], &sources, 1).unwrap();
        assert_eq!((out.appends.len(), out.suppressed), (1, 1));
        let failure = outputs(&name, vec![appended(3)], &sources, 0).unwrap_err();
        assert_eq!(failure.index, 2);
        assert!(
            failure.message.contains("causation depth limit"),
            "{failure:?}"
        );
        let stray = outputs(&name, vec![appended(9)], &sources, 0).unwrap_err();
        assert!(stray.message.contains("not an event of this batch"));
    }
}
