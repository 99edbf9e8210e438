//! One generation of a plugin: a version of its code with its own state
//! file and checkpoint, and the step that moves it: read a batch after the
//! checkpoint, hand it to the plugin, commit what it wrote with the new
//! checkpoint. Failures are retried with backoff, then given up on (see
//! `docs/design.md#failure-policy`); a failure of the storage under the
//! plugin (the log, its state file, its mailbox) is not the plugin's, and
//! is retried every second without counting (`docs/design.md#a-full-disk`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::reactor::{self, OutputFailure, OutputMarks, Sources};
use super::shared::Shared;
use super::status::LastError;
use super::store::PluginStore;
use super::{PluginError, PluginName};
use crate::log::{AppendOutcome, EventFilter, EventLog, LogError, Position, format_timestamp};
use crate::metrics::{Metrics, PluginSeries};
use crate::notify::Mailbox;
use crate::runtime::{
    Appended, CallError, EventBatch, Handled, LoadedPlugin, Notification, PluginInstance,
    PluginKind, Runtime, SandboxLimits, StateView,
};

/// Most events handed to a plugin in one call. Large batches matter when
/// catching up: state read from and written to redb once per key per batch.
pub const MAX_BATCH: usize = 10_000;
/// Attempts at one event before the plugin is marked failed.
const MAX_ATTEMPTS: u32 = 3;
/// First retry delay; each further attempt waits 4× longer.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Non-durable commits are made durable at least this often.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Outbox notifications posted to the mailbox per transaction.
const OUTBOX_PAGE: usize = 10_000;
/// Most batches one step takes through while a reactor catches up, each
/// handled while the one before it appends its outputs.
const PIPELINED_BATCHES: usize = 4;

/// What every runner works with: the log, the runtime and the limits.
#[derive(Clone)]
pub(super) struct Host {
    pub log: EventLog,
    pub runtime: Arc<Runtime>,
    pub limits: SandboxLimits,
    /// Most events a second one rebuild reads (`--replay-rate`).
    pub replay_rate: Option<u64>,
    /// The server's metrics, where each runner finds its plugin's series.
    pub metrics: Metrics,
}

/// What a step needs besides the generation: the plugin's name (for its
/// logs and its instances), the host, a notifier's mailbox, and for a
/// reactor, the runtime its appends wait on and which outputs it suppresses.
pub(super) struct StepContext<'a> {
    pub name: &'a PluginName,
    pub host: &'a Host,
    pub mailbox: Option<&'a Mailbox>,
    pub tokio: &'a tokio::runtime::Handle,
    /// A reactor's outputs caused by events at or below this position are
    /// dropped: the serving generation's checkpoint, for a rebuild, or the
    /// mark another node left; else 0.
    pub suppress_through: u64,
    /// Where a reactor records how far its outputs are, on several nodes.
    pub marks: Option<&'a dyn OutputMarks>,
}

impl<'a> StepContext<'a> {
    /// The context of the plugin `shared` describes.
    pub fn new(
        shared: &'a Shared,
        host: &'a Host,
        tokio: &'a tokio::runtime::Handle,
        (suppress_through, marks): (u64, Option<&'a dyn OutputMarks>),
    ) -> Self {
        Self {
            name: &shared.name,
            host,
            mailbox: shared.mailbox.as_deref(),
            tokio,
            suppress_through,
            marks,
        }
    }
}

/// One version of a plugin's code with its own state file and checkpoint.
pub(super) struct Generation {
    pub number: u64,
    pub plugin: LoadedPlugin,
    pub store: Arc<PluginStore>,
    pub checkpoint: u64,
    pub failure: Option<Failure>,
    pub meter: RateMeter,
    /// A reactor's outputs this generation suppressed (since it started:
    /// not kept across restarts).
    pub suppressed: u64,
    instance: Option<PluginInstance>,
    filter: EventFilter,
    /// Hand over one event at a time up to here, to pin a trap to its event.
    narrow_until: u64,
    /// The next batch stops before the event the plugin rejected, so that
    /// the events before it are committed and the failure is pinned to it.
    stop_before: Option<usize>,
    /// Largest batch this plugin is handed: halved each time a batch runs
    /// out of memory or time (large batches of a JS or Python plugin can).
    max_batch: usize,
    dirty: bool,
    last_sync: Instant,
    /// The outbox may hold notifications not yet posted to the mailbox.
    outbox_pending: bool,
    /// The next batch, read from the log while the previous one ran.
    read_ahead: Option<Batch>,
    /// The last batch's events, freed by the next read-ahead (on the other
    /// core: as records, that is five allocations per event).
    spent: Option<EventBatch>,
    /// The plugin's metrics, handed over by its runner ([`Generation::attach`]).
    series: PluginSeries,
}

/// A failure being retried, or given up on.
pub(super) struct Failure {
    pub position: u64,
    pub message: String,
    pub attempts: u32,
    at: String,
    /// When to try again; `None` once the plugin is failed.
    pub retry_at: Option<Instant>,
}

impl Failure {
    /// Whether the retries are spent: the plugin is failed until resumed or skipped.
    pub fn gave_up(&self) -> bool {
        self.retry_at.is_none()
    }

    /// Whether it is still too early to try again.
    fn waiting(&self) -> bool {
        self.retry_at.is_none_or(|at| at > Instant::now())
    }

    pub fn report(&self) -> LastError {
        LastError {
            position: self.position,
            message: self.message.clone(),
            attempts: self.attempts,
            at: self.at.clone(),
        }
    }
}

/// Whether a failed attempt counts against the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// It counts, and the retry waits its backoff.
    Counts,
    /// A wide batch is being narrowed down before anyone is blamed: it does
    /// not count, and the retry is at once.
    Narrowing,
    /// The storage under the plugin failed (a full disk): the log, the state
    /// file or the mailbox, whichever operation met it first. It does not
    /// count, and the retry comes every [`STORAGE_RETRY`] until one succeeds.
    Storage,
}

/// How often a generation retries after its storage failed.
const STORAGE_RETRY: Duration = Duration::from_secs(1);

/// Events per second over the last second or so.
#[derive(Default)]
pub(super) struct RateMeter {
    since: Option<Instant>,
    count: u64,
    pub rate: f64,
}

impl RateMeter {
    fn record(&mut self, events: u64) {
        let since = *self.since.get_or_insert_with(Instant::now);
        self.count += events;
        let elapsed = since.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            self.rate = self.count as f64 / elapsed;
            self.since = Some(Instant::now());
            self.count = 0;
        }
    }

    fn idle(&mut self) {
        if self
            .since
            .is_some_and(|s| s.elapsed() > Duration::from_secs(2))
        {
            self.rate = 0.0;
        }
    }
}

/// A batch the plugin handled, its outputs and commit still to come.
struct HandledBatch {
    writes: BTreeMap<String, Option<Vec<u8>>>,
    emitted: Vec<Notification>,
    /// A reactor's outputs, as it appended them.
    appended: Vec<Appended>,
    sources: Sources,
    checkpoint: u64,
    positions: Vec<u64>,
}

/// Why a batch was not handled: the call could not be made (with the
/// batch's first position), or the plugin refused or trapped.
enum Unhandled {
    Failed(String, u64),
    Refused(CallError, Vec<u64>),
}

/// A batch of events read from the log for a plugin.
struct Batch {
    /// The position it was read from, and the most events asked for: it is
    /// only used for a step that asks for the same.
    from: u64,
    limit: usize,
    /// The events the subscription takes, in the plugin's form.
    events: EventBatch,
    positions: Vec<u64>,
    /// One past the last event examined (the filter may have skipped some).
    next: u64,
    /// The position and time recorded of its first event.
    first: Option<(u64, u64)>,
    /// For a reactor, what its outputs need of each event.
    sources: Sources,
}

impl Batch {
    fn read(
        log: &EventLog,
        (name, plugin): (&PluginName, &LoadedPlugin),
        from: u64,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<Self, LogError> {
        let mut page = log.read_log_blocking(Position(from), limit, filter)?;
        let first = page.events.first().map(|e| (e.position.0, e.recorded_at));
        let sources = match plugin.kind() {
            PluginKind::Reactor => Sources::take(name, &mut page.events),
            PluginKind::Projection | PluginKind::Notifier => Sources::default(),
        };
        Ok(Self {
            from,
            limit,
            first,
            positions: page.events.iter().map(|e| e.position.0).collect(),
            events: plugin.batch(page.events),
            next: page.next.0,
            sources,
        })
    }
}

impl Generation {
    /// A generation of `plugin` over `store`, starting from the store's checkpoint.
    pub fn new(
        number: u64,
        plugin: LoadedPlugin,
        store: Arc<PluginStore>,
    ) -> Result<Self, PluginError> {
        let checkpoint = store.checkpoint()?;
        let filter = EventFilter {
            categories: plugin.info.subscription.categories.clone(),
            event_types: plugin.info.subscription.event_types.clone(),
            correlation_id: None,
        };
        Ok(Self {
            number,
            plugin,
            store,
            checkpoint,
            failure: None,
            meter: RateMeter::default(),
            suppressed: 0,
            instance: None,
            filter,
            narrow_until: 0,
            stop_before: None,
            max_batch: MAX_BATCH,
            dirty: false,
            last_sync: Instant::now(),
            // A crash may have left notifications between commit and mailbox.
            outbox_pending: true,
            read_ahead: None,
            spent: None,
            series: PluginSeries::detached(),
        })
    }

    /// Counts what the generation does in the plugin's `series` from now on.
    pub fn attach(&mut self, series: PluginSeries) {
        self.series = series;
    }

    /// When the event at `position` was recorded, if the batch read ahead
    /// starts with it (catching up, it is the one after the checkpoint).
    pub fn recorded_at(&self, position: u64) -> Option<u64> {
        let (first, at) = self.read_ahead.as_ref()?.first?;
        (first == position).then_some(at)
    }

    /// Makes the commits since the last durable one durable. A storage
    /// failure reopens the file, as in a step: the sync of an idle runner
    /// is as likely as a commit to be the first write a full disk refuses.
    pub fn sync(&mut self, name: &PluginName) {
        if self.dirty {
            match self.store.sync() {
                Ok(()) => self.dirty = false,
                Err(error) => self.store_failed(name, "making state durable", error),
            }
            self.last_sync = Instant::now();
        }
    }

    /// Takes one batch of at most `most` events if there is work and no
    /// failure is waiting for its retry; answers whether it did. A state
    /// file closed by a failed reopen is reopened first, work or not.
    pub fn step(&mut self, cx: &StepContext<'_>, head: u64, most: usize) -> bool {
        if self.failure.as_ref().is_some_and(Failure::waiting) {
            return false;
        }
        if !self.store.is_open() {
            self.reopen_store(cx.name, "the state file is closed after a storage failure");
            return true;
        }
        if self.checkpoint >= head {
            // A retry due with nothing to redo: a reopen lost no commit.
            self.failure = None;
            self.meter.idle();
            return false;
        }
        if self.failure.is_some() {
            self.series.retries.inc();
        }
        let limit = if self.checkpoint < self.narrow_until {
            1
        } else {
            self.stop_before.take().unwrap_or(self.max_batch).min(most)
        };
        self.process(cx, limit);
        true
    }

    /// Makes the failed event's retry due now, with its attempts reset.
    pub fn retry_now(&mut self) {
        if let Some(failure) = &mut self.failure {
            failure.attempts = 0;
            failure.retry_at = Some(Instant::now());
        }
    }

    /// Parks the event the generation gave up on and moves past it; answers
    /// its position.
    pub fn skip_failed(&mut self, name: &PluginName) -> Result<u64, PluginError> {
        let Some(failure) = self.failure.take_if(|f| f.gave_up()) else {
            return Err(PluginError::Conflict(
                "nothing to skip: the plugin has not failed".into(),
            ));
        };
        self.store.park(failure.position, &failure.message)?;
        self.checkpoint = failure.position;
        tracing::warn!(plugin = %name, position = failure.position, "event skipped and parked: {}", failure.message);
        Ok(failure.position)
    }

    /// Reads the next batch after the checkpoint, hands it to the plugin,
    /// and commits its writes, its notifications and the new checkpoint in
    /// one transaction: the one place a plugin's checkpoint moves (apart
    /// from an operator's skip).
    fn process(&mut self, cx: &StepContext<'_>, limit: usize) {
        if let Some(batch) = self.handle_next(cx, limit) {
            self.finish(cx, batch, limit);
        }
    }

    /// Reads and handles the next batch; `None` when there is nothing left
    /// to finish (a failure was recorded, or a batch the subscription takes
    /// nothing of was committed).
    fn handle_next(&mut self, cx: &StepContext<'_>, limit: usize) -> Option<HandledBatch> {
        let from = self.checkpoint + 1;
        let log = &cx.host.log;
        let batch = match self.next_batch((log, cx.name), from, limit) {
            Ok(batch) => batch,
            Err(error) => {
                let attempt = if log_outage(log, &error) {
                    Attempt::Storage
                } else {
                    Attempt::Counts
                };
                self.fail(cx.name, from, format!("reading the log: {error}"), attempt);
                return None;
            }
        };
        if batch.next <= from {
            // Not one event readable below the head: a stopped log holds
            // the last groups in its WAL alone until it reopens.
            let message = format!("the log shows no event at {from} yet");
            self.fail(cx.name, from, message, Attempt::Storage);
            return None;
        }
        // Events the subscription skips still advance the checkpoint.
        let checkpoint = batch.next.saturating_sub(1).max(self.checkpoint);
        if batch.positions.is_empty() {
            self.commit(cx.name, BTreeMap::new(), Vec::new(), checkpoint, 0);
            return None;
        }
        let view = match self.store.view() {
            Ok(view) => view,
            Err(error) => {
                self.store_failed(cx.name, "reading state", error);
                return None;
            }
        };
        match self.handle_batch(cx, batch, view, checkpoint, limit) {
            Ok(handled) => Some(handled),
            Err(Unhandled::Failed(message, first)) => {
                self.fail(cx.name, first, message, Attempt::Counts);
                None
            }
            Err(Unhandled::Refused(error, positions)) => {
                self.call_failed(cx.name, error, &positions);
                None
            }
        }
    }

    /// Hands a batch read from the log to the plugin over `view`.
    fn handle_batch(
        &mut self,
        cx: &StepContext<'_>,
        batch: Batch,
        view: StateView,
        checkpoint: u64,
        limit: usize,
    ) -> Result<HandledBatch, Unhandled> {
        let Batch {
            events,
            positions,
            sources,
            ..
        } = batch;
        let first = positions.first().copied().unwrap_or(checkpoint);
        let more = positions.len() >= limit && cx.host.log.head().0 > checkpoint;
        let (handled, memory_peak) = self
            .handle(cx, events, view, checkpoint, limit, more)
            .map_err(|message| Unhandled::Failed(message, first))?;
        if let Err(error) = handled.result {
            return Err(Unhandled::Refused(error, positions));
        }
        self.recycle_if_large(cx, memory_peak);
        Ok(HandledBatch {
            writes: handled.state.writes,
            emitted: handled.emitted,
            appended: handled.appended,
            sources,
            checkpoint,
            positions,
        })
    }

    /// Appends a handled batch's outputs, then commits it. While a
    /// reactor's outputs go to the log, the batch read ahead is handled
    /// over the state this one wrote, so that the plugin and the log work
    /// at once; each batch still commits only once its own outputs are in
    /// the log, and one whose outputs are refused takes the next with it.
    fn finish(&mut self, cx: &StepContext<'_>, mut batch: HandledBatch, limit: usize) {
        for round in 1..=PIPELINED_BATCHES {
            let mut outputs = match self.outputs_of(cx, &mut batch) {
                Ok(outputs) => outputs,
                Err(failure) => return self.outputs_failed(cx, failure, &batch.positions),
            };
            // A rebuild may suppress every output: then there is nothing to append.
            let to_append = outputs.as_mut().filter(|o| !o.appends.is_empty());
            let appending = to_append.map(|outputs| {
                let appends = std::mem::take(&mut outputs.appends);
                let log = cx.host.log.clone();
                cx.tokio.spawn(async move { log.append_all(appends).await })
            });
            let next = match appending.is_some() && round < PIPELINED_BATCHES {
                true => self.handle_ahead(cx, limit, &batch),
                false => None,
            };
            let suppressed = outputs.as_ref().map_or(0, |o| o.suppressed);
            if let (Some(appending), Some(outputs)) = (appending, &outputs) {
                let appended = cx.tokio.block_on(appending).unwrap_or_else(|error| {
                    Err(LogError::Internal(format!(
                        "the append task failed: {error}"
                    )))
                });
                if let Err(failure) = self.outputs_appended(cx, appended, outputs, batch.checkpoint)
                {
                    return self.outputs_failed(cx, failure, &batch.positions);
                }
            }
            let checkpoint = batch.checkpoint;
            self.commit_handled(
                cx,
                batch.writes,
                batch.emitted,
                checkpoint,
                &batch.positions,
            );
            if self.checkpoint != checkpoint {
                return;
            }
            self.suppressed += suppressed;
            self.series.outputs_suppressed.inc_by(suppressed);
            match next {
                Some(next) => batch = next,
                None => return,
            }
        }
    }

    /// The batch read ahead after `batch`, handled over `batch`'s writes
    /// (not committed yet); `None` if there is none, or it failed: the next
    /// step reads and handles it again, and records what it does then.
    fn handle_ahead(
        &mut self,
        cx: &StepContext<'_>,
        limit: usize,
        batch: &HandledBatch,
    ) -> Option<HandledBatch> {
        let from = batch.checkpoint + 1;
        let ahead = self.read_ahead.as_ref()?;
        if ahead.from != from || ahead.limit != limit || ahead.positions.is_empty() {
            return None;
        }
        let mut view = self.store.view().ok()?;
        view.writes = batch.writes.clone();
        let ahead = self.read_ahead.take()?;
        let checkpoint = ahead.next.saturating_sub(1).max(batch.checkpoint);
        match self.handle_batch(cx, ahead, view, checkpoint, limit) {
            Ok(handled) => Some(handled),
            Err(Unhandled::Refused(error, _)) if error.poisons_instance() => {
                self.instance = None;
                None
            }
            Err(_) => None,
        }
    }

    /// A reactor's outputs of `batch`, with their ids and lineage, if it
    /// appended any.
    fn outputs_of(
        &mut self,
        cx: &StepContext<'_>,
        batch: &mut HandledBatch,
    ) -> Result<Option<reactor::Outputs>, Option<OutputFailure>> {
        if batch.appended.is_empty() {
            return Ok(None);
        }
        let appended = std::mem::take(&mut batch.appended);
        let outputs = reactor::outputs(cx.name, appended, &batch.sources, cx.suppress_through)?;
        Ok(Some(outputs))
    }

    /// What the log answered to a batch's outputs: on several nodes, the
    /// mark then records that they are in the log through `checkpoint`. A
    /// refusal that names a source is that event's failure; the log's own
    /// trouble (`Err(None)`) is recorded here and retried as storage.
    fn outputs_appended(
        &mut self,
        cx: &StepContext<'_>,
        appended: Result<Vec<AppendOutcome>, LogError>,
        outputs: &reactor::Outputs,
        checkpoint: u64,
    ) -> Result<(), Option<OutputFailure>> {
        match appended {
            Ok(_) => {
                let count = outputs.ids.len() as u64;
                self.series.outputs_appended.inc_by(count);
                self.record_mark(cx, checkpoint)
            }
            Err(error) => Err(self.outputs_refused(cx, &error, outputs)),
        }
    }

    /// A batch whose outputs failed: the source a failure names is blamed
    /// (`None`: the failure is recorded already).
    fn outputs_failed(
        &mut self,
        cx: &StepContext<'_>,
        failure: Option<OutputFailure>,
        positions: &[u64],
    ) {
        if let Some(OutputFailure { index, message }) = failure {
            let error = CallError::Rejected {
                index: index as u32,
                message,
            };
            self.call_failed(cx.name, error, positions);
        }
    }

    /// On several nodes, records that the reactor's outputs are in the log
    /// through `checkpoint`; a failure is recorded here and retried as
    /// storage (redone, the batch's outputs are recognised: just appended).
    fn record_mark(
        &mut self,
        cx: &StepContext<'_>,
        checkpoint: u64,
    ) -> Result<(), Option<OutputFailure>> {
        let Some(marks) = cx.marks else {
            return Ok(());
        };
        let recorded = cx
            .tokio
            .block_on(marks.record(cx.name.as_str(), checkpoint));
        recorded.map_err(|error| {
            let message = format!("recording the reactor's mark: {error}");
            self.fail(cx.name, self.checkpoint + 1, message, Attempt::Storage);
            None
        })
    }

    /// What the log's refusal of a batch's outputs means: the failure of the
    /// source it names, or (`None`, recorded here) a failure of the batch.
    fn outputs_refused(
        &mut self,
        cx: &StepContext<'_>,
        error: &LogError,
        outputs: &reactor::Outputs,
    ) -> Option<OutputFailure> {
        if let Some(failure) = reactor::refused(error, (&outputs.ids, &outputs.sources)) {
            return Some(failure);
        }
        // What the reactor asked that the log refuses counts; the log's own
        // trouble (full, overloaded, electing a leader, shutting down) is
        // retried until it passes.
        let attempt = match error {
            LogError::TooManyEvents { .. }
            | LogError::InvalidName { .. }
            | LogError::ReservedId(_)
            | LogError::DuplicateId(_)
            | LogError::NoEvents(_) => Attempt::Counts,
            _ => Attempt::Storage,
        };
        let message = format!("appending the batch's outputs: {error}");
        self.fail(cx.name, self.checkpoint + 1, message, attempt);
        None
    }

    /// The batch read ahead, if it was read for this step; else a fresh read.
    fn next_batch(
        &mut self,
        (log, name): (&EventLog, &PluginName),
        from: u64,
        limit: usize,
    ) -> Result<Batch, LogError> {
        match self
            .read_ahead
            .take()
            .filter(|b| b.from == from && b.limit == limit)
        {
            Some(batch) => Ok(batch),
            None => Batch::read(log, (name, &self.plugin), from, limit, &self.filter),
        }
    }

    /// Hands `events` to the plugin; answers what it did and its memory
    /// peak. When `more` (catching up), another core reads and decodes the
    /// batch after `checkpoint` meanwhile: on a replay, that is a sizeable
    /// share of the work (`docs/design.md#notes`). Following the head live, batches are small and the next
    /// one may not exist yet, so it is not worth a thread.
    fn handle(
        &mut self,
        cx: &StepContext<'_>,
        events: EventBatch,
        view: StateView,
        checkpoint: u64,
        limit: usize,
        more: bool,
    ) -> Result<(Handled, usize), String> {
        if self.instance.is_none() {
            let label = Arc::from(cx.name.as_str());
            let instance = cx
                .host
                .runtime
                .instantiate(&self.plugin, label, cx.host.limits)
                .map_err(|e| e.to_string())?;
            self.instance = Some(instance);
        }
        let Some(instance) = self.instance.as_mut() else {
            return Err("the plugin has no instance".into());
        };
        let (log, filter, plugin, spent) =
            (&cx.host.log, &self.filter, &self.plugin, &mut self.spent);
        let (handled, read_ahead) = std::thread::scope(|scope| {
            let reader = more.then(|| {
                std::thread::Builder::new()
                    .name(format!("read-{}", cx.name))
                    .spawn_scoped(scope, || {
                        drop(spent.take());
                        Batch::read(log, (cx.name, plugin), checkpoint + 1, limit, filter)
                    })
            });
            let started = Instant::now();
            let handled = instance.handle(&events, view);
            self.series
                .handle_seconds
                .observe(started.elapsed().as_secs_f64());
            // A reader that could not start or failed leaves the next batch
            // to be read on this thread.
            let read_ahead = reader.and_then(|r| r.ok()?.join().ok()?.ok());
            (handled, read_ahead)
        });
        let memory_peak = instance.memory_peak();
        self.series.raise_memory_peak(memory_peak);
        self.read_ahead = read_ahead;
        // Kept for the next read-ahead to free, if there is one coming.
        self.spent = more.then_some(events);
        Ok((handled, memory_peak))
    }

    /// A runtime whose heap only grows (a JS or Python interpreter between
    /// collections) gets a fresh instance before it hits the cap.
    fn recycle_if_large(&mut self, cx: &StepContext<'_>, memory_peak: usize) {
        if memory_peak > cx.host.limits.memory_bytes / 4 * 3 {
            tracing::debug!(plugin = %cx.name, memory_peak, "recycling the instance");
            self.instance = None;
            self.series.recycled_near_cap.inc();
        }
    }

    /// Commits a handled batch. A replay re-emits history: what the mailbox
    /// already has is dropped first.
    fn commit_handled(
        &mut self,
        cx: &StepContext<'_>,
        writes: BTreeMap<String, Option<Vec<u8>>>,
        emitted: Vec<Notification>,
        checkpoint: u64,
        positions: &[u64],
    ) {
        let emitted = match cx.mailbox {
            None => emitted,
            Some(mailbox) => match mailbox.drop_known(emitted) {
                Ok(emitted) => emitted,
                Err(error) => {
                    let attempt = if error.is_storage_failure() {
                        reopen_mailbox(cx.name, mailbox);
                        Attempt::Storage
                    } else {
                        Attempt::Counts
                    };
                    let message = format!("reading the mailbox: {error}");
                    return self.fail(cx.name, positions[0], message, attempt);
                }
            },
        };
        self.commit(cx.name, writes, emitted, checkpoint, positions.len() as u64);
    }

    /// Decides whom a failed call blames, and how the batch is retried.
    fn call_failed(&mut self, name: &PluginName, error: CallError, positions: &[u64]) {
        if error.poisons_instance() {
            self.instance = None;
            self.series.recycled_after_trap.inc();
        }
        let count = positions.len();
        let first = positions[0];
        match &error {
            CallError::Rejected { index, .. } => {
                let index = *index as usize;
                let position = positions.get(index).copied().unwrap_or(first);
                // The events before the rejected one are fine: commit them
                // first (at once), then blame the rejected one alone.
                let attempt = if index == 0 || index >= count {
                    Attempt::Counts
                } else {
                    self.stop_before = Some(index);
                    Attempt::Narrowing
                };
                self.fail(name, position, error.to_string(), attempt);
            }
            CallError::Memory(_) | CallError::Deadline(_) | CallError::TooManyAppends(_)
                if count > 1 =>
            {
                // Maybe only the batch was too big: halve it and retry at once.
                self.max_batch = count / 2;
                tracing::info!(plugin = %name, batch = self.max_batch, "batch too large ({error}); retrying with smaller batches");
                self.fail(name, first, error.to_string(), Attempt::Narrowing);
            }
            _ if count > 1 => {
                // A trap does not say which event caused it: retry one event at a time.
                self.narrow_until = positions[count - 1];
                tracing::debug!(plugin = %name, "batch trapped ({error}); retrying event by event");
                self.fail(name, first, error.to_string(), Attempt::Narrowing);
            }
            _ => self.fail(name, first, error.to_string(), Attempt::Counts),
        }
    }

    fn commit(
        &mut self,
        name: &PluginName,
        writes: BTreeMap<String, Option<Vec<u8>>>,
        emitted: Vec<Notification>,
        checkpoint: u64,
        handled: u64,
    ) {
        let durable = self.last_sync.elapsed() >= SYNC_INTERVAL;
        match self.store.commit(writes, &emitted, checkpoint, durable) {
            Ok(()) => {
                self.outbox_pending |= !emitted.is_empty();
                self.checkpoint = checkpoint;
                self.failure = None;
                self.meter.record(handled.max(1));
                self.series.events_handled.inc_by(handled);
                if durable {
                    self.dirty = false;
                    self.last_sync = Instant::now();
                } else {
                    self.dirty = true;
                }
            }
            Err(error) => self.store_failed(name, "committing state", error),
        }
    }

    /// Records a failed operation on the state file. After its first I/O
    /// error redb refuses every operation on the file, reads included, so
    /// a storage failure may surface in any of them (a commit, the sync of
    /// an idle runner, the read of the next batch's state), whichever
    /// comes first: each reopens the file. Any other failure counts.
    fn store_failed(&mut self, name: &PluginName, what: &str, error: PluginError) {
        let message = format!("{what}: {error}");
        if error.is_storage_failure() || !self.store.is_open() {
            self.reopen_store(name, &message);
        } else {
            self.fail(name, self.checkpoint + 1, message, Attempt::Counts);
        }
    }

    /// After a storage failure: reopens the state file and retries a second
    /// later, the attempt not counted. Reopened, the file holds its last
    /// durable commit: state and checkpoint went back together, and the
    /// events since are done again (their notifications' keys are accepted
    /// once). Nothing in it then waits for a sync, and its outbox may again
    /// hold what had been posted.
    fn reopen_store(&mut self, name: &PluginName, failure: &str) {
        let reopened = self.store.reopen();
        // Whether or not it opened, the old handle's commits since the last
        // durable one are gone.
        self.dirty = false;
        self.last_sync = Instant::now();
        match reopened {
            Ok(durable) => {
                self.checkpoint = durable;
                self.outbox_pending = true;
            }
            Err(error) => {
                tracing::warn!(plugin = %name, %error, "cannot reopen the state file yet")
            }
        }
        self.fail(name, self.checkpoint + 1, failure.into(), Attempt::Storage);
    }

    /// Records a failed attempt at `position` and when to retry it.
    fn fail(&mut self, name: &PluginName, position: u64, mut message: String, attempt: Attempt) {
        if attempt == Attempt::Storage {
            message.push_str("; retrying every second");
        }
        self.series.failures.inc();
        let counted = u32::from(attempt == Attempt::Counts);
        let attempts = match &self.failure {
            Some(f) if f.position == position => f.attempts + counted,
            _ => counted,
        };
        let retry_at = if attempts >= MAX_ATTEMPTS {
            tracing::error!(plugin = %name, position, attempts, "plugin failed: {message}");
            None
        } else {
            tracing::warn!(plugin = %name, position, attempts, "batch failed, will retry: {message}");
            let backoff = match attempt {
                Attempt::Counts => FIRST_BACKOFF * 4u32.pow(attempts.saturating_sub(1)),
                Attempt::Narrowing => Duration::ZERO,
                Attempt::Storage => STORAGE_RETRY,
            };
            Some(Instant::now() + backoff)
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.failure = Some(Failure {
            position,
            message,
            attempts,
            at: format_timestamp(now),
            retry_at,
        });
    }

    /// Moves the outbox into the plugin's mailbox: the mailbox commits
    /// (durably) first, then the outbox is cleared, so a crash between the
    /// two only makes the mailbox see keys it already has.
    pub fn post_outbox(&mut self, name: &PluginName, mailbox: &Mailbox) {
        while self.outbox_pending {
            let posted = self.store.outbox(OUTBOX_PAGE).and_then(|page| {
                let Some(&(last, _)) = page.last() else {
                    return Ok(false);
                };
                let notifications: Vec<Notification> = page.into_iter().map(|(_, n)| n).collect();
                mailbox.accept(&notifications)?;
                self.store.clear_outbox(last)?;
                Ok(true)
            });
            match posted {
                Ok(true) => {}
                Ok(false) => self.outbox_pending = false,
                Err(error) => {
                    // Left pending: the runner's next round tries again.
                    tracing::error!(plugin = %name, %error, "cannot post notifications to the mailbox");
                    match error {
                        PluginError::Notify(failure) if failure.is_storage_failure() => {
                            reopen_mailbox(name, mailbox);
                        }
                        PluginError::Notify(_) => {}
                        error => self.store_failed(name, "posting notifications", error),
                    }
                    return;
                }
            }
        }
    }
}

/// Whether a failed read of the log is the log's outage (stopped after a
/// storage failure, or reopening), not the plugin's doing: the log reopens
/// by itself.
fn log_outage(log: &EventLog, error: &LogError) -> bool {
    error.is_storage_failure()
        || matches!(error, LogError::Unavailable(_))
        || log.storage_failure().is_some()
}

/// Reopens a notifier's mailbox after a storage failure; a reopen that
/// fails now is tried again at the next failure.
fn reopen_mailbox(name: &PluginName, mailbox: &Mailbox) {
    if let Err(error) = mailbox.reopen() {
        tracing::warn!(plugin = %name, %error, "cannot reopen the mailbox yet");
    }
}
