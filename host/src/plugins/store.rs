//! A plugin's own redb file: its key-value state, its checkpoint, the
//! events it was told to skip, and (for notifiers) its outbox. One file per generation (a rebuild writes a new
//! one beside the serving one). Public so that benchmarks can run a native
//! fold over the same storage as a plugin.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::MappedRwLockReadGuard;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::PluginError;
use crate::durable::ReopenableDb;
use crate::runtime::{Notification, StateView};

/// Key → value, as the plugin wrote it.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// Bookkeeping: `checkpoint` → the last position processed.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Skipped events: position → the error that made the operator skip it.
const PARKED: TableDefinition<u64, &str> = TableDefinition::new("parked");
/// Notifications emitted and committed with the state, not yet posted to the
/// plugin's mailbox: number → (channel, key, payload), in emission order.
const OUTBOX: TableDefinition<u64, (&str, &str, &[u8])> = TableDefinition::new("outbox");

/// One generation's state file.
pub struct PluginStore {
    db: ReopenableDb,
}

impl PluginStore {
    /// Opens (or creates) the state file at `path`.
    pub fn open(path: &Path) -> Result<Arc<Self>, PluginError> {
        let db = ReopenableDb::open(path)?;
        let txn = db.get().ok_or_else(|| closed(path))?.begin_write()?;
        txn.open_table(STATE)?;
        txn.open_table(META)?;
        txn.open_table(PARKED)?;
        txn.open_table(OUTBOX)?;
        txn.commit()?;
        Ok(Arc::new(Self { db }))
    }

    /// The open database, or an error while it reopens.
    fn db(&self) -> Result<MappedRwLockReadGuard<'_, Database>, PluginError> {
        self.db.get().ok_or_else(|| closed(self.db.path()))
    }

    /// Closes the file and opens it again: after an I/O error (a full disk)
    /// redb refuses every operation until then. It holds its last durable
    /// commit afterwards; answers that commit's checkpoint. A file whose
    /// checkpoint cannot be read is left closed, to be reopened again: a
    /// generation never goes on from a checkpoint its state does not hold.
    pub fn reopen(&self) -> Result<u64, PluginError> {
        self.db.reopen()?;
        self.checkpoint().inspect_err(|_| self.db.close())
    }

    /// Whether the file is open (not after a failed [`PluginStore::reopen`]).
    pub fn is_open(&self) -> bool {
        self.db.is_open()
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// The last position whose effects are in this state (0: none).
    pub fn checkpoint(&self) -> Result<u64, PluginError> {
        let txn = self.db()?.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("checkpoint")?.map_or(0, |v| v.value()))
    }

    /// A snapshot of the committed state for one batch (or query) to read.
    pub fn view(&self) -> Result<StateView, PluginError> {
        let txn = self.db()?.begin_read()?;
        Ok(StateView::new(Some(txn.open_table(STATE)?)))
    }

    /// Commits a batch's writes, the notifications it emitted and the new
    /// checkpoint in one transaction. Without `durable` the commit is not
    /// fsynced: a crash may lose it, and then the batch is redone from the
    /// previous durable checkpoint — state, outbox and checkpoint always
    /// move together.
    pub fn commit(
        &self,
        writes: BTreeMap<String, Option<Vec<u8>>>,
        emitted: &[Notification],
        checkpoint: u64,
        durable: bool,
    ) -> Result<(), PluginError> {
        let mut txn = self.db()?.begin_write()?;
        if !durable {
            txn.set_durability(Durability::None)
                .map_err(|e| PluginError::Internal(format!("cannot defer durability: {e}")))?;
        }
        {
            let mut state = txn.open_table(STATE)?;
            for (key, value) in &writes {
                match value {
                    Some(value) => {
                        state.insert(key.as_str(), value.as_slice())?;
                    }
                    None => {
                        state.remove(key.as_str())?;
                    }
                }
            }
            if !emitted.is_empty() {
                let mut outbox = txn.open_table(OUTBOX)?;
                let first = outbox.last()?.map_or(1, |(k, _)| k.value() + 1);
                for (number, n) in (first..).zip(emitted) {
                    outbox.insert(number, (n.channel.as_str(), n.key.as_str(), &n.payload[..]))?;
                }
            }
            txn.open_table(META)?.insert("checkpoint", checkpoint)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Up to `limit` notifications of the outbox, oldest first, with their numbers.
    pub fn outbox(&self, limit: usize) -> Result<Vec<(u64, Notification)>, PluginError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for entry in table.iter()?.take(limit) {
            let (k, v) = entry?;
            let (channel, key, payload) = v.value();
            out.push((
                k.value(),
                Notification {
                    channel: channel.to_owned(),
                    key: key.to_owned(),
                    payload: payload.to_vec(),
                },
            ));
        }
        Ok(out)
    }

    /// Removes the outbox's notifications up to number `through`, once the
    /// mailbox holds them durably. Not fsynced: if a crash brings them back,
    /// the mailbox accepts each key only once.
    pub fn clear_outbox(&self, through: u64) -> Result<(), PluginError> {
        let mut txn = self.db()?.begin_write()?;
        txn.set_durability(Durability::None)
            .map_err(|e| PluginError::Internal(format!("cannot defer durability: {e}")))?;
        txn.open_table(OUTBOX)?
            .retain_in(..=through, |_, _| false)?;
        txn.commit()?;
        Ok(())
    }

    /// Records that the event at `position` was skipped because of `error`,
    /// and moves the checkpoint past it. Durable.
    pub fn park(&self, position: u64, error: &str) -> Result<(), PluginError> {
        let txn = self.db()?.begin_write()?;
        {
            txn.open_table(PARKED)?.insert(position, error)?;
            txn.open_table(META)?.insert("checkpoint", position)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The skipped events, oldest first.
    pub fn parked(&self) -> Result<Vec<(u64, String)>, PluginError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(PARKED)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push((k.value(), v.value().to_owned()));
        }
        Ok(out)
    }

    /// A snapshot of the committed state and the checkpoint it reflects,
    /// read in one transaction: what a read or a query answers from.
    pub fn snapshot(&self) -> Result<(StateView, u64), PluginError> {
        let txn = self.db()?.begin_read()?;
        let checkpoint = txn
            .open_table(META)?
            .get("checkpoint")?
            .map_or(0, |v| v.value());
        Ok((StateView::new(Some(txn.open_table(STATE)?)), checkpoint))
    }

    /// The committed value under `key`, and the checkpoint it reflects.
    pub fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u64), PluginError> {
        let (view, checkpoint) = self.snapshot()?;
        let value = view
            .get(key)
            .map_err(|e| PluginError::Internal(format!("{e:#}")))?;
        Ok((value, checkpoint))
    }

    /// Committed entries whose keys start with `prefix`, after `after`,
    /// and the checkpoint they reflect.
    pub fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Entries, u64), PluginError> {
        let (view, checkpoint) = self.snapshot()?;
        let entries = view
            .scan(prefix, after, limit)
            .map_err(|e| PluginError::Internal(format!("{e:#}")))?;
        Ok((entries, checkpoint))
    }

    /// Makes every earlier commit durable.
    pub fn sync(&self) -> Result<(), PluginError> {
        self.db()?.begin_write()?.commit()?;
        Ok(())
    }
}

/// State entries: keys and values, in key order.
pub type Entries = Vec<(String, Vec<u8>)>;

/// The error of a state file whose reopen has not succeeded yet.
fn closed(path: &Path) -> PluginError {
    PluginError::Internal(format!(
        "{} is reopening after a storage failure",
        path.display()
    ))
}
