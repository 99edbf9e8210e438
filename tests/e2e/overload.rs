//! Backpressure: beyond the append queue's depth and wait, an append is
//! answered `503 overloaded` with `Retry-After`, changes nothing, and every
//! append that was accepted is in the log.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, data_dir};

#[tokio::test]
async fn appends_beyond_the_queue_are_refused_as_overloaded_and_accepted_ones_are_kept() {
    let dir = data_dir();
    // A queue of one and a wait of 1 ms: 64 writers at once overload it.
    let server =
        Server::start_in(dir.path(), &["--append-queue", "1", "--append-wait", "1ms"]).await;
    let mut writers = Vec::new();
    for writer in 0..64 {
        let url = server.url.clone();
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut outcomes = Vec::new();
            for i in 0..20 {
                let id = uuid::Uuid::now_v7().to_string();
                let response = client
                    .post(format!("{url}/streams/w-{writer}"))
                    .json(&json!({"events": [{"type": "T", "id": id, "data": {"i": i}}]}))
                    .send()
                    .await
                    .expect("an answer");
                let status = response.status();
                let retry_after = response.headers().get("retry-after").cloned();
                let body: Value = response.json().await.expect("a JSON body");
                outcomes.push((id, status, retry_after, body));
            }
            outcomes
        }));
    }
    let mut accepted = HashSet::new();
    let mut refused = HashSet::new();
    for writer in writers {
        for (id, status, retry_after, body) in writer.await.expect("writer") {
            match status {
                StatusCode::CREATED => {
                    accepted.insert(id);
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(body["error"]["code"], "overloaded", "{body}");
                    assert_eq!(retry_after.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
                    refused.insert(id);
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
    }
    assert!(
        !refused.is_empty(),
        "nothing was refused: the queue never filled"
    );
    assert!(!accepted.is_empty(), "nothing was accepted");
    let in_log: HashSet<String> = server
        .read_all()
        .await
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(
        in_log, accepted,
        "the log holds exactly the accepted appends"
    );
    // Once the load is gone, appends are accepted again at once.
    let (status, body) = server
        .append("after", json!("no_stream"), crate::harness::events("T", 1))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
