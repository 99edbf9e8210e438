//! Server configuration: what `eventfold serve` is told, with its defaults.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the server needs to run, apart from the listener it serves on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the log's redb file (and later plugin state) lives.
    pub data_dir: PathBuf,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Size limits on what clients send and read.
    pub limits: Limits,
    /// How many connections, and how slow a client may be.
    pub connections: crate::connections::ConnectionLimits,
    /// How often an idle live (SSE) feed sends a keep-alive comment.
    pub sse_keep_alive: Duration,
    /// How long a request (other than a live feed) may take before it is cut off.
    pub request_timeout: Duration,
    /// How long shutdown waits for in-flight requests before closing them.
    pub shutdown_grace: Duration,
    /// Where the event log lives.
    pub backend: LogBackend,
    /// Tuning of the embedded event log.
    pub log: crate::log::LogOptions,
    /// Limits applied to every plugin.
    pub plugin_limits: crate::runtime::SandboxLimits,
    /// Largest plugin component accepted, in bytes.
    pub max_plugin_bytes: usize,
    /// Most events a second one plugin's rebuild reads; `None`: as fast as
    /// it can.
    pub replay_rate: Option<u64>,
    /// How long notifiers keep delivered notifications.
    pub notification_retention: crate::notify::Retention,
    /// How this node shares plugins with the other nodes of a JetStream
    /// log (unused on the embedded log).
    pub cluster: crate::cluster::ClusterOptions,
    /// A directory whose `.wasm` files are deployed at start and whenever
    /// they appear or change (the plugin is named after the file).
    pub plugins_dir: Option<PathBuf>,
}

impl Config {
    /// The defaults, with the data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            token: None,
            limits: Limits::default(),
            connections: crate::connections::ConnectionLimits::default(),
            sse_keep_alive: Duration::from_secs(15),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            backend: LogBackend::Embedded,
            log: crate::log::LogOptions::default(),
            plugin_limits: crate::runtime::SandboxLimits::default(),
            max_plugin_bytes: 64 << 20,
            replay_rate: None,
            notification_retention: crate::notify::Retention::default(),
            plugins_dir: None,
            cluster: crate::cluster::ClusterOptions::new("node"),
        }
    }
}

/// Where the event log lives.
#[derive(Debug, Clone)]
pub enum LogBackend {
    /// In the data directory, in redb (the default).
    Embedded,
    /// In a NATS JetStream stream.
    JetStream(crate::log::JetStreamOptions),
}

/// Size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest event accepted (type + data + metadata), in bytes.
    pub max_event_bytes: usize,
    /// Largest request body accepted, in bytes.
    pub max_request_bytes: usize,
    /// Most events one read returns.
    pub max_read_count: usize,
    /// Deepest nesting of arrays and objects accepted in an event's `data`
    /// and `metadata`: deeper JSON can overflow the stack of a parser that
    /// reads it, in a plugin or a client.
    pub max_json_depth: usize,
    /// Most live feeds (SSE: events and notifications) open at once.
    pub max_live_feeds: usize,
    /// Most append sockets (WebSocket) open at once.
    pub max_append_sockets: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: 1 << 20,
            max_request_bytes: 16 << 20,
            max_read_count: 10_000,
            max_json_depth: 128,
            max_live_feeds: 1024,
            max_append_sockets: 1024,
        }
    }
}
