//! The single writer of the log: where an append becomes durable.
//!
//! One commit runs at a time (`queue` decides where: on the caller's thread
//! when the writer is idle, else on the writer thread with everything that
//! queued meanwhile, as one group: group commit). A group's requests are
//! checked and applied in the writer's redb write transaction. The group
//! becomes durable as one record in the write-ahead log (`wal`, one
//! fdatasync); then each caller is answered and the new head published.
//!
//! The redb transaction stays open across groups (write-behind): it is
//! committed, without an fsync of its own, when a reader needs what it holds
//! ([`Writer::settle`], which every read of the log calls first, so a reader
//! sees every acknowledged append) and at each checkpoint, which makes redb
//! itself durable every so often and at shutdown. A group no longer pays for
//! a transaction of its own, nor for copying the B-tree pages it touches
//! again each time. A writer that stops after a failure may have lost the
//! open transaction: what it held is acknowledged and in the WAL, and
//! readers miss it until a restart replays the WAL.
//!
//! Positions are gapless because only the one running commit assigns them,
//! and only a committed group advances them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redb::backends::InMemoryBackend;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, Table, WriteTransaction};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::chunk::{self, ChunkBuilder, ChunkCursor};
use super::codec::{self, EncodeEvent};
use super::ids::GeneratedIds;
use super::runs::{self, Run, RunBuilder};
use super::storage::{self, DbSlot};
use super::tables::{EVENT_CHUNKS, EVENT_IDS, GENERATED_ID_TAG, META, STREAM_RUNS, STREAMS};
use super::wal::{self, RecordBuilder, Wal, WalEvent, WalRecord};
use super::{AppendOutcome, LogError, LogOptions, Position, StreamAppend};
use super::{RecordedEvent, migrate};
use crate::durable;
use crate::metrics::Metrics;

/// Most events one commit takes; a bigger queue waits for the next commit.
pub(super) const MAX_GROUP_EVENTS: usize = 20_000;
/// Most payload bytes one commit takes.
pub(super) const MAX_GROUP_BYTES: usize = 64 << 20;

/// One append request: these appends, atomically as a whole, answered with
/// one outcome each.
pub(super) struct Command {
    pub appends: Vec<StreamAppend>,
    pub reply: oneshot::Sender<Result<Vec<AppendOutcome>, LogError>>,
    /// The request's place in the queue (`queue`), given back once answered.
    pub _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Command {
    /// Events and payload bytes.
    pub fn size(&self) -> (usize, usize) {
        self.appends.iter().fold((0, 0), |(n, bytes), a| {
            let b: usize = a
                .events
                .iter()
                .map(|e| e.data.len() + e.metadata.len())
                .sum();
            (n + a.events.len(), bytes + b)
        })
    }
}

/// A stream's numeric id and the version of its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamHead {
    id: u64,
    version: u64,
}

/// What one cached head is counted as, beyond its name's bytes: the slot
/// in the cache's table and its entry list (≈ 56 bytes), the allocator's
/// header and rounding on the name (≈ 16), and a share of the keys the
/// cache remembers after evicting them (half as many as it holds, ≈ 56
/// bytes each). Measured: the benchmark's RSS moves by about what the
/// bound does (docs/benchmarks/README.md#memory-and-the-number-of-streams).
const HEAD_ENTRY_BYTES: u64 = 112;

/// The writer's cache of committed stream heads, bounded by the bytes its
/// entries take (`LogOptions::stream_cache_bytes`), evicting the least
/// recently and frequently used (quick_cache's CLOCK-PRO). The stream index
/// in redb is the truth: a head not cached is read from it, so the cache
/// only spares that read and can drop any entry at any time. It never holds
/// a head that is not committed: a group's own heads live in its
/// [`Pending`] and join the cache once the group commits.
struct HeadCache(quick_cache::unsync::Cache<Box<str>, StreamHead, HeadWeight>);

/// Weighs a cached head in bytes.
#[derive(Clone)]
struct HeadWeight;

impl quick_cache::Weighter<Box<str>, StreamHead> for HeadWeight {
    fn weight(&self, name: &Box<str>, _: &StreamHead) -> u64 {
        name.len() as u64 + HEAD_ENTRY_BYTES
    }
}

impl HeadCache {
    /// A cache whose entries weigh at most `bytes` in all.
    fn new(bytes: u64) -> Self {
        // Names of a dozen bytes or so: the estimate sizes the cache's
        // memory of evicted keys, not its bound.
        let items = (bytes / (HEAD_ENTRY_BYTES + 16)) as usize;
        Self(quick_cache::unsync::Cache::with_weighter(
            items, bytes, HeadWeight,
        ))
    }

    fn get(&self, name: &str) -> Option<StreamHead> {
        self.0.get(name).copied()
    }

    fn insert(&mut self, name: impl Into<Box<str>>, head: StreamHead) {
        self.0.insert(name.into(), head);
    }
}

/// The writer's state. `heads` caches committed stream heads only; changes made
/// by the group being written live in a [`Pending`] until the commit succeeds.
pub(super) struct Writer {
    db: Arc<Database>,
    wal: Wal,
    options: LogOptions,
    record: RecordBuilder,
    /// The write transaction holding the groups since the last settle, if
    /// any: durable in the WAL, not yet visible to readers.
    open: Option<WriteTransaction>,
    /// The chunk being filled, by the groups of the open transaction; stored
    /// when it is full or the transaction commits.
    chunk: ChunkBuilder,
    /// The group's last run, extended by an append that continues it (a
    /// reactor's outputs to one stream) and stored with the group.
    runs: RunBuilder,
    /// The last position readers can see in redb (shared with [`EventLog`]'s
    /// readers, which settle when it is behind the head).
    settled: Arc<AtomicU64>,
    last_checkpoint: Instant,
    /// Set when redb refused a group the WAL already holds, or the storage
    /// failed: the in-memory state can no longer be trusted, so the writer
    /// refuses everything until [`Writer::reopen`] (or a restart) replays
    /// the WAL.
    broken: Option<Broken>,
    /// The files, to reopen them.
    db_path: PathBuf,
    wal_path: PathBuf,
    heads: HeadCache,
    /// The ids given to events that come without one.
    generated: GeneratedIds,
    /// No id in the index is above this: a new id past it (as a client's
    /// UUIDv7s and a reactor's outputs mostly are) is known to be absent
    /// without a lookup. Raised by every insert, also of a group that then
    /// fails: it only has to stay at or above the index's largest id.
    id_ceiling: u128,
    next_position: u64,
    next_stream_id: u64,
    head: watch::Sender<Position>,
    metrics: Metrics,
}

/// Why the writer stopped.
#[derive(Debug, Clone)]
pub(super) struct Broken {
    pub reason: String,
    /// The disk is full: appends are answered as such.
    pub storage_full: bool,
}

impl Broken {
    /// What an append is told while the writer is stopped.
    pub fn refusal(&self) -> LogError {
        match self.storage_full {
            true => LogError::StorageFull(self.reason.clone()),
            false => LogError::CommitFailed(format!(
                "the writer stopped after an earlier failure ({}); it reopens the log \
                 every second until that succeeds",
                self.reason
            )),
        }
    }
}

/// What a group (or one request within it) has changed, not yet committed.
struct Pending {
    heads: HashMap<String, StreamHead>,
    next_position: u64,
    next_stream_id: u64,
}

/// A request that passed its checks: its own changes to the heads, each
/// append's outcome, and where each append that is not a retry goes.
struct Checked {
    request: Pending,
    outcomes: Vec<AppendOutcome>,
    placements: Vec<Option<Placement>>,
}

/// Where a checked append goes: its stream (new or not), the version of its
/// first event and that event's position.
struct Placement {
    stream_id: u64,
    first_version: u64,
    first_position: u64,
    new_stream: bool,
}

struct Tables<'txn> {
    chunks: Table<'txn, u64, &'static [u8]>,
    streams: Table<'txn, &'static str, u64>,
    runs: Table<'txn, (u64, u64), (u64, u64)>,
    ids: Table<'txn, u128, u64>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, LogError> {
        Ok(Self {
            chunks: txn.open_table(EVENT_CHUNKS)?,
            streams: txn.open_table(STREAMS)?,
            runs: txn.open_table(STREAM_RUNS)?,
            ids: txn.open_table(EVENT_IDS)?,
        })
    }
}

/// Re-applies the WAL's groups that redb's durable state does not hold yet
/// (those past `durable`). Returns the new last position.
fn replay(
    tables: &mut Tables<'_>,
    generated: GeneratedIds,
    durable: u64,
    records: Vec<WalRecord>,
) -> Result<u64, LogError> {
    let mut last = durable;
    let mut chunk = ChunkBuilder::default();
    for record in records {
        let first = record.first_position.0;
        let count = record.events.len() as u64;
        if first + count - 1 <= durable {
            continue; // already in redb
        }
        if first != last + 1 {
            return Err(LogError::Corrupt(format!(
                "the write-ahead log continues at position {first}, the log ends at {last}"
            )));
        }
        chunk.start(first);
        let mut runs = RunBuilder::default();
        for (i, (stream_id, encoded)) in record.events.into_iter().enumerate() {
            let position = first + i as u64;
            let event = codec::decode(Position(position), &encoded)?;
            if tables.streams.get(event.stream.as_str())?.is_none() {
                tables.streams.insert(event.stream.as_str(), stream_id)?;
            }
            chunk.append(&mut tables.chunks, encoded.len(), |buf| {
                buf.extend_from_slice(&encoded)
            })?;
            runs.push(&mut tables.runs, stream_id, event.version, position)?;
            if generated.position(event.id) != Some(position) {
                tables.ids.insert(event.id.as_u128(), position)?;
            }
        }
        runs.finish(&mut tables.runs)?;
        chunk.flush(&mut tables.chunks)?;
        last = first + count - 1;
    }
    Ok(last)
}

impl Writer {
    /// Prepares the writer over an opened database: creates the tables of a
    /// new log, replays what the WAL holds beyond redb's durable state, and
    /// checkpoints.
    pub(super) fn new(
        db: Arc<Database>,
        db_path: &Path,
        wal_path: &Path,
        options: LogOptions,
        head: watch::Sender<Position>,
        metrics: Metrics,
    ) -> Result<Self, LogError> {
        let (wal, records) = Wal::open(wal_path)?;
        let txn = db.begin_write()?;
        let generated = {
            let mut meta = txn.open_table(META)?;
            let tag = meta.get(GENERATED_ID_TAG)?.map(|g| g.value());
            match tag {
                Some(tag) => GeneratedIds::new(tag),
                None => {
                    let generated = GeneratedIds::random();
                    meta.insert(GENERATED_ID_TAG, generated.tag())?;
                    generated
                }
            }
        };
        migrate::to_current(&txn)?;
        let (last, streams, id_ceiling) = {
            let mut tables = Tables::open(&txn)?;
            let durable = chunk::last_position(&tables.chunks)?;
            let last = replay(&mut tables, generated, durable, records)?;
            if last > durable {
                tracing::info!(
                    "recovered events {} to {last} from the write-ahead log",
                    durable + 1
                );
            }
            let id_ceiling = tables.ids.last()?.map_or(0, |(id, _)| id.value());
            (last, tables.streams.len()?, id_ceiling)
        };
        txn.commit()?;
        let mut writer = Self {
            db,
            wal,
            options,
            record: RecordBuilder::default(),
            open: None,
            chunk: ChunkBuilder::default(),
            runs: RunBuilder::default(),
            settled: Arc::new(AtomicU64::new(last)),
            last_checkpoint: Instant::now(),
            broken: None,
            db_path: db_path.to_path_buf(),
            wal_path: wal_path.to_path_buf(),
            heads: HeadCache::new(options.stream_cache_bytes),
            generated,
            id_ceiling,
            next_position: last + 1,
            next_stream_id: streams,
            head,
            metrics,
        };
        writer.wal.reset();
        writer.metrics.writer.wal_bytes.set(0);
        writer.head.send_replace(Position(last));
        writer.metrics.head_position.set(last as i64);
        Ok(writer)
    }

    /// Checks, writes and makes durable one group of requests, then answers
    /// each. A checkpoint, when one is due, is for the caller to run.
    pub(super) fn commit_group(&mut self, group: Vec<Command>) {
        let mut pending = Pending {
            heads: HashMap::new(),
            next_position: self.next_position,
            next_stream_id: self.next_stream_id,
        };
        let mut results = Vec::with_capacity(group.len());
        let committed = self.write_group(&group, &mut pending, &mut results);
        match committed {
            Ok(()) => {
                for (name, head) in pending.heads {
                    self.heads.insert(name, head);
                }
                self.next_stream_id = pending.next_stream_id;
                let written = pending.next_position - self.next_position;
                if written > 0 {
                    self.next_position = pending.next_position;
                    let head = self.next_position - 1;
                    self.head.send_replace(Position(head));
                    self.metrics.head_position.set(head as i64);
                    self.metrics.events_per_commit.observe(written as f64);
                    self.metrics.writer.wal_bytes.set(self.wal.written() as i64);
                }
                for (command, result) in group.into_iter().zip(results) {
                    let _ = command.reply.send(result);
                }
            }
            Err(error) => {
                // A stopped writer's refusals were logged once, when it stopped.
                if self.broken.is_none() {
                    tracing::error!(%error, "commit of {} appends failed", group.len());
                }
                if error.is_storage_failure() && self.broken.is_none() {
                    self.stop_on(&error);
                }
                for command in group {
                    let _ = command.reply.send(Err(self.refusal(&error)));
                }
            }
        }
    }

    fn write_group(
        &mut self,
        group: &[Command],
        pending: &mut Pending,
        results: &mut Vec<Result<Vec<AppendOutcome>, LogError>>,
    ) -> Result<(), LogError> {
        if let Some(broken) = &self.broken {
            return Err(broken.refusal());
        }
        let (txn, holds_groups) = match self.open.take() {
            Some(txn) => (txn, true),
            None => {
                let mut txn = self.db.begin_write()?;
                // Durability comes from the WAL record written below.
                txn.set_durability(Durability::None)
                    .map_err(|e| LogError::Internal(format!("cannot defer durability: {e}")))?;
                self.chunk.start(pending.next_position);
                (txn, false)
            }
        };
        let written = self.write_into(&txn, group, pending, results);
        match written {
            // Only refusals and retries, in a transaction of its own: nothing to keep.
            Ok(()) if self.record.is_empty() && !holds_groups => Ok(()),
            Ok(()) => {
                self.open = Some(txn);
                Ok(())
            }
            // The transaction goes, and with it what earlier groups wrote
            // into it: acknowledged, and in the WAL, but no longer in redb.
            Err(error) if holds_groups => {
                self.stop(
                    &format!("a group failed after earlier ones ({error})"),
                    &error,
                );
                Err(error)
            }
            // Nothing acknowledged is lost: the group fails alone.
            Err(error) => Err(error),
        }
    }

    /// Checks and applies a group in `txn`, and makes it durable in the WAL.
    fn write_into(
        &mut self,
        txn: &WriteTransaction,
        group: &[Command],
        pending: &mut Pending,
        results: &mut Vec<Result<Vec<AppendOutcome>, LogError>>,
    ) -> Result<(), LogError> {
        self.record.clear();
        self.runs.discard();
        let mut tables = Tables::open(txn)?;
        let recorded_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        for command in group {
            let result = self.apply(&mut tables, pending, &command.appends, recorded_at);
            // A storage error poisons the whole transaction.
            if let Err(LogError::Storage(_)) = result {
                return result.map(|_| ());
            }
            results.push(result);
        }
        self.runs.finish(&mut tables.runs)?;
        if self.record.is_empty() {
            // Only refusals and retries: nothing to make durable.
            return Ok(());
        }
        self.wal.append(&mut self.record)
    }

    /// Commits the open transaction to redb (without an fsync: the WAL holds
    /// it), so that readers see every group acknowledged so far.
    pub(super) fn settle(&mut self) -> Result<(), LogError> {
        let Some(txn) = self.open.take() else {
            return Ok(());
        };
        let committed = (|| {
            self.chunk.flush(&mut txn.open_table(EVENT_CHUNKS)?)?;
            txn.commit()?;
            Ok::<_, LogError>(())
        })();
        if let Err(error) = committed {
            let reason = format!("redb refused groups the WAL holds: {error}");
            self.stop(&reason, &error);
            return Err(self.refusal(&error));
        }
        self.settled
            .store(self.next_position - 1, Ordering::Release);
        Ok(())
    }

    /// The last position readers can see in redb, shared.
    pub(super) fn settled(&self) -> Arc<AtomicU64> {
        self.settled.clone()
    }

    /// Refuses every append from now on: the writer's state can no longer be
    /// trusted, until [`Writer::reopen`] or a restart replays the WAL.
    pub(super) fn stop(&mut self, reason: &str, cause: &LogError) {
        tracing::error!("{reason}; refusing appends until the log reopens");
        if cause.is_storage_failure() {
            self.metrics.storage_failures.inc();
        }
        self.broken = Some(Broken {
            reason: reason.to_owned(),
            storage_full: cause.is_storage_full(),
        });
    }

    fn stop_on(&mut self, error: &LogError) {
        self.stop(&format!("the storage failed ({error})"), error);
    }

    /// What callers are told of `error`: a full disk as such, anything else
    /// as a failed commit.
    fn refusal(&self, error: &LogError) -> LogError {
        match error {
            LogError::StorageFull(reason) => LogError::StorageFull(reason.clone()),
            LogError::CommitFailed(reason) => LogError::CommitFailed(reason.clone()),
            _ if error.is_storage_full()
                || self.broken.as_ref().is_some_and(|b| b.storage_full) =>
            {
                LogError::StorageFull(error.to_string())
            }
            _ => LogError::CommitFailed(error.to_string()),
        }
    }

    /// Why the writer stopped, if it did.
    pub(super) fn broken(&self) -> Option<&Broken> {
        self.broken.as_ref()
    }

    /// Closes the database and opens it again, replaying the WAL, as a
    /// restart would: the way back from a storage failure
    /// (`storage.rs`). Readers' handle is taken from `slot` meanwhile and
    /// given back, the new one, once the database is open. On failure the
    /// writer stays stopped, to try again later.
    pub(super) fn reopen(&mut self, slot: &DbSlot) -> Result<(), LogError> {
        self.open = None;
        let old = Arc::downgrade(&self.db);
        slot.clear();
        // Hold an empty in-memory database meanwhile: the file's must close.
        let placeholder = Database::builder().create_with_backend(InMemoryBackend::new())?;
        drop(std::mem::replace(&mut self.db, Arc::new(placeholder)));
        storage::wait_closed(&old)?;
        let db = Arc::new(durable::create_database(&self.db_path)?);
        slot.set(db.clone());
        let (db_path, wal_path) = (self.db_path.clone(), self.wal_path.clone());
        let (head, metrics) = (self.head.clone(), self.metrics.clone());
        let mut fresh = Writer::new(db, &db_path, &wal_path, self.options, head, metrics)?;
        fresh.settled = self.settled.clone();
        fresh
            .settled
            .store(fresh.next_position - 1, Ordering::Release);
        *self = fresh;
        tracing::info!(
            head = self.next_position - 1,
            "the log reopened; appends go on"
        );
        Ok(())
    }

    /// Whether the WAL is full or old enough for a checkpoint.
    pub(super) fn checkpoint_due(&self) -> bool {
        let wal_full = self.wal.written() > wal::CHECKPOINT_BYTES;
        let wal_old = self.wal.written() > 0
            && self.last_checkpoint.elapsed() > self.options.checkpoint_interval;
        wal_full || wal_old
    }

    /// Makes redb durable up to the last group, then starts the WAL over.
    pub(super) fn checkpoint(&mut self) -> Result<(), LogError> {
        if self.wal.written() == 0 || self.broken.is_some() {
            return Ok(());
        }
        self.settle()?;
        let txn = self.db.begin_write()?;
        txn.commit()?;
        self.wal.reset();
        self.last_checkpoint = Instant::now();
        self.metrics.writer.wal_bytes.set(0);
        self.metrics.writer.wal_checkpoints.inc();
        Ok(())
    }

    /// Checks one request (every append in it), then writes it. Nothing is
    /// written unless every check passes, so a refused request leaves the
    /// transaction as it was.
    fn apply(
        &mut self,
        tables: &mut Tables<'_>,
        group: &mut Pending,
        appends: &[StreamAppend],
        recorded_at: u64,
    ) -> Result<Vec<AppendOutcome>, LogError> {
        let checked = self.check(tables, group, appends)?;
        for (append, placement) in appends.iter().zip(&checked.placements) {
            if let Some(placement) = placement {
                self.write(tables, append, placement, recorded_at)?;
            }
        }
        let request = checked.request;
        group.heads.extend(request.heads);
        group.next_position = request.next_position;
        group.next_stream_id = request.next_stream_id;
        Ok(checked.outcomes)
    }

    /// Checks every append of a request against the log and the group so
    /// far, and places each one that is not a retry.
    fn check(
        &mut self,
        tables: &mut Tables<'_>,
        group: &Pending,
        appends: &[StreamAppend],
    ) -> Result<Checked, LogError> {
        // This request's own changes, merged into the group's once all checks pass.
        let mut request = Pending {
            heads: HashMap::new(),
            next_position: group.next_position,
            next_stream_id: group.next_stream_id,
        };
        let mut outcomes = Vec::with_capacity(appends.len());
        let mut placements = Vec::with_capacity(appends.len());
        for (append_index, append) in appends.iter().enumerate() {
            if let Some(outcome) = self.find_retry(tables, append)? {
                outcomes.push(outcome);
                placements.push(None);
                continue;
            }
            let name = append.stream.as_str();
            let head = self.head_of(tables, [&request, group], name)?;
            let current = head.map(|h| h.version);
            if !append.expected_version.admits(current) {
                return Err(LogError::WrongExpectedVersion {
                    stream: name.to_owned(),
                    expected: append.expected_version,
                    actual: current,
                    append_index,
                });
            }
            let placement = match head {
                Some(h) => Placement {
                    stream_id: h.id,
                    first_version: h.version + 1,
                    first_position: request.next_position,
                    new_stream: false,
                },
                None => {
                    request.next_stream_id += 1;
                    Placement {
                        stream_id: request.next_stream_id - 1,
                        first_version: 0,
                        first_position: request.next_position,
                        new_stream: true,
                    }
                }
            };
            let count = append.events.len() as u64;
            let last_version = placement.first_version + count - 1;
            request.next_position += count;
            let head = StreamHead {
                id: placement.stream_id,
                version: last_version,
            };
            match request.heads.get_mut(name) {
                Some(known) => *known = head,
                None => drop(request.heads.insert(name.to_owned(), head)),
            }
            outcomes.push(AppendOutcome {
                first_position: Position(placement.first_position),
                last_position: Position(placement.first_position + count - 1),
                next_expected_version: last_version,
                duplicate: false,
            });
            placements.push(Some(placement));
        }
        Ok(Checked {
            request,
            outcomes,
            placements,
        })
    }

    /// Writes one checked append's events where it was placed: into the
    /// chunks, the ids it carries, its run, and the group's WAL record.
    fn write(
        &mut self,
        tables: &mut Tables<'_>,
        append: &StreamAppend,
        placement: &Placement,
        recorded_at: u64,
    ) -> Result<(), LogError> {
        let name = append.stream.as_str();
        if placement.new_stream {
            tables.streams.insert(name, placement.stream_id)?;
        }
        for (i, event) in append.events.iter().enumerate() {
            let position = placement.first_position + i as u64;
            debug_assert_eq!(self.chunk.next_position(), position);
            let id = event.id.unwrap_or_else(|| self.generated.id(position));
            let encode = EncodeEvent {
                stream: name,
                version: placement.first_version + i as u64,
                recorded_at,
                id,
                event_type: event.event_type.as_str(),
                metadata: &event.metadata,
                data: &event.data,
            };
            let at = self
                .chunk
                .append(&mut tables.chunks, encode.encoded_len(), |buf| {
                    encode.encode(buf)
                })?;
            if event.id.is_some() {
                tables.ids.insert(id.as_u128(), position)?;
                self.id_ceiling = self.id_ceiling.max(id.as_u128());
            }
            self.record.push(
                position,
                WalEvent {
                    stream_id: placement.stream_id,
                    encoded: self.chunk.bytes_of(at),
                },
            );
        }
        let run = Run {
            version: placement.first_version,
            position: placement.first_position,
            count: append.events.len() as u64,
        };
        self.runs
            .push_run(&mut tables.runs, placement.stream_id, run)?;
        Ok(())
    }

    /// If the append's first event id is already in the log, the request is a
    /// retry: every event must then be there, in order, in the same stream, and
    /// the original positions are the answer. Otherwise no id may be there.
    fn find_retry(
        &self,
        tables: &Tables<'_>,
        append: &StreamAppend,
    ) -> Result<Option<AppendOutcome>, LogError> {
        let Some(first_id) = append.events.first().and_then(|e| e.id) else {
            return Ok(None);
        };
        let Some(first_position) = self.find_id(tables, first_id)? else {
            // A new append: none of its client-supplied ids may exist yet
            // (the first was just looked for), and none may pose as one the
            // log generates.
            for (i, id) in append.events.iter().filter_map(|e| e.id).enumerate() {
                if i > 0 && self.find_id(tables, id)?.is_some() {
                    return Err(LogError::IdempotencyConflict { id });
                }
                if self.generated.position(id).is_some() {
                    return Err(LogError::ReservedId(id));
                }
            }
            return Ok(None);
        };
        let mut last_version = 0;
        for (i, event) in append.events.iter().enumerate() {
            let position = first_position + i as u64;
            let id = event.id.unwrap_or(first_id);
            let found = match event.id {
                Some(id) => self.find_id(tables, id)?,
                None => None,
            };
            if found != Some(position) {
                return Err(LogError::IdempotencyConflict { id });
            }
            let original = self.event_at(tables, position)?.ok_or_else(|| {
                LogError::Corrupt(format!("id index points at missing event {position}"))
            })?;
            if original.stream != append.stream.as_str() {
                return Err(LogError::IdempotencyConflict { id });
            }
            last_version = original.version;
        }
        let count = append.events.len() as u64;
        Ok(Some(AppendOutcome {
            first_position: Position(first_position),
            last_position: Position(first_position + count - 1),
            next_expected_version: last_version,
            duplicate: true,
        }))
    }

    /// The position of the event whose id is `id`, if it is in the log: an
    /// id the log generated names its position; others are in the index.
    fn find_id(&self, tables: &Tables<'_>, id: Uuid) -> Result<Option<u64>, LogError> {
        let Some(position) = self.generated.position(id) else {
            if id.as_u128() > self.id_ceiling {
                return Ok(None);
            }
            return Ok(tables.ids.get(id.as_u128())?.map(|g| g.value()));
        };
        let event = self.event_at(tables, position)?;
        Ok(event.is_some_and(|e| e.id == id).then_some(position))
    }

    /// The event at `position`: in the chunk this group is filling, or stored.
    fn event_at(
        &self,
        tables: &Tables<'_>,
        position: u64,
    ) -> Result<Option<RecordedEvent>, LogError> {
        let mut stored = ChunkCursor::new(&tables.chunks);
        let bytes = match self.chunk.get(position)? {
            Some(bytes) => Some(bytes),
            None => stored.get(position)?,
        };
        bytes
            .map(|bytes| codec::decode(Position(position), bytes))
            .transpose()
    }

    /// The stream's id and current version: from what is pending (this request,
    /// then its group) first, then the cache of committed heads, then the
    /// stream index itself.
    fn head_of(
        &mut self,
        tables: &Tables<'_>,
        pending: [&Pending; 2],
        name: &str,
    ) -> Result<Option<StreamHead>, LogError> {
        let found = pending.iter().find_map(|p| p.heads.get(name)).copied();
        if let Some(head) = found.or_else(|| self.heads.get(name)) {
            return Ok(Some(head));
        }
        let Some(id) = tables.streams.get(name)?.map(|g| g.value()) else {
            return Ok(None);
        };
        let version = runs::head(&tables.runs, id, name)?;
        // Not touched by the pending group, so this is committed truth.
        let head = StreamHead { id, version };
        self.heads.insert(name, head);
        Ok(Some(head))
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::Semaphore;

    use super::*;
    use crate::log::{EventType, ExpectedVersion, NewEvent, StreamName};

    /// A writer on a temporary directory, driven group by group.
    struct Harness {
        writer: Writer,
        permits: Arc<Semaphore>,
        dir: tempfile::TempDir,
    }

    fn open_in(dir: tempfile::TempDir, stream_cache_bytes: u64) -> Harness {
        let path = dir.path().join("log.redb");
        let db = Arc::new(Database::create(&path).unwrap());
        let options = LogOptions {
            stream_cache_bytes,
            ..LogOptions::default()
        };
        let (head, _) = watch::channel(Position(0));
        let wal = dir.path().join("log.wal");
        let writer = Writer::new(db, &path, &wal, options, head, Metrics::new()).unwrap();
        Harness {
            writer,
            permits: Arc::new(Semaphore::new(1 << 20)),
            dir,
        }
    }

    fn open(stream_cache_bytes: u64) -> Harness {
        open_in(tempfile::tempdir().unwrap(), stream_cache_bytes)
    }

    fn append(stream: &str, expected: ExpectedVersion, events: usize) -> StreamAppend {
        StreamAppend {
            stream: StreamName::new(stream).unwrap(),
            expected_version: expected,
            events: (0..events)
                .map(|_| NewEvent {
                    id: None,
                    event_type: EventType::new("Happened").unwrap(),
                    data: b"{}".to_vec(),
                    metadata: b"{}".to_vec(),
                })
                .collect(),
        }
    }

    impl Harness {
        /// Commits `requests` as one group; each request's answer.
        fn group(
            &mut self,
            requests: Vec<Vec<StreamAppend>>,
        ) -> Vec<Result<Vec<AppendOutcome>, LogError>> {
            let (commands, replies): (Vec<_>, Vec<_>) = requests
                .into_iter()
                .map(|appends| {
                    let (reply, answer) = oneshot::channel();
                    let _permit = self.permits.clone().try_acquire_owned().unwrap();
                    (
                        Command {
                            appends,
                            reply,
                            _permit,
                        },
                        answer,
                    )
                })
                .unzip();
            self.writer.commit_group(commands);
            let weight = self.writer.heads.0.weight();
            assert!(
                weight <= self.writer.heads.0.capacity(),
                "the cache weighs {weight} bytes, over its bound"
            );
            replies
                .into_iter()
                .map(|mut r| r.try_recv().unwrap())
                .collect()
        }

        /// Appends one event to `stream`; its new version.
        fn one(&mut self, stream: &str, expected: ExpectedVersion) -> Result<u64, LogError> {
            let mut answer = self.group(vec![vec![append(stream, expected, 1)]]);
            Ok(answer.pop().unwrap()?[0].next_expected_version)
        }
    }

    fn wrong_version(result: Result<u64, LogError>) -> Option<u64> {
        match result {
            Err(LogError::WrongExpectedVersion { actual, .. }) => actual,
            other => panic!("expected a wrong expected version, got {other:?}"),
        }
    }

    /// With a cache of a few dozen heads, 2,000 streams appended to round
    /// after round, 50 requests a group: every head is evicted and read
    /// back from the stream index, versions go on from where they were, and
    /// a wrong expected version is still refused with the actual one.
    #[test]
    fn a_tiny_cache_keeps_every_stream_version_right() {
        let mut log = open(4 << 10);
        let streams: Vec<String> = (0..2000).map(|i| format!("order-{i}")).collect();
        for round in 0..3u64 {
            for names in streams.chunks(50) {
                let requests = names
                    .iter()
                    .map(|name| {
                        let expected = match round {
                            0 => ExpectedVersion::NoStream,
                            r => ExpectedVersion::Exact(r * 2 - 1),
                        };
                        vec![append(name, expected, 2)]
                    })
                    .collect();
                for answer in log.group(requests) {
                    assert_eq!(answer.unwrap()[0].next_expected_version, round * 2 + 1);
                }
            }
            // Long evicted by now: read back from the stream index.
            let last = round * 2 + 1;
            assert_eq!(
                wrong_version(log.one("order-7", ExpectedVersion::Exact(last + 1))),
                Some(last)
            );
            assert_eq!(
                wrong_version(log.one("order-8", ExpectedVersion::NoStream)),
                Some(last)
            );
        }
        assert!(log.writer.heads.0.len() < 100);
        let last = log.writer.next_position - 1;
        assert_eq!(last, 2000 * 3 * 2);
    }

    /// The pending heads of a group come first, whatever the cache holds:
    /// a second request to a stream in the same group sees the first one's
    /// version, and a refused request leaves no head behind.
    #[test]
    fn pending_heads_win_over_the_cache_and_refusals_leave_none() {
        let mut log = open(1 << 10);
        for i in 0..100 {
            log.one(&format!("warm-{i}"), ExpectedVersion::Any).unwrap();
        }
        let answers = log.group(vec![
            vec![append("a", ExpectedVersion::NoStream, 3)],
            // Refused as a whole: "b" gets nothing, "a" keeps version 2.
            vec![
                append("b", ExpectedVersion::NoStream, 1),
                append("a", ExpectedVersion::Exact(0), 1),
            ],
            vec![append("a", ExpectedVersion::Exact(2), 1)],
        ]);
        assert_eq!(answers[0].as_ref().unwrap()[0].next_expected_version, 2);
        assert!(matches!(
            answers[1],
            Err(LogError::WrongExpectedVersion {
                actual: Some(2),
                append_index: 1,
                ..
            })
        ));
        assert_eq!(answers[2].as_ref().unwrap()[0].next_expected_version, 3);
        for i in 0..100 {
            log.one(&format!("evict-{i}"), ExpectedVersion::Any)
                .unwrap();
        }
        assert_eq!(log.one("b", ExpectedVersion::NoStream).unwrap(), 0);
        assert_eq!(log.one("a", ExpectedVersion::Exact(3)).unwrap(), 4);
    }

    /// Appends to one stream that follow each other in a group share one
    /// run, across requests; a refused request between them adds nothing,
    /// and an append to another stream starts a run of its own. Every event
    /// is read back at its version and position.
    #[test]
    fn appends_that_follow_on_in_a_group_share_a_run() {
        let mut log = open(1 << 20);
        let one = |stream| append(stream, ExpectedVersion::Any, 1);
        let answers = log.group(vec![
            vec![one("a"), one("a"), one("b"), one("a")],
            vec![append("a", ExpectedVersion::Exact(9), 1)],
            vec![one("a"), append("a", ExpectedVersion::Any, 2)],
        ]);
        assert!(answers[1].is_err());
        log.writer.settle().unwrap();
        let txn = redb::ReadableDatabase::begin_read(&*log.writer.db).unwrap();
        let table = txn.open_table(STREAM_RUNS).unwrap();
        // (stream, first version) -> (first position, count); a is 0, b is 1.
        assert_eq!(
            runs::stored(&table),
            [((0, 0), (1, 2)), ((0, 2), (4, 4)), ((1, 0), (3, 1))]
        );
        let a = runs::forward(&table, 0, 0, 10).unwrap();
        assert_eq!(a, [(0, 1), (1, 2), (2, 4), (3, 5), (4, 6), (5, 7)]);
        assert_eq!(runs::backward(&table, 0, 5, 2).unwrap(), [(5, 7), (4, 6)]);
    }

    /// No cache at all: every head comes from the stream index, and after a
    /// restart (the WAL replayed into redb) versions go on as before.
    #[test]
    fn without_a_cache_and_after_a_restart_versions_go_on() {
        let mut log = open(0);
        for i in 0..50 {
            let name = format!("user-{i}");
            assert_eq!(log.one(&name, ExpectedVersion::NoStream).unwrap(), 0);
            assert_eq!(log.one(&name, ExpectedVersion::Exact(0)).unwrap(), 1);
        }
        assert_eq!(log.writer.heads.0.len(), 0);
        let Harness { writer, dir, .. } = log;
        drop(writer); // the open transaction is lost; the WAL holds it
        let mut log = open_in(dir, 1 << 10);
        for i in 0..50 {
            let name = format!("user-{i}");
            assert_eq!(
                wrong_version(log.one(&name, ExpectedVersion::Exact(0))),
                Some(1)
            );
            assert_eq!(log.one(&name, ExpectedVersion::Exact(1)).unwrap(), 2);
        }
    }

    /// A retry is recognised by its id whether the id sorts above the
    /// index's largest or below it, in the group that stored it, in a later
    /// one, and after a restart (the ceiling then comes from the index).
    #[test]
    fn retries_are_recognised_on_both_sides_of_the_id_ceiling() {
        let with_id = |id: u128| {
            let mut append = append("a", ExpectedVersion::Any, 1);
            append.events[0].id = Some(Uuid::from_u128(id));
            append
        };
        let duplicates = |log: &mut Harness, ids: &[u128]| -> Vec<bool> {
            let requests = ids.iter().map(|&id| vec![with_id(id)]).collect();
            let answers = log.group(requests);
            answers
                .into_iter()
                .map(|a| a.unwrap()[0].duplicate)
                .collect()
        };
        let (high, low) = (9 << 100, 5 << 100);
        let mut log = open(1 << 20);
        assert_eq!(duplicates(&mut log, &[high, high]), [false, true]);
        assert_eq!(duplicates(&mut log, &[low, high, low]), [false, true, true]);
        let Harness { writer, dir, .. } = log;
        drop(writer);
        let mut log = open_in(dir, 1 << 20);
        assert_eq!(log.writer.id_ceiling, high);
        assert_eq!(
            duplicates(&mut log, &[low, high, high + 1]),
            [true, true, false]
        );
    }

    /// The cache's weight stays within its bound as streams come and go,
    /// and what it really takes is about what it is weighed at.
    #[test]
    fn the_cache_stays_within_its_bound() {
        let bound = 256 << 10;
        let mut cache = HeadCache::new(bound);
        let mut names = 0u64;
        for i in 0..50_000u64 {
            let name = format!("customer-{i}");
            names += name.len() as u64;
            cache.insert(name, StreamHead { id: i, version: 0 });
            assert!(cache.0.weight() <= bound);
            if i % 3 == 0 {
                // Some heads are read again, as hot streams are.
                cache.get(&format!("customer-{}", i / 2));
            }
        }
        let held = cache.0.len() as u64;
        assert!(held > bound / (HEAD_ENTRY_BYTES + 20), "{held} heads held");
        let structures = cache.0.memory_used().total() as u64;
        let names_held = held * (names / 50_000);
        eprintln!(
            "{held} heads, weight {}, structures {structures} B, names ≈ {names_held} B",
            cache.0.weight()
        );
    }
}
