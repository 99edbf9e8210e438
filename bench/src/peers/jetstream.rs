//! JetStream itself as the peer of eventfold's JetStream log: the same
//! appends published straight to a stream of their own with `async-nats`,
//! the client library eventfold uses. One event is one publish awaited for
//! its acknowledgement; a request of many is one atomic batch (the headers
//! eventfold's log sends, `Nats-Batch-Commit` on the last), as eventfold
//! sends it. No HTTP, and by default no message ids and no expected
//! sequences: the difference is eventfold's overhead. Made `guarded`, each
//! event carries a `Nats-Msg-Id` and each request the subject's expected
//! last sequence, as eventfold's do: what those guarantees cost JetStream.

use std::time::{Duration, Instant};

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
    guarded: bool,
}

/// One client: the shared connection (as eventfold's server has one) and a
/// subject of its own.
pub struct Client {
    client: async_nats::Client,
    context: async_nats::jetstream::Context,
    subject: String,
    batch: usize,
    payload: Bytes,
    /// With ids and expected sequences: the subject's last sequence.
    guarded: Option<u64>,
}

impl DirectJetStream {
    /// Creates stream `stream` with `replicas` replicas, as eventfold's log
    /// creates its own (file storage, atomic batches allowed), led by the
    /// server named `leader` (created again until it is); `guarded`: its
    /// messages carry ids and expected sequences.
    pub async fn create(
        client: async_nats::Client,
        stream: &str,
        replicas: usize,
        guarded: bool,
        leader: &str,
    ) -> anyhow::Result<Self> {
        let context = async_nats::jetstream::new(client.clone());
        let config = StreamConfig {
            name: stream.to_owned(),
            subjects: vec![format!("{stream}.>")],
            storage: StorageType::File,
            num_replicas: replicas,
            allow_direct: true,
            allow_atomic_publish: true,
            ..Default::default()
        };
        for _ in 0..30 {
            context
                .create_stream(config.clone())
                .await
                .with_context(|| format!("creating the JetStream stream {stream}"))?;
            if leader_of(&client, stream).await? == leader {
                return Ok(Self {
                    client,
                    context,
                    stream: stream.to_owned(),
                    guarded,
                });
            }
            context.delete_stream(stream).await?;
        }
        bail!("the JetStream stream {stream} was not led by {leader} in 30 tries")
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
            guarded: self.guarded.then_some(0),
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
        if self.batch == 1 && self.guarded.is_none() {
            self.context
                .publish(self.subject.clone(), self.payload.clone())
                .await?
                .await?;
            return Ok(());
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        for index in 1..=self.batch {
            let mut headers = HeaderMap::new();
            if let Some(last) = self.guarded {
                headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
                if index == 1 {
                    headers.insert(
                        "Nats-Expected-Last-Subject-Sequence",
                        last.to_string().as_str(),
                    );
                }
            }
            if self.batch > 1 {
                headers.insert("Nats-Batch-Id", id.as_str());
                headers.insert("Nats-Batch-Sequence", index.to_string().as_str());
            }
            if index < self.batch {
                self.client
                    .publish_with_headers(self.subject.clone(), headers, self.payload.clone())
                    .await?;
                continue;
            }
            if self.batch > 1 {
                headers.insert("Nats-Batch-Commit", "1");
            }
            let answer = self.commit(headers).await?;
            if let Some(last) = &mut self.guarded {
                *last = answer["seq"].as_u64().context("an ack without seq")?;
            }
        }
        Ok(())
    }

    /// Publishes the request's last message and waits for the answer. On
    /// R3, a check made while the subject's last write still replicates is
    /// refused as early (10164): asked again, as eventfold does.
    async fn commit(&self, headers: HeaderMap) -> anyhow::Result<serde_json::Value> {
        for attempt in 0..32u32 {
            let reply = self
                .client
                .request_with_headers(self.subject.clone(), headers.clone(), self.payload.clone())
                .await?;
            let answer: serde_json::Value = serde_json::from_slice(&reply.payload)?;
            match answer["error"]["err_code"].as_u64() {
                None => return Ok(answer),
                Some(10164) if self.batch == 1 => {
                    let pause = std::time::Duration::from_millis(2 << attempt.min(6));
                    tokio::time::sleep(pause).await;
                }
                Some(_) => bail!("JetStream refused a publish: {answer}"),
            }
        }
        bail!("JetStream refused a publish as early 32 times")
    }
}

/// The name of the server that leads `stream`, once it has a leader.
pub async fn leader_of(client: &async_nats::Client, stream: &str) -> anyhow::Result<String> {
    let context = async_nats::jetstream::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = context.get_stream(stream).await?.info().await?.clone();
        if let Some(leader) = info.cluster.and_then(|c| c.leader) {
            return Ok(leader);
        }
        if Instant::now() > deadline {
            bail!("the JetStream stream {stream} has no leader after 10 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
