//! `LogError`: every way an append or a read of the log can fail.

use super::ExpectedVersion;

/// A failure of the event log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A stream name or event type that breaks the naming rules.
    #[error("invalid {what}: {problem}")]
    InvalidName {
        /// "stream name" or "event type".
        what: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The stream's version did not match `expected_version`; nothing was appended.
    #[error("stream {stream} is at version {}, expected {expected}", actual.map_or("none (no stream)".to_string(), |v| v.to_string()))]
    WrongExpectedVersion {
        /// The stream appended to.
        stream: String,
        /// What the request expected.
        expected: ExpectedVersion,
        /// The version of the stream's last event, `None` when it has none.
        actual: Option<u64>,
        /// Which append of the request was refused (a batch may name a
        /// stream more than once; 0 for a single append).
        append_index: usize,
    },
    /// Some, but not all, of a request's event ids are already in the log, or
    /// they are there in another order or stream: not a retry of the same append.
    #[error(
        "event id {id} is already in the log, but the request is not a retry of the append that wrote it"
    )]
    IdempotencyConflict {
        /// The first id that did not match.
        id: uuid::Uuid,
    },
    /// A client-supplied id of the form the log generates, naming no event
    /// that has it: it could collide with the id of a later event.
    #[error(
        "event id {0} has the form of the ids this log generates (UUIDv8 with its tag) but names \
         no event in the log: give events ids of your own (UUIDv7 or v4), or none"
    )]
    ReservedId(uuid::Uuid),
    /// An append without events.
    #[error("the append to stream {0} has no events: an append holds at least one")]
    NoEvents(String),
    /// A request holds more events than the backend appends in one atomic
    /// step (JetStream's atomic batches hold at most 1,000 messages).
    #[error(
        "the request holds {events} events; this log appends at most {limit} in one atomic step: split it"
    )]
    TooManyEvents {
        /// Events in the request.
        events: usize,
        /// The most one request may hold.
        limit: usize,
    },
    /// One request names the same event id twice.
    #[error("event id {0} appears more than once in the request")]
    DuplicateId(uuid::Uuid),
    /// The writer is behind: the queue was full for as long as an append
    /// may wait for a place in it.
    #[error(
        "the log is overloaded: {depth} appends are queued ahead and none left the queue \
         within {wait:?}; retry in a moment"
    )]
    Overloaded {
        /// The queue's depth.
        depth: usize,
        /// How long the append waited.
        wait: std::time::Duration,
    },
    /// The disk of the data directory is full: nothing was appended.
    #[error(
        "the disk of the data directory is full, nothing was appended ({0}); appends resume \
         by themselves once space is freed"
    )]
    StorageFull(String),
    /// The storage failed and the log is reopening: try again shortly.
    #[error("the log is unavailable: {0}; try again shortly")]
    Unavailable(String),
    /// The log is shutting down and accepts no more appends.
    #[error("the log is shutting down")]
    ShuttingDown,
    /// The database holds bytes that do not decode.
    #[error("corrupt log: {0}")]
    Corrupt(String),
    /// The group commit this append was part of failed; nothing of it was appended.
    #[error("commit failed, nothing was appended: {0}")]
    CommitFailed(String),
    /// The log's tables are in a format this eventfold does not know.
    #[error(
        "the log's tables are in format {0}, which this eventfold does not read (it reads \
         formats 1 and 2; a newer format needs a newer eventfold)"
    )]
    UnsupportedFormat(u64),
    /// A file-system operation on the data directory failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A blocking task could not run to completion.
    #[error("internal: {0}")]
    Internal(String),
    /// The storage engine failed (I/O, full disk, …).
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
}

from_redb_errors!(LogError);

impl From<tokio::task::JoinError> for LogError {
    fn from(error: tokio::task::JoinError) -> Self {
        LogError::Internal(format!("blocking task failed: {error}"))
    }
}
