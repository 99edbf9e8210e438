//! A notifier's mailbox (`data-dir/plugins/<name>/mailbox.redb`): the
//! notifications it has emitted, in order, each key at most once; how far
//! the webhook has delivered them; dead letters; the webhook's settings.
//!
//! It belongs to the plugin, not to a generation: a replay rebuilds state
//! beside the serving version, but what was sent stays sent.
//!
//! Delivered notifications are deleted once past the [`Retention`]; their
//! keys stay for ever as 16-byte digests, because a replay from position 0
//! can always emit them again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::MappedRwLockReadGuard;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableHandle, WriteTransaction,
};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::feed::NotificationFeed;
use super::webhook::WebhookConfig;
use super::{NotifyError, StoredNotification};
use crate::durable::ReopenableDb;
use crate::runtime::Notification;

/// Sequence → (channel, key, payload, emitted at µs). Gapless from 1.
const LOG: TableDefinition<u64, (&str, &str, &[u8], u64)> = TableDefinition::new("notifications");
/// The digest of every key accepted (see [`key_digest`]): a key here is
/// never accepted (so never sent) again.
const KEY_DIGESTS: TableDefinition<u128, ()> = TableDefinition::new("key_digests");
/// Key → sequence, as mailboxes kept keys before digests; moved into
/// [`KEY_DIGESTS`] when such a mailbox is opened.
const LEGACY_KEYS: TableDefinition<&str, u64> = TableDefinition::new("keys");
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
/// Every delivered notification up to this sequence has been looked at by
/// [`prune`]: those past the retention are gone, dead letters stay.
const META_PRUNED: &str = "pruned_through";
/// Most notifications one [`prune`] deletes, so that no transaction is long.
const PRUNE_BATCH: usize = 4096;

/// How long delivered notifications stay readable (`GET
/// /plugins/{name}/notifications`): a delivered one goes once it is older
/// than `max_age` or more than `max_count` delivered ones follow it.
/// Notifications not yet delivered and dead letters are never deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Delete delivered notifications emitted longer ago than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many delivered notifications.
    pub max_count: Option<u64>,
}

impl Default for Retention {
    /// A week, and a million notifications.
    fn default() -> Self {
        Self {
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_count: Some(1_000_000),
        }
    }
}

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
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
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
    retention: Retention,
    /// Woken when there is something new to deliver or the settings changed.
    pub wake: Notify,
    feed: NotificationFeed,
}

impl Mailbox {
    /// Opens (or creates) the mailbox file at `path` of plugin `plugin`,
    /// and deletes the delivered notifications past `retention`.
    pub fn open(
        path: &Path,
        plugin: &str,
        feed: NotificationFeed,
        retention: Retention,
    ) -> Result<Self, NotifyError> {
        let db = ReopenableDb::open(path)?;
        let txn = db.get().ok_or_else(closed)?.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(KEY_DIGESTS)?;
        txn.open_table(META)?;
        txn.open_table(DEAD)?;
        txn.open_table(RETRY)?;
        txn.open_table(SINK)?;
        migrate_legacy_keys(&txn)?;
        let cursor = txn
            .open_table(META)?
            .get(META_CURSOR)?
            .map_or(0, |v| v.value());
        prune(&txn, &retention, cursor)?;
        txn.commit()?;
        Ok(Self {
            plugin: plugin.into(),
            db,
            retention,
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
        let keys = txn.open_table(KEY_DIGESTS)?;
        let mut fresh = Vec::with_capacity(emitted.len());
        for n in emitted {
            if keys.get(key_digest(&n.key))?.is_none() {
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
            let mut keys = txn.open_table(KEY_DIGESTS)?;
            let mut meta = txn.open_table(META)?;
            let mut last = meta.get(META_LAST)?.map_or(0, |v| v.value());
            for n in notifications {
                if keys.insert(key_digest(&n.key), ())?.is_some() {
                    continue;
                }
                last += 1;
                log.insert(
                    last,
                    (n.channel.as_str(), n.key.as_str(), &n.payload[..], at),
                )?;
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
    /// letters leave the retry list. Delivered notifications past the
    /// retention are deleted in the same transaction. Not fsynced: a crash
    /// may deliver again what was delivered just before (at least once;
    /// receivers dedupe by `webhook-id`), never less.
    pub fn record(&self, outcomes: &[(u64, bool, Outcome)]) -> Result<(), NotifyError> {
        let mut txn = self.db()?.begin_write()?;
        txn.set_durability(Durability::None)
            .map_err(|e| NotifyError::Corrupt(format!("cannot defer durability: {e}")))?;
        let cursor = {
            let mut meta = txn.open_table(META)?;
            let mut dead = txn.open_table(DEAD)?;
            let mut retry_list = txn.open_table(RETRY)?;
            let mut log = txn.open_table(LOG)?;
            let pruned = meta.get(META_PRUNED)?.map_or(0, |v| v.value());
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
                        // Its neighbours are gone already: it goes too.
                        if *sequence <= pruned {
                            log.remove(*sequence)?;
                        }
                    }
                } else {
                    cursor = cursor.max(*sequence);
                }
            }
            meta.insert(META_DELIVERED, delivered)?;
            meta.insert(META_FAILED, failed)?;
            meta.insert(META_DEAD, dead_lettered)?;
            meta.insert(META_CURSOR, cursor)?;
            cursor
        };
        prune(&txn, &self.retention, cursor)?;
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

/// Deletes up to [`PRUNE_BATCH`] delivered notifications (at or below
/// `cursor`) past `retention`, oldest first; dead letters stay.
fn prune(txn: &WriteTransaction, retention: &Retention, cursor: u64) -> Result<(), NotifyError> {
    let mut meta = txn.open_table(META)?;
    let mut log = txn.open_table(LOG)?;
    let dead = txn.open_table(DEAD)?;
    let pruned = meta.get(META_PRUNED)?.map_or(0, |v| v.value());
    if cursor <= pruned {
        return Ok(());
    }
    let beyond_count = retention
        .max_count
        .map_or(0, |count| cursor.saturating_sub(count));
    let emitted_before = retention
        .max_age
        .map_or(0, |age| now_micros().saturating_sub(age.as_micros() as u64));
    let mut through = pruned;
    let mut doomed = Vec::new();
    for entry in log
        .range(pruned.saturating_add(1)..=cursor)?
        .take(PRUNE_BATCH)
    {
        let (sequence, record) = entry?;
        let (sequence, (_, _, _, emitted_at)) = (sequence.value(), record.value());
        if sequence > beyond_count && emitted_at >= emitted_before {
            break;
        }
        through = sequence;
        if dead.get(sequence)?.is_none() {
            doomed.push(sequence);
        }
    }
    if through == pruned {
        return Ok(());
    }
    for sequence in doomed {
        log.remove(sequence)?;
    }
    meta.insert(META_PRUNED, through)?;
    Ok(())
}

/// The compact form of a notification key: the first 16 bytes of its
/// SHA-256. A cryptographic digest, so that keys built from input nobody
/// trusts cannot be made to collide (one key would then hide another).
fn key_digest(key: &str) -> u128 {
    let digest = Sha256::digest(key.as_bytes());
    let mut head = [0u8; 16];
    head.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(head)
}

/// Moves the keys of a mailbox written before digests into [`KEY_DIGESTS`].
fn migrate_legacy_keys(txn: &WriteTransaction) -> Result<(), NotifyError> {
    if !txn
        .list_tables()?
        .any(|table| table.name() == LEGACY_KEYS.name())
    {
        return Ok(());
    }
    {
        let legacy = txn.open_table(LEGACY_KEYS)?;
        let mut digests = txn.open_table(KEY_DIGESTS)?;
        for entry in legacy.iter()? {
            digests.insert(key_digest(entry?.0.value()), ())?;
        }
    }
    txn.delete_table(LEGACY_KEYS)?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(key: &str) -> Notification {
        Notification {
            channel: "webhook".into(),
            key: key.into(),
            payload: b"{}".to_vec(),
        }
    }

    fn keys(mailbox: &Mailbox) -> Vec<String> {
        let read = mailbox.read(0, 100).unwrap();
        read.into_iter().map(|n| n.key).collect()
    }

    fn open(dir: &tempfile::TempDir, retention: Retention) -> Mailbox {
        let path = dir.path().join("mailbox.redb");
        Mailbox::open(&path, "n", NotificationFeed::new(), retention).unwrap()
    }

    fn deliver(mailbox: &Mailbox, sequences: std::ops::RangeInclusive<u64>) {
        let outcomes: Vec<_> = sequences
            .map(|s| (s, false, Outcome::Delivered { failed: 0 }))
            .collect();
        mailbox.record(&outcomes).unwrap();
    }

    #[test]
    fn delivered_notifications_past_the_count_go_and_their_keys_stay() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            max_age: None,
            max_count: Some(3),
        };
        let mailbox = open(&dir, retention);
        let all: Vec<_> = (1..=10).map(|i| notification(&format!("k{i}"))).collect();
        assert_eq!(mailbox.accept(&all).unwrap(), 10);
        deliver(&mailbox, 1..=6);
        // Delivered 1..=6, of which the newest 3 stay; 7..=10 are pending.
        assert_eq!(keys(&mailbox), ["k4", "k5", "k6", "k7", "k8", "k9", "k10"]);
        // A replay emits all of them again: nothing is accepted twice.
        assert!(mailbox.drop_known(all.clone()).unwrap().is_empty());
        assert_eq!(mailbox.accept(&all).unwrap(), 0);
        let stats = mailbox.stats().unwrap();
        assert_eq!((stats.emitted, stats.pending, stats.delivered), (10, 4, 6));
    }

    #[test]
    fn dead_letters_and_pending_notifications_outlive_the_age() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            max_age: Some(Duration::ZERO),
            max_count: None,
        };
        let mailbox = open(&dir, retention);
        let all: Vec<_> = (1..=4).map(|i| notification(&format!("k{i}"))).collect();
        mailbox.accept(&all).unwrap();
        let dead = Outcome::Dead {
            attempts: 3,
            error: "refused".into(),
        };
        let delivered = Outcome::Delivered { failed: 0 };
        mailbox
            .record(&[(1, false, delivered.clone()), (2, false, dead)])
            .unwrap();
        mailbox.record(&[(3, false, delivered.clone())]).unwrap();
        assert_eq!(keys(&mailbox), ["k2", "k4"]);
        assert_eq!(mailbox.dead_letters(0, 10).unwrap().len(), 1);
        // The dead letter, retried and delivered, goes like its neighbours.
        assert!(mailbox.retry_dead_letter(2).unwrap());
        mailbox.record(&[(2, true, delivered)]).unwrap();
        assert_eq!(keys(&mailbox), ["k4"]);
        assert!(mailbox.dead_letters(0, 10).unwrap().is_empty());
    }

    #[test]
    fn a_mailbox_with_the_old_key_table_keeps_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailbox.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(LEGACY_KEYS)
                .unwrap()
                .insert("k1", 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let mailbox = open(&dir, Retention::default());
        let fresh = mailbox
            .drop_known(vec![notification("k1"), notification("k2")])
            .unwrap();
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].key, "k2");
        let txn = mailbox.db().unwrap().begin_read().unwrap();
        assert!(
            !txn.list_tables()
                .unwrap()
                .any(|t| t.name() == LEGACY_KEYS.name())
        );
    }
}
