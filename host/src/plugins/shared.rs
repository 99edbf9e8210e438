//! What a plugin's runner shares with the registry and the API: the status
//! it publishes and the generation that reads and queries use.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use parking_lot::RwLock;
use tokio::sync::watch;

use super::PluginName;
use super::status::{PluginStatus, RunState};
use super::store::PluginStore;
use crate::notify::Mailbox;
use crate::runtime::{LoadedPlugin, PluginKind};

/// The serving generation: what reads and queries use.
#[derive(Clone)]
pub(super) struct Serving {
    pub plugin: LoadedPlugin,
    pub store: Arc<PluginStore>,
}

/// One plugin as the runner, the registry and the API see it.
pub(super) struct Shared {
    pub name: PluginName,
    /// Written by the runner after each step.
    pub status: RwLock<PluginStatus>,
    /// Swapped by the runner when a rebuild catches up.
    pub serving: RwLock<Serving>,
    /// A notifier's mailbox (`None` for a projection).
    pub mailbox: Option<Arc<Mailbox>>,
    /// The newest generation handed to the runner: a rebuild takes the next.
    pub latest_generation: AtomicU64,
    /// The serving generation's checkpoint and the run state, as the runner
    /// last published them: what a read with `min_position` waits on.
    pub progress: watch::Sender<Progress>,
}

/// How far the serving state is, and whether it is moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The last position the serving state includes.
    pub checkpoint: u64,
    /// See [`RunState`].
    pub state: RunState,
}

impl Shared {
    /// The serving generation.
    pub fn serving(&self) -> Serving {
        self.serving.read().clone()
    }

    /// The kind of plugin it is (a deploy may not change it).
    pub fn kind(&self) -> PluginKind {
        self.serving.read().plugin.kind()
    }
}
