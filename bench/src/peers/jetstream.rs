//! JetStream itself as the peer of eventfold's JetStream log: the same
//! appends published straight to a stream of their own with `async-nats`,
//! the client library eventfold uses. One event is one publish awaited for
//! its acknowledgement; a request of many is one atomic batch (the headers
//! eventfold's log sends, `Nats-Batch-Commit` on the last), as eventfold
//! sends it. Nothing else: no message ids, no expected sequences, no HTTP.
//! The difference is eventfold's overhead.

use anyhow::{Context, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use bytes::Bytes;

use super::EVENT_DATA;

/// A stream made for the benchmark on a running cluster.
pub struct DirectJetStream {
    client: async_nats::Client,
    context: async_nats::jetstream::Context,
    stream: String,
}

/// One client: the shared connection (as eventfold's server has one) and a
/// subject of its own.
pub struct Client {
    client: async_nats::Client,
    context: async_nats::jetstream::Context,
    subject: String,
    batch: usize,
    payload: Bytes,
}

impl DirectJetStream {
    /// Creates stream `stream` with `replicas` replicas, as eventfold's log
    /// creates its own (file storage, atomic batches allowed).
    pub async fn create(
        client: async_nats::Client,
        stream: &str,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let context = async_nats::jetstream::new(client.clone());
        context
            .create_stream(StreamConfig {
                name: stream.to_owned(),
                subjects: vec![format!("{stream}.>")],
                storage: StorageType::File,
                num_replicas: replicas,
                allow_direct: true,
                allow_atomic_publish: true,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating the JetStream stream {stream}"))?;
        Ok(Self {
            client,
            context,
            stream: stream.to_owned(),
        })
    }

    /// A client publishing `batch` events per request to a subject named
    /// after `stream`.
    pub fn client(&self, stream: &str, batch: usize) -> Client {
        let token: String = stream
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Client {
            client: self.client.clone(),
            context: self.context.clone(),
            subject: format!("{}.{token}", self.stream),
            batch,
            payload: Bytes::from_static(EVENT_DATA.as_bytes()),
        }
    }

    /// The version of the server the client is connected to.
    pub fn version(&self) -> String {
        self.client.server_info().version
    }

    /// Deletes the stream.
    pub async fn delete(self) -> anyhow::Result<()> {
        self.context
            .delete_stream(&self.stream)
            .await
            .with_context(|| format!("deleting the JetStream stream {}", self.stream))?;
        Ok(())
    }
}

impl Client {
    /// Publishes one request's events and waits for JetStream's answer.
    pub async fn append(&mut self) -> anyhow::Result<()> {
        if self.batch == 1 {
            self.context
                .publish(self.subject.clone(), self.payload.clone())
                .await?
                .await?;
            return Ok(());
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        for index in 1..=self.batch {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Batch-Id", id.as_str());
            headers.insert("Nats-Batch-Sequence", index.to_string().as_str());
            if index < self.batch {
                self.client
                    .publish_with_headers(self.subject.clone(), headers, self.payload.clone())
                    .await?;
                continue;
            }
            headers.insert("Nats-Batch-Commit", "1");
            let reply = self
                .client
                .request_with_headers(self.subject.clone(), headers, self.payload.clone())
                .await?;
            let answer: serde_json::Value = serde_json::from_slice(&reply.payload)?;
            if answer.get("error").is_some() {
                bail!("JetStream refused a batch: {answer}");
            }
        }
        Ok(())
    }
}
