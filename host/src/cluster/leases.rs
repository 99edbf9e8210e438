//! Plugin leases: exactly one node at a time delivers a notifier's
//! notifications, or runs a reactor (`docs/design.md`, "Several nodes").
//!
//! A lease is an entry of the `<s>-leases` bucket, whose entries expire one
//! TTL after their last write. A node takes a free lease with `create`
//! (only one of any number of racing nodes succeeds) and keeps it by
//! rewriting it with `update` at the revision it last wrote, every quarter
//! of the TTL, each attempt cut off after a quarter. A write refused for its
//! revision means another node has it; a node whose renewal fails half a
//! TTL after its last one stops delivering at once: by three quarters of
//! the TTL, before the entry can have expired under it. When an
//! owner dies its entry expires, and another node's next `create`
//! succeeds: a handover takes at most the TTL plus a quarter of it. A node
//! that shuts down deletes its leases, and the others take them over
//! within a quarter of the TTL.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::buckets::Buckets;
use super::now_ms;
use crate::notify::{Handover, KeyId, Ledger, NotifyError, Ownership};

/// What a lease entry holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseValue {
    /// The node that holds it.
    pub node: String,
    /// When it took it, ms since the Unix epoch.
    pub since_ms: u64,
}

/// A notifier's lease as this node last saw it.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseView {
    /// The notifier.
    pub plugin: String,
    /// Whether this node holds it.
    pub held_here: bool,
}

/// The leases of this node's notifiers. Cheap to clone.
#[derive(Clone)]
pub struct Leases {
    inner: Arc<Inner>,
}

struct Inner {
    buckets: Buckets,
    node: String,
    ttl: Duration,
    /// What this node knows of each notifier it contends for.
    views: Mutex<HashMap<String, LeaseView>>,
    /// Cancelled at shutdown: every lease is given up.
    stop: CancellationToken,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("node", &self.inner.node)
            .field("ttl", &self.inner.ttl)
            .finish()
    }
}

impl Leases {
    pub fn new(buckets: Buckets, node: String, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                buckets,
                node,
                ttl,
                views: Mutex::new(HashMap::new()),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// What this node knows of the leases it contends for.
    pub fn views(&self) -> Vec<LeaseView> {
        let mut views: Vec<LeaseView> = self.inner.views.lock().values().cloned().collect();
        views.sort_by(|a, b| a.plugin.cmp(&b.plugin));
        views
    }

    /// Every lease held in the cluster, by notifier.
    pub async fn owners(&self) -> HashMap<String, LeaseValue> {
        let mut owners = HashMap::new();
        let Ok(mut keys) = self.inner.buckets.leases.keys().await else {
            return owners;
        };
        while let Some(Ok(key)) = keys.next().await {
            if let Ok(Some(value)) = self.inner.buckets.leases.get(&key).await
                && let Ok(lease) = serde_json::from_slice::<LeaseValue>(&value)
            {
                owners.insert(key, lease);
            }
        }
        owners
    }

    /// The lease of `plugin`: who delivers it, since when; `None` when no
    /// node does (or JetStream cannot say).
    pub async fn owner(&self, plugin: &str) -> Option<LeaseValue> {
        let value = self.inner.buckets.leases.get(plugin).await.ok()??;
        serde_json::from_slice(&value).ok()
    }

    /// Gives up every lease at once (shutdown): the other nodes take them
    /// over without waiting for them to expire.
    pub fn release_all(&self) {
        self.inner.stop.cancel();
    }
}

impl Handover for Leases {
    fn contend(&self, plugin: &str) -> Ownership {
        let (owner, receiver) = watch::channel(false);
        let contention = self.inner.stop.child_token();
        self.inner.views.lock().insert(
            plugin.to_owned(),
            LeaseView {
                plugin: plugin.to_owned(),
                held_here: false,
            },
        );
        tokio::spawn(contend(
            self.inner.clone(),
            plugin.to_owned(),
            owner,
            contention.clone(),
        ));
        Ownership {
            owner: receiver,
            ledger: Arc::new(DeliveryLedger {
                buckets: self.inner.buckets.clone(),
                subject: self.inner.buckets.ledger_subject(plugin),
            }),
            _contention: Box::new(contention.drop_guard()),
        }
    }
}

/// Takes and keeps `plugin`'s lease until `stop`, then gives it up.
async fn contend(
    inner: Arc<Inner>,
    plugin: String,
    owner: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let store = &inner.buckets.leases;
    // The lease as this node last wrote it, its revision, and when.
    let mut held: Option<(LeaseValue, u64, Instant)> = None;
    let period = inner.ttl / 4;
    while !stop.is_cancelled() {
        held = match held {
            None => {
                let value = LeaseValue {
                    node: inner.node.clone(),
                    since_ms: now_ms(),
                };
                match store.create(&plugin, encode(&value)).await {
                    Ok(revision) => {
                        tracing::info!(plugin, node = %inner.node, "took the plugin's lease");
                        set_held(&inner, &plugin, &owner, true);
                        Some((value, revision, Instant::now()))
                    }
                    Err(error) if error.kind() == CreateErrorKind::AlreadyExists => None,
                    Err(error) => {
                        tracing::warn!(plugin, %error, "cannot contend for the plugin's lease");
                        None
                    }
                }
            }
            Some((value, revision, renewed)) => {
                // Bounded, so that a node cut off from JetStream notices in time.
                let update = store.update(&plugin, encode(&value), revision);
                match tokio::time::timeout(period, update).await {
                    Ok(Ok(revision)) => Some((value, revision, Instant::now())),
                    Ok(Err(error)) if error.kind() == UpdateErrorKind::WrongLastRevision => {
                        tracing::warn!(plugin, "the plugin's lease went to another node");
                        set_held(&inner, &plugin, &owner, false);
                        None
                    }
                    failed if renewed.elapsed() >= inner.ttl / 2 => {
                        let error =
                            failed.map_or_else(|_| "timed out".to_owned(), |e| format!("{e:?}"));
                        tracing::warn!(
                            plugin,
                            error,
                            "cannot renew the plugin's lease: delivery (or a reactor) stops here"
                        );
                        set_held(&inner, &plugin, &owner, false);
                        None
                    }
                    _ => Some((value, revision, renewed)),
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stop.cancelled() => {}
        }
    }
    if let Some((_, revision, _)) = held {
        set_held(&inner, &plugin, &owner, false);
        match store.delete_expect_revision(&plugin, Some(revision)).await {
            Ok(()) => tracing::info!(plugin, "gave up the plugin's lease"),
            Err(error) => {
                tracing::warn!(plugin, %error, "cannot give up the plugin's lease: it expires")
            }
        }
    }
    inner.views.lock().remove(&plugin);
}

fn set_held(inner: &Inner, plugin: &str, owner: &watch::Sender<bool>, held: bool) {
    owner.send_replace(held);
    if let Some(view) = inner.views.lock().get_mut(plugin) {
        view.held_here = held;
    }
}

fn encode(value: &LeaseValue) -> Bytes {
    serde_json::to_vec(value).unwrap_or_default().into()
}

/// A notifier's delivery ledger: messages on its subject of the
/// `<s>-delivered` stream, each holding the 16-byte ids of keys delivered
/// together.
struct DeliveryLedger {
    buckets: Buckets,
    subject: String,
}

impl Ledger for DeliveryLedger {
    fn delivered(&self) -> BoxFuture<'_, Result<HashSet<KeyId>, NotifyError>> {
        Box::pin(async move {
            read_ledger(&self.buckets, &self.subject)
                .await
                .map_err(|e| {
                    NotifyError::Internal(format!("delivery ledger {}: {e}", self.subject))
                })
        })
    }

    fn record(&self, keys: Vec<KeyId>) -> BoxFuture<'_, Result<(), NotifyError>> {
        Box::pin(async move {
            let payload: Vec<u8> = keys.concat();
            let ack = self
                .buckets
                .context
                .publish(self.subject.clone(), payload.into())
                .await
                .map_err(|e| NotifyError::Internal(format!("delivery ledger: {e}")))?;
            ack.await
                .map_err(|e| NotifyError::Internal(format!("delivery ledger: {e}")))?;
            Ok(())
        })
    }
}

/// Every key id on `subject`: read with an ordered consumer up to the
/// subject's last message.
async fn read_ledger(
    buckets: &Buckets,
    subject: &str,
) -> Result<HashSet<KeyId>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = buckets.context.get_stream(&buckets.delivered).await?;
    let last = match stream.direct_get_last_for_subject(subject).await {
        Ok(message) => message.sequence,
        Err(error) if error.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {
            return Ok(HashSet::new());
        }
        Err(error) => return Err(error.into()),
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut keys = HashSet::new();
    while let Some(message) = messages.next().await {
        let message = message?;
        for chunk in message.payload.chunks_exact(16) {
            let mut id = [0u8; 16];
            id.copy_from_slice(chunk);
            keys.insert(id);
        }
        if message.info()?.stream_sequence >= last {
            break;
        }
    }
    Ok(keys)
}
