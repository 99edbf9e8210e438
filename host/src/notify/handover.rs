//! Which node delivers a notifier's notifications, when several nodes share
//! one log (`docs/design.md`, "Several nodes").
//!
//! Every node that holds a notifier runs it and fills its own mailbox: the
//! same log and the same code accept the same keys. Only the node that owns
//! the notifier's lease delivers them. The keys delivered so far are kept
//! in the cluster's delivery ledger, so that a node that takes the lease
//! over passes what the previous owner delivered instead of sending it
//! again.
//!
//! This module says what the dispatcher needs of that arrangement; the
//! cluster (`crate::cluster`) provides it. A single node has no handover:
//! its dispatcher delivers everything its mailbox holds.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::NotifyError;

/// The 16 bytes a key is known by in the ledger: the start of SHA-256 of
/// the plugin's name and the key, as in the notification's `webhook-id`.
pub type KeyId = [u8; 16];

/// Hands out the ownership of notifiers among nodes.
pub trait Handover: Send + Sync + std::fmt::Debug {
    /// Starts contending for the lease of `plugin`'s delivery. Contention
    /// ends, and a lease held is given up, when the [`Ownership`] is dropped.
    fn contend(&self, plugin: &str) -> Ownership;
}

/// What this node knows of one notifier's lease: whether it owns it, and
/// the record of what was delivered.
pub struct Ownership {
    /// True while this node owns the lease.
    pub owner: watch::Receiver<bool>,
    /// The keys delivered by any node.
    pub ledger: Arc<dyn Ledger>,
    /// Ends contention when dropped.
    pub _contention: Box<dyn Send + Sync>,
}

/// The keys a notifier's owners have delivered, kept in the cluster.
pub trait Ledger: Send + Sync {
    /// Every key delivered so far.
    fn delivered(&self) -> BoxFuture<'_, Result<HashSet<KeyId>, NotifyError>>;
    /// Records keys as delivered, durably, before it answers.
    fn record(&self, keys: Vec<KeyId>) -> BoxFuture<'_, Result<(), NotifyError>>;
}

/// A shared ownership, as the registry hands it to a dispatcher.
pub type SharedHandover = Arc<dyn Handover>;

/// `plugin`'s key as the ledger knows it.
pub fn key_id(plugin: &str, key: &str) -> KeyId {
    let digest = super::key_digest(plugin, key);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}
