//! Notifications: what notifier plugins emit, and getting it out of the host.
//!
//! A notifier's `notify.emit` calls land in its generation's outbox, in the
//! same transaction as its state and checkpoint (`crate::plugins`). After
//! that commit the runner posts them into the plugin's [`Mailbox`], which
//! keeps each key at most once, so replaying a notifier never sends history
//! again. From the mailbox, a [`dispatcher`] per plugin delivers them to the
//! plugin's webhook (signed, retried, rate-limited, dead-lettered), and the
//! [`NotificationFeed`] carries them to live SSE subscribers.
//!
//! Owns delivery. It takes notifications in the form the runtime hands them
//! over (`crate::runtime::Notification`) and stamps them with the log's
//! timestamp format; it never calls a plugin or reads the log.

pub mod dispatcher;
mod feed;
mod handover;
mod mailbox;
pub mod webhook;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub use feed::{FeedItem, NotificationFeed};
pub use handover::{Handover, KeyId, Ledger, Ownership, SharedHandover, key_id};
pub use mailbox::{DeadLetter, Mailbox, MailboxStats, Outcome, Retention};
pub use webhook::{WebhookConfig, WebhookRequest};

use crate::log::format_timestamp;

/// A failure of a mailbox or a webhook setting.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The webhook settings are not acceptable.
    #[error("{0}")]
    InvalidWebhook(String),
    /// Something stored could not be read back.
    #[error("corrupt mailbox: {0}")]
    Corrupt(String),
    /// The mailbox file failed.
    #[error("mailbox storage: {0}")]
    Storage(#[from] redb::Error),
    /// The mailbox file is closed: a reopen after a storage failure has not
    /// succeeded yet.
    #[error("the mailbox is reopening after a storage failure")]
    Reopening,
    /// A blocking task could not run to completion.
    #[error("internal: {0}")]
    Internal(String),
}

from_redb_errors!(NotifyError);

impl NotifyError {
    /// Whether the storage failed under the mailbox (an I/O error such as a
    /// full disk, redb refusing writes after one, or a reopen not yet
    /// done): the mailbox must be reopened.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            NotifyError::Reopening
                | NotifyError::Storage(redb::Error::Io(_) | redb::Error::PreviousIo)
        )
    }
}

impl From<tokio::task::JoinError> for NotifyError {
    fn from(error: tokio::task::JoinError) -> Self {
        NotifyError::Internal(format!("blocking task failed: {error}"))
    }
}

/// SHA-256 of a plugin's name, a zero byte and a key: what a
/// notification's identity is made from.
fn key_digest(plugin: &str, key: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(plugin.as_bytes());
    hash.update([0]);
    hash.update(key.as_bytes());
    hash.finalize().into()
}

/// A notification as the mailbox keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNotification {
    /// Its place in the plugin's notifications: gapless from 1.
    pub sequence: u64,
    /// Where it goes, e.g. `webhook`.
    pub channel: String,
    /// Its identity: the plugin's dedupe key.
    pub key: String,
    /// What the plugin emitted (JSON when emitted through the Rust SDK).
    pub payload: Vec<u8>,
    /// When it was accepted, µs since the epoch.
    pub emitted_at: u64,
}

impl StoredNotification {
    /// Its stable identity across crashes and replays, derived from the
    /// plugin's name and the key: the `webhook-id` receivers dedupe by.
    pub fn id(&self, plugin: &str) -> String {
        let hex: String = handover::key_id(plugin, &self.key)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("msg_{hex}")
    }

    /// The JSON a receiver gets (webhook body, SSE data, pull API):
    /// `{"id", "plugin", "sequence", "channel", "key", "timestamp", "data"}`,
    /// `data` being the payload as JSON (or as a string when it is not JSON).
    pub fn to_json(&self, plugin: &str) -> Value {
        let data = serde_json::from_slice(&self.payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.payload).into_owned()));
        json!({
            "id": self.id(plugin),
            "plugin": plugin,
            "sequence": self.sequence,
            "channel": self.channel,
            "key": self.key,
            "timestamp": format_timestamp(self.emitted_at),
            "data": data,
        })
    }
}
