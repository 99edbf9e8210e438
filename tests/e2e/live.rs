//! The live feed (`GET /events/live`): catch-up, live follow, resume with
//! `Last-Event-ID`, filters and keep-alive comments.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, Server, backend_tests, data_dir, events};

backend_tests!(
    live_feed_catches_up_follows_and_resumes,
    live_feed_filters_by_category_and_type,
    an_idle_live_feed_sends_keep_alive_comments,
    a_live_feed_that_is_not_read_does_not_hold_up_writers,
);

/// Opens the live feed and yields `(id, event)` pairs.
async fn open_feed(
    server: &Server,
    query: &str,
    last_event_id: Option<u64>,
) -> impl futures_util::Stream<Item = (u64, Value)> + Unpin {
    let mut request = server.request(reqwest::Method::GET, &format!("/events/live{query}"));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = request.send().await.expect("live feed");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    Box::pin(response.bytes_stream().eventsource().map(|event| {
        let event = event.expect("well-formed SSE");
        let value: Value = serde_json::from_str(&event.data).expect("data is JSON");
        (event.id.parse().expect("id is a position"), value)
    }))
}

async fn next_n(
    feed: &mut (impl futures_util::Stream<Item = (u64, Value)> + Unpin),
    n: usize,
) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        let item = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("live event within 10 s")
            .expect("feed ended early");
        out.push(item);
    }
    out
}

async fn live_feed_catches_up_follows_and_resumes(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    server
        .append_created("user-1", json!("any"), events("UserCreated", 3))
        .await;

    let mut feed = open_feed(&server, "?from=1", None).await;
    let caught_up = next_n(&mut feed, 3).await;
    assert_eq!(
        caught_up.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for (id, event) in &caught_up {
        assert_eq!(event["position"], *id, "the SSE id is the event's position");
        assert_eq!(event["stream"], "user-1");
    }
    // Live: appended after the feed caught up.
    server
        .append_created("user-2", json!("any"), events("UserCreated", 2))
        .await;
    let live = next_n(&mut feed, 2).await;
    assert_eq!(
        live.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert_eq!(live[1].1["stream"], "user-2");
    drop(feed);

    // Resume after a disconnect: Last-Event-ID wins over `from`.
    server
        .append_created("user-3", json!("any"), events("UserCreated", 1))
        .await;
    let mut resumed = open_feed(&server, "?from=1", Some(4)).await;
    let after = next_n(&mut resumed, 2).await;
    assert_eq!(
        after.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![5, 6]
    );
}

async fn live_feed_filters_by_category_and_type(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    let mut feed = open_feed(&server, "?category=order&type=OrderPlaced", None).await;
    server
        .append_created("user-1", json!("any"), events("UserCreated", 3))
        .await;
    server
        .append_created(
            "order-1",
            json!("any"),
            json!([{"type": "OrderPlaced", "data": {}}, {"type": "OrderPaid", "data": {}}]),
        )
        .await;
    server
        .append_created("order-2", json!("any"), events("OrderPlaced", 1))
        .await;
    let got = next_n(&mut feed, 2).await;
    assert_eq!(
        got.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![4, 6]
    );
    assert!(got.iter().all(|(_, e)| e["type"] == "OrderPlaced"));
}

async fn an_idle_live_feed_sends_keep_alive_comments(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &["--sse-keep-alive", "200ms"]).await;
    let response = server
        .request(reqwest::Method::GET, "/events/live")
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut seen = Vec::new();
    let comment = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            seen.extend_from_slice(&chunk.unwrap());
            if seen.starts_with(b":") || seen.windows(2).any(|w| w == b"\n:") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        comment,
        Ok(true),
        "no keep-alive comment in {:?}",
        String::from_utf8_lossy(&seen)
    );
}

async fn a_live_feed_that_is_not_read_does_not_hold_up_writers(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    // Open a feed and never read from it while a lot is appended.
    let response = server
        .request(reqwest::Method::GET, "/events/live?from=1")
        .send()
        .await
        .unwrap();
    let big = json!([{ "type": "Blob", "data": "z".repeat(50_000) }]);
    for _ in 0..200 {
        let (status, _) = server.append("blob-1", json!("any"), big.clone()).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    // The stalled feed still delivers everything, in order, when read.
    let mut feed = response.bytes_stream().eventsource();
    for expected in 1..=200u64 {
        let event = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.id, expected.to_string());
    }
}
