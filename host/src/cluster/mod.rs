//! Several eventfold nodes on one JetStream log (`docs/design.md`,
//! "Several nodes"). With the log on JetStream, every node that serves it
//! shares its plugins through JetStream too; nodes keep only state they
//! can rebuild from the log.
//!
//! - `buckets.rs`: the KV buckets, object store and stream the nodes share.
//! - `records.rs`: each plugin's record, what every node converges to;
//!   `operations.rs`: an operator's deploy, replay, pause, resume, skip and
//!   remove, recorded there and applied here.
//! - `converge.rs`: bringing this node's plugins to the records;
//!   `applied.rs`: what this node has applied (`data-dir/cluster.json`).
//! - `leases.rs`: which node delivers each notifier's notifications, or
//!   runs each reactor; `marks.rs`: how far each reactor's outputs are.
//! - `nodes.rs`: each node's heartbeat, and `GET /cluster`.
//!
//! Uses `plugins` (the registry it drives, the reactors' marks it keeps)
//! and `notify` (the handover it provides); the API sits on top through [`Deployments`].

mod applied;
mod buckets;
mod converge;
mod leases;
mod marks;
mod nodes;
mod operations;
mod records;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

pub use buckets::Buckets;
pub use leases::Leases;
pub use marks::Marks;
pub use nodes::ClusterView;
pub use operations::{Deployed, Deployments};

use crate::named_locks::NamedLocks;
use crate::plugins::{PluginError, Plugins};
use applied::AppliedFile;
use records::Record;

/// How this node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// This node's name, unique among the nodes of one log.
    pub node: String,
    /// Which plugins this node holds.
    pub hold: Hold,
    /// How long a notifier's lease lasts unrenewed: a handover after a
    /// node dies takes at most this plus a quarter of it.
    pub lease_ttl: Duration,
}

impl ClusterOptions {
    /// The defaults, for a node named `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            hold: Hold::default(),
            lease_ttl: Duration::from_secs(10),
        }
    }
}

/// Which plugins a node holds: every one (the default), or those named or
/// carrying a label in the list (`name`, `label:<label>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hold(Vec<String>);

impl Hold {
    /// A list of plugin names and `label:<label>` entries; empty: all.
    pub fn new(entries: Vec<String>) -> Self {
        Self(entries.into_iter().filter(|e| !e.is_empty()).collect())
    }

    /// Whether a plugin named `name` with `labels` is held.
    pub fn holds(&self, name: &str, labels: &[String]) -> bool {
        self.0.is_empty()
            || self
                .0
                .iter()
                .any(|entry| match entry.strip_prefix("label:") {
                    Some(label) => labels.iter().any(|l| l == label),
                    None => entry == name,
                })
    }

    /// The entries, for `GET /cluster` (empty: all).
    pub fn entries(&self) -> &[String] {
        &self.0
    }
}

/// A failure of a cluster operation.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// JetStream did not answer, or refused.
    #[error("the cluster is unavailable: {0}")]
    Unavailable(String),
    /// The plugin operation failed on this node.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// Anything else that should not happen.
    #[error("internal: {0}")]
    Internal(String),
}

impl ClusterError {
    fn unavailable(what: String, error: impl std::fmt::Display) -> Self {
        ClusterError::Unavailable(format!("{what}: {error}"))
    }
}

/// This node's part in a cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    options: ClusterOptions,
    /// Where this node's API listens (shown to the others).
    address: String,
    buckets: Buckets,
    plugins: Plugins,
    leases: Leases,
    applied: Arc<Mutex<AppliedFile>>,
    /// The records as this node last knew them (from the watch, or its own
    /// writes), each with its revision.
    records: Mutex<BTreeMap<String, (Record, u64)>>,
    /// One lock per plugin name: an operation and the convergence of one
    /// plugin never interleave on this node.
    locks: NamedLocks<String>,
    started_ms: u64,
    stop: CancellationToken,
}

impl Cluster {
    /// Joins the cluster: follows the records and keeps this node's
    /// heartbeat until [`Cluster::shutdown`].
    pub fn start(
        options: ClusterOptions,
        address: String,
        buckets: Buckets,
        leases: Leases,
        plugins: Plugins,
        data_dir: &Path,
    ) -> Result<Self, ClusterError> {
        let applied = AppliedFile::open(data_dir)
            .map_err(|e| ClusterError::Internal(format!("data-dir/cluster.json: {e}")))?;
        let cluster = Self {
            inner: Arc::new(Inner {
                options,
                address,
                buckets,
                plugins,
                leases,
                applied: Arc::new(Mutex::new(applied)),
                records: Mutex::new(BTreeMap::new()),
                locks: NamedLocks::default(),
                started_ms: now_ms(),
                stop: CancellationToken::new(),
            }),
        };
        tokio::spawn(converge::follow(cluster.clone()));
        tokio::spawn(nodes::beat(cluster.clone()));
        Ok(cluster)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.options.node
    }

    /// Who delivers notifier `plugin`'s notifications, since when.
    pub async fn delivery(&self, plugin: &str) -> Option<leases::LeaseValue> {
        self.inner.leases.owner(plugin).await
    }

    /// Stops following, gives up this node's leases and its heartbeat.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.leases.release_all();
        let _ = self.inner.buckets.nodes.delete(self.node()).await;
    }

    /// Waits for this node's lock on plugin `name`.
    async fn lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.inner.locks.lock(&name.to_owned()).await
    }

    /// Keeps `record` (`None`: none) at `revision` as `name`'s record,
    /// unless a later revision is known already: the watch may deliver
    /// this node's own write after the node has acted on it, or an
    /// earlier write after a later one was remembered.
    fn remember(&self, name: &str, record: Option<Record>, revision: u64) {
        let mut records = self.inner.records.lock();
        if records
            .get(name)
            .is_some_and(|(_, known)| *known >= revision)
        {
            return;
        }
        match record {
            Some(record) => records.insert(name.to_owned(), (record, revision)),
            None => records.remove(name),
        };
    }

    /// The record of `name` as this node knows it.
    fn known_record(&self, name: &str) -> Option<Record> {
        self.inner
            .records
            .lock()
            .get(name)
            .map(|(record, _)| record.clone())
    }

    /// Changes `name`'s record in the cluster ([`records::update`]) and
    /// remembers what was written.
    async fn write_record(
        &self,
        name: &str,
        change: impl FnMut(Option<Record>) -> Result<Option<Record>, ClusterError>,
    ) -> Result<Option<Record>, ClusterError> {
        let written = records::update(&self.inner.buckets.plugins, name, change).await?;
        Ok(written.map(|(record, revision)| {
            self.remember(name, Some(record.clone()), revision);
            record
        }))
    }

    /// Whether this node holds `record`'s plugin.
    fn holds(&self, name: &str, record: &Record) -> bool {
        self.inner.options.hold.holds(name, &record.labels)
    }

    /// Records what this node applied of `name`, durably.
    async fn set_applied(
        &self,
        name: &str,
        applied: Option<applied::Applied>,
    ) -> Result<(), ClusterError> {
        let file = self.inner.applied.clone();
        let name = name.to_owned();
        crate::blocking::run(move || {
            file.lock()
                .set(&name, applied)
                .map_err(|e| PluginError::Internal(format!("data-dir/cluster.json: {e}")))
        })
        .await?;
        Ok(())
    }

    fn applied(&self, name: &str) -> Option<applied::Applied> {
        self.inner.applied.lock().get(name).cloned()
    }
}

/// Now, in ms since the Unix epoch (as heartbeats and leases say when).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long an operation on the shared buckets is tried again while
/// JetStream does not answer (a bucket just created, a leader election).
const PATIENCE: Duration = Duration::from_secs(10);

/// Runs `operation` until it succeeds, fails otherwise than by JetStream
/// not answering ("no responders", a timeout), or [`PATIENCE`] runs out.
/// Only for operations that are safe to repeat: reads, and writes guarded
/// by a revision.
async fn patiently<T, E, F, Fut>(mut operation: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut pause = Duration::from_millis(50);
    loop {
        match operation().await {
            Err(error) if unanswered(&error) && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(%error, "JetStream did not answer; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            result => return result,
        }
    }
}

/// Whether an error says JetStream did not answer, rather than refused.
fn unanswered(error: &impl std::fmt::Display) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    text.contains("no responders") || text.contains("timed out") || text.contains("timeout")
}
