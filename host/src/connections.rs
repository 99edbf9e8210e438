//! Accepting connections and serving HTTP/1.1 on each, within limits that a
//! flood of clients cannot get around (`docs/operations.md#limits`):
//!
//! - at most `max_connections` at once: one more is answered `503
//!   too_many_connections` and closed, so file descriptors and memory stay
//!   bounded;
//! - a connection must send a request's headers within `header_timeout`,
//!   counted from when it opened or its previous response went out: that
//!   closes half-open connections (slowloris) and idle keep-alive ones
//!   alike (hyper's header-read timer covers both).
//!
//! Only HTTP/1.1 is served: hyper's automatic HTTP/2 detection reads the
//! first bytes with no timer at all, which a silent connection would hold
//! open for ever.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// How many connections, and how slow a client may be.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest a connection may take to send a request's headers, from when
    /// it opened or its previous response was sent.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `app` on every connection `listener` accepts until `shutdown` is
/// cancelled; then stops accepting, lets each connection finish the request
/// it is serving, and returns once all are closed. The connections open and
/// refused are counted in `metrics`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: &Metrics,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    {
        // Read when scraped: a connection costs the metrics nothing.
        let slots = slots.clone();
        let max = limits.max_connections;
        metrics
            .connections
            .open
            .sample_from(move || max.saturating_sub(slots.available_permits()) as i64);
    }
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Answers go out at once, not held back by Nagle's algorithm.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connections.refused.inc();
            connections.spawn(refuse(tcp, limits.max_connections));
            continue;
        };
        let service = app
            .clone()
            .map_request(|request: Request<Incoming>| request.map(Body::new));
        let connection = http
            .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%error, "connection closed");
            }
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Out of file descriptors (or another passing error): accepting again at
/// once would spin, so wait a moment, as a flood drains.
async fn accept_failed(error: std::io::Error) {
    tracing::warn!(%error, "cannot accept a connection");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Tells a client over the connection limit so, then closes its connection.
async fn refuse(mut tcp: TcpStream, limit: usize) {
    let body = serde_json::json!({"error": {
        "code": "too_many_connections",
        "message": format!(
            "the server holds its limit of {limit} open connections (--max-connections); retry shortly"
        ),
        "limit": limit,
    }})
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let answered = async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await?;
        // Read what the client sent until it closes: closing with unread
        // bytes would reset the connection and lose the answer.
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), answered).await;
}
