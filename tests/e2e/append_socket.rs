//! Appends over the append socket (`GET /appends`, a WebSocket): replies in
//! order, errors that leave the socket open, limits, the token, shutdown,
//! and acknowledged appends surviving `kill -9`.

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::{Backend, Server, backend_tests, data_dir};

// The appends themselves, on every backend; the socket's own protocol
// (upgrade, token, shutdown) on the default one.
backend_tests!(
    pipelined_appends_are_applied_and_answered_in_order,
    a_bad_append_gets_an_error_reply_and_the_socket_goes_on,
    a_message_over_the_limit_closes_the_socket_and_appends_nothing,
    appends_acknowledged_over_the_socket_survive_kill_9,
);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(server: &Server, token: Option<&str>) -> Result<Socket, tungstenite::Error> {
    let url = format!("{}/appends", server.url.replacen("http", "ws", 1));
    let mut request = url.into_client_request()?;
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    Ok(tokio_tungstenite::connect_async(request).await?.0)
}

async fn send(socket: &mut Socket, message: impl Into<String>) {
    socket
        .send(Message::text(message.into()))
        .await
        .expect("send");
}

/// The next reply, as JSON.
async fn reply(socket: &mut Socket) -> Value {
    match next(socket).await {
        Message::Text(text) => serde_json::from_str(&text).expect("a JSON reply"),
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// The next message other than a ping or pong, within 10 s.
async fn next(socket: &mut Socket) -> Message {
    let wait = std::time::Duration::from_secs(10);
    loop {
        let message = tokio::time::timeout(wait, socket.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket is open")
            .expect("a message");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

fn append(stream: &str, expected_version: Value, event_type: &str) -> String {
    json!({
        "stream": stream,
        "expected_version": expected_version,
        "events": [{ "type": event_type, "data": { "n": 1 } }],
    })
    .to_string()
}

async fn pipelined_appends_are_applied_and_answered_in_order(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    let mut socket = connect(&server, None).await.expect("connect");
    // Three appends sent before any reply: each expects the one before.
    for (i, expected) in [json!("no_stream"), json!(0), json!(1)].iter().enumerate() {
        send(
            &mut socket,
            append("user-1", expected.clone(), &format!("E{i}")),
        )
        .await;
    }
    for i in 0..3u64 {
        let reply = reply(&mut socket).await;
        assert_eq!(reply["status"], 201, "{reply}");
        assert_eq!(reply["first_position"], i + 1, "{reply}");
        assert_eq!(reply["last_position"], i + 1, "{reply}");
        assert_eq!(reply["next_expected_version"], i, "{reply}");
    }
    let (status, page) = server.get("/streams/user-1").await;
    assert_eq!(status, StatusCode::OK);
    let types: Vec<&str> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["E0", "E1", "E2"]);

    // An idempotent retry: 200, the original positions, nothing appended.
    let id = uuid::Uuid::now_v7().to_string();
    let with_id = json!({
        "stream": "orders-1",
        "events": [{ "type": "Placed", "data": {}, "id": id }],
    })
    .to_string();
    send(&mut socket, with_id.clone()).await;
    let first = reply(&mut socket).await;
    assert_eq!(first["status"], 201, "{first}");
    send(&mut socket, with_id).await;
    let retry = reply(&mut socket).await;
    assert_eq!(retry["status"], 200, "{retry}");
    assert_eq!(retry["duplicate"], true, "{retry}");
    assert_eq!(retry["first_position"], first["first_position"]);
    assert_eq!(server.head().await, 4);
}

async fn a_bad_append_gets_an_error_reply_and_the_socket_goes_on(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    let mut socket = connect(&server, None).await.expect("connect");
    send(&mut socket, append("user-1", json!("no_stream"), "Created")).await;
    assert_eq!(reply(&mut socket).await["status"], 201);

    let cases = [
        // (message, status, code)
        (
            append("user-1", json!("no_stream"), "Again"),
            409,
            "wrong_expected_version",
        ),
        ("not json".to_owned(), 400, "invalid_body"),
        (
            json!({ "events": [{ "type": "T", "data": {} }] }).to_string(),
            400,
            "invalid_body",
        ),
        (
            json!({ "stream": "s", "events": [] }).to_string(),
            400,
            "no_events",
        ),
        (append("", json!("any"), "T"), 400, "invalid_name"),
        (
            json!({ "stream": "s", "events": [{ "type": "T", "data": {} }], "extra": 1 })
                .to_string(),
            400,
            "invalid_body",
        ),
    ];
    for (message, status, code) in cases {
        send(&mut socket, message.clone()).await;
        let reply = reply(&mut socket).await;
        assert_eq!(reply["status"], status, "{message}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{message}: {reply}");
        assert!(reply["error"]["message"].is_string(), "{reply}");
    }
    let conflict = {
        send(&mut socket, append("user-1", json!(5), "Stale")).await;
        reply(&mut socket).await
    };
    assert_eq!(conflict["error"]["actual_version"], 0, "{conflict}");

    // A binary frame holding JSON is an append too.
    let body = append("user-1", json!(0), "Renamed");
    socket
        .send(Message::binary(body.into_bytes()))
        .await
        .expect("send");
    let renamed = reply(&mut socket).await;
    assert_eq!(renamed["status"], 201, "{renamed}");
    assert_eq!(renamed["first_position"], 2, "{renamed}");
    assert_eq!(server.head().await, 2, "nothing else was appended");
}

async fn a_message_over_the_limit_closes_the_socket_and_appends_nothing(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &["--max-request-bytes", "4096"]).await;
    let mut socket = connect(&server, None).await.expect("connect");
    let big = json!({
        "stream": "big-1",
        "events": [{ "type": "T", "data": { "pad": "x".repeat(8192) } }],
    });
    send(&mut socket, big.to_string()).await;
    match next(&mut socket).await {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Size, "{frame:?}");
            assert!(frame.reason.contains("4096"), "{frame:?}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert_eq!(server.head().await, 0);
    // The server goes on: a new socket appends.
    let mut again = connect(&server, None).await.expect("connect");
    send(&mut again, append("small-1", json!("any"), "T")).await;
    assert_eq!(reply(&mut again).await["status"], 201);
}

#[tokio::test]
async fn a_plain_get_of_the_socket_is_a_json_error() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;
    let (status, body) = server.get("/appends").await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(body["error"]["code"], "websocket_required", "{body}");
    let (status, body) = server.post("/appends", &json!({})).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
}

#[tokio::test]
async fn with_a_token_the_socket_needs_it() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &["--token", "s3cret"]).await;
    match connect(&server, None).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401);
        }
        other => panic!("expected 401, got {:?}", other.map(|_| "a socket")),
    }
    assert!(connect(&server, Some("wrong")).await.is_err());
    let mut socket = connect(&server, Some("s3cret")).await.expect("connect");
    send(&mut socket, append("user-1", json!("any"), "T")).await;
    assert_eq!(reply(&mut socket).await["status"], 201);
}

#[tokio::test]
async fn shutdown_closes_the_socket_going_away() {
    let dir = data_dir();
    let mut server = Server::start_in(dir.path(), &[]).await;
    let mut socket = connect(&server, None).await.expect("connect");
    send(&mut socket, append("user-1", json!("any"), "T")).await;
    assert_eq!(reply(&mut socket).await["status"], 201);
    assert!(server.terminate().success());
    match next(&mut socket).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away, "{frame:?}"),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

async fn appends_acknowledged_over_the_socket_survive_kill_9(backend: Backend) {
    let dir = data_dir();
    let mut server = Server::start_on(backend, dir.path(), &[]).await;
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(connect(&server, None).await.expect("connect"));
    }
    // Four sockets, each with appends in flight, so that commits group them.
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(s, mut socket)| {
            tokio::spawn(async move {
                let stream = format!("acked-{s}");
                for i in 0..50u64 {
                    let expected = if i == 0 {
                        json!("no_stream")
                    } else {
                        json!(i - 1)
                    };
                    send(&mut socket, append(&stream, expected, "T")).await;
                }
                let mut positions = Vec::new();
                for _ in 0..50 {
                    let reply = reply(&mut socket).await;
                    assert_eq!(reply["status"], 201, "{reply}");
                    positions.push(reply["first_position"].as_u64().expect("position"));
                }
                positions
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.expect("task"));
    }
    server.kill9();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    let log = server.read_all().await;
    let positions: Vec<u64> = log
        .iter()
        .map(|e| e["position"].as_u64().expect("position"))
        .collect();
    acknowledged.sort_unstable();
    assert_eq!(
        positions, acknowledged,
        "every acknowledged append, no other"
    );
    assert_eq!(positions, (1..=200).collect::<Vec<_>>(), "gapless");
}
