//! eventfold as a peer: the real server in a process of its own (this binary
//! re-executed as `eventfold serve`), or one already running, driven over
//! HTTP (`POST /streams/{stream}`) or over its append socket (`GET /appends`,
//! a WebSocket).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::service::{self, Service};
use super::{EVENT_DATA, EVENT_TYPE, PAGE};

/// How clients append.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Protocol {
    /// One `POST /streams/{stream}` per append.
    Http,
    /// One message per append over a WebSocket to `GET /appends`.
    Socket,
}

/// The server under test: started here, or one already running.
pub struct Eventfold {
    service: Option<Service>,
    pid: Option<u32>,
    url: String,
    http: reqwest::Client,
    protocol: Protocol,
}

/// How to start the server: which binary, with which extra flags.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// An `eventfold` binary to run as `eventfold serve` (default: this
    /// benchmark re-executed as `serve`, the same code).
    pub binary: Option<PathBuf>,
    /// Flags added after `serve --data-dir … --addr …`.
    pub args: Vec<String>,
}

/// One client: its own connection and its own stream.
pub struct Client {
    connection: Connection,
    stream: String,
    /// The JSON array of one request's events.
    events: String,
    batch: u64,
    /// The stream's last version, as the append's `expected_version`.
    version: Option<u64>,
}

enum Connection {
    /// One bare HTTP/1 connection (hyper's, as a Redis client keeps one
    /// connection): no pool, no per-request URL or header parsing.
    Http {
        sender: http1::SendRequest<Full<Bytes>>,
        /// `/streams/{stream}`.
        path: String,
        host: String,
    },
    Socket(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
}

impl Eventfold {
    /// Starts `eventfold serve` on a fresh data directory under `scratch`.
    pub async fn start(scratch: &Path) -> anyhow::Result<Self> {
        Self::launch(scratch, &Launch::default()).await
    }

    /// Starts `eventfold serve` as `launch` says, on the data directory
    /// under `scratch` (fresh the first time; a second launch on the same
    /// `scratch` opens what the first one left).
    pub async fn launch(scratch: &Path, launch: &Launch) -> anyhow::Result<Self> {
        let dir = service::service_dir(scratch, "eventfold")?;
        let port = service::free_port()?;
        let mut command = match &launch.binary {
            Some(binary) => tokio::process::Command::new(binary),
            None => tokio::process::Command::new(std::env::current_exe()?),
        };
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(&launch.args)
            .env("RUST_LOG", "warn");
        let log = dir.join("server.log");
        let mut service = Service::spawn("eventfold", command, &log, "TERM")?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let health = format!("{url}/health");
        service::wait_ready(&mut service, &log, Duration::from_secs(30), || async {
            Ok(http.get(&health).send().await?.error_for_status()?)
        })
        .await?;
        Ok(Self {
            pid: Some(service.pid()),
            service: Some(service),
            url,
            http,
            protocol: Protocol::Http,
        })
    }

    /// A server that is already running at `url` (left running at the end).
    pub fn connect(url: &str) -> Self {
        Self {
            service: None,
            pid: None,
            url: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            protocol: Protocol::Http,
        }
    }

    /// Clients from now on append over `protocol`.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The same server, its clients appending over `protocol`; stopping it
    /// leaves the server running.
    pub fn over(&self, protocol: Protocol) -> Self {
        Self {
            service: None,
            pid: self.pid,
            url: self.url.clone(),
            http: self.http.clone(),
            protocol,
        }
    }

    /// Its base URL, `http://host:port`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How its clients append.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The server's process id, when it was started here.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// A client appending `batch` events per request to `stream`.
    pub async fn client(&self, stream: &str, batch: usize) -> anyhow::Result<Client> {
        let event = format!(r#"{{"type":"{EVENT_TYPE}","data":{EVENT_DATA}}}"#);
        let connection = match self.protocol {
            Protocol::Http => {
                let url = reqwest::Url::parse(&self.url)?;
                let (Some(name), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
                    bail!("{}: no host to connect to", self.url);
                };
                if url.scheme() != "http" {
                    bail!(
                        "{}: the benchmark's clients speak plain http only",
                        self.url
                    );
                }
                let host = format!("{name}:{port}");
                let tcp = TcpStream::connect(&*url.socket_addrs(|| None)?)
                    .await
                    .with_context(|| format!("connecting to {}", self.url))?;
                tcp.set_nodelay(true)?;
                let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(connection);
                Connection::Http {
                    sender,
                    path: format!("{}/streams/{stream}", url.path().trim_end_matches('/')),
                    host,
                }
            }
            Protocol::Socket => {
                let url = format!("{}/appends", self.url.replacen("http", "ws", 1));
                // tungstenite zeroes its read buffer before every read: 8 KiB,
                // not its default 128 KiB (the server does the same).
                let config = WebSocketConfig::default().read_buffer_size(8 << 10);
                let (socket, _) =
                    tokio_tungstenite::connect_async_with_config(&url, Some(config), true)
                        .await
                        .with_context(|| format!("connecting to {url}"))?;
                Connection::Socket(Box::new(socket))
            }
        };
        Ok(Client {
            connection,
            stream: stream.to_owned(),
            events: format!("[{}]", vec![event; batch].join(",")),
            batch: batch as u64,
            version: None,
        })
    }

    /// The number of events in the log (its head position).
    pub async fn count(&self) -> anyhow::Result<u64> {
        #[derive(Deserialize)]
        struct Health {
            head: u64,
        }
        let health: Health = self
            .http
            .get(format!("{}/health", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(health.head)
    }

    /// Reads the first `n` events of the global log in pages; each page's latency.
    pub async fn read(&self, n: u64) -> anyhow::Result<Vec<Duration>> {
        #[derive(Deserialize)]
        struct Page<'a> {
            #[serde(borrow)]
            events: Vec<Event<'a>>,
        }
        #[derive(Deserialize)]
        #[allow(dead_code)] // decoded as a consumer would, then dropped
        struct Event<'a> {
            position: u64,
            #[serde(borrow)]
            stream: &'a str,
            #[serde(borrow, rename = "type")]
            event_type: &'a str,
            #[serde(borrow)]
            data: &'a RawValue,
        }
        let mut latencies = Vec::new();
        let mut read = 0;
        let mut from = 1;
        while read < n {
            let sent = Instant::now();
            let limit = PAGE.min(n - read);
            let body = self
                .http
                .get(format!("{}/events?from={from}&limit={limit}", self.url))
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            let page: Page = serde_json::from_slice(&body).context("decoding a page")?;
            let Some(last) = page.events.last() else {
                bail!("the log ended after {read} events");
            };
            from = last.position + 1;
            read += page.events.len() as u64;
            latencies.push(sent.elapsed());
        }
        Ok(latencies)
    }

    /// Stops the server if it was started here (SIGTERM: it commits and exits).
    pub async fn stop(self) -> anyhow::Result<()> {
        match self.service {
            Some(service) => service.stop().await,
            None => Ok(()),
        }
    }
}

impl Client {
    /// Appends one request's events, checking the stream's version.
    pub async fn append(&mut self) -> anyhow::Result<()> {
        let expected = match self.version {
            None => "\"no_stream\"".to_owned(),
            Some(v) => v.to_string(),
        };
        match &mut self.connection {
            Connection::Http { sender, path, host } => {
                let body = format!(
                    "{{\"expected_version\":{expected},\"events\":{}}}",
                    self.events
                );
                let request = hyper::Request::post(path.as_str())
                    .header(hyper::header::HOST, host.as_str())
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))?;
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                if !status.is_success() {
                    bail!("append failed: {status} {}", String::from_utf8_lossy(&body));
                }
            }
            Connection::Socket(socket) => {
                let message = format!(
                    "{{\"stream\":\"{}\",\"expected_version\":{expected},\"events\":{}}}",
                    self.stream, self.events
                );
                socket.send(Message::text(message)).await?;
                let reply = loop {
                    match socket.next().await {
                        Some(Ok(Message::Text(reply))) => break reply,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(other)) => bail!("append socket: unexpected {other:?}"),
                        Some(Err(error)) => return Err(error.into()),
                        None => bail!("append socket closed"),
                    }
                };
                #[derive(Deserialize)]
                struct Reply {
                    status: u16,
                }
                let Reply { status } = serde_json::from_str(&reply)?;
                if !(200..300).contains(&status) {
                    bail!("append failed: {reply}");
                }
            }
        }
        self.version = Some(self.version.map_or(self.batch - 1, |v| v + self.batch));
        Ok(())
    }
}
