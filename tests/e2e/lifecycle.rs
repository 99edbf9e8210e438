//! Start-up and shutdown: auth, refusing an unprotected public bind, metrics,
//! and a graceful SIGTERM that commits everything acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Server, data_dir, events, into_json, spawn};

#[tokio::test]
async fn with_a_token_every_request_needs_it() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &["--token", "s3cret"]).await;
    let url = server.url.clone();
    let client = reqwest::Client::new();
    for (header, expected) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("Bearer wrong"), StatusCode::UNAUTHORIZED),
        (Some("Bearer s3cret-but-longer"), StatusCode::UNAUTHORIZED),
        (Some("Basic s3cret"), StatusCode::UNAUTHORIZED),
        (Some("Bearer s3cret"), StatusCode::CREATED),
    ] {
        let mut request = client
            .post(format!("{url}/streams/auth-1"))
            .json(&json!({"events": [{"type": "T", "data": 1}]}));
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let (status, body) = into_json(request.send().await).await;
        assert_eq!(status, expected, "{header:?}: {body}");
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(body["error"]["code"], "unauthorized");
        }
    }
    let (status, _) = into_json(client.get(format!("{url}/events")).send().await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(server.head().await, 1, "only the authorised append landed");
}

#[tokio::test]
async fn without_a_token_requests_need_no_auth() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;
    let (status, _) = into_json(reqwest::get(format!("{}/events", server.url)).await).await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn binding_a_public_address_without_a_token_is_refused() {
    let dir = data_dir();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_eventfold"))
        .args(["serve", "--addr", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("EVENTFOLD_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("refusing to serve on 0.0.0.0"), "{stderr}");
}

#[tokio::test]
async fn a_data_directory_in_use_is_refused() {
    let dir = data_dir();
    let _server = Server::start_in(dir.path(), &[]).await;
    let error = spawn(dir.path(), &[]).expect_err("a second server on the same data directory");
    assert!(error.contains("cannot open the log"), "{error}");
}

#[tokio::test]
async fn metrics_count_appends_and_show_the_head() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;
    server
        .append_created("m-1", json!("any"), events("E", 3))
        .await;
    // Refused: the stream exists.
    let (status, body) = server
        .append("m-1", json!("no_stream"), events("E", 1))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let text = server.get_text("/metrics").await;
    for line in [
        "eventfold_appends_total 1",
        "eventfold_events_appended_total 3",
        "eventfold_appends_refused_total 1",
        "eventfold_head_position 3",
        "eventfold_append_latency_seconds_count 1",
        "eventfold_events_per_commit_sum 3.0",
        "eventfold_events_per_commit_count 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[tokio::test]
async fn sigterm_commits_everything_acknowledged_and_exits_zero() {
    let dir = data_dir();
    let mut server = Server::start_in(dir.path(), &[]).await;
    let url = server.url.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let (url, stop) = (url.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acked = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = client
                    .post(format!("{url}/streams/term-{writer}"))
                    .json(&json!({"events": [{"type": "E", "data": {"n": acked.len()}}]}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let body: serde_json::Value = r.json().await.unwrap();
                        acked.push(body["first_position"].as_u64().unwrap());
                    }
                    // Refused while shutting down, or the connection closed: not acknowledged.
                    _ => break,
                }
            }
            acked
        }));
    }
    assert!(
        crate::harness::wait_until(std::time::Duration::from_secs(20), || async {
            server.head().await >= 200
        })
        .await
    );
    let status = server.terminate();
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "exit status {status}");
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(log.contains("stopped"), "{log}");

    let restarted = Server::start_in(dir.path(), &[]).await;
    let head = restarted.head().await;
    for position in &acked {
        assert!(
            *position <= head,
            "acknowledged position {position} lost (head {head})"
        );
    }
    assert_eq!(restarted.read_all().await.len() as u64, head);
}
