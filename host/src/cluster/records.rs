//! Each plugin's record in the `<s>-plugins` bucket: what every node that
//! holds the plugin converges to. An operator's deploy, replay, pause,
//! resume, skip or remove, sent to any node, changes the record with a
//! compare-and-set on its revision, so that two nodes changing one plugin
//! at once both count.

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use serde::{Deserialize, Serialize};

use super::ClusterError;
use crate::notify::WebhookConfig;

/// What the cluster records of one plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Made at the first deploy: a plugin removed and deployed again under
    /// the same name is another plugin.
    pub id: String,
    /// SHA-256 of the component to run (in `<s>-components`).
    pub hash: String,
    /// Labels a node's `--hold` may select the plugin by.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Replays asked for so far: a node that has applied fewer replays.
    #[serde(default)]
    pub replays: u64,
    /// Paused by the operator.
    #[serde(default)]
    pub paused: bool,
    /// Resumes asked for so far (a resume also retries a failed plugin).
    #[serde(default)]
    pub resumes: u64,
    /// Positions the operator skipped on this code: a node whose plugin
    /// fails at one of them parks it too.
    #[serde(default)]
    pub skips: Vec<u64>,
    /// A notifier's webhook, secret included: whichever node delivers
    /// uses it.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Removed; `purge` also deletes a notifier's mailbox.
    #[serde(default)]
    pub removed: Option<Removed>,
    /// The node that wrote it last.
    #[serde(default)]
    pub by: String,
}

/// A removed plugin: the record stays, so that a node that was away
/// removes it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// Also delete the notifier's mailbox.
    pub purge: bool,
}

impl Record {
    /// A plugin's first deploy.
    pub fn new(hash: String, labels: Vec<String>, by: &str) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            hash,
            labels,
            replays: 0,
            paused: false,
            resumes: 0,
            skips: Vec::new(),
            webhook: None,
            removed: None,
            by: by.to_owned(),
        }
    }

    /// Whether it names a plugin that is deployed (not removed).
    pub fn is_live(&self) -> bool {
        self.removed.is_none()
    }
}

/// Reads a record; `None` when there is none (or it cannot be parsed,
/// which is logged).
pub async fn read(store: &kv::Store, name: &str) -> Result<Option<(Record, u64)>, ClusterError> {
    let entry = super::patiently(|| store.entry(name))
        .await
        .map_err(|e| ClusterError::unavailable(format!("the record of plugin {name}"), e))?;
    Ok(entry.and_then(|entry| parse(name, &entry.value).map(|r| (r, entry.revision))))
}

/// A record's bytes as a record; `None` (logged) if they are not one.
pub fn parse(name: &str, value: &[u8]) -> Option<Record> {
    if value.is_empty() {
        return None;
    }
    match serde_json::from_slice(value) {
        Ok(record) => Some(record),
        Err(error) => {
            tracing::error!(plugin = name, %error, "cannot read the plugin's record");
            None
        }
    }
}

/// Changes `name`'s record with `change` (given the current live record,
/// if any) and writes it with a compare-and-set, trying again when another
/// node wrote in between. `change` answering `None` writes nothing.
/// Answers the record written and its revision.
pub async fn update(
    store: &kv::Store,
    name: &str,
    mut change: impl FnMut(Option<Record>) -> Result<Option<Record>, ClusterError>,
) -> Result<Option<(Record, u64)>, ClusterError> {
    loop {
        let current = read(store, name).await?;
        let revision = current.as_ref().map(|(_, revision)| *revision);
        let live = current.map(|(record, _)| record).filter(Record::is_live);
        let Some(record) = change(live)? else {
            return Ok(None);
        };
        let bytes: bytes::Bytes = serde_json::to_vec(&record)
            .map_err(|e| ClusterError::Internal(e.to_string()))?
            .into();
        let written = match revision {
            Some(revision) => {
                match super::patiently(|| store.update(name, bytes.clone(), revision)).await {
                    Ok(written) => Some(written),
                    Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => None,
                    Err(error) => {
                        return Err(ClusterError::unavailable(
                            format!("the record of plugin {name}"),
                            error,
                        ));
                    }
                }
            }
            None => match super::patiently(|| store.create(name, bytes.clone())).await {
                Ok(written) => Some(written),
                Err(error) if error.kind() == CreateErrorKind::AlreadyExists => None,
                Err(error) => {
                    return Err(ClusterError::unavailable(
                        format!("the record of plugin {name}"),
                        error,
                    ));
                }
            },
        };
        if let Some(revision) = written {
            return Ok(Some((record, revision)));
        }
    }
}
