//! The sandbox limits of a plugin: what one plugin may use of the host.

use std::time::Duration;

/// Limits applied to every call into a plugin.
#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    /// Most linear memory the plugin's instance may grow to.
    pub memory_bytes: usize,
    /// Longest one call (`handle` of one batch, `query`) may run.
    pub deadline: Duration,
    /// Longest state key, in bytes.
    pub max_key_bytes: usize,
    /// Largest state value, in bytes.
    pub max_value_bytes: usize,
    /// Longest log line kept (longer ones are cut, with a note).
    pub max_log_line: usize,
    /// Most bytes of stdout + stderr kept per call; the rest is dropped.
    pub max_output_bytes: usize,
    /// Largest notification payload a notifier may emit, in bytes.
    pub max_notification_bytes: usize,
    /// Most notifications one call may emit.
    pub max_notifications_per_call: usize,
    /// Most events one call of a reactor may append: what the log appends
    /// in one atomic step (JetStream: 1,000; the embedded log: as many as a
    /// batch has events, at one output each).
    pub max_appends_per_call: usize,
    /// Largest event a reactor may append (type + data + metadata), in
    /// bytes: the server's `--max-event-bytes`.
    pub max_event_bytes: usize,
    /// Deepest JSON a reactor may append: the server's `--max-json-depth`.
    pub max_json_depth: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            deadline: Duration::from_secs(5),
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            max_log_line: 4096,
            max_output_bytes: 64 << 10,
            max_notification_bytes: 256 << 10,
            max_notifications_per_call: 100_000,
            max_appends_per_call: 10_000,
            max_event_bytes: 1 << 20,
            max_json_depth: 128,
        }
    }
}
