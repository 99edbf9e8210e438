//! An acknowledged append survives `kill -9` of the server, on every
//! backend; the embedded log's write-ahead log and checkpoints bring it back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, Server, backend_tests, data_dir, wait_until};

backend_tests!(every_acknowledged_event_survives_kill_9);

/// What the server acknowledged: the position, stream, version and id of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    position: u64,
    stream: String,
    version: u64,
    id: String,
}

async fn every_acknowledged_event_survives_kill_9(backend: Backend) {
    let dir = data_dir();
    let mut server = Server::start_on(backend, dir.path(), &[]).await;
    let url = Arc::new(server.url.clone());
    let mut writers = Vec::new();
    for writer in 0..16 {
        let url = url.clone();
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acks = Vec::new();
            loop {
                // Alternate own streams and one shared stream; 1–3 events per append.
                let stream = if acks.len() % 2 == 0 {
                    format!("dur-{writer}")
                } else {
                    "dur-shared".into()
                };
                let n = 1 + acks.len() % 3;
                let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect();
                let events: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"type": "Written", "id": id, "data": {"writer": writer}}))
                    .collect();
                let sent = client
                    .post(format!("{url}/streams/{stream}"))
                    .json(&json!({ "events": events }))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                let Ok(response) = sent else { return acks };
                if response.status() != StatusCode::CREATED {
                    return acks;
                }
                let Ok(body) = response.json::<Value>().await else {
                    return acks;
                };
                let first = body["first_position"].as_u64().unwrap();
                let last_version = body["next_expected_version"].as_u64().unwrap();
                for (i, id) in ids.into_iter().enumerate() {
                    acks.push(Ack {
                        position: first + i as u64,
                        stream: stream.clone(),
                        version: last_version + 1 + i as u64 - n as u64,
                        id,
                    });
                }
            }
        }));
    }
    // Kill mid-load, once a good number of appends have been acknowledged.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            server.head().await >= 1500
        })
        .await
    );
    server.kill9();
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    assert!(acked.len() >= 1000, "only {} acknowledged", acked.len());

    let restarted = Server::start_on(backend, dir.path(), &[]).await;
    let log = restarted.read_all().await;
    let positions: Vec<u64> = log
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(
        positions,
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "positions are not gapless"
    );
    let by_position: HashMap<u64, &Value> = log
        .iter()
        .map(|e| (e["position"].as_u64().unwrap(), e))
        .collect();
    for ack in &acked {
        let event = by_position
            .get(&ack.position)
            .unwrap_or_else(|| panic!("acknowledged {ack:?} is missing after kill -9"));
        assert_eq!(event["stream"], ack.stream.as_str(), "{ack:?}");
        assert_eq!(event["version"], ack.version, "{ack:?}");
        assert_eq!(event["id"], ack.id.as_str(), "{ack:?}");
    }
    // The log still takes appends where it left off.
    let (status, body) = restarted
        .append(
            "dur-shared",
            json!("exists"),
            crate::harness::events("After", 1),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["first_position"], log.len() as u64 + 1);
}

#[tokio::test]
async fn appends_held_only_by_the_write_ahead_log_are_recovered() {
    let dir = data_dir();
    // No checkpoint happens on its own: after kill -9, redb alone has nothing.
    let args = ["--checkpoint-interval", "1h"];
    let mut server = Server::start_in(dir.path(), &args).await;
    for i in 0..10 {
        let (status, _) = server
            .append(
                &format!("wal-{}", i % 3),
                json!("any"),
                crate::harness::events("E", 5),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    // One append bigger than a chunk of the log (32 KiB): several chunks.
    let big: Vec<Value> = (0..200)
        .map(|i| json!({"type": "Big", "data": {"i": i, "text": "x".repeat(300)}}))
        .collect();
    let (status, body) = server.append("wal-1", json!(14), Value::Array(big)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let before = server.read_all().await;
    let streams_before = read_streams(&server, &["wal-0", "wal-1", "wal-2"]).await;
    server.kill9();

    let mut server = Server::start_in(dir.path(), &args).await;
    assert_eq!(server.read_all().await, before);
    // Stream reads go through the stream index rebuilt from the WAL.
    assert_eq!(
        read_streams(&server, &["wal-0", "wal-1", "wal-2"]).await,
        streams_before
    );
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(log.contains("recovered events 1 to 250"), "{log}");
    // Stream heads were rebuilt: expected versions hold where they left off.
    let (status, body) = server
        .append("wal-0", json!(19), crate::harness::events("E", 2))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["first_position"], 251);
    // A second crash: the WAL was restarted at its beginning after recovery,
    // and records left from before must not come back.
    let (status, _) = server
        .append(
            "wal-new",
            json!("no_stream"),
            crate::harness::events("E", 1),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = server.read_all().await;
    server.kill9();
    let server = Server::start_in(dir.path(), &args).await;
    assert_eq!(server.read_all().await, before);
    let page = server.get_ok("/streams/wal-new").await;
    assert_eq!(page["stream_version"], 0);
}

/// Each stream read whole, forward and backward, as the server answers it.
async fn read_streams(server: &Server, streams: &[&str]) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for stream in streams {
        let forward = server
            .get_ok(&format!("/streams/{stream}?limit=1000"))
            .await;
        let backward = server
            .get_ok(&format!("/streams/{stream}?direction=backward&limit=1000"))
            .await;
        assert!(
            forward["events"].as_array().is_some_and(|e| !e.is_empty()),
            "{forward}"
        );
        out.push((forward, backward));
    }
    out
}

#[tokio::test]
async fn an_idle_log_is_checkpointed_within_the_interval() {
    let dir = data_dir();
    let args = ["--checkpoint-interval", "300ms"];
    let mut server = Server::start_in(dir.path(), &args).await;
    let (status, _) = server
        .append("idle-1", json!("no_stream"), crate::harness::events("E", 3))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = server.read_all().await;
    // No more appends: the checkpoint must come from the idle writer.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();

    let server = Server::start_in(dir.path(), &args).await;
    assert_eq!(server.read_all().await, before);
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(
        !log.contains("recovered events"),
        "redb was not made durable while the log was idle: {log}"
    );
}
