//! One runner thread per plugin: steps its serving generation and, during a
//! rebuild, the next one (`generation.rs`), applies the operator's commands,
//! swaps a rebuild in once it has caught up, and publishes the status and
//! the plugin's metrics (`eventfold_plugin_*`).
//!
//! The thread blocks in wasmtime calls, so it is a plain thread, not a task;
//! it waits for new events on the log's head watch, never on a timer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use super::PluginError;
use super::files::{Manifest, PluginDir, remove_state_file};
use super::generation::{Failure, Generation, Host, StepContext};
use super::reactor::ReactorLease;
use super::shared::{Progress, Serving, Shared};
use super::status::{RebuildStatus, RunState};
use super::throttle::Throttle;
use crate::log::{EventFilter, Position};
use crate::metrics::PluginSeries;
use crate::runtime::PluginKind;

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
    /// Build this generation from position 0 beside the serving one, then
    /// swap; `saved` is answered once the manifest naming it is durable (a
    /// replay or a deploy of new code is acknowledged then, not before).
    Rebuild {
        generation: Box<Generation>,
        saved: oneshot::Sender<Result<(), PluginError>>,
    },
    /// Make everything durable and stop.
    Stop,
}

/// The runner: owns the serving generation and, during a rebuild, the next one.
pub(super) struct Runner {
    shared: Arc<Shared>,
    dir: PluginDir,
    host: Host,
    control: mpsc::UnboundedReceiver<Control>,
    live: Generation,
    rebuild: Option<Generation>,
    paused: bool,
    pending: VecDeque<Control>,
    head: watch::Receiver<Position>,
    /// The rebuild's read budget, with `--replay-rate`.
    throttle: Option<Throttle>,
    /// The plugin's metrics; removed when the runner goes.
    series: PluginSeries,
    /// The position after the serving checkpoint and when that event was
    /// recorded, once read for the lag in seconds.
    next_recorded: Option<(u64, u64)>,
    /// The async runtime: what the runner waits on, and a reactor's appends.
    tokio: tokio::runtime::Handle,
    /// A reactor's lease, when several nodes share the log: it runs only
    /// while this node owns it (`docs/design.md#reactors-on-several-nodes`).
    lease: Option<ReactorLease>,
}

impl Runner {
    /// A runner for the plugin in `dir`, serving `live` and building `rebuild`.
    pub fn new(
        shared: Arc<Shared>,
        dir: PluginDir,
        host: Host,
        control: mpsc::UnboundedReceiver<Control>,
        mut live: Generation,
        mut rebuild: Option<Generation>,
        (tokio, lease): (tokio::runtime::Handle, Option<ReactorLease>),
    ) -> Self {
        let head = host.log.watch_head();
        let throttle = host.replay_rate.map(Throttle::new);
        let series = host.metrics.plugins.series(shared.name.as_str());
        live.attach(series.clone());
        if let Some(rebuild) = rebuild.as_mut() {
            rebuild.attach(series.clone());
        }
        Self {
            shared,
            dir,
            host,
            control,
            live,
            rebuild,
            paused: false,
            pending: VecDeque::new(),
            head,
            throttle,
            series,
            next_recorded: None,
            tokio,
            lease,
        }
    }

    /// Runs until told to stop (or until the registry goes away).
    pub fn run(mut self) {
        self.export_parked();
        loop {
            while let Some(control) = self
                .pending
                .pop_front()
                .or_else(|| self.control.try_recv().ok())
            {
                if !self.apply(control) {
                    self.sync();
                    return;
                }
            }
            let head = self.head.borrow_and_update().0;
            let mut worked = false;
            if !self.paused && self.runs_here() {
                worked |= self.step_live(head);
                self.post_outbox();
                worked |= self.step_rebuild(head);
                self.try_swap(head);
            }
            self.publish(head);
            self.export(head);
            if !worked {
                self.sync();
                self.wait();
            }
        }
    }

    /// Whether this node runs the plugin: always, unless it is a reactor
    /// whose lease another node owns.
    fn runs_here(&mut self) -> bool {
        let Self {
            lease,
            shared,
            tokio,
            ..
        } = self;
        lease
            .as_mut()
            .is_none_or(|lease| lease.runs_here(&shared.name, tokio))
    }

    /// The serving generation and, during a rebuild, the next one.
    fn generations(&mut self) -> impl Iterator<Item = &mut Generation> {
        std::iter::once(&mut self.live).chain(self.rebuild.as_mut())
    }

    fn sync(&mut self) {
        let Self {
            shared,
            live,
            rebuild,
            ..
        } = self;
        std::iter::once(live)
            .chain(rebuild.as_mut())
            .for_each(|g| g.sync(&shared.name));
    }

    /// Blocks until a new event, an operator command, or a due retry.
    fn wait(&mut self) {
        let throttled = self.throttled_until();
        let retry_at = self
            .generations()
            .filter_map(|g| g.failure.as_ref().and_then(|f| f.retry_at))
            .chain(throttled)
            .min();
        let head = &mut self.head;
        let control = &mut self.control;
        let mut lease = self.lease.as_ref().map(ReactorLease::owner);
        let received = self.tokio.block_on(async {
            let lease_changed = async {
                match lease.as_mut() {
                    Some(owner) => {
                        let _ = owner.changed().await;
                    }
                    None => std::future::pending().await,
                }
            };
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
                () = lease_changed => None,
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
                self.generations().for_each(Generation::retry_now);
            }
            Control::Skip { reply } => {
                let _ = reply.send(self.skip());
            }
            Control::Rebuild {
                mut generation,
                saved,
            } => {
                generation.attach(self.series.clone());
                if let Some(old) = self.rebuild.replace(*generation) {
                    remove_generation(old);
                }
                let _ = saved.send(self.save_manifest());
            }
            Control::Stop => return false,
        }
        true
    }

    /// Skips the event the serving generation, or else the rebuild, gave up on.
    fn skip(&mut self) -> Result<u64, PluginError> {
        let gave_up = |g: &Generation| g.failure.as_ref().is_some_and(Failure::gave_up);
        let generation = match self.rebuild.as_mut() {
            Some(rebuild) if !gave_up(&self.live) && gave_up(rebuild) => rebuild,
            _ => &mut self.live,
        };
        let skipped = generation.skip_failed(&self.shared.name);
        self.export_parked();
        skipped
    }

    fn step_live(&mut self, head: u64) -> bool {
        let cx = context(
            &self.shared,
            &self.host,
            &self.tokio,
            self.lease.as_ref(),
            0,
        );
        self.live.step(&cx, head, usize::MAX)
    }

    /// Steps the rebuild within its read budget, and charges what it read.
    fn step_rebuild(&mut self, head: u64) -> bool {
        let Some(rebuild) = self.rebuild.as_mut() else {
            return false;
        };
        // A reactor's rebuild appends nothing the serving generation has
        // already handled: only new events cause outputs.
        let serving = self.live.checkpoint;
        let lease = self.lease.as_ref();
        let cx = context(&self.shared, &self.host, &self.tokio, lease, serving);
        let Some(throttle) = self.throttle.as_mut() else {
            return rebuild.step(&cx, head, usize::MAX);
        };
        let most = throttle.allowance();
        if most == 0 {
            return false;
        }
        let before = rebuild.checkpoint;
        let worked = rebuild.step(&cx, head, most);
        throttle.spend(rebuild.checkpoint - before);
        worked
    }

    /// When a throttled rebuild that is behind may read again.
    fn throttled_until(&self) -> Option<std::time::Instant> {
        let behind = self
            .rebuild
            .as_ref()
            .is_some_and(|r| r.checkpoint < self.head.borrow().0);
        let throttle = self.throttle.as_ref().filter(|_| behind && !self.paused)?;
        Some(throttle.ready_at())
    }

    /// Posts what the serving generation's outbox holds to the mailbox.
    fn post_outbox(&mut self) {
        if let Some(mailbox) = &self.shared.mailbox {
            self.live.post_outbox(&self.shared.name, mailbox);
        }
    }

    /// Swaps a rebuild that has caught up in for the serving generation.
    fn try_swap(&mut self, head: u64) {
        let Some(mut next) = self
            .rebuild
            .take_if(|r| r.checkpoint >= head && r.failure.is_none())
        else {
            return;
        };
        // What the old version emitted goes out before it is removed.
        self.post_outbox();
        next.sync(&self.shared.name);
        let old = std::mem::replace(&mut self.live, next);
        // The new version's outbox holds only keys never sent before.
        self.post_outbox();
        // Durable before it shows: a cut never takes back a swap seen.
        let _ = self.save_manifest();
        *self.shared.serving.write() = Serving {
            plugin: self.live.plugin.clone(),
            store: self.live.store.clone(),
        };
        tracing::info!(plugin = %self.shared.name, generation = self.live.number, checkpoint = self.live.checkpoint, "rebuild caught up; swapped in");
        let old_hash = old.plugin.hash.clone();
        remove_generation(old);
        self.export_parked();
        if old_hash != self.live.plugin.hash {
            self.dir.remove_wasm(&old_hash);
        }
    }

    /// Writes the manifest for the generations held now; a failure is
    /// logged, and answered.
    fn save_manifest(&self) -> Result<(), PluginError> {
        let manifest = Manifest {
            generation: self.live.number,
            hash: self.live.plugin.hash.clone(),
            rebuild: self
                .rebuild
                .as_ref()
                .map(|r| (r.number, r.plugin.hash.clone())),
        };
        let saved = self.dir.save_manifest(&manifest);
        if let Err(error) = &saved {
            tracing::error!(plugin = %self.shared.name, %error, "cannot save the plugin's manifest");
        }
        saved
    }

    fn run_state(&self, head: u64) -> RunState {
        if self.paused {
            RunState::Paused
        } else if self.live.failure.as_ref().is_some_and(Failure::gave_up) {
            RunState::Failed
        } else if self.rebuild.is_some() {
            RunState::Replaying
        } else if self.live.checkpoint < head {
            RunState::CatchingUp
        } else {
            RunState::Running
        }
    }

    fn publish(&mut self, head: u64) {
        let state = self.run_state(head);
        let reactor = self.live.plugin.kind() == PluginKind::Reactor;
        let rebuild = self.rebuild.as_ref().map(|r| RebuildStatus {
            generation: r.number,
            hash: r.plugin.hash.clone(),
            checkpoint: r.checkpoint,
            events_per_sec: r.meter.rate,
            eta_secs: (r.meter.rate > 0.0)
                .then(|| head.saturating_sub(r.checkpoint) as f64 / r.meter.rate),
            last_error: r.failure.as_ref().map(Failure::report),
            outputs_suppressed: reactor.then_some(r.suppressed),
        });
        let live = &self.live;
        {
            let mut status = self.shared.status.write();
            status.state = state;
            status.show_serving(&live.plugin, live.number, live.checkpoint);
            status.events_per_sec = live.meter.rate;
            status.last_error = live.failure.as_ref().map(Failure::report);
            status.rebuild = rebuild;
            status.outputs_suppressed = reactor.then_some(live.suppressed);
        }
        let progress = Progress {
            checkpoint: live.checkpoint,
            state,
        };
        self.shared.progress.send_if_modified(|published| {
            let changed = *published != progress;
            *published = progress;
            changed
        });
    }

    /// Updates the plugin's gauges after a round: where it is, how far
    /// behind, and in which state. (Counters move where things happen, in
    /// `generation.rs`.)
    fn export(&mut self, head: u64) {
        let checkpoint = self.live.checkpoint;
        let series = &self.series;
        series.checkpoint.set(gauge_value(checkpoint));
        series
            .lag_events
            .set(gauge_value(head.saturating_sub(checkpoint)));
        series.set_state(self.run_state(head).as_str());
        let rebuild = self.rebuild.as_ref().map_or(0, |r| r.checkpoint);
        series.rebuild_checkpoint.set(gauge_value(rebuild));
        if let Some(lag) = self.lag_seconds(head) {
            self.series.lag_seconds.set(lag);
        }
    }

    /// The age of the oldest event the serving generation has not handled,
    /// the one after its checkpoint; 0 when caught up. Its time is known
    /// from the batch read ahead while catching up, else read (one event,
    /// on this thread) once per checkpoint. `None`: the log cannot say now.
    fn lag_seconds(&mut self, head: u64) -> Option<f64> {
        let next = self.live.checkpoint + 1;
        if next > head {
            return Some(0.0);
        }
        let known = self
            .next_recorded
            .filter(|(position, _)| *position == next)
            .map(|(_, at)| at);
        let recorded_at = match known.or_else(|| self.live.recorded_at(next)) {
            Some(at) => at,
            None => {
                let everything = EventFilter::default();
                let page = self
                    .host
                    .log
                    .read_log_blocking(Position(next), 1, &everything);
                let event = page.ok()?.events.into_iter().next()?;
                (event.position.0 == next).then_some(event.recorded_at)?
            }
        };
        self.next_recorded = Some((next, recorded_at));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Some(now.saturating_sub(recorded_at) as f64 / 1e6)
    }

    /// Counts the events parked in the serving generation (at start, after
    /// a skip, after a swap: a read of its state file).
    fn export_parked(&self) {
        match self.live.store.parked() {
            Ok(parked) => {
                self.series.parked.set(gauge_value(parked.len() as u64));
            }
            Err(error) => {
                tracing::warn!(plugin = %self.shared.name, %error, "cannot count the parked events");
            }
        }
    }
}

impl Drop for Runner {
    /// The plugin's series go with its runner: when it is removed, or its
    /// start is undone (at shutdown, too).
    fn drop(&mut self) {
        self.host.metrics.plugins.remove(self.shared.name.as_str());
    }
}

/// What a step of a generation needs. A reactor's outputs are suppressed
/// through `suppress_through`, or through the mark another node left when
/// this one took its lease over, whichever is further.
fn context<'a>(
    shared: &'a Shared,
    host: &'a Host,
    tokio: &'a tokio::runtime::Handle,
    lease: Option<&'a ReactorLease>,
    suppress_through: u64,
) -> StepContext<'a> {
    let through = lease.map_or(0, ReactorLease::through);
    let marks = lease.and_then(ReactorLease::marks);
    StepContext::new(shared, host, tokio, (suppress_through.max(through), marks))
}

/// A position or a count as a gauge's value.
fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Drops a generation and removes its state file.
fn remove_generation(generation: Generation) {
    let path = generation.store.path().to_path_buf();
    drop(generation);
    remove_state_file(&path);
}
