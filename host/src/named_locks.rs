//! One async lock per name: changes to one plugin run one at a time, while
//! changes to different plugins go on side by side (the registry's
//! lifecycle locks, the cluster's locks on plugins).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;

/// An async lock per name, made on first use.
pub struct NamedLocks<K> {
    locks: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K: Eq + Hash + Clone> NamedLocks<K> {
    /// Waits for the lock of `name`. Locks nobody holds or waits for are
    /// dropped on the way, so names that clients make up (a remove of a
    /// plugin that does not exist) leave nothing behind.
    pub async fn lock(&self, name: &K) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock();
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            locks.entry(name.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

impl<K> Default for NamedLocks<K> {
    fn default() -> Self {
        Self {
            locks: Mutex::new(HashMap::new()),
        }
    }
}
