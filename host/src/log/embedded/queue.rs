//! How an append reaches the writer.
//!
//! One commit runs at a time (`busy`, taken under the lock). An append that
//! finds the writer idle and nothing queued *leads*: it queues, yields to
//! its runtime once — so that the requests read from the sockets together
//! with it queue behind it, as Redis gathers one event-loop turn into one
//! fsync — and then commits everything queued as one group on its own
//! thread, with no hand-off to the writer thread and back (each a wake-up
//! between threads, a sizeable part of a lone append's latency:
//! `docs/design.md#notes`). A group of more than [`LEADER_MAX_BYTES`] goes
//! to the writer thread instead. An append that arrives while a commit runs
//! queues, and the writer thread takes everything queued as one group when
//! the commit ends: group commit. Checkpoints run on the writer thread, never
//! inside a leader's commit (an append that arrives during one queues behind
//! it).
//!
//! A leader's commit blocks its tokio worker for the fsync; as one commit
//! runs at a time, that is at most one worker. On a runtime with a single
//! worker that blocks the whole runtime, and that is what groups the next
//! commit: requests wait in their sockets meanwhile, and the next leader's
//! yield gathers them all.
//!
//! A commit that panics stops the writer: its callers and every later append
//! get an error (restart to recover from the write-ahead log), and none is
//! left waiting.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, oneshot};

use super::storage::DbSlot;
use super::writer::{Broken, Command, MAX_GROUP_BYTES, MAX_GROUP_EVENTS, Writer};
use super::{AppendOutcome, LogError, StreamAppend};
use crate::metrics::Metrics;

/// The writer, and the requests waiting for it.
pub(super) struct Queue {
    state: Mutex<State>,
    /// Wakes the writer thread: work queued, a commit ended, a checkpoint
    /// asked for, or closing.
    wake: Condvar,
    /// `busy` admits one commit at a time; besides it, only a reader that
    /// settles takes the lock. It gives `&mut` access from any thread.
    writer: Mutex<Writer>,
    /// The last position readers can see in redb ([`Writer::settle`]).
    settled: Arc<AtomicU64>,
    /// Bounds requests queued or being committed; callers wait beyond, up
    /// to `wait`, and are then refused as overloaded. A request holds its
    /// permit until it is answered, even when its caller has gone.
    permits: Arc<Semaphore>,
    depth: usize,
    wait: Duration,
    /// The readers' database, which a reopen replaces.
    db: Arc<DbSlot>,
    /// Why the writer stopped, as `/health` shows it (`None`: it runs).
    failure: RwLock<Option<Broken>>,
    /// When the writer thread last tried to reopen a stopped writer.
    reopened_at: Mutex<Instant>,
}

#[derive(Default)]
struct State {
    queued: VecDeque<Command>,
    /// A commit or checkpoint is running.
    busy: bool,
    /// A commit on a caller's thread found a checkpoint due.
    checkpoint_due: bool,
    /// No new appends; the writer thread stops once the queue is empty.
    closed: bool,
}

/// Clears `busy` when the commit that set it ends, even by a panic, and wakes
/// the writer thread when there is work for it.
struct Busy<'a>(&'a Queue);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.busy = false;
        if !state.queued.is_empty() || state.checkpoint_due || state.closed {
            self.0.wake.notify_all();
        }
    }
}

impl Queue {
    /// A queue in front of `writer`, holding at most `depth` requests; an
    /// append waits at most `wait` for a place.
    pub fn new(writer: Writer, depth: usize, wait: Duration, db: Arc<DbSlot>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            settled: writer.settled(),
            writer: Mutex::new(writer),
            permits: Arc::new(Semaphore::new(depth)),
            depth,
            wait,
            db,
            failure: RwLock::new(None),
            reopened_at: Mutex::new(Instant::now()),
        }
    }

    /// Has `metrics` read the queue's depth (requests queued or being
    /// committed: the permits taken) when scraped, so that an append pays
    /// nothing for it.
    pub fn export(&self, metrics: &Metrics) {
        let (permits, depth) = (self.permits.clone(), self.depth);
        metrics
            .writer
            .queue_depth
            .sample_from(move || depth.saturating_sub(permits.available_permits()) as i64);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a queue and flags, consistent at every unlock: a
        // panic elsewhere cannot leave it half-changed.
        self.state.lock()
    }

    /// A place in the queue: at once when there is one (no timer on the
    /// common path), else within `wait`, else [`LogError::Overloaded`].
    async fn admit(&self) -> Result<OwnedSemaphorePermit, LogError> {
        let permits = self.permits.clone();
        match permits.clone().try_acquire_owned() {
            Ok(permit) => return Ok(permit),
            Err(TryAcquireError::Closed) => return Err(LogError::ShuttingDown),
            Err(TryAcquireError::NoPermits) => {}
        }
        match tokio::time::timeout(self.wait, permits.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(LogError::ShuttingDown),
            Err(_) => Err(LogError::Overloaded {
                depth: self.depth,
                wait: self.wait,
            }),
        }
    }

    /// Appends, and answers once the appends are durable.
    pub async fn submit(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendOutcome>, LogError> {
        self.refuse_if_stopped()?;
        let permit = self.admit().await?;
        let (reply, answer) = oneshot::channel();
        let command = Command {
            appends,
            reply,
            _permit: permit,
        };
        let lead = {
            let mut state = self.lock();
            if state.closed {
                return Err(LogError::ShuttingDown);
            }
            let lead = !state.busy && state.queued.is_empty();
            state.queued.push_back(command);
            if lead {
                state.busy = true;
            } else if !state.busy {
                self.wake.notify_all();
            }
            lead
        };
        if lead {
            // Should the caller go away during the yield, `Busy` hands what
            // is queued, this append too, to the writer thread.
            let _busy = Busy(self);
            tokio::task::yield_now().await;
            let group = {
                let mut state = self.lock();
                let bytes: usize = state.queued.iter().map(|c| c.size().1).sum();
                (bytes <= LEADER_MAX_BYTES).then(|| take_group(&mut state.queued))
            };
            // A big group goes to the writer thread when `_busy` drops.
            if let Some(group) = group {
                let due = self.commit(group);
                if due {
                    self.lock().checkpoint_due = true;
                }
            }
        }
        // Every command is answered, unless its commit panicked.
        answer
            .await
            .map_err(|_| LogError::CommitFailed(PANICKED.into()))?
    }

    /// Commits one group; answers whether a checkpoint is due. A panic
    /// stops here, poisoning the writer, and its group's callers are
    /// answered with an error when their replies are dropped.
    fn commit(&self, group: Vec<Command>) -> bool {
        let mut writer = self.writer();
        let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            writer.commit_group(group);
            writer.checkpoint_due()
        }));
        let due = committed.unwrap_or_else(|_| {
            writer.stop(
                "a commit panicked",
                &LogError::CommitFailed(PANICKED.into()),
            );
            false
        });
        self.note_failure(&writer);
        due
    }

    /// Keeps what `/health` shows in step with the writer.
    fn note_failure(&self, writer: &Writer) {
        let stopped = writer.broken().is_some();
        if stopped != self.failure.read().is_some() {
            *self.failure.write() = writer.broken().cloned();
        }
    }

    /// Why the writer stopped, if it did.
    pub fn storage_failure(&self) -> Option<String> {
        self.failure.read().as_ref().map(|b| b.reason.clone())
    }

    /// The refusal of a stopped writer, told without waiting for it (a
    /// reopen may hold it for a while).
    fn refuse_if_stopped(&self) -> Result<(), LogError> {
        match self.failure.read().as_ref() {
            None => Ok(()),
            Some(broken) => Err(broken.refusal()),
        }
    }

    /// A stopped writer reopens the log, once a second, until that works.
    fn reopen_if_stopped(&self) {
        if self.failure.read().is_none() {
            return;
        }
        let mut reopened_at = self.reopened_at.lock();
        if reopened_at.elapsed() < REOPEN_INTERVAL {
            return;
        }
        let mut writer = self.writer();
        if writer.broken().is_none() {
            return;
        }
        let reopened =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.reopen(&self.db)));
        match reopened {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the log cannot reopen yet"),
            Err(_) => tracing::error!("reopening the log panicked"),
        }
        // A second from the end of this attempt: appends get their answer meanwhile.
        *reopened_at = Instant::now();
        self.note_failure(&writer);
    }

    /// Makes every group up to `head` visible to readers, committing the
    /// writer's open transaction if it holds any of them. Blocking: it may
    /// wait for a commit in progress. A panic stops the writer, as in a commit.
    pub fn settle(&self, head: u64) -> Result<(), LogError> {
        // A stopped writer holds no open transaction: nothing to settle, and
        // no need to wait for a reopen in progress.
        if self.settled.load(Ordering::Acquire) >= head || self.failure.read().is_some() {
            return Ok(());
        }
        let mut writer = self.writer();
        let settled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.settle()));
        let settled = settled.unwrap_or_else(|_| {
            let panicked = LogError::CommitFailed(PANICKED.into());
            writer.stop("committing for a reader panicked", &panicked);
            Err(panicked)
        });
        self.note_failure(&writer);
        settled
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // Panics are caught where the writer runs, and stop it (`stop`).
        self.writer.lock()
    }

    /// Refuses new appends; the writer thread commits what is queued, makes a
    /// last checkpoint and stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.permits.close();
        self.wake.notify_all();
    }

    /// The writer thread: commits what queues while a commit runs, one group
    /// at a time, and checkpoints (after a commit, or when idle). Returns
    /// after [`Self::close`], once everything queued is committed.
    pub fn run(&self) {
        loop {
            let (group, checkpoint, idle) = {
                let mut state = self.lock();
                let mut idle = false;
                loop {
                    if !state.busy && (!state.queued.is_empty() || state.checkpoint_due) {
                        break;
                    }
                    if state.closed && !state.busy && state.queued.is_empty() {
                        drop(state);
                        self.checkpoint("final checkpoint failed; the write-ahead log still holds every acknowledged append");
                        return;
                    }
                    let waited = self.wake.wait_for(&mut state, IDLE_CHECK);
                    if waited.timed_out() && !state.busy && state.queued.is_empty() {
                        idle = true;
                        break;
                    }
                }
                state.busy = true;
                let checkpoint = std::mem::take(&mut state.checkpoint_due);
                (take_group(&mut state.queued), checkpoint, idle)
            };
            let _busy = Busy(self);
            let due = !group.is_empty() && self.commit(group);
            // An idle log is checkpointed too, so that what the WAL holds
            // gets no older than the checkpoint interval.
            let idle_due = idle && self.writer().checkpoint_due();
            if checkpoint || due || idle_due {
                self.checkpoint("checkpoint failed; will retry after the next group");
            }
            self.reopen_if_stopped();
        }
    }

    fn checkpoint(&self, failure: &str) {
        let mut writer = self.writer();
        let checkpointed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.checkpoint()));
        match checkpointed {
            Ok(Ok(())) => {}
            Ok(Err(error)) if error.is_storage_failure() => {
                writer.stop(&format!("a checkpoint failed ({error})"), &error);
            }
            Ok(Err(error)) => tracing::error!(%error, "{failure}"),
            Err(_) => writer.stop(
                "a checkpoint panicked",
                &LogError::CommitFailed(PANICKED.into()),
            ),
        }
        self.note_failure(&writer);
    }
}

/// The most payload bytes a leader commits on its own thread. Beyond, the
/// writer thread commits the group while the leader's thread goes on reading
/// requests: checking and writing hundreds of events takes long enough for
/// that overlap to be worth the wake-ups.
const LEADER_MAX_BYTES: usize = 16 << 10;

/// How often a stopped writer tries to reopen the log.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

/// How often an idle writer thread looks whether a checkpoint is due.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// The answer to a caller whose commit panicked.
const PANICKED: &str = "the writer failed during this commit; restart the server to recover \
                        from the write-ahead log";

/// Takes the requests at the front of the queue, up to a group's caps.
fn take_group(queued: &mut VecDeque<Command>) -> Vec<Command> {
    let mut group = Vec::new();
    let (mut events, mut bytes) = (0, 0);
    while events < MAX_GROUP_EVENTS
        && bytes < MAX_GROUP_BYTES
        && let Some(command) = queued.pop_front()
    {
        let (n, b) = command.size();
        events += n;
        bytes += b;
        group.push(command);
    }
    group
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use crate::log::embedded::reader;
    use crate::log::{
        Direction, EventFilter, EventLog, EventType, ExpectedVersion, LogError, NewEvent, Position,
        StreamAppend, StreamName,
    };
    use crate::metrics::Metrics;

    fn append(stream: &str, expected: ExpectedVersion, n: usize) -> StreamAppend {
        StreamAppend {
            stream: StreamName::new(stream).unwrap(),
            expected_version: expected,
            events: (0..n)
                .map(|i| NewEvent {
                    id: None,
                    event_type: EventType::new("E").unwrap(),
                    data: format!("{{\"i\":{i}}}").into_bytes(),
                    metadata: b"{}".to_vec(),
                })
                .collect(),
        }
    }

    /// Concurrent appends, some committed on their callers' threads and some
    /// grouped on the writer thread, get gapless positions and the versions
    /// they expected; after a shutdown, appends are refused and everything
    /// acknowledged is there when the log is opened again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_are_gapless_and_survive_a_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), Metrics::new()).unwrap();
        let mut tasks = Vec::new();
        for writer in 0..8 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut positions = Vec::new();
                for round in 0..60u64 {
                    let n = 1 + (round as usize % 3);
                    let expected = match round {
                        0 => ExpectedVersion::NoStream,
                        _ => ExpectedVersion::Any,
                    };
                    let outcome = log
                        .append(append(&format!("w-{writer}"), expected, n))
                        .await
                        .unwrap();
                    let first = outcome.first_position.0;
                    positions.extend(first..first + n as u64);
                }
                positions
            }));
        }
        let mut acked = HashSet::new();
        for task in tasks {
            for position in task.await.unwrap() {
                assert!(acked.insert(position), "position {position} given twice");
            }
        }
        let head = acked.len() as u64;
        assert_eq!(log.head(), Position(head));
        assert_eq!(acked, (1..=head).collect());

        log.shutdown().await;
        assert!(matches!(
            log.append(append("late", ExpectedVersion::Any, 1)).await,
            Err(LogError::ShuttingDown)
        ));
        drop(log);
        let log = EventLog::open(dir.path(), Metrics::new()).unwrap();
        let page = log
            .read_log_blocking(Position(0), usize::MAX, &EventFilter::default())
            .unwrap();
        assert_eq!(page.events.len() as u64, head);
        for writer in 0..8 {
            let versions: Vec<u64> = page
                .events
                .iter()
                .filter(|e| e.stream == format!("w-{writer}"))
                .map(|e| e.version)
                .collect();
            assert_eq!(versions, (0..versions.len() as u64).collect::<Vec<_>>());
        }
        log.shutdown().await;
    }

    /// redb commits behind the WAL (the writer's transaction stays open
    /// across groups), yet every read sees every acknowledged append: a read
    /// first has the writer commit what it holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_see_every_acknowledged_append_though_redb_commits_behind() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), Metrics::new()).unwrap();
        let everything = EventFilter::default();
        let in_redb = |log: &EventLog| {
            reader::read_log(
                &log.embedded().inner.db.get().unwrap(),
                Position(1),
                usize::MAX,
                &everything,
                usize::MAX,
            )
            .unwrap()
            .events
            .len()
        };
        for round in 0..5 {
            let expected = match round {
                0 => ExpectedVersion::NoStream,
                _ => ExpectedVersion::Any,
            };
            log.append(append("s-1", expected, 2)).await.unwrap();
        }
        assert_eq!(log.head(), Position(10));
        assert_eq!(in_redb(&log), 0, "redb itself does not hold them yet");

        let stream = StreamName::new("s-1").unwrap();
        let page = log
            .read_stream(stream.clone(), None, 100, Direction::Forward)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(page.events.len(), 10);
        assert_eq!(page.stream_version, 9);
        assert_eq!(in_redb(&log), 10);

        log.append(append("s-1", ExpectedVersion::Exact(9), 1))
            .await
            .unwrap();
        let page = log
            .read_log(Position(1), usize::MAX, everything.clone(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(page.events.len(), 11);
        log.append(append("s-2", ExpectedVersion::NoStream, 1))
            .await
            .unwrap();
        let page = log
            .read_log_blocking(Position(11), usize::MAX, &everything)
            .unwrap();
        let streams: Vec<&str> = page.events.iter().map(|e| e.stream.as_str()).collect();
        assert_eq!(streams, ["s-1", "s-2"]);
        log.shutdown().await;
    }

    /// An append whose caller goes away while it leads (polled once, then
    /// dropped during its yield) is still committed, by the writer thread,
    /// and the log goes on.
    #[tokio::test(flavor = "current_thread")]
    async fn a_leader_dropped_during_its_yield_is_still_committed() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), Metrics::new()).unwrap();
        let first = log.append(append("gone", ExpectedVersion::NoStream, 1));
        assert!(first.now_or_never().is_none(), "the leader yields first");
        let mut head = log.watch_head();
        let committed = head.wait_for(|head| *head >= Position(1));
        tokio::time::timeout(std::time::Duration::from_secs(10), committed)
            .await
            .expect("the dropped leader's append was never committed")
            .unwrap();
        log.append(append("gone", ExpectedVersion::Exact(0), 1))
            .await
            .unwrap();
        let everything = EventFilter::default();
        let page = log
            .read_log(Position(1), usize::MAX, everything, usize::MAX)
            .await
            .unwrap();
        assert_eq!(page.events.len(), 2);
        log.shutdown().await;
    }

    /// On a runtime with one thread, concurrent appends still share
    /// commits: the leader's yield lets the others queue behind it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_single_threaded_runtime_still_groups_commits() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let log = EventLog::open(dir.path(), metrics.clone()).unwrap();
        let appends = (0..64).map(|i| {
            let log = log.clone();
            tokio::spawn(async move {
                log.append(append(&format!("s-{i}"), ExpectedVersion::NoStream, 1))
                    .await
                    .unwrap()
            })
        });
        let appends: Vec<_> = appends.collect();
        for append in appends {
            append.await.unwrap();
        }
        assert_eq!(log.head(), Position(64));
        let exposition = metrics.render("");
        let commits: u64 = exposition
            .lines()
            .find_map(|l| l.strip_prefix("eventfold_events_per_commit_count "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(commits < 32, "64 appends took {commits} commits");
        log.shutdown().await;
    }
}
