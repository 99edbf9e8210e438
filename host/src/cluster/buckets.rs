//! What the nodes of one log share in JetStream besides the log, every
//! name made from the log's stream `<s>`:
//!
//! | what | JetStream | key or subject |
//! |---|---|---|
//! | each plugin's record (`records.rs`) | KV `<s>-plugins` | the plugin's name |
//! | the components the records name | object store `<s>-components` | SHA-256 of the component |
//! | each node's heartbeat (`nodes.rs`) | KV `<s>-nodes`, entries expire | the node's name |
//! | each notifier's lease (`leases.rs`) | KV `<s>-leases`, entries expire | the notifier's name |
//! | each notifier's delivery ledger | stream `<s>-delivered` | `<s>-delivered.<plugin>` |
//! | each reactor's mark (`marks.rs`) | KV `<s>-reactors` | the reactor's name |
//!
//! Each is created by the first node that needs it, with the log's replicas.

use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectStore};
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::{self, kv};

use super::{ClusterError, patiently};

/// How long a node's heartbeat lasts when it is not renewed: a node that
/// stops renewing it is gone from `GET /cluster` after this.
pub const NODE_TTL: Duration = Duration::from_secs(10);

/// The shared buckets of one log.
#[derive(Clone)]
pub struct Buckets {
    pub context: jetstream::Context,
    pub plugins: kv::Store,
    pub components: ObjectStore,
    pub nodes: kv::Store,
    pub leases: kv::Store,
    pub reactors: kv::Store,
    /// The delivery ledger's stream and the prefix of its subjects.
    pub delivered: String,
    /// The log's stream.
    pub log_stream: String,
}

impl Buckets {
    /// Opens the buckets of the log in `stream`, creating what is missing.
    pub async fn open(
        client: async_nats::Client,
        stream: &str,
        replicas: usize,
        lease_ttl: Duration,
    ) -> Result<Self, ClusterError> {
        let context = jetstream::new(client);
        let plugins = key_value(&context, format!("{stream}-plugins"), replicas, None).await?;
        let nodes = key_value(
            &context,
            format!("{stream}-nodes"),
            replicas,
            Some(NODE_TTL),
        )
        .await?;
        let leases = key_value(
            &context,
            format!("{stream}-leases"),
            replicas,
            Some(lease_ttl),
        )
        .await?;
        let reactors = key_value(&context, format!("{stream}-reactors"), replicas, None).await?;
        let components = object_store(&context, format!("{stream}-components"), replicas).await?;
        let delivered = format!("{stream}-delivered");
        let config = StreamConfig {
            name: delivered.clone(),
            subjects: vec![format!("{delivered}.>")],
            storage: StorageType::File,
            num_replicas: replicas,
            allow_direct: true,
            ..Default::default()
        };
        patiently(|| context.get_or_create_stream(config.clone()))
            .await
            .map_err(|e| ClusterError::unavailable(format!("the stream {delivered}"), e))?;
        Ok(Self {
            context,
            plugins,
            components,
            nodes,
            leases,
            reactors,
            delivered,
            log_stream: stream.to_owned(),
        })
    }

    /// The subject of `plugin`'s delivery ledger.
    pub fn ledger_subject(&self, plugin: &str) -> String {
        format!("{}.{plugin}", self.delivered)
    }
}

/// A key-value bucket whose entries expire `max_age` after their last
/// write (`None`: never), created or brought to this configuration.
async fn key_value(
    context: &jetstream::Context,
    bucket: String,
    replicas: usize,
    max_age: Option<Duration>,
) -> Result<kv::Store, ClusterError> {
    let config = kv::Config {
        bucket: bucket.clone(),
        history: 1,
        max_age: max_age.unwrap_or_default(),
        storage: StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    patiently(|| context.create_or_update_key_value(config.clone()))
        .await
        .map_err(|e| ClusterError::unavailable(format!("the bucket {bucket}"), e))
}

async fn object_store(
    context: &jetstream::Context,
    bucket: String,
    replicas: usize,
) -> Result<ObjectStore, ClusterError> {
    if let Ok(store) = context.get_object_store(&bucket).await {
        return Ok(store);
    }
    let config = object_store::Config {
        bucket: bucket.clone(),
        storage: StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    patiently(|| context.create_object_store(config.clone()))
        .await
        .map_err(|e| ClusterError::unavailable(format!("the object store {bucket}"), e))
}
