//! The log on a NATS JetStream stream, replicated by the JetStream cluster
//! (docs/design.md, "The JetStream log").
//!
//! Every event is one message on its stream's subject (`subjects`), its
//! payload the same binary form the embedded log stores (`codec`, version
//! and stream included), so the stream's sequence is the event's global
//! position: gapless, because a refused publish takes no sequence. Appends
//! (`append`) check the expected version against the stream's last message
//! and make it JetStream's `Nats-Expected-Last-Subject-Sequence`; reads
//! (`read`) are direct gets in batches. The head is what this node has seen
//! acknowledged: its own appends, and everyone's through an ordered
//! consumer (`follow_head`).

mod api;
mod append;
mod read;
mod subjects;

pub use append::MAX_EVENTS;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Direction, EventFilter, LogError, LogPage, Position, StreamName, StreamPage};
use api::Api;
use read::Head;
use subjects::Subjects;

/// How to reach the JetStream cluster and which stream holds the log.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// NATS servers to connect to (any of them will do).
    pub urls: Vec<String>,
    /// The JetStream stream holding the log; also the first token of its
    /// subjects. Created when missing.
    pub stream: String,
    /// Replicas of a stream this server creates (1, 3 or 5; 3 for
    /// production: an acknowledged append then survives a node's loss).
    pub replicas: usize,
    /// A NATS credentials file (`.creds`).
    pub credentials: Option<PathBuf>,
    /// A NATS token.
    pub token: Option<String>,
    /// How long JetStream remembers an event id for deduplication.
    pub duplicate_window: Duration,
    /// How long one JetStream request may take before the log is called
    /// unavailable.
    pub request_timeout: Duration,
}

impl JetStreamOptions {
    /// The defaults, with the cluster at `urls`.
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            stream: "eventfold".into(),
            replicas: 3,
            credentials: None,
            token: None,
            duplicate_window: Duration::from_secs(120),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Streams whose last message this node remembers: most recently used.
const CACHED_HEADS: usize = 100_000;

/// A handle on the log in JetStream; cheap to clone.
#[derive(Clone)]
pub struct JetStreamLog {
    inner: Arc<Inner>,
}

struct Inner {
    /// The connection, shared with the cluster's buckets (`crate::cluster`).
    client: async_nats::Client,
    /// The stream's name.
    stream: String,
    api: Api,
    subjects: Subjects,
    /// The last message of recently used streams, as this node last saw it:
    /// a hint, corrected by JetStream's sequence check.
    heads: Mutex<quick_cache::unsync::Cache<Box<str>, Head>>,
    head: watch::Sender<Position>,
    /// Where the runners' blocking reads run their requests.
    runtime: tokio::runtime::Handle,
    stop: CancellationToken,
}

impl JetStreamLog {
    /// Connects to the cluster, creates the stream if it is missing (or
    /// checks the one there), and starts following its head.
    pub async fn connect(options: JetStreamOptions) -> Result<Self, LogError> {
        check_stream_name(&options.stream)?;
        let client = connect(&options).await?;
        let context = async_nats::jetstream::new(client.clone());
        let subjects = Subjects::new(&options.stream);
        let mut stream = context
            .get_or_create_stream(StreamConfig {
                name: options.stream.clone(),
                subjects: vec![subjects.all()],
                storage: StorageType::File,
                num_replicas: options.replicas,
                duplicate_window: options.duplicate_window,
                allow_direct: true,
                allow_atomic_publish: true,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                LogError::Unavailable(format!(
                    "cannot create or find the JetStream stream {:?}: {e}",
                    options.stream
                ))
            })?;
        let info = stream
            .info()
            .await
            .map_err(|e| LogError::Unavailable(format!("cannot read the stream's state: {e}")))?;
        if !info.config.allow_atomic_publish || !info.config.allow_direct {
            return Err(LogError::Internal(format!(
                "the JetStream stream {:?} exists without allow_atomic_publish and allow_direct, \
                 which the log needs: give eventfold a stream of its own",
                options.stream
            )));
        }
        let last = info.state.last_sequence;
        let (head, _) = watch::channel(Position(last));
        let inner = Arc::new(Inner {
            client: client.clone(),
            stream: options.stream.clone(),
            api: Api::new(client, &options.stream, options.request_timeout),
            subjects,
            heads: Mutex::new(quick_cache::unsync::Cache::new(CACHED_HEADS)),
            head,
            runtime: tokio::runtime::Handle::current(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(follow_head(stream, inner.clone(), last));
        Ok(Self { inner })
    }

    /// The connection to the cluster: the nodes of one log share their
    /// plugins through it (`crate::cluster`).
    pub fn client(&self) -> async_nats::Client {
        self.inner.client.clone()
    }

    /// The name of the stream that holds the log.
    pub fn stream_name(&self) -> &str {
        &self.inner.stream
    }

    /// Whether the log cannot take appends now (never set: JetStream's
    /// failures are answered per request, as `log_unavailable`).
    pub fn storage_failure(&self) -> Option<String> {
        None
    }

    /// A receiver that changes whenever this node sees the head move.
    pub fn watch_head(&self) -> watch::Receiver<Position> {
        self.inner.head.subscribe()
    }

    /// The last position this node has seen acknowledged.
    pub fn head(&self) -> Position {
        *self.inner.head.borrow()
    }

    /// Reads the global log; see [`EventLog::read_log`](super::EventLog::read_log).
    pub async fn read_log(
        &self,
        from: Position,
        limit: usize,
        filter: &EventFilter,
        max_scan: usize,
    ) -> Result<LogPage, LogError> {
        read::read_log(&self.inner, from, limit, filter, max_scan).await
    }

    /// Reads one stream; see [`EventLog::read_stream`](super::EventLog::read_stream).
    pub async fn read_stream(
        &self,
        stream: &StreamName,
        from: Option<u64>,
        limit: usize,
        direction: Direction,
    ) -> Result<Option<StreamPage>, LogError> {
        read::read_stream(&self.inner, stream, from, limit, direction).await
    }

    /// Reads the global log from a thread off the runtime (a plugin runner).
    pub fn read_log_blocking(
        &self,
        from: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<LogPage, LogError> {
        let inner = self.inner.clone();
        self.inner
            .runtime
            .block_on(async move { read::read_log(&inner, from, limit, filter, usize::MAX).await })
    }

    /// Stops following the head. Appends under way finish on their own:
    /// JetStream holds nothing of this node's that needs flushing.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
    }
}

impl Inner {
    /// Moves the head forward to `position` (never back).
    fn saw(&self, position: u64) {
        self.head.send_if_modified(|head| {
            let moved = position > head.0;
            if moved {
                head.0 = position;
            }
            moved
        });
    }
}

/// A connection to the cluster.
async fn connect(options: &JetStreamOptions) -> Result<async_nats::Client, LogError> {
    let mut connect = async_nats::ConnectOptions::new()
        .name("eventfold")
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(options.request_timeout));
    if let Some(path) = &options.credentials {
        connect = connect.credentials_file(path).await.map_err(|e| {
            LogError::Unavailable(format!(
                "cannot read the NATS credentials {}: {e}",
                path.display()
            ))
        })?;
    }
    if let Some(token) = &options.token {
        connect = connect.token(token.clone());
    }
    connect.connect(options.urls.as_slice()).await.map_err(|e| {
        LogError::Unavailable(format!(
            "cannot connect to NATS at {}: {e}",
            options.urls.join(",")
        ))
    })
}

/// Follows every append to the stream (anyone's) with an ordered consumer
/// of headers only, moving the head; restarts after a failure.
async fn follow_head(
    stream: async_nats::jetstream::stream::Stream,
    inner: Arc<Inner>,
    mut last: u64,
) {
    while !inner.stop.is_cancelled() {
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_subject: format!("_INBOX.eventfold.head.{}", uuid::Uuid::new_v4().simple()),
                filter_subject: inner.subjects.all(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: last + 1,
                },
                headers_only: true,
                ..Default::default()
            })
            .await;
        let mut messages = match consumer {
            Ok(consumer) => match consumer.messages().await {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, "cannot follow the JetStream log's head yet");
                    pause(&inner.stop).await;
                    continue;
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot follow the JetStream log's head yet");
                pause(&inner.stop).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                () = inner.stop.cancelled() => return,
            };
            match next {
                Some(Ok(message)) => {
                    if let Ok(info) = message.info() {
                        last = last.max(info.stream_sequence);
                        inner.saw(last);
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "following the JetStream log's head");
                }
                None => break,
            }
        }
        pause(&inner.stop).await;
    }
}

/// A second's wait, cut short by `stop`.
async fn pause(stop: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
        () = stop.cancelled() => {}
    }
}

/// A JetStream stream name that is also a subject token: letters, digits,
/// `-` and `_`.
fn check_stream_name(name: &str) -> Result<(), LogError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match valid {
        true => Ok(()),
        false => Err(LogError::InvalidName {
            what: "JetStream stream name",
            problem: format!(
                "{name:?} must be 1 to 64 letters, digits, '-' or '_' (it is also the first token of the log's subjects)"
            ),
        }),
    }
}
