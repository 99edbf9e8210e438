//! Driving a server's plugins over HTTP, for the benchmarks that rebuild
//! them: fill the log with orders, deploy, wait until caught up, replay.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;
use hyper::{Method, StatusCode};
use serde::Deserialize;

use crate::http::Connection;

/// Streams the log is filled over.
pub const FILL_STREAMS: u64 = 10_000;
/// Fill requests in flight.
pub const FILL_CLIENTS: usize = 4;
/// Appends of 100 events per fill request.
pub const FILL_APPENDS: u64 = 10;
/// How often the plugin's status is read while waiting for a swap.
pub const POLL: Duration = Duration::from_millis(10);

/// A plugin's status, the fields used here.
#[derive(Deserialize)]
pub struct Status {
    pub state: String,
    pub generation: u64,
    pub checkpoint: u64,
    pub head: u64,
    pub rebuild: Option<serde_json::Value>,
    pub last_error: Option<serde_json::Value>,
}

/// Fills the log with `n` OrderPlaced events (≈170 bytes of JSON, as
/// `replay` fills its log), over [`FILL_STREAMS`] streams.
pub async fn fill_orders(url: &str, n: u64, customers: u64) -> anyhow::Result<()> {
    let per_request = FILL_APPENDS * 100;
    let requests = n.div_ceil(per_request);
    let bodies = futures_util::stream::iter(0..requests).map(|r| {
        let mut body = String::from(r#"{"appends":["#);
        for a in 0..FILL_APPENDS {
            let first = r * per_request + a * 100;
            if first >= n {
                break;
            }
            if a > 0 {
                body.push(',');
            }
            let _ = write!(
                body,
                r#"{{"stream":"order-{}","events":["#,
                (first / 100) % FILL_STREAMS
            );
            for k in first..n.min(first + 100) {
                if k > first {
                    body.push(',');
                }
                let _ = write!(
                    body,
                    r#"{{"type":"OrderPlaced","data":{{"orderId":"ord-{k:010}","customerId":"c{}","currency":"EUR","amount":{}.{:02},"items":[{{"sku":"SKU-{}","qty":2}}],"channel":"web"}}}}"#,
                    k % customers,
                    k % 500,
                    k % 100,
                    k % 9973
                );
            }
            body.push_str("]}");
        }
        body.push_str("]}");
        body
    });
    let mut connections = Vec::new();
    for _ in 0..FILL_CLIENTS {
        connections.push(tokio::sync::Mutex::new(Connection::open(url).await?));
    }
    let connections = &connections;
    let sent: Vec<anyhow::Result<()>> = bodies
        .enumerate()
        .map(|(i, body)| async move {
            let mut connection = connections[i % FILL_CLIENTS].lock().await;
            connection.post_json("/batch", body).await?.success()?;
            Ok(())
        })
        .buffer_unordered(FILL_CLIENTS)
        .collect()
        .await;
    sent.into_iter().collect()
}

/// The plugin's status.
pub async fn status(connection: &mut Connection, plugin: &str) -> anyhow::Result<Status> {
    let status: Status = connection
        .get(&format!("/plugins/{plugin}"))
        .await?
        .success()?
        .json()?;
    if status.state == "failed" {
        bail!("{plugin} failed: {:?}", status.last_error);
    }
    Ok(status)
}

/// Deploys the plugin; the time from the request until it has caught up
/// with the log.
pub async fn deploy(url: &str, plugin: &str, wasm: Vec<u8>) -> anyhow::Result<Duration> {
    let mut connection = Connection::open(url).await?;
    let started = Instant::now();
    let answer = connection
        .send(
            Method::PUT,
            &format!("/plugins/{plugin}"),
            "application/wasm",
            wasm,
        )
        .await?;
    if answer.status != StatusCode::CREATED {
        bail!(
            "deploying {plugin}: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    wait_caught_up(url, plugin).await?;
    Ok(started.elapsed())
}

/// Waits until the plugin runs and its checkpoint is the log's head.
pub async fn wait_caught_up(url: &str, plugin: &str) -> anyhow::Result<()> {
    let mut connection = Connection::open(url).await?;
    let started = Instant::now();
    loop {
        // While compiling (after a restart), its figures are all 0.
        let status = status(&mut connection, plugin).await?;
        if status.state == "running" && status.head > 0 && status.checkpoint >= status.head {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("{plugin} has not caught up after 10 minutes");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Asks for a replay and waits for its swap; the positions it covered.
pub async fn replay(connection: &mut Connection, plugin: &str) -> anyhow::Result<u64> {
    #[derive(Deserialize)]
    struct Replay {
        replay: Generation,
    }
    #[derive(Deserialize)]
    struct Generation {
        generation: u64,
    }
    let answer = connection
        .post_json(&format!("/plugins/{plugin}/replay"), "")
        .await?
        .success()?;
    let generation = answer.json::<Replay>()?.replay.generation;
    loop {
        let status = status(connection, plugin).await?;
        if status.generation >= generation && status.rebuild.is_none() {
            return Ok(status.checkpoint);
        }
        tokio::time::sleep(POLL).await;
    }
}
