//! What `GET /plugins/{name}` reports about a plugin.

use serde::Serialize;
use serde_json::Value;

use crate::notify::MailboxStats;

/// Where a plugin is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// The last failure: which event, and why.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
}

/// A plugin's status.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    /// The plugin's name.
    pub name: String,
    /// `projection` or `notifier`.
    pub kind: String,
    /// See [`RunState`].
    pub state: RunState,
    /// The plugin's own version string.
    pub version: String,
    /// The version of the WIT package it was built against, e.g. `0.2.0`.
    pub wit: String,
    /// How it takes its events: `records` or `json`.
    pub encoding: String,
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
    pub compiled: String,
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
}

/// How a notifier's notifications are getting out.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationStatus {
    /// Counters of its mailbox.
    #[serde(flatten)]
    pub stats: MailboxStats,
    /// Its webhook's settings (without the secret), if one is set.
    pub webhook: Option<Value>,
}
