//! What `GET /plugins/{name}` reports about a plugin.

use serde::Serialize;
use serde_json::Value;

use super::PluginName;
use crate::notify::MailboxStats;
use crate::runtime::{CompileOrigin, Encoding, LoadedPlugin, PluginKind, WitVersion};

/// Where a plugin is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Its component is being validated and compiled.
    Compiling,
    /// Processing events behind the head.
    CatchingUp,
    /// Caught up; handling new events as they are appended.
    Running,
    /// Being rebuilt from position 0 (no serving version yet, or beside one).
    Replaying,
    /// Stopped by the operator.
    Paused,
    /// Stopped after a batch failed every retry: see `last_error`.
    Failed,
}

impl RunState {
    /// Its name, as the status shows it and `eventfold_plugin_state` labels it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Compiling => "compiling",
            RunState::CatchingUp => "catching-up",
            RunState::Running => "running",
            RunState::Replaying => "replaying",
            RunState::Paused => "paused",
            RunState::Failed => "failed",
        }
    }
}

/// The last failure: which event, and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LastError {
    /// Position of the event that failed (the first of the batch when the
    /// failure could not be pinned to one event).
    pub position: u64,
    /// What went wrong.
    pub message: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it happened (RFC 3339).
    pub at: String,
}

/// Progress of a rebuild from position 0 beside the serving version.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RebuildStatus {
    /// The generation being built.
    pub generation: u64,
    /// SHA-256 of the code being built.
    pub hash: String,
    /// Its checkpoint so far.
    pub checkpoint: u64,
    /// Events per second.
    pub events_per_sec: f64,
    /// Seconds until it catches up at the current rate.
    pub eta_secs: Option<f64>,
    /// Its failure, if it is stuck.
    pub last_error: Option<LastError>,
    /// A reactor's outputs the rebuild has not appended so far: caused by
    /// events the serving version had already handled (`null` for other
    /// kinds).
    pub outputs_suppressed: Option<u64>,
}

/// A plugin's status.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PluginStatus {
    /// The plugin's name.
    pub name: String,
    /// `projection`, `notifier` or `reactor` (`null` while compiling).
    pub kind: Option<PluginKind>,
    /// See [`RunState`].
    pub state: RunState,
    /// The plugin's own version string.
    pub version: String,
    /// The version of the WIT package it was built against, e.g. `0.2.0`.
    pub wit: Option<WitVersion>,
    /// How it takes its events: `records`, `json` or `packed`.
    pub encoding: Option<Encoding>,
    /// SHA-256 of the serving code.
    pub hash: String,
    /// The serving generation (1 for the first deploy, +1 per rebuild).
    pub generation: u64,
    /// The last position the serving state includes.
    pub checkpoint: u64,
    /// The log's head (filled in when read).
    pub head: u64,
    /// `head - checkpoint`.
    pub lag: u64,
    /// Events per second handled recently.
    pub events_per_sec: f64,
    /// Subscribed categories (empty: all).
    pub categories: Vec<String>,
    /// Subscribed event types (empty: all).
    pub event_types: Vec<String>,
    /// `cache` when the compiled code came from the cache, else `compiled`.
    pub compiled: Option<CompileOrigin>,
    /// Milliseconds the compile took (0 from the cache).
    pub compile_ms: u64,
    /// The failure being retried or that stopped the plugin; cleared once the
    /// plugin moves past it.
    pub last_error: Option<LastError>,
    /// A rebuild in progress beside the serving version.
    pub rebuild: Option<RebuildStatus>,
    /// Events skipped by the operator (see `GET /plugins/{name}/parked`).
    pub parked: u64,
    /// A notifier's delivery figures (`null` for a projection).
    pub notifications: Option<NotificationStatus>,
    /// A reactor's outputs its serving version did not append because they
    /// were in the log already: as a rebuild, caused by events the version
    /// before had handled; on several nodes, appended by another node.
    /// Counted since the server started (`null` for other kinds).
    pub outputs_suppressed: Option<u64>,
}

impl PluginStatus {
    /// The status of a plugin whose component is being loaded: nothing is
    /// known of it yet but its name.
    pub(super) fn compiling(name: &PluginName) -> Self {
        Self {
            name: name.to_string(),
            kind: None,
            state: RunState::Compiling,
            version: String::new(),
            wit: None,
            encoding: None,
            hash: String::new(),
            generation: 0,
            checkpoint: 0,
            head: 0,
            lag: 0,
            events_per_sec: 0.0,
            categories: Vec::new(),
            event_types: Vec::new(),
            compiled: None,
            compile_ms: 0,
            last_error: None,
            rebuild: None,
            parked: 0,
            notifications: None,
            outputs_suppressed: None,
        }
    }

    /// The status of a plugin that starts serving `plugin` as `generation`
    /// from `checkpoint`.
    pub(super) fn starting(
        name: &PluginName,
        plugin: &LoadedPlugin,
        generation: u64,
        checkpoint: u64,
    ) -> Self {
        let mut status = Self::compiling(name);
        status.state = RunState::CatchingUp;
        status.show_serving(plugin, generation, checkpoint);
        status
    }

    /// Shows `plugin` as the serving code, at `generation` and `checkpoint`.
    pub(super) fn show_serving(&mut self, plugin: &LoadedPlugin, generation: u64, checkpoint: u64) {
        self.kind = Some(plugin.kind());
        self.version.clone_from(&plugin.info.version);
        self.wit = Some(plugin.form.wit_version());
        self.encoding = Some(plugin.form.encoding());
        self.hash.clone_from(&plugin.hash);
        self.generation = generation;
        self.checkpoint = checkpoint;
        self.categories
            .clone_from(&plugin.info.subscription.categories);
        self.event_types
            .clone_from(&plugin.info.subscription.event_types);
        self.compiled = Some(plugin.compiled.origin());
        self.compile_ms = plugin.compiled.millis();
    }
}

/// How a notifier's notifications are getting out.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NotificationStatus {
    /// Counters of its mailbox.
    #[serde(flatten)]
    pub stats: MailboxStats,
    /// Its webhook's settings (without the secret), if one is set.
    pub webhook: Option<Value>,
}
