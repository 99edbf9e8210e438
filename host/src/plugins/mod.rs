//! Plugins: the registry of deployed plugins, one runner thread per plugin,
//! each plugin's state file and checkpoint, replay and the blue/green swap
//! (`docs/design.md#the-plugin-runner`).
//!
//! - `registry.rs`: [`Plugins`]: restore, deploy, replay, remove, commands;
//!   `reads.rs`: the reads the API makes of it.
//! - `runner.rs`: the runner thread of one plugin; `generation.rs`: one
//!   version of its code and the step that moves its checkpoint;
//!   `reactor.rs`: what a reactor's batch appends, exactly once.
//! - `shared.rs`: what a runner shares with the registry and the API;
//!   `status.rs`: the status it publishes.
//! - `files.rs`: a plugin's directory; `store.rs`: a generation's state file.
//! - `watch.rs`: `serve --plugins-dir`.
//!
//! Where a plugin's checkpoint moves: `Generation::process`
//! (`generation.rs`), which commits a batch's state writes and the new
//! checkpoint in one transaction (after appending a reactor's outputs), and
//! an operator's skip, which parks the
//! failed event and moves past it.

mod files;
mod generation;
mod reactor;
mod reads;
mod registry;
mod runner;
mod shared;
mod status;
mod store;
mod throttle;
mod watch;

use std::fmt;

pub use generation::MAX_BATCH;
pub use reactor::{OutputIds, OutputMarks, SharedOutputMarks};
pub use reads::Behind;
pub use registry::{DeployOutcome, Plugins, PluginsConfig};
pub use status::{NotificationStatus, PluginStatus, RebuildStatus, RunState};
pub use store::PluginStore;
pub use watch::{DeployFiles, watch_dir};

use crate::log::LogError;
use crate::runtime::RuntimeError;

/// A validated plugin name: 1–64 of `a-z 0-9 - _`, starting with a letter or
/// digit (it names a directory).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PluginName(String);

impl PluginName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, PluginError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && name.as_bytes()[0].is_ascii_alphanumeric()
            // `/plugins/live` is the live feed of every plugin's status.
            && name != "live";
        if ok {
            Ok(Self(name))
        } else {
            Err(PluginError::InvalidName(name))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A failure of a plugin operation.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The name breaks the naming rules.
    #[error(
        "invalid plugin name {0:?}: use 1-64 of a-z, 0-9, '-' and '_', starting with a letter or digit (not \"live\")"
    )]
    InvalidName(String),
    /// No plugin by that name.
    #[error("no plugin named {0}")]
    NotFound(String),
    /// The plugin's first deploy is still compiling.
    #[error("plugin {0} is still compiling: it answers once it has started (see its status)")]
    Compiling(String),
    /// The component could not be loaded.
    #[error(transparent)]
    Load(#[from] RuntimeError),
    /// The operation does not fit the plugin's state (e.g. skip when nothing failed).
    #[error("{0}")]
    Conflict(String),
    /// The plugin failed while answering (query).
    #[error("{0}")]
    Call(String),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A read asked for a position the plugin's state has not reached.
    #[error("{}", .0)]
    Behind(Behind),
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A plugin's files could not be read or written.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Anything else that should not happen.
    #[error("internal: {0}")]
    Internal(String),
    /// The plugin's state storage failed.
    #[error("plugin storage: {0}")]
    Storage(#[from] redb::Error),
    /// The notifier's mailbox failed, or a webhook setting was refused.
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
}

from_redb_errors!(PluginError);

impl PluginError {
    /// Whether the storage failed under the plugin (an I/O error such as a
    /// full disk, or redb refusing writes after one): its state file must
    /// be reopened, and the event is retried without counting an attempt.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            PluginError::Io(_) | PluginError::Storage(redb::Error::Io(_) | redb::Error::PreviousIo)
        )
    }
}

impl From<tokio::task::JoinError> for PluginError {
    fn from(error: tokio::task::JoinError) -> Self {
        PluginError::Internal(format!("blocking task failed: {error}"))
    }
}
