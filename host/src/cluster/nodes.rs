//! Each node's heartbeat in the `<s>-nodes` bucket, and what `GET
//! /cluster` answers: the nodes, the plugins each holds with checkpoint
//! and lag, the notifiers' lease owners, the plugin records, and the log's
//! stream with its replicas and leader.
//!
//! A node rewrites its entry every [`BEAT`]; the bucket's entries expire
//! after `NODE_TTL`, so a node that died drops out of the view by itself,
//! and one that shuts down deletes its entry.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::leases::LeaseValue;
use super::records::Record;
use super::{Cluster, now_ms};

/// How often a node rewrites its heartbeat.
const BEAT: Duration = Duration::from_secs(2);

/// What a node says of itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    pub version: String,
    /// Where its API listens.
    pub address: String,
    /// When it started, ms since the Unix epoch.
    pub started_ms: u64,
    /// When it wrote this, ms since the Unix epoch.
    pub seen_ms: u64,
    /// Its `--hold` (empty: every plugin).
    pub hold: Vec<String>,
    /// The plugins it holds.
    pub plugins: Vec<HeldPlugin>,
    /// The notifiers whose notifications it delivers.
    pub delivers: Vec<String>,
}

/// One plugin on one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldPlugin {
    pub name: String,
    pub kind: Option<String>,
    pub state: String,
    pub generation: u64,
    pub checkpoint: u64,
    pub lag: u64,
    /// A rebuild's checkpoint, while one runs.
    pub rebuild_checkpoint: Option<u64>,
}

/// The answer of `GET /cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    /// Always true: the node shares its log and plugins with others.
    pub clustered: bool,
    /// The node that answers.
    pub node: String,
    pub nodes: Vec<NodeInfo>,
    /// Each notifier's lease: who delivers it, since when.
    pub leases: BTreeMap<String, LeaseValue>,
    /// The plugin records every node converges to (a webhook without its
    /// secret).
    pub plugins: BTreeMap<String, serde_json::Value>,
    /// The log's JetStream stream.
    pub log: LogView,
}

/// The log's stream as JetStream reports it.
#[derive(Debug, Clone, Serialize)]
pub struct LogView {
    pub stream: String,
    pub replicas: usize,
    pub messages: u64,
    pub last_sequence: u64,
    /// The nats-server that leads the stream.
    pub leader: Option<String>,
    /// Its followers: name, whether current, how far behind.
    pub followers: Vec<Follower>,
    /// Set when JetStream could not be asked.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Follower {
    pub name: String,
    pub current: bool,
    pub offline: bool,
    pub lag: Option<u64>,
}

/// Writes this node's heartbeat every [`BEAT`] until the cluster stops.
pub async fn beat(cluster: Cluster) {
    let stop = cluster.inner.stop.clone();
    loop {
        let info = cluster.node_info().await;
        match serde_json::to_vec(&info) {
            Ok(bytes) => {
                if let Err(error) = cluster
                    .inner
                    .buckets
                    .nodes
                    .put(cluster.node(), bytes.into())
                    .await
                {
                    tracing::warn!(%error, "cannot write this node's heartbeat");
                }
            }
            Err(error) => tracing::error!(%error, "cannot encode this node's heartbeat"),
        }
        tokio::select! {
            () = tokio::time::sleep(BEAT) => {}
            () = stop.cancelled() => return,
        }
    }
}

impl Cluster {
    /// What this node says of itself now.
    async fn node_info(&self) -> NodeInfo {
        let plugins = self.inner.plugins.list().await.unwrap_or_default();
        let plugins = plugins
            .into_iter()
            .map(|s| HeldPlugin {
                name: s.name,
                kind: s.kind.map(|k| k.to_string()),
                state: serde_json::to_value(s.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                generation: s.generation,
                checkpoint: s.checkpoint,
                lag: s.lag,
                rebuild_checkpoint: s.rebuild.map(|r| r.checkpoint),
            })
            .collect();
        let delivers = self
            .inner
            .leases
            .views()
            .into_iter()
            .filter(|v| v.held_here)
            .map(|v| v.plugin)
            .collect();
        NodeInfo {
            node: self.node().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            address: self.inner.address.clone(),
            started_ms: self.inner.started_ms,
            seen_ms: now_ms(),
            hold: self.inner.options.hold.entries().to_vec(),
            plugins,
            delivers,
        }
    }

    /// Everything `GET /cluster` shows.
    pub async fn view(&self) -> ClusterView {
        let mut nodes = Vec::new();
        if let Ok(mut keys) = self.inner.buckets.nodes.keys().await {
            while let Some(Ok(key)) = keys.next().await {
                if let Ok(Some(bytes)) = self.inner.buckets.nodes.get(&key).await
                    && let Ok(info) = serde_json::from_slice::<NodeInfo>(&bytes)
                {
                    nodes.push(info);
                }
            }
        }
        // This node's own figures are fresh, not up to a beat old.
        nodes.retain(|n| n.node != self.node());
        nodes.push(self.node_info().await);
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        let leases = self.inner.leases.owners().await.into_iter().collect();
        let log = self.log_view().await;
        let records = self.inner.records.lock().clone();
        let plugins = records
            .into_iter()
            .map(|(name, (record, _))| (name, shown(&record)))
            .collect();
        ClusterView {
            clustered: true,
            node: self.node().to_owned(),
            nodes,
            leases,
            plugins,
            log,
        }
    }

    async fn log_view(&self) -> LogView {
        let name = self.inner.buckets.log_stream.clone();
        let mut view = LogView {
            stream: name.clone(),
            replicas: 0,
            messages: 0,
            last_sequence: 0,
            leader: None,
            followers: Vec::new(),
            error: None,
        };
        let info = match self.inner.buckets.context.get_stream(&name).await {
            Ok(mut stream) => stream.info().await.cloned(),
            Err(error) => {
                view.error = Some(error.to_string());
                return view;
            }
        };
        match info {
            Ok(info) => {
                view.replicas = info.config.num_replicas;
                view.messages = info.state.messages;
                view.last_sequence = info.state.last_sequence;
                if let Some(cluster) = info.cluster {
                    view.leader = cluster.leader;
                    view.followers = cluster
                        .replicas
                        .into_iter()
                        .map(|p| Follower {
                            name: p.name,
                            current: p.current,
                            offline: p.offline,
                            lag: p.lag,
                        })
                        .collect();
                }
            }
            Err(error) => view.error = Some(error.to_string()),
        }
        view
    }
}

/// A record as `GET /cluster` shows it: the webhook's secret is never
/// shown back.
fn shown(record: &Record) -> serde_json::Value {
    let mut value = serde_json::to_value(record).unwrap_or_default();
    if let Some(webhook) = &record.webhook {
        value["webhook"] = webhook.view();
    }
    value
}
