//! The redb tables of the event log, typed, in one place.
//!
//! Layout (DESIGN §2, costs in §6b):
//! - `events`: position → the encoded event (`codec`). The head is its last key.
//! - `streams`: stream name → numeric stream id, assigned once, densely from 0,
//!   so that the stream index is keyed by two integers instead of a string.
//! - `stream_index`: (stream id, version) → position. A stream's current
//!   version is the last key of its range; the writer caches it in memory.
//! - `event_ids`: client-supplied event id (UUID as u128) → position, for
//!   idempotent retries. Time-ordered ids (UUIDv7) keep it append-mostly. Ids
//!   the log generates carry their position (`ids`) and are not in it.
//! - `meta`: settings of the log made once, when it was created: the tag of
//!   the ids it generates.

use redb::TableDefinition;

/// Events by global position.
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Stream name → stream id.
pub const STREAMS: TableDefinition<&str, u64> = TableDefinition::new("streams");
/// (stream id, version) → position.
pub const STREAM_INDEX: TableDefinition<(u64, u64), u64> = TableDefinition::new("stream_index");
/// Event id → position.
pub const EVENT_IDS: TableDefinition<u128, u64> = TableDefinition::new("event_ids");
/// Name → value, written when the log is created.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The `meta` key of the generated ids' tag.
pub const GENERATED_ID_TAG: &str = "generated_id_tag";
