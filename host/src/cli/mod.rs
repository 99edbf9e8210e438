//! The `eventfold` command line: `serve` runs the server; the other
//! subcommands are clients of a running server (`client`).

mod client;
mod cluster;
mod notify;
mod plugins;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterOptions, Hold};
use crate::config::{Config, Limits, LogBackend};
use crate::connections::ConnectionLimits;
use crate::log::JetStreamOptions;
use crate::runtime::SandboxLimits;

/// eventfold: an append-only event log that runs WebAssembly plugins against it.
#[derive(Parser)]
#[command(name = "eventfold", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server on a data directory.
    Serve(Box<ServeArgs>),
    /// Append one event to a stream.
    Append(client::AppendArgs),
    /// Read one stream, or the global log.
    Read(client::ReadArgs),
    /// Follow the global log live (Server-Sent Events), resuming after disconnects.
    Tail(client::TailArgs),
    /// Deploy (or replace) a plugin from a .wasm component.
    Deploy(plugins::DeployArgs),
    /// List the deployed plugins and their status.
    Plugins(plugins::PluginsArgs),
    /// Rebuild a plugin from position 0, showing progress until it swaps in.
    Replay(plugins::ReplayArgs),
    /// Read a plugin's state: one key, or every key with a prefix.
    State(plugins::StateArgs),
    /// Ask a plugin's `query` export.
    Query(plugins::QueryArgs),
    /// Show, set or remove a notifier's webhook.
    Webhook(notify::WebhookArgs),
    /// Print a notifier's notifications or dead letters; retry a dead letter.
    Notifications(notify::NotificationsArgs),
    /// Show the nodes sharing a JetStream log and what each holds.
    Cluster(cluster::ClusterArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Directory of the log's redb file; created if missing.
    #[arg(long, env = "EVENTFOLD_DATA_DIR", default_value = "./eventfold-data")]
    data_dir: PathBuf,
    /// Address to listen on. Anything but loopback requires --token.
    #[arg(long, env = "EVENTFOLD_ADDR", default_value = "127.0.0.1:7411")]
    addr: SocketAddr,
    /// Require `Authorization: Bearer <TOKEN>` on every request.
    #[arg(long, env = "EVENTFOLD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Largest event accepted (type + data + metadata), in bytes.
    #[arg(long, env = "EVENTFOLD_MAX_EVENT_BYTES", default_value_t = Limits::default().max_event_bytes)]
    max_event_bytes: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "EVENTFOLD_MAX_REQUEST_BYTES", default_value_t = Limits::default().max_request_bytes)]
    max_request_bytes: usize,
    /// Deepest nesting of arrays and objects accepted in an event's data
    /// and metadata.
    #[arg(long, env = "EVENTFOLD_MAX_JSON_DEPTH", default_value_t = Limits::default().max_json_depth)]
    max_json_depth: usize,
    /// Most connections open at once; one more is answered 503.
    #[arg(long, env = "EVENTFOLD_MAX_CONNECTIONS", default_value_t = ConnectionLimits::default().max_connections)]
    max_connections: usize,
    /// Longest a connection may take to send a request's headers, from when
    /// it opened or its previous response was sent (closes half-open and
    /// idle keep-alive connections).
    #[arg(long, env = "EVENTFOLD_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// Most live feeds (SSE) open at once; one more is answered 503.
    #[arg(long, env = "EVENTFOLD_MAX_LIVE_FEEDS", default_value_t = Limits::default().max_live_feeds)]
    max_live_feeds: usize,
    /// Most append sockets (WebSocket) open at once; one more is answered 503.
    #[arg(long, env = "EVENTFOLD_MAX_APPEND_SOCKETS", default_value_t = Limits::default().max_append_sockets)]
    max_append_sockets: usize,
    /// Interval of keep-alive comments on idle live feeds (e.g. 15s, 500ms).
    #[arg(long, env = "EVENTFOLD_SSE_KEEP_ALIVE", default_value = "15s", value_parser = humantime::parse_duration)]
    sse_keep_alive: Duration,
    /// How long shutdown waits for in-flight requests.
    #[arg(long, env = "EVENTFOLD_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// How long appends may be durable only in the write-ahead log before
    /// redb itself is fsynced (a checkpoint).
    #[arg(long, env = "EVENTFOLD_CHECKPOINT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    checkpoint_interval: Duration,
    /// Where the log lives: `embedded` (redb in the data directory) or
    /// `jetstream` (a NATS JetStream stream; plugin state stays in the data
    /// directory).
    #[arg(
        long = "log",
        env = "EVENTFOLD_LOG",
        value_enum,
        default_value = "embedded"
    )]
    log_backend: LogBackendArg,
    /// NATS servers of the JetStream cluster, comma-separated.
    #[arg(
        long,
        env = "EVENTFOLD_NATS_URL",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: Vec<String>,
    /// The JetStream stream that holds the log (created when missing); also
    /// the first token of its subjects.
    #[arg(long, env = "EVENTFOLD_NATS_STREAM", default_value = "eventfold")]
    nats_stream: String,
    /// Replicas of the stream when eventfold creates it (3 for production).
    #[arg(long, env = "EVENTFOLD_NATS_REPLICAS", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    nats_replicas: u8,
    /// A NATS credentials file.
    #[arg(long, env = "EVENTFOLD_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// A NATS token.
    #[arg(long, env = "EVENTFOLD_NATS_TOKEN", hide_env_values = true)]
    nats_token: Option<String>,
    /// How long JetStream remembers event ids, so that a retried append
    /// with expected_version "any" is not appended twice.
    #[arg(long, env = "EVENTFOLD_NATS_DUPLICATE_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    nats_duplicate_window: Duration,
    /// Most memory the writer's cache of stream heads may take (e.g. 64MiB,
    /// 1GiB; a head not cached is read from the stream index on disk).
    #[arg(long, env = "EVENTFOLD_STREAM_CACHE", default_value = "64MiB")]
    stream_cache: bytesize::ByteSize,
    /// Most appends queued for the log's writer at once.
    #[arg(long, env = "EVENTFOLD_APPEND_QUEUE", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..))]
    append_queue: u32,
    /// Longest an append waits for a place in a full queue before it is
    /// answered 503 overloaded (the bound on latency under overload).
    #[arg(long, env = "EVENTFOLD_APPEND_WAIT", default_value = "2s", value_parser = humantime::parse_duration)]
    append_wait: Duration,
    /// Most events a second one plugin's rebuild (replay, new code) reads,
    /// so that a big rebuild leaves the disk to appends and serving
    /// plugins (default: no limit).
    #[arg(long, env = "EVENTFOLD_REPLAY_RATE", value_parser = clap::value_parser!(u64).range(1..))]
    replay_rate: Option<u64>,
    /// Delete a delivered notification once it was emitted this long ago
    /// (e.g. 7d, 12h; "forever" keeps them). Its key is kept regardless, so
    /// it is never sent again.
    #[arg(long, env = "EVENTFOLD_KEEP_DELIVERED_FOR", default_value = "7d", value_parser = parse_age)]
    keep_delivered_for: Unbounded<Duration>,
    /// Keep at most this many delivered notifications per notifier, the
    /// newest ("all" keeps every one).
    #[arg(long, env = "EVENTFOLD_KEEP_DELIVERED", default_value = "1000000", value_parser = parse_count)]
    keep_delivered: Unbounded<u64>,
    /// Deploy every .wasm in this directory at start, and hot-load files
    /// that appear or change (the plugin is named after the file).
    #[arg(long, env = "EVENTFOLD_PLUGINS_DIR")]
    plugins_dir: Option<PathBuf>,
    /// Memory limit of each plugin instance, in bytes.
    #[arg(long, env = "EVENTFOLD_PLUGIN_MEMORY", default_value_t = SandboxLimits::default().memory_bytes)]
    plugin_memory: usize,
    /// Longest one plugin call (one batch) may run.
    #[arg(long, env = "EVENTFOLD_PLUGIN_DEADLINE", default_value = "5s", value_parser = humantime::parse_duration)]
    plugin_deadline: Duration,
    /// Largest plugin component accepted, in bytes.
    #[arg(long, env = "EVENTFOLD_MAX_PLUGIN_BYTES", default_value_t = 64 << 20)]
    max_plugin_bytes: usize,
    /// This node's name among the nodes of one JetStream log (letters,
    /// digits, '-' and '_'; default: the host's name and the port).
    #[arg(long, env = "EVENTFOLD_NODE_NAME", value_parser = parse_node_name)]
    node_name: Option<String>,
    /// The plugins this node holds, on a JetStream log shared by several
    /// nodes: plugin names and `label:<label>` entries, comma-separated
    /// (default: every plugin).
    #[arg(long, env = "EVENTFOLD_HOLD", value_delimiter = ',')]
    hold: Vec<String>,
    /// How long a notifier's lease lasts unless its node renews it: when a
    /// node dies, another takes its notifiers over within this and a
    /// quarter of it.
    #[arg(long, env = "EVENTFOLD_LEASE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// Threads serving HTTP (default: one per CPU; the log's writer and the
    /// plugins run on threads of their own).
    #[arg(long, env = "EVENTFOLD_HTTP_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    http_threads: Option<u16>,
}

impl ServeArgs {
    fn into_config(self) -> Config {
        let mut config = Config::new(self.data_dir);
        config.token = self.token.filter(|t| !t.is_empty());
        config.limits.max_event_bytes = self.max_event_bytes;
        config.limits.max_request_bytes = self.max_request_bytes;
        config.limits.max_json_depth = self.max_json_depth;
        config.limits.max_live_feeds = self.max_live_feeds;
        config.limits.max_append_sockets = self.max_append_sockets;
        config.connections.max_connections = self.max_connections;
        config.connections.header_timeout = self.header_timeout;
        config.sse_keep_alive = self.sse_keep_alive;
        config.shutdown_grace = self.shutdown_grace;
        config.backend = match self.log_backend {
            LogBackendArg::Embedded => LogBackend::Embedded,
            LogBackendArg::Jetstream => LogBackend::JetStream(JetStreamOptions {
                stream: self.nats_stream,
                replicas: self.nats_replicas.into(),
                credentials: self.nats_creds,
                token: self.nats_token.filter(|t| !t.is_empty()),
                duplicate_window: self.nats_duplicate_window,
                ..JetStreamOptions::new(self.nats_url)
            }),
        };
        config.log.checkpoint_interval = self.checkpoint_interval;
        config.log.stream_cache_bytes = self.stream_cache.as_u64();
        config.log.queue_depth = self.append_queue as usize;
        config.log.queue_wait = self.append_wait;
        config.plugins_dir = self.plugins_dir;
        config.plugin_limits.memory_bytes = self.plugin_memory;
        config.plugin_limits.deadline = self.plugin_deadline;
        config.max_plugin_bytes = self.max_plugin_bytes;
        config.replay_rate = self.replay_rate;
        config.notification_retention = crate::notify::Retention {
            max_age: self.keep_delivered_for.0,
            max_count: self.keep_delivered.0,
        };
        let node = match self.node_name {
            Some(name) => name,
            None => default_node_name(self.addr.port()),
        };
        config.cluster = ClusterOptions {
            hold: Hold::new(self.hold),
            lease_ttl: self.lease_ttl,
            ..ClusterOptions::new(node)
        };
        config
    }
}

/// The host's name and the port, with anything but letters, digits, '-'
/// and '_' made '-': a node name (a key of the cluster's buckets).
fn default_node_name(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "node".into());
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{host}-{port}")
}

/// A node name: 1-64 letters, digits, '-' or '_'.
fn parse_node_name(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match valid {
        true => Ok(text.to_owned()),
        false => Err("use 1-64 letters, digits, '-' or '_'".into()),
    }
}

/// Where the log lives (`--log`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogBackendArg {
    /// redb in the data directory.
    Embedded,
    /// A NATS JetStream stream.
    Jetstream,
}

/// A limit that can be switched off (`None`).
#[derive(Debug, Clone, Copy)]
struct Unbounded<T>(Option<T>);

/// A duration such as `7d`, or `forever`.
fn parse_age(text: &str) -> Result<Unbounded<Duration>, String> {
    match text {
        "forever" => Ok(Unbounded(None)),
        _ => humantime::parse_duration(text)
            .map(|age| Unbounded(Some(age)))
            .map_err(|e| format!("{e} (a duration such as 7d or 12h, or \"forever\")")),
    }
}

/// A count, or `all`.
fn parse_count(text: &str) -> Result<Unbounded<u64>, String> {
    match text {
        "all" => Ok(Unbounded(None)),
        _ => text
            .parse()
            .map(|count| Unbounded(Some(count)))
            .map_err(|e| format!("{e} (a count, or \"all\")")),
    }
}

/// Parses the command line and runs it; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Append(args) => client::run(client::append(args)),
        Command::Read(args) => client::run(client::read(args)),
        Command::Tail(args) => client::run(client::tail(args)),
        Command::Deploy(args) => client::run(plugins::deploy(args)),
        Command::Plugins(args) => client::run(plugins::list(args)),
        Command::Replay(args) => client::run(plugins::replay(args)),
        Command::State(args) => client::run(plugins::state(args)),
        Command::Query(args) => client::run(plugins::query(args)),
        Command::Webhook(args) => client::run(notify::webhook(args)),
        Command::Notifications(args) => client::run(notify::notifications(args)),
        Command::Cluster(args) => client::run(cluster::run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // A log that cannot be written (stderr on a full disk) is dropped:
        // reporting it would `eprintln!`, which panics when stderr fails,
        // and take down the thread that logged (the writer's, a plugin's).
        .log_internal_errors(false)
        .init();
    let addr = args.addr;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.http_threads {
        runtime.worker_threads(threads.into());
    }
    let config = args.into_config();
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let server = crate::server::Server::open(config, listener).await?;
        // Scripts and tests read this line to learn the address (port 0 picks one).
        println!("eventfold listening on http://{}", server.local_addr());
        std::io::stdout().flush()?;
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        server.run(shutdown).await?;
        Ok(())
    })
}

/// Cancels `shutdown` on ctrl-c or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: draining requests and committing");
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks: no two flags of a subcommand share a name.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
