//! How an append reaches the writer.
//!
//! One commit runs at a time (`busy`, taken under the lock). When the writer
//! is idle and nothing waits, the append commits on the caller's own thread:
//! no hand-off to the writer thread and back, each a wake-up between threads
//! (on the 2-vCPU development VM that was ~90 µs of a 1-client append's
//! 0.5 ms). When a commit is running, the append queues, and the writer
//! thread takes everything queued as one group when the commit ends: group
//! commit. Checkpoints run on the writer thread, so a caller never waits for
//! one.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use tokio::sync::{Semaphore, oneshot};

use super::writer::{Command, MAX_GROUP_BYTES, MAX_GROUP_EVENTS, Writer};
use super::{AppendOutcome, LogError, StreamAppend};

/// The writer, and the requests waiting for it.
pub(super) struct Queue {
    state: Mutex<State>,
    /// Wakes the writer thread: work queued, a commit ended, a checkpoint
    /// asked for, or closing.
    wake: Condvar,
    writer: Mutex<Writer>,
    /// Bounds requests queued or being committed; callers wait beyond.
    permits: Semaphore,
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
    /// A queue in front of `writer`, holding at most `depth` requests.
    pub fn new(writer: Writer, depth: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            writer: Mutex::new(writer),
            permits: Semaphore::new(depth),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a queue and flags, consistent at every unlock: a
        // panic elsewhere cannot leave it half-changed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends, and answers once the appends are durable.
    pub async fn submit(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendOutcome>, LogError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| LogError::ShuttingDown)?;
        let (reply, answer) = oneshot::channel();
        let command = Command { appends, reply };
        let inline = {
            let mut state = self.lock();
            if state.closed {
                return Err(LogError::ShuttingDown);
            }
            if state.busy || !state.queued.is_empty() {
                state.queued.push_back(command);
                if !state.busy {
                    self.wake.notify_all();
                }
                None
            } else {
                state.busy = true;
                Some(command)
            }
        };
        if let Some(command) = inline {
            let _busy = Busy(self);
            let due = self.commit(vec![command]);
            if due {
                self.lock().checkpoint_due = true;
            }
        }
        answer.await.map_err(|_| LogError::ShuttingDown)?
    }

    /// Commits one group; answers whether a checkpoint is due.
    fn commit(&self, group: Vec<Command>) -> bool {
        match self.writer.lock() {
            Ok(mut writer) => {
                writer.commit_group(group);
                writer.checkpoint_due()
            }
            Err(_) => {
                // An earlier commit panicked: its state cannot be trusted.
                for command in group {
                    let _ = command.reply.send(Err(LogError::CommitFailed(
                        "the writer failed earlier; restart the server to recover from the \
                         write-ahead log"
                            .into(),
                    )));
                }
                false
            }
        }
    }

    /// Refuses new appends; the writer thread commits what is queued, makes a
    /// last checkpoint and stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// The writer thread: commits what queues while a commit runs, one group
    /// at a time, and checkpoints. Returns after [`Self::close`], once
    /// everything queued is committed.
    pub fn run(&self) {
        loop {
            let (group, checkpoint) = {
                let mut state = self.lock();
                loop {
                    if !state.busy && (!state.queued.is_empty() || state.checkpoint_due) {
                        break;
                    }
                    if state.closed && !state.busy && state.queued.is_empty() {
                        drop(state);
                        self.checkpoint("final checkpoint failed; the write-ahead log still holds every acknowledged append");
                        return;
                    }
                    state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                state.busy = true;
                let checkpoint = std::mem::take(&mut state.checkpoint_due);
                (take_group(&mut state.queued), checkpoint)
            };
            let _busy = Busy(self);
            let due = !group.is_empty() && self.commit(group);
            if checkpoint || due {
                self.checkpoint("checkpoint failed; will retry after the next group");
            }
        }
    }

    fn checkpoint(&self, failure: &str) {
        if let Ok(mut writer) = self.writer.lock()
            && let Err(error) = writer.checkpoint()
        {
            tracing::error!(%error, "{failure}");
        }
    }
}

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
