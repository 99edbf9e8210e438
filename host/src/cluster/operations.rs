//! An operator's changes to plugins, wherever the plugins live: straight
//! to this node's registry when it is alone ([`Deployments::Alone`]), or
//! recorded in the cluster and applied on this node when it holds the
//! plugin ([`Deployments::Shared`]); the other nodes apply the record as
//! they converge (`converge.rs`).
//!
//! A deploy is checked on this node before it is recorded (compiled here,
//! and applied here first when this node holds the plugin), so that a
//! component no node could run is refused with its error and never
//! reaches the others.

use std::path::PathBuf;

use bytes::Bytes;

use super::applied::Applied;
use super::records::{self, Record, Removed};
use super::{Cluster, ClusterError};
use crate::notify::WebhookConfig;
use crate::plugins::{DeployFiles, DeployOutcome, PluginError, PluginName, Plugins};
use crate::runtime::wasm_hash;

/// Where an operator's changes to plugins go. Cheap to clone.
#[derive(Clone)]
pub enum Deployments {
    /// This node alone: its registry.
    Alone(Plugins),
    /// The nodes sharing a JetStream log.
    Shared(Cluster),
}

/// What a deploy did on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployed {
    /// This node holds the plugin and deployed it.
    Here(DeployOutcome),
    /// Recorded for the nodes that hold it; this node does not (`--hold`).
    Recorded,
}

impl Deployments {
    /// This node's plugins.
    pub fn plugins(&self) -> &Plugins {
        match self {
            Deployments::Alone(plugins) => plugins,
            Deployments::Shared(cluster) => &cluster.inner.plugins,
        }
    }

    /// The cluster, when this node is part of one.
    pub fn cluster(&self) -> Option<&Cluster> {
        match self {
            Deployments::Alone(_) => None,
            Deployments::Shared(cluster) => Some(cluster),
        }
    }

    /// Deploys `wasm` as plugin `name`; `labels` replace the plugin's labels
    /// (kept when `None`).
    pub async fn deploy(
        &self,
        name: PluginName,
        wasm: Bytes,
        labels: Option<Vec<String>>,
    ) -> Result<Deployed, ClusterError> {
        match self {
            Deployments::Alone(plugins) => Ok(Deployed::Here(plugins.deploy(name, wasm).await?)),
            Deployments::Shared(cluster) => cluster.deploy(name, wasm, labels).await,
        }
    }

    /// Rebuilds the plugin from position 0; answers the generation being
    /// built on this node (`None` when this node does not hold it).
    pub async fn replay(&self, name: &PluginName) -> Result<Option<u64>, ClusterError> {
        match self {
            Deployments::Alone(plugins) => Ok(Some(plugins.replay(name).await?)),
            Deployments::Shared(cluster) => cluster.replay(name).await,
        }
    }

    /// Removes the plugin (and with `purge`, a notifier's mailbox).
    pub async fn remove(&self, name: &PluginName, purge: bool) -> Result<(), ClusterError> {
        match self {
            Deployments::Alone(plugins) => Ok(plugins.remove(name, purge).await?),
            Deployments::Shared(cluster) => cluster.remove(name, purge).await,
        }
    }

    /// Pauses the plugin.
    pub async fn pause(&self, name: &PluginName) -> Result<(), ClusterError> {
        match self {
            Deployments::Alone(plugins) => Ok(plugins.pause(name)?),
            Deployments::Shared(cluster) => cluster.set_paused(name, true).await,
        }
    }

    /// Resumes the plugin, or retries a failed one now.
    pub async fn resume(&self, name: &PluginName) -> Result<(), ClusterError> {
        match self {
            Deployments::Alone(plugins) => Ok(plugins.resume(name)?),
            Deployments::Shared(cluster) => cluster.set_paused(name, false).await,
        }
    }

    /// Parks the event the failed plugin is stuck on; answers its position.
    pub async fn skip(&self, name: &PluginName) -> Result<u64, ClusterError> {
        match self {
            Deployments::Alone(plugins) => Ok(plugins.skip(name).await?),
            Deployments::Shared(cluster) => cluster.skip(name).await,
        }
    }
}

impl Deployments {
    /// Sets (or with `None` removes) a notifier's webhook.
    pub async fn set_webhook(
        &self,
        name: &PluginName,
        webhook: Option<WebhookConfig>,
    ) -> Result<(), ClusterError> {
        let set_here = |plugins: &Plugins, webhook: Option<WebhookConfig>| {
            let mailbox = plugins.mailbox(name);
            async move {
                let mailbox = mailbox?;
                crate::blocking::run(move || {
                    Ok::<_, PluginError>(mailbox.set_webhook(webhook.as_ref())?)
                })
                .await
            }
        };
        match self {
            Deployments::Alone(plugins) => Ok(set_here(plugins, webhook).await?),
            Deployments::Shared(cluster) => {
                let _lock = cluster.lock(name.as_str()).await;
                let record = cluster.live_record(name).await?;
                if cluster.holds(name.as_str(), &record) {
                    set_here(&cluster.inner.plugins, webhook.clone()).await?;
                }
                cluster
                    .change(name, |r| r.webhook.clone_from(&webhook))
                    .await?;
                Ok(())
            }
        }
    }
}

impl DeployFiles for Deployments {
    async fn deploy_files(
        &self,
        files: Vec<(PathBuf, PluginName, Bytes)>,
    ) -> Vec<(PathBuf, PluginName, Result<String, String>)> {
        match self {
            Deployments::Alone(plugins) => plugins.deploy_files(files).await,
            Deployments::Shared(_) => {
                let mut outcomes = Vec::with_capacity(files.len());
                for (path, name, wasm) in files {
                    let outcome = self.deploy(name.clone(), wasm, None).await;
                    let outcome = outcome.map(|o| format!("{o:?}")).map_err(|e| e.to_string());
                    outcomes.push((path, name, outcome));
                }
                outcomes
            }
        }
    }
}

impl Cluster {
    async fn deploy(
        &self,
        name: PluginName,
        wasm: Bytes,
        labels: Option<Vec<String>>,
    ) -> Result<Deployed, ClusterError> {
        let _lock = self.lock(name.as_str()).await;
        let store = &self.inner.buckets.plugins;
        let current = records::read(store, name.as_str()).await?;
        let live = current.map(|(r, _)| r).filter(Record::is_live);
        let labels = labels
            .or_else(|| live.as_ref().map(|r| r.labels.clone()))
            .unwrap_or_default();
        let held = self.inner.options.hold.holds(name.as_str(), &labels);
        let deployed = if held {
            Deployed::Here(
                self.inner
                    .plugins
                    .deploy(name.clone(), wasm.clone())
                    .await?,
            )
        } else {
            self.inner.plugins.check(wasm.clone()).await?;
            Deployed::Recorded
        };
        let hash = wasm_hash(&wasm);
        self.store_component(&hash, &wasm).await?;
        let node = self.node().to_owned();
        let record = self
            .write_record(name.as_str(), |live| {
                Ok(Some(match live {
                    Some(mut record) => {
                        if record.hash != hash {
                            record.hash.clone_from(&hash);
                            record.skips.clear();
                        }
                        record.labels.clone_from(&labels);
                        record.by.clone_from(&node);
                        record
                    }
                    None => Record::new(hash.clone(), labels.clone(), &node),
                }))
            })
            .await?;
        if let (Some(record), true) = (record, held) {
            let applied = match (deployed, self.applied(name.as_str())) {
                // The same code: replays asked for elsewhere are still due.
                (Deployed::Here(DeployOutcome::Unchanged), Some(applied))
                    if applied.id == record.id =>
                {
                    applied
                }
                _ => Applied::all_of(&record),
            };
            self.set_applied(name.as_str(), Some(applied)).await?;
        }
        Ok(deployed)
    }

    /// Puts a component into the object store, unless it is there.
    pub(super) async fn store_component(
        &self,
        hash: &str,
        wasm: &[u8],
    ) -> Result<(), ClusterError> {
        let components = &self.inner.buckets.components;
        if components.info(hash).await.is_ok() {
            return Ok(());
        }
        super::patiently(|| async {
            let mut reader = wasm;
            components.put(hash, &mut reader).await
        })
        .await
        .map_err(|e| ClusterError::unavailable(format!("storing component {hash}"), e))?;
        Ok(())
    }

    /// The live record of `name`, or the plugin's absence as an error.
    async fn live_record(&self, name: &PluginName) -> Result<Record, ClusterError> {
        records::read(&self.inner.buckets.plugins, name.as_str())
            .await?
            .map(|(record, _)| record)
            .filter(Record::is_live)
            .ok_or_else(|| PluginError::NotFound(name.to_string()).into())
    }

    /// Changes `name`'s live record with `change`; the plugin's absence as
    /// an error.
    async fn change(
        &self,
        name: &PluginName,
        mut change: impl FnMut(&mut Record),
    ) -> Result<Record, ClusterError> {
        let node = self.node().to_owned();
        self.write_record(name.as_str(), |live| {
            Ok(live.map(|mut record| {
                change(&mut record);
                record.by.clone_from(&node);
                record
            }))
        })
        .await?
        .ok_or_else(|| PluginError::NotFound(name.to_string()).into())
    }

    async fn replay(&self, name: &PluginName) -> Result<Option<u64>, ClusterError> {
        let _lock = self.lock(name.as_str()).await;
        let record = self.live_record(name).await?;
        let generation = match self.holds(name.as_str(), &record) {
            true => Some(self.inner.plugins.replay(name).await?),
            false => None,
        };
        let record = self.change(name, |r| r.replays += 1).await?;
        if generation.is_some() {
            self.note_applied(name, |a| a.replays = record.replays)
                .await?;
        }
        Ok(generation)
    }

    async fn remove(&self, name: &PluginName, purge: bool) -> Result<(), ClusterError> {
        let _lock = self.lock(name.as_str()).await;
        let record = self.live_record(name).await?;
        if self.holds(name.as_str(), &record) {
            match self.inner.plugins.remove(name, purge).await {
                Ok(()) | Err(PluginError::NotFound(_)) => {}
                Err(error) => return Err(error.into()),
            }
        }
        if purge {
            self.purge_ledger(name).await?;
        }
        self.change(name, |r| r.removed = Some(Removed { purge }))
            .await?;
        self.set_applied(name.as_str(), None).await
    }

    /// Forgets what a notifier delivered, with its mailbox: a notifier
    /// deployed again under the name sends its history again.
    async fn purge_ledger(&self, name: &PluginName) -> Result<(), ClusterError> {
        let buckets = &self.inner.buckets;
        let what = || format!("purging the delivery ledger of {name}");
        let stream = buckets
            .context
            .get_stream(&buckets.delivered)
            .await
            .map_err(|e| ClusterError::unavailable(what(), e))?;
        stream
            .purge()
            .filter(buckets.ledger_subject(name.as_str()))
            .await
            .map_err(|e| ClusterError::unavailable(what(), e))?;
        Ok(())
    }

    async fn set_paused(&self, name: &PluginName, paused: bool) -> Result<(), ClusterError> {
        let _lock = self.lock(name.as_str()).await;
        let record = self.live_record(name).await?;
        let held = self.holds(name.as_str(), &record);
        if held {
            match paused {
                true => self.inner.plugins.pause(name)?,
                false => self.inner.plugins.resume(name)?,
            }
        }
        let record = self
            .change(name, |r| {
                r.paused = paused;
                if !paused {
                    r.resumes += 1;
                }
            })
            .await?;
        if held {
            self.note_applied(name, |a| a.resumes = record.resumes)
                .await?;
        }
        Ok(())
    }

    async fn skip(&self, name: &PluginName) -> Result<u64, ClusterError> {
        let _lock = self.lock(name.as_str()).await;
        let record = self.live_record(name).await?;
        if !self.holds(name.as_str(), &record) {
            return Err(PluginError::Conflict(format!(
                "this node does not hold plugin {name} (its --hold): skip on a node that does"
            ))
            .into());
        }
        let position = self.inner.plugins.skip(name).await?;
        self.change(name, |r| {
            if !r.skips.contains(&position) {
                r.skips.push(position);
            }
        })
        .await?;
        Ok(position)
    }

    /// Changes what this node applied of `name` (if it applied anything).
    async fn note_applied(
        &self,
        name: &PluginName,
        change: impl FnOnce(&mut Applied),
    ) -> Result<(), ClusterError> {
        let Some(mut applied) = self.applied(name.as_str()) else {
            return Ok(());
        };
        change(&mut applied);
        self.set_applied(name.as_str(), Some(applied)).await
    }
}
