//! The live feed of notifications (`GET /notifications/live`): every
//! notification a mailbox accepts, fanned out to whoever listens.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::StoredNotification;

/// How many notifications a slow listener may fall behind before it misses
/// some (it is told, and can catch up from the pull API).
const CAPACITY: usize = 4096;

/// One notification on the feed, with the plugin that emitted it.
#[derive(Debug, Clone)]
pub struct FeedItem {
    /// The notifier's name.
    pub plugin: Arc<str>,
    /// The notification.
    pub notification: StoredNotification,
}

/// The fan-out of accepted notifications. Cheap to clone.
#[derive(Clone)]
pub struct NotificationFeed {
    sender: broadcast::Sender<Arc<FeedItem>>,
}

impl NotificationFeed {
    /// A feed with no listeners yet.
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
        }
    }

    /// Sends `notification` to every listener (none listening is fine).
    pub fn publish(&self, plugin: &Arc<str>, notification: StoredNotification) {
        let _ = self.sender.send(Arc::new(FeedItem {
            plugin: plugin.clone(),
            notification,
        }));
    }

    /// A new listener: it gets what is published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedItem>> {
        self.sender.subscribe()
    }
}

impl Default for NotificationFeed {
    fn default() -> Self {
        Self::new()
    }
}
