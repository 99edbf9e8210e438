//! Redis Streams as a peer: Debian's `redis-server` with every write fsynced
//! before it is acknowledged (`appendonly yes`, `appendfsync always`, no RDB
//! snapshots). An event is one `XADD` of `type` and `data`; a request of
//! many events is a pipeline of `XADD`s. Redis has no global log across
//! streams, so the read goes through one stream, `log`, filled for it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamRangeReply;

use super::service::{self, Service};
use super::{EVENT_DATA, EVENT_TYPE, PAGE};

/// The stream the read goes through.
const LOG: &str = "log";

/// The running server.
pub struct Redis {
    service: Service,
    client: redis::Client,
}

/// One client: its own connection and its own stream.
pub struct Client {
    connection: MultiplexedConnection,
    request: redis::Pipeline,
}

impl Redis {
    /// Starts `redis-server` (installed if missing) in a directory under `scratch`.
    pub async fn start(scratch: &Path) -> anyhow::Result<Self> {
        let binary = service::find_or_install("redis-server", &[], "redis-server")?;
        let dir = service::service_dir(scratch, "redis")?;
        let port = service::free_port()?;
        let mut command = tokio::process::Command::new(binary);
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(&dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--protected-mode", "no"]);
        let log = dir.join("server.log");
        let mut service = Service::spawn("redis-server", command, &log, "TERM")?;
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        service::wait_ready(&mut service, &log, Duration::from_secs(30), || async {
            let mut connection = client.get_multiplexed_async_connection().await?;
            Ok(redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await?)
        })
        .await?;
        Ok(Self { service, client })
    }

    /// The server's version, as it reports it.
    pub async fn version(&self) -> anyhow::Result<String> {
        let mut connection = self.client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut connection)
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned())
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// A client appending `batch` events per request to `stream`.
    pub async fn client(&self, stream: &str, batch: usize) -> anyhow::Result<Client> {
        Ok(Client {
            connection: self.client.get_multiplexed_async_connection().await?,
            request: xadds(stream, batch),
        })
    }

    /// Fills the stream `log` up to `n` events, in pipelines of 1,000.
    pub async fn fill_log(&self, n: u64) -> anyhow::Result<()> {
        let mut connection = self.client.get_multiplexed_async_connection().await?;
        let mut len: u64 = redis::cmd("XLEN")
            .arg(LOG)
            .query_async(&mut connection)
            .await?;
        let pipeline = xadds(LOG, 1000);
        while len < n {
            pipeline.query_async::<()>(&mut connection).await?;
            len += 1000;
        }
        Ok(())
    }

    /// Reads the first `n` entries of the stream `log` in pages; each page's latency.
    pub async fn read(&self, n: u64) -> anyhow::Result<Vec<Duration>> {
        let mut connection = self.client.get_multiplexed_async_connection().await?;
        let mut latencies = Vec::new();
        let mut read = 0;
        let mut start = "-".to_owned();
        while read < n {
            let sent = Instant::now();
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(LOG)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE.min(n - read))
                .query_async(&mut connection)
                .await?;
            let Some(last) = page.ids.last() else {
                bail!("the stream ended after {read} entries");
            };
            // An exclusive start: after the last entry read.
            start = format!("({}", last.id);
            read += page.ids.len() as u64;
            latencies.push(sent.elapsed());
        }
        Ok(latencies)
    }

    /// Stops the server (SIGTERM).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.service.stop().await
    }
}

impl Client {
    /// Appends one request's events: one round trip, one fsync.
    pub async fn append(&mut self) -> anyhow::Result<()> {
        self.request.query_async::<()>(&mut self.connection).await?;
        Ok(())
    }
}

/// A pipeline of `n` `XADD`s of the benchmark's event to `stream`.
fn xadds(stream: &str, n: usize) -> redis::Pipeline {
    let mut pipeline = redis::pipe();
    for _ in 0..n {
        pipeline
            .cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("type")
            .arg(EVENT_TYPE)
            .arg("data")
            .arg(EVENT_DATA);
    }
    pipeline
}
