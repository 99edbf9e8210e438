//! Reading your own writes (issue 20): every answer from a plugin's state
//! carries `Eventfold-Checkpoint`, and `?min_position=P` answers only once
//! the state includes position P, so a client that appended at P never
//! reads a state older than its own append, on either backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventfold_plugin_builds::COUNTER;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, Server, backend_tests, data_dir, events};

backend_tests!(racing_appends_never_read_a_state_older_than_their_own);

/// Writers that append and read back at once, side by side.
const WRITERS: usize = 8;
/// Appends per writer.
const ROUNDS: usize = 40;

/// The checkpoint an answer says it reflects.
fn checkpoint(response: &reqwest::Response) -> u64 {
    response
        .headers()
        .get("eventfold-checkpoint")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("an Eventfold-Checkpoint header")
}

/// Appends one event to `stream`; its position.
async fn append_one(server: &Server, stream: &str) -> u64 {
    let (status, body) = server
        .post(
            &format!("/streams/{stream}"),
            &json!({"events": events("Ticked", 1)}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["last_position"].as_u64().expect("last_position")
}

/// Reads `path` with `min_position`; the answer's JSON and checkpoint.
async fn read_at(server: &Server, method: reqwest::Method, path: &str, at: u64) -> (Value, u64) {
    let separator = if path.contains('?') { '&' } else { '?' };
    let response = server
        .request(method, &format!("{path}{separator}min_position={at}"))
        .body("{}")
        .send()
        .await
        .expect("a read");
    assert_eq!(response.status(), StatusCode::OK, "{path} at {at}");
    let checkpoint = checkpoint(&response);
    (response.json().await.expect("JSON"), checkpoint)
}

async fn racing_appends_never_read_a_state_older_than_their_own(backend: Backend) {
    let dir = data_dir();
    let server = Arc::new(Server::start_on(backend, dir.path(), &[]).await);
    server
        .deploy_expecting("counter", COUNTER, StatusCode::CREATED)
        .await;
    let began = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let server = server.clone();
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let position = append_one(&server, &format!("tick-{w}")).await;
                    // A value, a scan and a query, in turn: each must include
                    // the writer's own append.
                    let (value, at) = match round % 3 {
                        0 => {
                            let path = "/plugins/counter/state/last";
                            read_at(&server, reqwest::Method::GET, path, position).await
                        }
                        1 => {
                            let path = "/plugins/counter/state?prefix=last";
                            let (page, at) =
                                read_at(&server, reqwest::Method::GET, path, position).await;
                            (page["entries"][0]["value"].clone(), at)
                        }
                        _ => {
                            let path = "/plugins/counter/query";
                            read_at(&server, reqwest::Method::POST, path, position).await
                        }
                    };
                    let seen = value.as_u64().expect("a number");
                    assert!(
                        at >= position,
                        "checkpoint {at} before own append {position}"
                    );
                    assert!(
                        seen >= position,
                        "state {seen} older than own append {position}"
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("a writer panicked");
    }
    eprintln!(
        "read your writes ({backend:?}): {} appends each read back at once in {:.1?}",
        WRITERS * ROUNDS,
        began.elapsed()
    );

    // A position no append has reached yet. Alone (embedded), the head is
    // exact: refused at once. On JetStream this node's head may lag another
    // node's append: a clear 412 once the wait runs out.
    let head = server.head().await;
    let path = format!(
        "/plugins/counter/state/last?min_position={}&wait=50ms",
        head + 10
    );
    let response = server
        .request(reqwest::Method::GET, &path)
        .send()
        .await
        .expect("read");
    match backend {
        Backend::Embedded => assert_eq!(response.status(), StatusCode::BAD_REQUEST),
        Backend::JetStream => {
            assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
            assert!(response.headers().contains_key("retry-after"));
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(body["error"]["code"], "min_position_not_reached", "{body}");
            assert_eq!(body["error"]["checkpoint"], head, "{body}");
        }
    }

    // A paused plugin answers at once, not after the wait.
    let (status, body) = server.post("/plugins/counter/pause", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let position = append_one(&server, "tick-paused").await;
    let started = Instant::now();
    let path = format!("/plugins/counter/state/last?min_position={position}&wait=10s");
    let (status, body) = server.get(&path).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["state"], "paused", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it waited for a paused plugin"
    );

    // Bad input: a clear 400, nothing else.
    for bad in [
        "min_position=-1",
        "min_position=1&wait=soon",
        "min_position=x",
    ] {
        let (status, body) = server.get(&format!("/plugins/counter/state?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{bad}: {body}");
    }
}
