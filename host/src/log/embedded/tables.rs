//! The redb tables of the event log, typed, in one place.
//!
//! Layout (`docs/design.md#tables-and-keys`, what redb costs in
//! `docs/design.md#notes`), format 2:
//! - `event_chunks`: position of a chunk's first event → the chunk, a run of
//!   consecutive encoded events (`chunk`, `codec`). The head is the last
//!   event of the last chunk.
//! - `streams`: stream name → numeric stream id, assigned once, densely from 0,
//!   so that the stream index is keyed by two integers instead of a string.
//! - `stream_runs`: (stream id, version of a run's first event) → (its
//!   position, how many events). One append writes one run: its events have
//!   consecutive versions and positions (`runs`). A stream's current version follows
//!   from its last run; the writer caches it in memory.
//! - `event_ids`: client-supplied event id (UUID as u128) → position, for
//!   idempotent retries. Time-ordered ids (UUIDv7) keep it append-mostly. Ids
//!   the log generates carry their position (`ids`) and are not in it.
//! - `meta`: settings of the log: the tag of the ids it generates, and the
//!   format of the tables (`migrate` brings older logs to this one).

use redb::TableDefinition;

/// Chunks of events, by the position of their first event.
pub const EVENT_CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("event_chunks");
/// Stream name → stream id.
pub const STREAMS: TableDefinition<&str, u64> = TableDefinition::new("streams");
/// (stream id, first version) → (first position, count).
pub const STREAM_RUNS: TableDefinition<(u64, u64), (u64, u64)> =
    TableDefinition::new("stream_runs");
/// Event id → position.
pub const EVENT_IDS: TableDefinition<u128, u64> = TableDefinition::new("event_ids");
/// Name → value.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The `meta` key of the generated ids' tag.
pub const GENERATED_ID_TAG: &str = "generated_id_tag";
/// The `meta` key of the tables' format.
pub const FORMAT: &str = "format";
/// The format this code writes: chunks and runs.
pub const CURRENT_FORMAT: u64 = 2;
