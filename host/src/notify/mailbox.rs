//! A notifier's mailbox (`data-dir/plugins/<name>/mailbox.redb`): the
//! notifications it has emitted, in order, each key at most once; how far
//! the webhook has delivered them; dead letters; the webhook's settings.
//!
//! It belongs to the plugin, not to a generation: a replay rebuilds state
//! beside the serving version, but what was sent stays sent.

use std::path::Path;
use std::sync::Arc;

use parking_lot::MappedRwLockReadGuard;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use tokio::sync::Notify;

use super::feed::NotificationFeed;
use super::webhook::WebhookConfig;
use super::{NotifyError, StoredNotification};
use crate::durable::ReopenableDb;
use crate::runtime::Notification;

/// Sequence → (channel, key, payload, emitted at µs). Gapless from 1.
const LOG: TableDefinition<u64, (&str, &str, &[u8], u64)> = TableDefinition::new("notifications");
/// Key → sequence: a key here is never accepted (so never sent) again.
const KEYS: TableDefinition<&str, u64> = TableDefinition::new("keys");
/// Counters and the webhook's cursor (see the `META_*` names).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Dead letters: sequence → (attempts, last error, when µs).
const DEAD: TableDefinition<u64, (u32, &str, u64)> = TableDefinition::new("dead_letters");
/// Dead letters the operator asked to send again.
const RETRY: TableDefinition<u64, ()> = TableDefinition::new("retry");
/// `webhook` → its settings as JSON (secret included: it never leaves the host).
const SINK: TableDefinition<&str, &[u8]> = TableDefinition::new("sink");

const META_LAST: &str = "last_sequence";
const META_CURSOR: &str = "webhook_cursor";
const META_DELIVERED: &str = "delivered";
const META_FAILED: &str = "failed_attempts";
const META_DEAD: &str = "dead_lettered";

/// How one delivery ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The receiver answered 2xx, after `failed` failed attempts.
    Delivered {
        /// Attempts that failed before the one that succeeded.
        failed: u32,
    },
    /// Not for the webhook (its channel is not one the webhook takes).
    Skipped,
    /// Every attempt failed: the notification is now a dead letter.
    Dead {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        error: String,
    },
}

/// A dead letter: a notification the webhook never accepted.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The notification.
    pub notification: StoredNotification,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub error: String,
    /// When it was given up on (µs since the epoch).
    pub at: u64,
    /// Whether a retry has been asked for and not yet made.
    pub retrying: bool,
}

/// Counters of a mailbox, for the plugin's status and `/metrics`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MailboxStats {
    /// Notifications accepted so far (the last sequence).
    pub emitted: u64,
    /// Accepted but not yet delivered to the webhook (or without a webhook: waiting for one).
    pub pending: u64,
    /// Delivered to the webhook.
    pub delivered: u64,
    /// Delivery attempts that failed (each retry counts).
    pub failed_attempts: u64,
    /// Notifications that ended as dead letters (retried ones included).
    pub dead_lettered: u64,
    /// Dead letters now held.
    pub dead_letters: u64,
    /// Seconds since the oldest pending notification was emitted.
    pub oldest_pending_age_secs: Option<f64>,
}

/// A notifier's mailbox. Shared by the runner (which posts into it), the
/// dispatcher (which delivers from it) and the API (which reads it).
pub struct Mailbox {
    plugin: Arc<str>,
    db: ReopenableDb,
    /// Woken when there is something new to deliver or the settings changed.
    pub wake: Notify,
    feed: NotificationFeed,
}

impl Mailbox {
    /// Opens (or creates) the mailbox file at `path` of plugin `plugin`.
    pub fn open(path: &Path, plugin: &str, feed: NotificationFeed) -> Result<Self, NotifyError> {
        let db = ReopenableDb::open(path)?;
        let txn = db.get().ok_or_else(closed)?.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(KEYS)?;
        txn.open_table(META)?;
        txn.open_table(DEAD)?;
        txn.open_table(RETRY)?;
        txn.open_table(SINK)?;
        txn.commit()?;
        Ok(Self {
            plugin: plugin.into(),
            db,
            wake: Notify::new(),
            feed,
        })
    }

    /// The open database, or an error while it reopens.
    fn db(&self) -> Result<MappedRwLockReadGuard<'_, Database>, NotifyError> {
        self.db.get().ok_or_else(closed)
    }

    /// Closes the file and opens it again, after a storage failure (a full
    /// disk): redb refuses every write until then. It holds its last durable
    /// commit afterwards; what went since (accepted keys, a cursor moved
    /// without an fsync) is accepted or delivered again, at least once.
    pub fn reopen(&self) -> Result<(), NotifyError> {
        Ok(self.db.reopen()?)
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &Arc<str> {
        &self.plugin
    }

    /// Drops the notifications whose keys were already accepted: a replay
    /// re-emits history, and history is not sent twice.
    pub fn drop_known(&self, emitted: Vec<Notification>) -> Result<Vec<Notification>, NotifyError> {
        if emitted.is_empty() {
            return Ok(emitted);
        }
        let txn = self.db()?.begin_read()?;
        let keys = txn.open_table(KEYS)?;
        let mut fresh = Vec::with_capacity(emitted.len());
        for n in emitted {
            if keys.get(n.key.as_str())?.is_none() {
                fresh.push(n);
            }
        }
        Ok(fresh)
    }

    /// Appends the notifications whose keys are new to the log, durably,
    /// then publishes them on the live feed and wakes the dispatcher.
    /// Idempotent: posting the same keys again accepts nothing.
    pub fn accept(&self, notifications: &[Notification]) -> Result<usize, NotifyError> {
        if notifications.is_empty() {
            return Ok(0);
        }
        let at = now_micros();
        let mut accepted = Vec::new();
        let txn = self.db()?.begin_write()?;
        {
            let mut log = txn.open_table(LOG)?;
            let mut keys = txn.open_table(KEYS)?;
            let mut meta = txn.open_table(META)?;
            let mut last = meta.get(META_LAST)?.map_or(0, |v| v.value());
            for n in notifications {
                if keys.get(n.key.as_str())?.is_some() {
                    continue;
                }
                last += 1;
                log.insert(
                    last,
                    (n.channel.as_str(), n.key.as_str(), &n.payload[..], at),
                )?;
                keys.insert(n.key.as_str(), last)?;
                accepted.push(StoredNotification {
                    sequence: last,
                    channel: n.channel.clone(),
                    key: n.key.clone(),
                    payload: n.payload.clone(),
                    emitted_at: at,
                });
            }
            meta.insert(META_LAST, last)?;
        }
        // Durable before the outbox that held them is cleared.
        txn.commit()?;
        let count = accepted.len();
        for notification in accepted {
            self.feed.publish(&self.plugin, notification);
        }
        if count > 0 {
            self.wake.notify_one();
        }
        Ok(count)
    }

    /// Up to `limit` notifications after sequence `after`, in order.
    pub fn read(&self, after: u64, limit: usize) -> Result<Vec<StoredNotification>, NotifyError> {
        let txn = self.db()?.begin_read()?;
        let log = txn.open_table(LOG)?;
        let mut out = Vec::new();
        for entry in log.range(after.saturating_add(1)..)?.take(limit) {
            let (k, v) = entry?;
            out.push(stored(k.value(), v.value()));
        }
        Ok(out)
    }

    /// The notification with this sequence.
    pub fn get(&self, sequence: u64) -> Result<Option<StoredNotification>, NotifyError> {
        let txn = self.db()?.begin_read()?;
        let log = txn.open_table(LOG)?;
        Ok(log.get(sequence)?.map(|v| stored(sequence, v.value())))
    }

    /// The webhook's settings, if one is set.
    pub fn webhook(&self) -> Result<Option<WebhookConfig>, NotifyError> {
        let txn = self.db()?.begin_read()?;
        let sink = txn.open_table(SINK)?;
        match sink.get("webhook")? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(bytes.value())
                .map(Some)
                .map_err(|e| NotifyError::Corrupt(format!("webhook settings: {e}"))),
        }
    }

    /// Sets (or with `None` removes) the webhook, durably, and wakes the dispatcher.
    pub fn set_webhook(&self, config: Option<&WebhookConfig>) -> Result<(), NotifyError> {
        let txn = self.db()?.begin_write()?;
        {
            let mut sink = txn.open_table(SINK)?;
            match config {
                Some(config) => {
                    let bytes = serde_json::to_vec(config)
                        .map_err(|e| NotifyError::Corrupt(e.to_string()))?;
                    sink.insert("webhook", bytes.as_slice())?;
                }
                None => {
                    sink.remove("webhook")?;
                }
            }
        }
        txn.commit()?;
        self.wake.notify_one();
        Ok(())
    }

    /// The last sequence delivered (or dead-lettered) in order.
    pub fn cursor(&self) -> Result<u64, NotifyError> {
        let txn = self.db()?.begin_read()?;
        meta(&txn, META_CURSOR)
    }

    /// Records how deliveries ended: `(sequence, retry, outcome)` each, in
    /// one transaction. In-order deliveries move the cursor; retried dead
    /// letters leave the retry list. Not fsynced: a crash may deliver again
    /// what was delivered just before (at least once; receivers dedupe by
    /// `webhook-id`), never less.
    pub fn record(&self, outcomes: &[(u64, bool, Outcome)]) -> Result<(), NotifyError> {
        let mut txn = self.db()?.begin_write()?;
        txn.set_durability(Durability::None)
            .map_err(|e| NotifyError::Corrupt(format!("cannot defer durability: {e}")))?;
        {
            let mut meta = txn.open_table(META)?;
            let mut dead = txn.open_table(DEAD)?;
            let mut retry_list = txn.open_table(RETRY)?;
            let counter = |name: &str| -> Result<u64, NotifyError> {
                Ok(meta.get(name)?.map_or(0, |v| v.value()))
            };
            let (mut delivered, mut failed, mut dead_lettered, mut cursor) = (
                counter(META_DELIVERED)?,
                counter(META_FAILED)?,
                counter(META_DEAD)?,
                counter(META_CURSOR)?,
            );
            for (sequence, retry, outcome) in outcomes {
                match outcome {
                    Outcome::Delivered { failed: f } => {
                        delivered += 1;
                        failed += u64::from(*f);
                    }
                    Outcome::Skipped => {}
                    Outcome::Dead { attempts, error } => {
                        dead_lettered += 1;
                        failed += u64::from(*attempts);
                        dead.insert(*sequence, (*attempts, error.as_str(), now_micros()))?;
                    }
                }
                if *retry {
                    retry_list.remove(*sequence)?;
                    if !matches!(outcome, Outcome::Dead { .. }) {
                        dead.remove(*sequence)?;
                    }
                } else {
                    cursor = cursor.max(*sequence);
                }
            }
            meta.insert(META_DELIVERED, delivered)?;
            meta.insert(META_FAILED, failed)?;
            meta.insert(META_DEAD, dead_lettered)?;
            meta.insert(META_CURSOR, cursor)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Makes every recorded outcome durable.
    pub fn sync(&self) -> Result<(), NotifyError> {
        self.db()?.begin_write()?.commit()?;
        Ok(())
    }

    /// Up to `limit` dead letters after sequence `after`.
    pub fn dead_letters(&self, after: u64, limit: usize) -> Result<Vec<DeadLetter>, NotifyError> {
        let txn = self.db()?.begin_read()?;
        let dead = txn.open_table(DEAD)?;
        let log = txn.open_table(LOG)?;
        let retry = txn.open_table(RETRY)?;
        let mut out = Vec::new();
        for entry in dead.range(after.saturating_add(1)..)?.take(limit) {
            let (k, v) = entry?;
            let sequence = k.value();
            let (attempts, error, at) = v.value();
            let Some(record) = log.get(sequence)? else {
                continue;
            };
            out.push(DeadLetter {
                notification: stored(sequence, record.value()),
                attempts,
                error: error.to_owned(),
                at,
                retrying: retry.get(sequence)?.is_some(),
            });
        }
        Ok(out)
    }

    /// Puts dead letter `sequence` on the retry list (it stays a dead letter
    /// until the retry delivers it); false if there is no such dead letter.
    pub fn retry_dead_letter(&self, sequence: u64) -> Result<bool, NotifyError> {
        let txn = self.db()?.begin_write()?;
        let found = {
            let found = txn.open_table(DEAD)?.get(sequence)?.is_some();
            if found {
                txn.open_table(RETRY)?.insert(sequence, ())?;
            }
            found
        };
        txn.commit()?;
        if found {
            self.wake.notify_one();
        }
        Ok(found)
    }

    /// The dead letters waiting to be sent again, oldest first.
    pub fn retries(&self) -> Result<Vec<u64>, NotifyError> {
        let txn = self.db()?.begin_read()?;
        let retry = txn.open_table(RETRY)?;
        let mut out = Vec::new();
        for entry in retry.iter()? {
            out.push(entry?.0.value());
        }
        Ok(out)
    }

    /// The mailbox's counters.
    pub fn stats(&self) -> Result<MailboxStats, NotifyError> {
        let txn = self.db()?.begin_read()?;
        let emitted = meta(&txn, META_LAST)?;
        let cursor = meta(&txn, META_CURSOR)?;
        let log = txn.open_table(LOG)?;
        let oldest_pending_age_secs = match log.get(cursor + 1)? {
            Some(v) => {
                let (_, _, _, at) = v.value();
                Some(now_micros().saturating_sub(at) as f64 / 1e6)
            }
            None => None,
        };
        Ok(MailboxStats {
            emitted,
            pending: emitted.saturating_sub(cursor),
            delivered: meta(&txn, META_DELIVERED)?,
            failed_attempts: meta(&txn, META_FAILED)?,
            dead_lettered: meta(&txn, META_DEAD)?,
            dead_letters: txn.open_table(DEAD)?.len()?,
            oldest_pending_age_secs,
        })
    }
}

fn meta(txn: &ReadTransaction, name: &str) -> Result<u64, NotifyError> {
    Ok(txn.open_table(META)?.get(name)?.map_or(0, |v| v.value()))
}

fn stored(
    sequence: u64,
    (channel, key, payload, at): (&str, &str, &[u8], u64),
) -> StoredNotification {
    StoredNotification {
        sequence,
        channel: channel.to_owned(),
        key: key.to_owned(),
        payload: payload.to_vec(),
        emitted_at: at,
    }
}

/// Microseconds since the Unix epoch.
pub(super) fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The error of a mailbox whose reopen has not succeeded yet.
fn closed() -> NotifyError {
    NotifyError::Reopening
}
