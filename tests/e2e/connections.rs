//! Hostile and idle connections: half-open and idle keep-alive connections
//! are closed within the header timeout while normal clients keep being
//! served, and every connection limit refuses with a JSON error that names
//! it.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Server, data_dir};

/// Waits until the server closes `tcp` (EOF or reset); how long it took, or
/// `None` if it was still open after `limit`.
async fn closed_within(mut tcp: TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read_until_closed = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_until_closed)
        .await
        .ok()
        .map(|()| started.elapsed())
}

#[tokio::test]
async fn half_open_and_idle_connections_are_closed_while_clients_are_served() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &["--header-timeout", "1s"]).await;
    let addr = server.url.trim_start_matches("http://").to_owned();

    // 300 connections that never finish their headers, 300 that send
    // nothing, and one that sends a request and then idles.
    let mut hostile = Vec::new();
    for i in 0..600 {
        let mut tcp = TcpStream::connect(&addr).await.expect("connect");
        if i % 2 == 0 {
            tcp.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")
                .await
                .expect("partial headers");
        }
        hostile.push(tcp);
    }
    let mut idle = TcpStream::connect(&addr).await.expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("request");
    let mut answer = [0u8; 12];
    idle.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"HTTP/1.1 200");

    // Meanwhile a normal client is served, again and again.
    let client = tokio::spawn({
        let url = server.url.clone();
        async move {
            let client = reqwest::Client::new();
            let mut served = 0;
            let until = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < until {
                let status = client
                    .get(format!("{url}/health"))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .map(|r| r.status());
                assert_eq!(status.ok(), Some(StatusCode::OK));
                served += 1;
            }
            served
        }
    });

    let closes = futures_util::future::join_all(
        hostile
            .into_iter()
            .chain([idle])
            .map(|tcp| closed_within(tcp, Duration::from_secs(10))),
    )
    .await;
    let open = closes.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{open} of 601 connections still open after 10 s");
    let slowest = closes.iter().flatten().max().copied().unwrap_or_default();
    // Closed at the timeout (1 s), not long after it.
    assert!(
        slowest < Duration::from_secs(4),
        "slowest close: {slowest:?}"
    );
    let served = client.await.expect("client");
    assert!(served > 10, "only {served} requests served meanwhile");
}

#[tokio::test]
async fn a_connection_over_the_limit_is_told_so_and_the_next_one_is_served() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &["--max-connections", "20"]).await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    // The harness's own client may hold a pooled connection: fill the rest.
    let mut held = Vec::new();
    let refused = loop {
        let mut tcp = TcpStream::connect(&addr).await.expect("connect");
        tcp.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("request");
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if text.starts_with("HTTP/1.1 503") {
            break text;
        }
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        held.push(tcp);
        assert!(held.len() <= 20, "more than 20 connections admitted");
    };
    assert!(
        held.len() >= 19,
        "refused after only {} connections",
        held.len()
    );
    assert!(
        refused.to_lowercase().contains("retry-after: 1"),
        "{refused}"
    );
    let body = refused.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"]["code"], "too_many_connections");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--max-connections")),
        "{body}"
    );
    // A connection closed frees its place.
    held.pop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut tcp = TcpStream::connect(&addr).await.expect("connect");
    tcp.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("request");
    let mut answer = [0u8; 12];
    tcp.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"HTTP/1.1 200");
}

#[tokio::test]
async fn live_feeds_beyond_their_limit_are_refused_with_a_json_error() {
    let dir = data_dir();
    let server = Server::start_in(
        dir.path(),
        // Keep-alive comments find a closed feed's connection quickly.
        &["--max-live-feeds", "2", "--sse-keep-alive", "200ms"],
    )
    .await;
    let first = server.request(reqwest::Method::GET, "/events/live").send();
    let first = first.await.expect("first feed");
    assert_eq!(first.status(), StatusCode::OK);
    let second = server.request(reqwest::Method::GET, "/notifications/live");
    let second = second.send().await.expect("second feed");
    assert_eq!(second.status(), StatusCode::OK);

    let (status, body) = server.get("/events/live").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "too_many_live_feeds");
    assert_eq!(body["error"]["limit"], 2);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--max-live-feeds")),
        "{body}"
    );
    // A feed that ends gives its place back.
    drop(first);
    let freed = crate::harness::wait_until(Duration::from_secs(5), || async {
        let response = server.request(reqwest::Method::GET, "/events/live").send();
        response.await.is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    assert!(freed, "a closed feed's place was not freed");
    drop(second);
}
