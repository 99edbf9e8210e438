//! The embedded log: an append-only sequence of events in one redb
//! database in the data directory, the default backend.
//!
//! Owns the tables (`tables`, and `migrate` for older logs), the on-disk
//! form of a chunk of events (`chunk`) and of a stream's runs (`runs`), the
//! ids it generates (`ids`), the writer that commits one group at a time
//! (`writer`, fed by `queue`) with its write-ahead log (`wal`), and the
//! readers (`reader`).

mod chunk;
mod ids;
mod migrate;
mod queue;
mod reader;
mod runs;
mod storage;
mod tables;
mod wal;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::{
    AppendOutcome, Direction, EventFilter, LogError, LogPage, Position, RecordedEvent,
    StreamAppend, StreamName, StreamPage, codec,
};
use crate::durable;
use crate::metrics::Metrics;
use queue::Queue;
use storage::DbSlot;
use writer::Writer;

/// Name of the log's database file inside the data directory.
pub const LOG_FILE: &str = "log.redb";
/// Name of the log's write-ahead log inside the data directory.
pub const WAL_FILE: &str = "log.wal";
/// Tuning of the log.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// How long appends may sit only in the write-ahead log before redb is
    /// made durable (a checkpoint); longer means fewer, larger fsyncs of redb
    /// and a longer replay after a crash.
    pub checkpoint_interval: std::time::Duration,
    /// Most bytes the writer's cache of stream heads may take (each entry is
    /// counted as its name plus about 112 bytes). A head not cached is read
    /// from the stream index, so this bounds memory, not the number of
    /// streams.
    pub stream_cache_bytes: u64,
    /// Most appends queued for the writer (or being committed) at once.
    pub queue_depth: usize,
    /// Longest an append waits for a place in a full queue before it is
    /// refused as overloaded: the bound on latency under overload.
    pub queue_wait: std::time::Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            checkpoint_interval: std::time::Duration::from_secs(2),
            stream_cache_bytes: 64 << 20,
            queue_depth: 8192,
            queue_wait: std::time::Duration::from_secs(2),
        }
    }
}

/// A handle on the event log; cheap to clone, shared by every task.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<DbSlot>,
    queue: Arc<Queue>,
    head: watch::Receiver<Position>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    /// Before a read: makes every acknowledged append visible in redb (the
    /// writer commits its open transaction when it holds any).
    fn settle(&self) -> Result<(), LogError> {
        // Not under the head's borrow: the writer publishes the head while
        // it holds what a settle waits for.
        let head = self.head.borrow().0;
        self.queue.settle(head)
    }
}

impl Drop for Inner {
    /// The last handle gone without a shutdown: the writer thread still
    /// commits what is queued, checkpoints and stops.
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `data_dir`, recovers what the write-ahead
    /// log holds, and starts the writer thread.
    pub fn open_with(
        data_dir: &Path,
        metrics: Metrics,
        options: LogOptions,
    ) -> Result<Self, LogError> {
        durable::create_dir_all(data_dir)?;
        let db_path = data_dir.join(LOG_FILE);
        let db = Arc::new(durable::create_database(&db_path)?);
        let (head_tx, head) = watch::channel(Position(0));
        let wal_path = data_dir.join(WAL_FILE);
        let counted = metrics.clone();
        let writer = Writer::new(db.clone(), &db_path, &wal_path, options, head_tx, metrics)?;
        let db = Arc::new(DbSlot::new(db));
        let queue = Arc::new(Queue::new(
            writer,
            options.queue_depth,
            options.queue_wait,
            db.clone(),
        ));
        queue.export(&counted);
        let thread = {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("eventfold-log-writer".into())
                .spawn(move || queue.run())?
        };
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                queue,
                head,
                writer: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Appends events to one stream, atomically. Returns once they are durable.
    pub async fn append(&self, append: StreamAppend) -> Result<AppendOutcome, LogError> {
        let mut outcomes = self.append_all(vec![append]).await?;
        outcomes
            .pop()
            .ok_or_else(|| LogError::Internal("writer returned no outcome".into()))
    }

    /// Appends to several streams in one atomic step: every append's
    /// `expected_version` must hold, or nothing is appended. Returns once durable.
    pub async fn append_all(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendOutcome>, LogError> {
        if appends.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.queue.submit(appends).await
    }

    /// The last committed position (0 for an empty log).
    pub fn head(&self) -> Position {
        *self.inner.head.borrow()
    }

    /// Why appends are refused, when the storage failed under the log and
    /// it has not reopened yet (`None`: appends are accepted).
    pub fn storage_failure(&self) -> Option<String> {
        self.inner.queue.storage_failure()
    }

    /// A receiver that changes whenever a commit moves the head: the way to
    /// wait for new events without polling.
    pub fn watch_head(&self) -> watch::Receiver<Position> {
        self.inner.head.clone()
    }

    /// Reads the global log from `from` (inclusive); see [`reader::read_log`].
    pub async fn read_log(
        &self,
        from: Position,
        limit: usize,
        filter: EventFilter,
        max_scan: usize,
    ) -> Result<LogPage, LogError> {
        let inner = self.inner.clone();
        crate::blocking::run(move || {
            inner.settle()?;
            reader::read_log(&*inner.db.get()?, from, limit, &filter, max_scan)
        })
        .await
    }

    /// Reads one stream; `None` when it has no events. See [`reader::read_stream`].
    pub async fn read_stream(
        &self,
        stream: StreamName,
        from: Option<u64>,
        limit: usize,
        direction: Direction,
    ) -> Result<Option<StreamPage>, LogError> {
        let inner = self.inner.clone();
        crate::blocking::run(move || {
            inner.settle()?;
            reader::read_stream(&*inner.db.get()?, stream.as_str(), from, limit, direction)
        })
        .await
    }

    /// Reads synchronously, for callers already off the async runtime (plugin
    /// runners, benchmarks).
    pub fn read_log_blocking(
        &self,
        from: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<LogPage, LogError> {
        self.inner.settle()?;
        reader::read_log(&*self.inner.db.get()?, from, limit, filter, usize::MAX)
    }

    /// Commits every append already queued, refuses new ones, and stops the
    /// writer. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.queue.close();
        let thread = self.inner.writer.lock().take();
        if let Some(thread) = thread {
            // Joining waits for the final commit: off the runtime's threads.
            let joined = crate::blocking::run(move || {
                thread
                    .join()
                    .map_err(|_| LogError::Internal("the writer thread panicked".into()))
            })
            .await;
            if let Err(error) = joined {
                tracing::error!(%error, "stopping the log");
            }
        }
    }
}
