//! One runner thread per plugin: feeds it batches of events after its
//! checkpoint, commits each batch's state with the new checkpoint, retries and
//! fails per the failure policy, and runs a rebuild from position 0 beside
//! the serving version until it can swap in.
//!
//! The thread blocks in wasmtime calls, so it is a plain thread, not a task;
//! it waits for new events on the log's head watch, never on a timer.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::registry::{Manifest, Serving};
use super::status::{LastError, PluginStatus, RebuildStatus, RunState};
use super::store::PluginStore;
use super::{PluginError, PluginName};
use crate::log::{EventFilter, EventLog, LogError, Position, format_timestamp};
use crate::notify::Mailbox;
use crate::runtime::{
    CallError, Compiled, EventBatch, Handled, LoadedPlugin, Notification, PluginInstance, Runtime,
    SandboxLimits,
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

/// What the registry asks of a runner.
pub(super) enum Control {
    /// Stop handling events until `Resume`.
    Pause,
    /// Go on after `Pause`, or retry now after a failure.
    Resume,
    /// Pass over the event that failed, recording it as parked.
    Skip {
        reply: oneshot::Sender<Result<u64, PluginError>>,
    },
    /// Build this generation from position 0 beside the serving one, then swap.
    Rebuild(Box<Generation>),
    /// Make everything durable and stop.
    Stop,
}

/// A failure being retried, or given up on.
struct Failure {
    position: u64,
    message: String,
    attempts: u32,
    at: String,
    /// When to try again; `None` once the plugin is failed.
    retry_at: Option<Instant>,
}

impl Failure {
    fn gave_up(&self) -> bool {
        self.retry_at.is_none()
    }

    fn report(&self) -> LastError {
        LastError {
            position: self.position,
            message: self.message.clone(),
            attempts: self.attempts,
            at: self.at.clone(),
        }
    }
}

/// Events per second over the last second or so.
#[derive(Default)]
struct RateMeter {
    since: Option<Instant>,
    count: u64,
    rate: f64,
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

/// One version of a plugin's code with its own state file and checkpoint.
pub(super) struct Generation {
    pub number: u64,
    pub plugin: LoadedPlugin,
    pub store: Arc<PluginStore>,
    pub checkpoint: u64,
    instance: Option<PluginInstance>,
    filter: EventFilter,
    failure: Option<Failure>,
    /// Hand over one event at a time up to here, to pin a trap to its event.
    narrow_until: u64,
    /// The next batch stops before the event the plugin rejected, so that
    /// the events before it are committed and the failure is pinned to it.
    stop_before: Option<usize>,
    /// Largest batch this plugin is handed: halved each time a batch runs
    /// out of memory or time (large batches of a JS or Python plugin can).
    max_batch: usize,
    meter: RateMeter,
    dirty: bool,
    last_sync: Instant,
    /// The outbox may hold notifications not yet posted to the mailbox.
    outbox_pending: bool,
    /// The next batch, read from the log while the previous one ran.
    read_ahead: Option<Batch>,
    /// The last batch's events, freed by the next read-ahead (on the other
    /// core: as records, that is five allocations per event).
    spent: Option<EventBatch>,
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
}

impl Batch {
    fn read(
        log: &EventLog,
        plugin: &LoadedPlugin,
        from: u64,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<Self, LogError> {
        let page = log.read_log_blocking(Position(from), limit, filter)?;
        Ok(Self {
            from,
            limit,
            positions: page.events.iter().map(|e| e.position.0).collect(),
            events: plugin.batch(page.events),
            next: page.next.0,
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
        };
        Ok(Self {
            number,
            plugin,
            store,
            checkpoint,
            instance: None,
            filter,
            failure: None,
            narrow_until: 0,
            stop_before: None,
            max_batch: MAX_BATCH,
            meter: RateMeter::default(),
            dirty: false,
            last_sync: Instant::now(),
            // A crash may have left notifications between commit and mailbox.
            outbox_pending: true,
            read_ahead: None,
            spent: None,
        })
    }

    fn sync(&mut self) {
        if self.dirty {
            match self.store.sync() {
                Ok(()) => self.dirty = false,
                Err(error) => tracing::error!(%error, "cannot make plugin state durable"),
            }
            self.last_sync = Instant::now();
        }
    }
}

/// What the runner shares with the registry and the API.
pub(super) struct Shared {
    pub name: PluginName,
    pub status: RwLock<PluginStatus>,
    pub serving: RwLock<Serving>,
    /// A notifier's mailbox (`None` for a projection).
    pub mailbox: Option<Arc<Mailbox>>,
}

/// What every runner works with: the log, the runtime and the limits.
#[derive(Clone)]
pub(super) struct Host {
    pub log: EventLog,
    pub runtime: Arc<Runtime>,
    pub limits: SandboxLimits,
}

/// The runner: owns the serving generation and, during a rebuild, the next one.
pub(super) struct Runner {
    shared: Arc<Shared>,
    dir: std::path::PathBuf,
    log: EventLog,
    runtime: Arc<Runtime>,
    limits: SandboxLimits,
    control: mpsc::UnboundedReceiver<Control>,
    live: Generation,
    rebuild: Option<Generation>,
    paused: bool,
    pending: VecDeque<Control>,
    head: watch::Receiver<Position>,
}

impl Runner {
    /// A runner for the plugin in `dir`, serving `live` and building `rebuild`.
    pub fn new(
        shared: Arc<Shared>,
        dir: std::path::PathBuf,
        host: Host,
        control: mpsc::UnboundedReceiver<Control>,
        live: Generation,
        rebuild: Option<Generation>,
    ) -> Self {
        let head = host.log.watch_head();
        Self {
            shared,
            dir,
            log: host.log,
            runtime: host.runtime,
            limits: host.limits,
            control,
            live,
            rebuild,
            paused: false,
            pending: VecDeque::new(),
            head,
        }
    }

    /// Runs until told to stop (or until the registry goes away).
    pub fn run(mut self, wait: tokio::runtime::Handle) {
        loop {
            while let Some(control) = self
                .pending
                .pop_front()
                .or_else(|| self.control.try_recv().ok())
            {
                if !self.apply(control) {
                    self.live.sync();
                    if let Some(rebuild) = &mut self.rebuild {
                        rebuild.sync();
                    }
                    return;
                }
            }
            let head = self.head.borrow_and_update().0;
            let mut worked = false;
            if !self.paused {
                worked |= self.step(false, head);
                self.post_outbox();
                worked |= self.step(true, head);
                self.try_swap(head);
            }
            self.publish(head);
            if !worked {
                self.live.sync();
                if let Some(rebuild) = &mut self.rebuild {
                    rebuild.sync();
                }
                self.wait(&wait);
            }
        }
    }

    /// Blocks until a new event, an operator command, or a due retry.
    fn wait(&mut self, handle: &tokio::runtime::Handle) {
        let retry_at = [Some(&self.live), self.rebuild.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|g| g.failure.as_ref().and_then(|f| f.retry_at))
            .min();
        let head = &mut self.head;
        let control = &mut self.control;
        let received = handle.block_on(async {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    // Wake now and then to refresh the rate shown in the status.
                    None => tokio::time::sleep(Duration::from_secs(2)).await,
                }
            };
            tokio::select! {
                changed = head.changed() => { let _ = changed; None }
                message = control.recv() => Some(message.unwrap_or(Control::Stop)),
                () = retry => None,
            }
        });
        if let Some(message) = received {
            self.pending.push_back(message);
        }
    }

    /// Applies an operator command; false to stop.
    fn apply(&mut self, control: Control) -> bool {
        match control {
            Control::Pause => self.paused = true,
            Control::Resume => {
                self.paused = false;
                for generation in [Some(&mut self.live), self.rebuild.as_mut()]
                    .into_iter()
                    .flatten()
                {
                    if let Some(failure) = &mut generation.failure {
                        failure.attempts = 0;
                        failure.retry_at = Some(Instant::now());
                    }
                }
            }
            Control::Skip { reply } => {
                let _ = reply.send(self.skip());
            }
            Control::Rebuild(generation) => {
                if let Some(old) = self.rebuild.replace(*generation) {
                    remove_generation(old);
                }
                self.save_manifest();
            }
            Control::Stop => return false,
        }
        true
    }

    fn skip(&mut self) -> Result<u64, PluginError> {
        let generation = if self.live.failure.as_ref().is_some_and(Failure::gave_up) {
            &mut self.live
        } else if let Some(rebuild) = self
            .rebuild
            .as_mut()
            .filter(|g| g.failure.as_ref().is_some_and(Failure::gave_up))
        {
            rebuild
        } else {
            return Err(PluginError::Conflict(
                "nothing to skip: the plugin has not failed".into(),
            ));
        };
        let Some(failure) = generation.failure.take() else {
            return Err(PluginError::Internal("failure vanished".into()));
        };
        generation.store.park(failure.position, &failure.message)?;
        generation.checkpoint = failure.position;
        tracing::warn!(plugin = %self.shared.name, position = failure.position, "event skipped and parked: {}", failure.message);
        Ok(failure.position)
    }

    /// One batch for the live generation (`rebuild == false`) or the rebuild.
    fn step(&mut self, rebuild: bool, head: u64) -> bool {
        let generation = if rebuild {
            match self.rebuild.as_mut() {
                Some(g) => g,
                None => return false,
            }
        } else {
            &mut self.live
        };
        if generation.checkpoint >= head {
            generation.meter.idle();
            return false;
        }
        if let Some(failure) = &generation.failure
            && failure.retry_at.is_none_or(|at| at > Instant::now())
        {
            return false;
        }
        let limit = if generation.checkpoint < generation.narrow_until {
            1
        } else {
            generation
                .stop_before
                .take()
                .unwrap_or(generation.max_batch)
        };
        process(
            &self.shared.name,
            &self.log,
            &self.runtime,
            self.limits,
            self.shared.mailbox.as_deref(),
            generation,
            limit,
        );
        true
    }

    /// Posts what the serving generation's outbox holds to the mailbox.
    fn post_outbox(&mut self) {
        if let Some(mailbox) = &self.shared.mailbox {
            post_outbox(&self.shared.name, mailbox, &mut self.live);
        }
    }

    /// Swaps a rebuild that has caught up in for the serving generation.
    fn try_swap(&mut self, head: u64) {
        let ready = self
            .rebuild
            .as_ref()
            .is_some_and(|r| r.checkpoint >= head && r.failure.is_none());
        if !ready {
            return;
        }
        let Some(mut next) = self.rebuild.take() else {
            return;
        };
        // What the old version emitted goes out before it is removed.
        self.post_outbox();
        next.sync();
        let old = std::mem::replace(&mut self.live, next);
        // The new version's outbox holds only keys never sent before.
        self.post_outbox();
        if let Ok(mut serving) = self.shared.serving.write() {
            *serving = Serving {
                plugin: self.live.plugin.clone(),
                store: self.live.store.clone(),
                generation: self.live.number,
            };
        }
        self.save_manifest();
        tracing::info!(plugin = %self.shared.name, generation = self.live.number, checkpoint = self.live.checkpoint, "rebuild caught up; swapped in");
        let old_hash = old.plugin.hash.clone();
        remove_generation(old);
        if old_hash != self.live.plugin.hash {
            let _ = std::fs::remove_file(self.dir.join(format!("{old_hash}.wasm")));
        }
    }

    fn save_manifest(&self) {
        let manifest = Manifest {
            generation: self.live.number,
            hash: self.live.plugin.hash.clone(),
            rebuild: self
                .rebuild
                .as_ref()
                .map(|r| (r.number, r.plugin.hash.clone())),
        };
        if let Err(error) = manifest.save(&self.dir) {
            tracing::error!(plugin = %self.shared.name, %error, "cannot save the plugin's manifest");
        }
    }

    fn publish(&mut self, head: u64) {
        let live = &self.live;
        let state = if self.paused {
            RunState::Paused
        } else if live.failure.as_ref().is_some_and(Failure::gave_up) {
            RunState::Failed
        } else if self.rebuild.is_some() {
            RunState::Replaying
        } else if live.checkpoint < head {
            RunState::CatchingUp
        } else {
            RunState::Running
        };
        let rebuild = self.rebuild.as_ref().map(|r| RebuildStatus {
            generation: r.number,
            hash: r.plugin.hash.clone(),
            checkpoint: r.checkpoint,
            events_per_sec: r.meter.rate,
            eta_secs: (r.meter.rate > 0.0)
                .then(|| head.saturating_sub(r.checkpoint) as f64 / r.meter.rate),
            last_error: r.failure.as_ref().map(Failure::report),
        });
        if let Ok(mut status) = self.shared.status.write() {
            status.state = state;
            status.version = live.plugin.info.version.clone();
            status.wit = live.plugin.form.wit_version().into();
            status.encoding = live.plugin.form.encoding().into();
            status.hash = live.plugin.hash.clone();
            status.generation = live.number;
            status.checkpoint = live.checkpoint;
            status.events_per_sec = live.meter.rate;
            status.compiled = compiled_word(live.plugin.compiled).into();
            status.compile_ms = compile_ms(live.plugin.compiled);
            status.last_error = live.failure.as_ref().map(Failure::report);
            status.rebuild = rebuild;
        }
    }
}

/// `cache` or `compiled`.
pub(super) fn compiled_word(compiled: Compiled) -> &'static str {
    match compiled {
        Compiled::Cached => "cache",
        Compiled::Fresh(_) => "compiled",
    }
}

/// Milliseconds a compile took (0 when cached).
pub(super) fn compile_ms(compiled: Compiled) -> u64 {
    match compiled {
        Compiled::Cached => 0,
        Compiled::Fresh(d) => d.as_millis() as u64,
    }
}

fn remove_generation(generation: Generation) {
    let path = generation.store.path().to_path_buf();
    drop(generation);
    // Readers may still hold the old store for a moment; on Unix the file
    // goes away when the last of them closes it.
    if let Err(error) = std::fs::remove_file(&path) {
        tracing::warn!(%error, path = %path.display(), "cannot remove an old state file");
    }
}

/// Moves a generation's outbox into the plugin's mailbox: the mailbox
/// commits (durably) first, then the outbox is cleared, so a crash between
/// the two only makes the mailbox see keys it already has.
fn post_outbox(name: &PluginName, mailbox: &Mailbox, generation: &mut Generation) {
    while generation.outbox_pending {
        let posted = generation.store.outbox(OUTBOX_PAGE).and_then(|page| {
            let Some(&(last, _)) = page.last() else {
                return Ok(false);
            };
            let notifications: Vec<Notification> = page.into_iter().map(|(_, n)| n).collect();
            mailbox.accept(&notifications)?;
            generation.store.clear_outbox(last)?;
            Ok(true)
        });
        match posted {
            Ok(true) => {}
            Ok(false) => generation.outbox_pending = false,
            Err(error) => {
                // Left pending: the next step tries again.
                tracing::error!(plugin = %name, %error, "cannot post notifications to the mailbox");
                return;
            }
        }
    }
}

/// Reads the next batch after the generation's checkpoint, hands it to the
/// plugin, and commits its writes, its notifications and the new checkpoint
/// in one transaction: the one place a plugin's checkpoint moves (apart
/// from an operator's skip).
fn process(
    name: &PluginName,
    log: &EventLog,
    runtime: &Runtime,
    limits: SandboxLimits,
    mailbox: Option<&Mailbox>,
    generation: &mut Generation,
    limit: usize,
) {
    let from = generation.checkpoint + 1;
    let ahead = generation
        .read_ahead
        .take()
        .filter(|b| b.from == from && b.limit == limit);
    let batch = match ahead.map_or_else(
        || Batch::read(log, &generation.plugin, from, limit, &generation.filter),
        Ok,
    ) {
        Ok(batch) => batch,
        Err(error) => {
            return fail(
                name,
                generation,
                from,
                format!("reading the log: {error}"),
                true,
            );
        }
    };
    // Events the subscription skips still advance the checkpoint.
    let checkpoint = batch.next.saturating_sub(1).max(generation.checkpoint);
    let Batch {
        events, positions, ..
    } = batch;
    if positions.is_empty() {
        return commit(
            name,
            generation,
            Default::default(),
            Vec::new(),
            checkpoint,
            0,
        );
    }
    if generation.instance.is_none() {
        match runtime.instantiate(&generation.plugin, Arc::from(name.as_str()), limits) {
            Ok(instance) => generation.instance = Some(instance),
            Err(error) => return fail(name, generation, positions[0], error.to_string(), true),
        }
    }
    let view = match generation.store.view() {
        Ok(view) => view,
        Err(error) => return fail(name, generation, positions[0], error.to_string(), true),
    };
    let Some(instance) = generation.instance.as_mut() else {
        return;
    };
    // While the plugin handles this batch, another core reads (and decodes)
    // the next one: on a replay, reading and decoding is a quarter of the work.
    let (filter, plugin) = (&generation.filter, &generation.plugin);
    let spent = &mut generation.spent;
    // Only a full batch (catching up) is worth a thread: following the head
    // live, batches are small and the next one may not exist yet.
    let more = positions.len() >= limit && log.head().0 > checkpoint;
    let (handled, read_ahead) = std::thread::scope(|scope| {
        let reader = more.then(|| {
            std::thread::Builder::new()
                .name(format!("read-{name}"))
                .spawn_scoped(scope, || {
                    drop(spent.take());
                    Batch::read(log, plugin, checkpoint + 1, limit, filter)
                })
        });
        let handled = instance.handle(&events, view);
        // A reader that could not start or failed leaves the next batch to
        // be read on this thread.
        let read_ahead = reader.and_then(|r| r.ok()?.join().ok()?.ok());
        (handled, read_ahead)
    });
    generation.read_ahead = read_ahead;
    let count = positions.len();
    // Kept for the next read-ahead to free, if there is one coming.
    generation.spent = more.then_some(events);
    let Handled {
        result,
        state,
        emitted,
    } = handled;
    let memory_peak = instance.memory_peak();
    match result {
        Ok(()) => {
            // A runtime whose heap only grows (a JS or Python interpreter
            // between collections) gets a fresh instance before it hits the cap.
            if memory_peak > limits.memory_bytes / 4 * 3 {
                tracing::debug!(plugin = %name, memory_peak, "recycling the instance");
                generation.instance = None;
            }
            // A replay re-emits history: what was already sent is dropped here.
            let emitted = match mailbox.map(|m| m.drop_known(emitted)).transpose() {
                Ok(emitted) => emitted.unwrap_or_default(),
                Err(error) => {
                    let message = format!("reading the mailbox: {error}");
                    return fail(name, generation, positions[0], message, true);
                }
            };
            commit(
                name,
                generation,
                state.writes,
                emitted,
                checkpoint,
                count as u64,
            )
        }
        Err(error) => {
            if error.poisons_instance() {
                generation.instance = None;
            }
            match &error {
                CallError::Rejected { index, .. } => {
                    let index = *index as usize;
                    let position = positions.get(index).copied().unwrap_or(positions[0]);
                    // The events before the rejected one are fine: commit
                    // them first (at once), then blame the rejected one alone.
                    let first_in_batch = index == 0 || index >= positions.len();
                    if !first_in_batch {
                        generation.stop_before = Some(index);
                    }
                    fail(
                        name,
                        generation,
                        position,
                        error.to_string(),
                        first_in_batch,
                    );
                }
                CallError::Memory(_) | CallError::Deadline(_) if count > 1 => {
                    // Maybe only the batch was too big: halve it and retry at once.
                    generation.max_batch = count / 2;
                    tracing::info!(plugin = %name, batch = generation.max_batch, "batch too large ({error}); retrying with smaller batches");
                    fail(name, generation, positions[0], error.to_string(), false);
                }
                _ if count > 1 => {
                    // A trap does not say which event caused it: retry one event at a time.
                    generation.narrow_until = *positions.last().unwrap_or(&positions[0]);
                    tracing::debug!(plugin = %name, "batch trapped ({error}); retrying event by event");
                    fail(name, generation, positions[0], error.to_string(), false);
                }
                _ => fail(name, generation, positions[0], error.to_string(), true),
            }
        }
    }
}

fn commit(
    name: &PluginName,
    generation: &mut Generation,
    writes: std::collections::BTreeMap<String, Option<Vec<u8>>>,
    emitted: Vec<Notification>,
    checkpoint: u64,
    handled: u64,
) {
    let durable = generation.last_sync.elapsed() >= SYNC_INTERVAL;
    match generation
        .store
        .commit(writes, &emitted, checkpoint, durable)
    {
        Ok(()) => {
            generation.outbox_pending |= !emitted.is_empty();
            generation.checkpoint = checkpoint;
            generation.failure = None;
            generation.meter.record(handled.max(1));
            if durable {
                generation.dirty = false;
                generation.last_sync = Instant::now();
            } else {
                generation.dirty = true;
            }
        }
        Err(error) => {
            let position = generation.checkpoint + 1;
            fail(
                name,
                generation,
                position,
                format!("committing state: {error}"),
                true,
            );
        }
    }
}

/// Records a failed attempt at `position`; `counts` is false for a wide batch
/// that will be narrowed down before anyone is blamed.
fn fail(
    name: &PluginName,
    generation: &mut Generation,
    position: u64,
    message: String,
    counts: bool,
) {
    let attempts = match &generation.failure {
        Some(f) if f.position == position => f.attempts + u32::from(counts),
        _ => u32::from(counts),
    };
    let retry_at = if attempts >= MAX_ATTEMPTS {
        tracing::error!(plugin = %name, position, attempts, "plugin failed: {message}");
        None
    } else {
        tracing::warn!(plugin = %name, position, attempts, "batch failed, will retry: {message}");
        let backoff = FIRST_BACKOFF * 4u32.pow(attempts.saturating_sub(1));
        Some(Instant::now() + if counts { backoff } else { Duration::ZERO })
    };
    let at = format_timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
    );
    generation.failure = Some(Failure {
        position,
        message,
        attempts,
        at,
        retry_at,
    });
}
