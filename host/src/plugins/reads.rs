//! What the API reads of the plugins: statuses, and a plugin's serving
//! state, parked events and query answers. Each read runs its disk and
//! wasm work through [`crate::blocking`].

use std::sync::Arc;

use super::registry::Plugins;
use super::shared::{Serving, Shared};
use super::status::{NotificationStatus, PluginStatus, RunState};
use super::store::Entries;
use super::{PluginError, PluginName};
use crate::blocking;
use crate::notify::{Mailbox, NotificationFeed};

/// Why a read that asked for `min_position` did not wait for it: the
/// plugin's state is not there, and either the wait ran out or the plugin
/// is not moving (failed or paused) so waiting would not help.
#[derive(Debug, Clone)]
pub struct Behind {
    /// The plugin.
    pub plugin: String,
    /// The position asked for.
    pub min_position: u64,
    /// Where the serving state is.
    pub checkpoint: u64,
    /// The plugin's state when the read gave up.
    pub state: RunState,
    /// Whether the wait ran out (else the plugin is failed or paused).
    pub timed_out: bool,
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Behind {
            plugin,
            min_position,
            checkpoint,
            ..
        } = self;
        match self.timed_out {
            true => write!(
                f,
                "plugin {plugin} is at checkpoint {checkpoint}, not yet at position {min_position}: \
                 ask again, or wait longer (wait=)"
            ),
            false => write!(
                f,
                "plugin {plugin} is {} at checkpoint {checkpoint} and will not reach position \
                 {min_position} until it runs again",
                serde_json::to_value(self.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
        }
    }
}

impl Plugins {
    /// Waits until the plugin's serving state includes `min_position`, for
    /// at most `wait`; at once with [`PluginError::Behind`] when the plugin
    /// is failed or paused. Follows the runner's published progress, never
    /// polls.
    pub async fn wait_for(
        &self,
        name: &PluginName,
        min_position: u64,
        wait: std::time::Duration,
    ) -> Result<(), PluginError> {
        let mut progress = self.shared(name)?.progress.subscribe();
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            let now = *progress.borrow_and_update();
            if now.checkpoint >= min_position {
                return Ok(());
            }
            let behind = |timed_out| {
                PluginError::Behind(Behind {
                    plugin: name.to_string(),
                    min_position,
                    checkpoint: now.checkpoint,
                    state: now.state,
                    timed_out,
                })
            };
            if matches!(now.state, RunState::Failed | RunState::Paused) {
                return Err(behind(false));
            }
            tokio::select! {
                changed = progress.changed() => changed.map_err(|_| PluginError::ShuttingDown)?,
                () = &mut deadline => return Err(behind(true)),
            }
        }
    }

    /// The status of one plugin, with the log's head and the lag filled in.
    pub async fn status(&self, name: &PluginName) -> Result<PluginStatus, PluginError> {
        let shared = match self.shared(name) {
            Ok(shared) => shared,
            Err(PluginError::Compiling(_)) => return Ok(PluginStatus::compiling(name)),
            Err(error) => return Err(error),
        };
        let head = self.inner.host.log.head().0;
        blocking::run(move || status_of(&shared, head)).await
    }

    /// The status the plugin's runner last published, without the figures
    /// read from its files: cheap enough to look at every second.
    pub fn published_status(&self, name: &PluginName) -> Result<PluginStatus, PluginError> {
        match self.shared(name) {
            Ok(shared) => Ok(shared.status.read().clone()),
            Err(PluginError::Compiling(_)) => Ok(PluginStatus::compiling(name)),
            Err(error) => Err(error),
        }
    }

    /// The name of every plugin on this node, compiling or running.
    pub fn names(&self) -> Vec<PluginName> {
        let mut names: Vec<PluginName> = self.inner.slots.lock().plugins.keys().cloned().collect();
        names.sort();
        names
    }

    /// The serving component of a running plugin: its SHA-256 and bytes.
    pub async fn component(&self, name: &PluginName) -> Result<(String, Vec<u8>), PluginError> {
        let hash = self.serving(name)?.plugin.hash.clone();
        let dir = self.plugin_dir(name);
        let wasm = {
            let hash = hash.clone();
            blocking::run(move || dir.read_wasm(&hash)).await?
        };
        Ok((hash, wasm))
    }

    /// Every plugin's status, by name.
    pub async fn list(&self) -> Result<Vec<PluginStatus>, PluginError> {
        let names = self.names();
        let mut statuses = Vec::with_capacity(names.len());
        for name in &names {
            match self.status(name).await {
                Ok(status) => statuses.push(status),
                // Removed since the names were taken.
                Err(PluginError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(statuses)
    }

    /// A notifier's mailbox; a conflict for a projection.
    pub fn mailbox(&self, name: &PluginName) -> Result<Arc<Mailbox>, PluginError> {
        self.shared(name)?.mailbox.clone().ok_or_else(|| {
            PluginError::Conflict(format!(
                "plugin {name} is a projection: only notifiers have notifications and webhooks"
            ))
        })
    }

    /// The live feed of every notifier's notifications.
    pub fn feed(&self) -> &NotificationFeed {
        &self.inner.feed
    }

    /// The serving state's value under `key`, and the checkpoint the
    /// answer reflects.
    pub async fn state_get(
        &self,
        name: &PluginName,
        key: String,
    ) -> Result<(Option<Vec<u8>>, u64), PluginError> {
        let serving = self.serving(name)?;
        blocking::run(move || serving.store.get(&key)).await
    }

    /// Serving state entries with keys starting with `prefix`, after
    /// `after`, and the checkpoint the answer reflects.
    pub async fn state_scan(
        &self,
        name: &PluginName,
        prefix: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Entries, u64), PluginError> {
        let serving = self.serving(name)?;
        blocking::run(move || serving.store.scan(&prefix, after.as_deref(), limit)).await
    }

    /// The events the operator skipped, with their errors.
    pub async fn parked(&self, name: &PluginName) -> Result<Vec<(u64, String)>, PluginError> {
        let serving = self.serving(name)?;
        blocking::run(move || serving.store.parked()).await
    }

    /// Runs the plugin's `query` export on a fresh instance over the
    /// serving state; answers with the checkpoint that state reflects.
    pub async fn query(
        &self,
        name: &PluginName,
        request: Vec<u8>,
    ) -> Result<(Result<Vec<u8>, String>, u64), PluginError> {
        let serving = self.serving(name)?;
        let host = self.inner.host.clone();
        let label: Arc<str> = Arc::from(name.as_str());
        blocking::run(move || {
            let mut instance = host
                .runtime
                .instantiate(&serving.plugin, label, host.limits)
                .map_err(|e| PluginError::Call(e.to_string()))?;
            let (view, checkpoint) = serving.store.snapshot()?;
            let answer = instance
                .query(&request, view)
                .map_err(|e| PluginError::Call(e.to_string()))?;
            Ok((answer, checkpoint))
        })
        .await
    }

    fn serving(&self, name: &PluginName) -> Result<Serving, PluginError> {
        Ok(self.shared(name)?.serving())
    }
}

/// A running plugin's status at `head`, with what its files say. Blocking.
fn status_of(shared: &Shared, head: u64) -> Result<PluginStatus, PluginError> {
    let mut status = shared.status.read().clone();
    status.head = head;
    status.lag = head.saturating_sub(status.checkpoint);
    status.parked = shared.serving().store.parked()?.len() as u64;
    if let Some(mailbox) = &shared.mailbox {
        status.notifications = Some(NotificationStatus {
            stats: mailbox.stats()?,
            webhook: mailbox.webhook()?.map(|w| w.view()),
        });
    }
    Ok(status)
}
