//! Bringing this node's plugins to the cluster's records. The node reads
//! every record when it joins, then follows the bucket's changes with a
//! watch, and once a second goes over every plugin again (for what a
//! change cannot announce: a plugin that failed here at a position the
//! operator skipped elsewhere, or an earlier attempt that failed).
//!
//! For one plugin, with this node's lock on it taken (`Cluster::lock`):
//!
//! - removed, or not held by this node (`--hold`): removed here;
//! - missing here: deployed from the object store (paused if the record
//!   says so);
//! - another incarnation here (removed and deployed again while the node
//!   was away): removed, then deployed;
//! - other code here: deployed (a rebuild beside the serving version);
//! - more replays or resumes recorded than applied here: replayed, resumed;
//! - paused or not: paused or resumed;
//! - failed here at a position the operator skipped: skipped here too;
//! - here but never recorded (deployed before this node joined a
//!   cluster): recorded, so that the other nodes get it.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use super::applied::Applied;
use super::records::{self, Record};
use super::{Cluster, ClusterError};
use crate::plugins::{PluginError, PluginName, PluginStatus, RunState};

/// How often every plugin is looked at again.
const PASS: Duration = Duration::from_secs(1);

/// Follows the records until the cluster stops.
pub async fn follow(cluster: Cluster) {
    let stop = cluster.inner.stop.clone();
    while !stop.is_cancelled() {
        if let Err(error) = follow_once(&cluster).await {
            tracing::warn!(%error, "following the cluster's plugin records; trying again");
        }
        tokio::select! {
            () = tokio::time::sleep(PASS) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Loads every record, then follows changes until the watch fails.
async fn follow_once(cluster: &Cluster) -> Result<(), ClusterError> {
    let store = &cluster.inner.buckets.plugins;
    // Watching first, so that nothing written while loading is missed.
    let mut watch = store
        .watch_all()
        .await
        .map_err(|e| ClusterError::unavailable("watching the plugin records".into(), e))?;
    load_all(cluster).await?;
    pass(cluster).await;
    let mut ticks = tokio::time::interval(PASS);
    loop {
        tokio::select! {
            entry = watch.next() => match entry {
                Some(Ok(entry)) => {
                    let record = records::parse(&entry.key, &entry.value);
                    cluster.remember(&entry.key, record, entry.revision);
                    converge_logged(cluster, &entry.key).await;
                }
                Some(Err(error)) => {
                    return Err(ClusterError::unavailable("the plugin records' watch".into(), error));
                }
                None => return Ok(()),
            },
            _ = ticks.tick() => pass(cluster).await,
            () = cluster.inner.stop.cancelled() => return Ok(()),
        }
    }
}

/// Reads every record into the node's copy.
async fn load_all(cluster: &Cluster) -> Result<(), ClusterError> {
    let store = &cluster.inner.buckets.plugins;
    let mut keys = store
        .keys()
        .await
        .map_err(|e| ClusterError::unavailable("listing the plugin records".into(), e))?;
    let mut all = std::collections::BTreeMap::new();
    while let Some(key) = keys.next().await {
        let key =
            key.map_err(|e| ClusterError::unavailable("listing the plugin records".into(), e))?;
        if let Some((record, revision)) = records::read(store, &key).await? {
            all.insert(key, (record, revision));
        }
    }
    for (name, (record, revision)) in all {
        cluster.remember(&name, Some(record), revision);
    }
    Ok(())
}

/// Converges every plugin recorded or present here.
async fn pass(cluster: &Cluster) {
    let mut names: Vec<String> = cluster.inner.records.lock().keys().cloned().collect();
    for name in cluster.inner.plugins.names() {
        if !names.iter().any(|n| n == name.as_str()) {
            names.push(name.as_str().to_owned());
        }
    }
    for name in names {
        converge_logged(cluster, &name).await;
    }
}

async fn converge_logged(cluster: &Cluster, name: &str) {
    let Ok(plugin) = PluginName::new(name) else {
        return;
    };
    if let Err(error) = converge(cluster, &plugin).await {
        tracing::warn!(plugin = name, %error, "cannot bring the plugin to its record yet");
    }
}

/// Brings plugin `name` on this node to its record (see the module's
/// documentation).
async fn converge(cluster: &Cluster, name: &PluginName) -> Result<(), ClusterError> {
    let _lock = cluster.lock(name.as_str()).await;
    let record = cluster.known_record(name.as_str());
    let plugins = &cluster.inner.plugins;
    let local = match plugins.published_status(name) {
        Ok(status) => Some(status),
        Err(PluginError::NotFound(_)) => None,
        Err(error) => return Err(error.into()),
    };
    if local
        .as_ref()
        .is_some_and(|s| s.state == RunState::Compiling)
    {
        return Ok(());
    }
    let applied = cluster.applied(name.as_str());
    match (record, local) {
        (None, None) => Ok(()),
        (None, Some(_)) if applied.is_some() => remove_here(cluster, name, false).await,
        (None, Some(_)) => adopt(cluster, name).await,
        (Some(record), local) if !record.is_live() || !cluster.holds(name.as_str(), &record) => {
            if local.is_some() && (applied.is_some() || record.is_live()) {
                let purge = record.removed.is_some_and(|r| r.purge);
                remove_here(cluster, name, purge).await?;
            }
            Ok(())
        }
        (Some(record), None) => deploy_here(cluster, name, &record).await,
        (Some(record), Some(_)) if applied.as_ref().is_some_and(|a| a.id != record.id) => {
            remove_here(cluster, name, false).await?;
            deploy_here(cluster, name, &record).await
        }
        (Some(record), Some(status)) => update_here(cluster, name, &record, &status, applied).await,
    }
}

/// Deploys the record's code here, as a new plugin.
async fn deploy_here(
    cluster: &Cluster,
    name: &PluginName,
    record: &Record,
) -> Result<(), ClusterError> {
    let wasm = fetch_component(cluster, &record.hash).await?;
    let outcome = cluster.inner.plugins.deploy(name.clone(), wasm).await?;
    tracing::info!(plugin = %name, ?outcome, by = %record.by, "deployed from the cluster's record");
    if record.paused {
        cluster.inner.plugins.pause(name)?;
    }
    apply_webhook(cluster, name, record).await?;
    cluster
        .set_applied(name.as_str(), Some(Applied::all_of(record)))
        .await
}

/// Applies what changed in the record to the plugin running here.
async fn update_here(
    cluster: &Cluster,
    name: &PluginName,
    record: &Record,
    status: &PluginStatus,
    applied: Option<Applied>,
) -> Result<(), ClusterError> {
    let plugins = &cluster.inner.plugins;
    let mut applied = applied.unwrap_or_else(|| Applied {
        id: record.id.clone(),
        replays: record.replays,
        resumes: record.resumes,
    });
    let runs_record_code = match &status.rebuild {
        Some(rebuild) => rebuild.hash == record.hash,
        None => status.hash == record.hash,
    };
    if !runs_record_code {
        let wasm = fetch_component(cluster, &record.hash).await?;
        let outcome = plugins.deploy(name.clone(), wasm).await?;
        tracing::info!(plugin = %name, ?outcome, by = %record.by, "new code from the cluster's record");
        applied.replays = record.replays;
    } else if record.replays > applied.replays {
        let generation = plugins.replay(name).await?;
        tracing::info!(plugin = %name, generation, by = %record.by, "replaying, as the cluster's record asks");
        applied.replays = record.replays;
    }
    let paused = status.state == RunState::Paused;
    if record.paused && !paused && status.state != RunState::Failed {
        plugins.pause(name)?;
    } else if !record.paused && paused {
        plugins.resume(name)?;
    }
    if record.resumes > applied.resumes {
        if status.state == RunState::Failed {
            plugins.resume(name)?;
        }
        applied.resumes = record.resumes;
    }
    let stuck_at = status.last_error.as_ref().map(|e| e.position);
    if status.state == RunState::Failed
        && let Some(position) = stuck_at.filter(|p| record.skips.contains(p))
    {
        let skipped = plugins.skip(name).await?;
        tracing::info!(plugin = %name, position = skipped, "skipped, as the operator did on another node");
        debug_assert_eq!(skipped, position);
    }
    apply_webhook(cluster, name, record).await?;
    cluster.set_applied(name.as_str(), Some(applied)).await
}

/// Gives a notifier here the record's webhook, when it has another.
async fn apply_webhook(
    cluster: &Cluster,
    name: &PluginName,
    record: &Record,
) -> Result<(), ClusterError> {
    let Ok(mailbox) = cluster.inner.plugins.mailbox(name) else {
        return Ok(());
    };
    let wanted = record.webhook.clone();
    let changed = crate::blocking::run(move || {
        let changed = mailbox.webhook()? != wanted;
        if changed {
            mailbox.set_webhook(wanted.as_ref())?;
        }
        Ok::<_, PluginError>(changed)
    })
    .await?;
    if changed {
        tracing::info!(plugin = %name, by = %record.by, "webhook set from the cluster's record");
    }
    Ok(())
}

async fn remove_here(
    cluster: &Cluster,
    name: &PluginName,
    purge: bool,
) -> Result<(), ClusterError> {
    match cluster.inner.plugins.remove(name, purge).await {
        Ok(()) => tracing::info!(plugin = %name, purge, "removed, as the cluster's record says"),
        Err(PluginError::NotFound(_)) => {}
        Err(error) => return Err(error.into()),
    }
    cluster.set_applied(name.as_str(), None).await
}

/// Records a plugin that was here before this node joined a cluster.
async fn adopt(cluster: &Cluster, name: &PluginName) -> Result<(), ClusterError> {
    let (hash, wasm) = cluster.inner.plugins.component(name).await?;
    cluster.store_component(&hash, &wasm).await?;
    let webhook = match cluster.inner.plugins.mailbox(name) {
        Ok(mailbox) => {
            crate::blocking::run(move || Ok::<_, PluginError>(mailbox.webhook()?)).await?
        }
        Err(_) => None,
    };
    let node = cluster.node().to_owned();
    let written = cluster
        .write_record(name.as_str(), |live| {
            Ok(match live {
                Some(_) => None,
                None => Some(Record {
                    webhook: webhook.clone(),
                    ..Record::new(hash.clone(), Vec::new(), &node)
                }),
            })
        })
        .await?;
    if let Some(record) = written {
        tracing::info!(plugin = %name, "recorded a plugin deployed before this node joined the cluster");
        cluster
            .set_applied(name.as_str(), Some(Applied::all_of(&record)))
            .await?;
    }
    Ok(())
}

/// A component from the object store.
async fn fetch_component(cluster: &Cluster, hash: &str) -> Result<bytes::Bytes, ClusterError> {
    let what = || format!("component {hash} from the object store");
    let components = &cluster.inner.buckets.components;
    let mut object = super::patiently(|| components.get(hash))
        .await
        .map_err(|e| ClusterError::unavailable(what(), e))?;
    let mut wasm = Vec::new();
    object
        .read_to_end(&mut wasm)
        .await
        .map_err(|e| ClusterError::unavailable(what(), e))?;
    Ok(wasm.into())
}
