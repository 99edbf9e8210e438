//! The log's redb handle, shared by the readers and the writer, and what
//! happens when the storage fails under them.
//!
//! After an I/O error redb refuses every later write ("Previous I/O error
//! occurred") until the database is closed and opened again. So the writer
//! stops, and every second it *reopens* the log: the readers' handle is
//! taken away, the old database closed, a new one opened and the WAL
//! replayed into it, as at a restart. Once a write can succeed again (space
//! freed on a full disk) that succeeds and appends go on; nothing
//! acknowledged is lost, because every acknowledged group is in the WAL
//! (`docs/design.md#a-full-disk`).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use redb::Database;

use super::LogError;

/// The database readers use; empty while the log reopens.
#[derive(Default)]
pub(super) struct DbSlot(RwLock<Option<Arc<Database>>>);

impl DbSlot {
    /// A slot holding `db`.
    pub fn new(db: Arc<Database>) -> Self {
        Self(RwLock::new(Some(db)))
    }

    /// The database, or an error while the log reopens.
    pub fn get(&self) -> Result<Arc<Database>, LogError> {
        self.0.read().clone().ok_or_else(|| {
            LogError::Unavailable("the log is reopening after a storage failure, by itself".into())
        })
    }

    /// Puts `db` in the slot.
    pub fn set(&self, db: Arc<Database>) {
        *self.0.write() = Some(db);
    }

    /// Empties the slot: readers get [`LogError::Unavailable`] until [`DbSlot::set`].
    pub fn clear(&self) {
        *self.0.write() = None;
    }
}

/// Waits until no reader holds the old database any more (reads take
/// milliseconds), so that it is closed and can be opened again.
pub(super) fn wait_closed(old: &Weak<Database>) -> Result<(), LogError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while old.strong_count() > 0 {
        if Instant::now() > deadline {
            return Err(LogError::Internal(
                "a reader held the log's database for 10 s during a reopen".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

impl LogError {
    /// Whether the storage failed under the log (an I/O error, or redb
    /// refusing writes after one): the writer must reopen the database.
    pub fn is_storage_failure(&self) -> bool {
        match self {
            LogError::Io(_) | LogError::StorageFull(_) => true,
            LogError::Storage(error) => {
                matches!(error, redb::Error::Io(_) | redb::Error::PreviousIo)
            }
            _ => false,
        }
    }

    /// Whether the failure is a full disk (or quota).
    pub fn is_storage_full(&self) -> bool {
        let full = |e: &std::io::Error| {
            e.kind() == std::io::ErrorKind::StorageFull
                || e.kind() == std::io::ErrorKind::QuotaExceeded
        };
        match self {
            LogError::StorageFull(_) => true,
            LogError::Io(error) => full(error),
            LogError::Storage(redb::Error::Io(error)) => full(error),
            _ => false,
        }
    }
}
