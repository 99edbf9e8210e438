//! The server: opens the log, serves the API on a listener until shutdown,
//! then drains in-flight requests and commits what the writer holds.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, Slots};
use crate::cluster::{Buckets, Cluster, ClusterError, Deployments, Leases, Marks};
use crate::config::{Config, LogBackend};
use crate::connections;
use crate::log::{EventLog, JetStreamLog, LogError};
use crate::metrics::Metrics;
use crate::notify::SharedHandover;
use crate::plugins::{PluginError, Plugins, PluginsConfig, SharedOutputMarks};
use crate::runtime::SandboxLimits;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Listening on a non-loopback address without a token.
    #[error(
        "refusing to serve on {0} without a token: anyone who can reach it could write the log; \
         pass --token (or EVENTFOLD_TOKEN), or bind 127.0.0.1"
    )]
    UnprotectedBind(SocketAddr),
    /// The log could not be opened.
    #[error("cannot open the log: {0}")]
    Log(#[from] LogError),
    /// The plugins could not be loaded.
    #[error("cannot load the plugins: {0}")]
    Plugins(#[from] PluginError),
    /// The cluster's buckets could not be opened.
    #[error("cannot join the cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// The listener failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A server with its log and plugins open and its listener bound, ready to [`Server::run`].
pub struct Server {
    config: Config,
    listener: TcpListener,
    log: EventLog,
    plugins: Plugins,
    deployments: Deployments,
    metrics: Metrics,
}

impl Server {
    /// Opens the log in the configured data directory. Refuses a listener on
    /// a non-loopback address unless a token is configured.
    pub async fn open(config: Config, listener: TcpListener) -> Result<Self, ServerError> {
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() && config.token.is_none() {
            return Err(ServerError::UnprotectedBind(addr));
        }
        let metrics = Metrics::new();
        let (log, shared) = match &config.backend {
            LogBackend::Embedded => (
                EventLog::open_with(&config.data_dir, metrics.clone(), config.log)?,
                None,
            ),
            LogBackend::JetStream(options) => {
                let log = JetStreamLog::connect(options.clone()).await?;
                let ttl = config.cluster.lease_ttl;
                let buckets =
                    Buckets::open(log.client(), log.stream_name(), options.replicas, ttl).await?;
                let leases = Leases::new(buckets.clone(), config.cluster.node.clone(), ttl);
                (log.into(), Some((buckets, leases)))
            }
        };
        let plugins_config = PluginsConfig {
            // What a reactor appends meets the limits of what a client does.
            limits: SandboxLimits {
                max_event_bytes: config.limits.max_event_bytes,
                max_json_depth: config.limits.max_json_depth,
                max_appends_per_call: log
                    .max_events_per_append()
                    .unwrap_or(config.plugin_limits.max_appends_per_call),
                ..config.plugin_limits
            },
            replay_rate: config.replay_rate,
            retention: config.notification_retention,
            handover: shared
                .as_ref()
                .map(|(_, leases)| Arc::new(leases.clone()) as SharedHandover),
            marks: shared.as_ref().map(|(buckets, _)| {
                Arc::new(Marks::new(buckets.reactors.clone())) as SharedOutputMarks
            }),
            metrics: metrics.clone(),
        };
        let plugins = Plugins::open(&config.data_dir, log.clone(), plugins_config)?;
        let deployments = match shared {
            None => Deployments::Alone(plugins.clone()),
            Some((buckets, leases)) => Deployments::Shared(Cluster::start(
                config.cluster.clone(),
                addr.to_string(),
                buckets,
                leases,
                plugins.clone(),
                &config.data_dir,
            )?),
        };
        Ok(Self {
            config,
            listener,
            log,
            plugins,
            deployments,
            metrics,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves until `shutdown` is cancelled; then stops accepting, lets
    /// in-flight requests finish (up to the grace period), commits every
    /// queued append, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let Server {
            config,
            listener,
            log,
            plugins,
            deployments,
            metrics,
        } = self;
        if let Some(dir) = &config.plugins_dir {
            let watcher =
                crate::plugins::watch_dir(dir.clone(), deployments.clone(), shutdown.clone());
            tokio::spawn(watcher);
        }
        let slots = Slots::new(&config.limits);
        slots.export(&metrics);
        let counted = metrics.clone();
        let state = AppState {
            log: log.clone(),
            metrics,
            plugins: plugins.clone(),
            deployments: deployments.clone(),
            limits: config.limits,
            shutdown: shutdown.clone(),
            sse_keep_alive: config.sse_keep_alive,
            slots,
        };
        let app = api::router(state, &config);
        tracing::info!(
            addr = %listener.local_addr()?,
            data_dir = %config.data_dir.display(),
            head = log.head().0,
            "serving"
        );
        raise_open_files_limit(config.connections.max_connections);
        let limits = config.connections;
        let serve = connections::serve(listener, app, limits, &counted, shutdown.clone());
        let grace = config.shutdown_grace;
        tokio::select! {
            () = serve => {}
            () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!("requests still running after {grace:?}; closing them");
            }
        };
        // Leases first: the other nodes take this node's notifiers over at
        // once, while its runners finish their batches.
        if let Some(cluster) = deployments.cluster() {
            cluster.shutdown().await;
        }
        plugins.shutdown().await;
        log.shutdown().await;
        tracing::info!(head = log.head().0, "stopped");
        Ok(())
    }
}

/// Raises the soft limit of open files to the hard one: each connection
/// takes a descriptor, and the usual soft default (1,024) is far below the
/// connection limit. Says so when even the hard limit is below it.
fn raise_open_files_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < max_connections as u64 + 256 => tracing::warn!(
            limit,
            max_connections,
            "the open-files limit is below --max-connections (plus the data files): \
             accepting will fail at the limit; raise it (ulimit -n) or lower --max-connections"
        ),
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
    }
}

/// Runs a server on `listener` until `shutdown` is cancelled: [`Server::open`]
/// then [`Server::run`].
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    Server::open(config, listener).await?.run(shutdown).await
}
