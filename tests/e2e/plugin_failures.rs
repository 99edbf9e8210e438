//! Misbehaving plugins are stopped and reported; the server, the log and the
//! other plugins go on.

use eventfold_plugin_builds::{CHATTY, COUNTER, ENDLESS_LOOP, FAILING, MEMORY_HOG, TRAP};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, data_dir, events};

async fn failed(server: &Server, name: &str) -> Value {
    server
        .wait_plugin(name, "failed", |s| s["state"] == "failed")
        .await
}

#[tokio::test]
async fn misbehaving_plugins_are_stopped_while_a_good_one_keeps_up() {
    let dir = data_dir();
    let server = Server::start_in(
        dir.path(),
        &["--plugin-deadline", "1s", "--plugin-memory", "33554432"],
    )
    .await;
    server
        .deploy_all(&[
            ("good", COUNTER),
            ("looper", ENDLESS_LOOP),
            ("hog", MEMORY_HOG),
            ("trapper", TRAP),
            ("failer", FAILING),
            ("chatty", CHATTY),
        ])
        .await;
    server
        .append_created("work-1", json!("any"), events("Fine", 5))
        .await;
    let boom = server
        .append_created(
            "work-1",
            json!("any"),
            json!([{"type": "Boom", "data": {}}]),
        )
        .await;
    let bad = server
        .append_created("work-1", json!("any"), json!([{"type": "Bad", "data": {}}]))
        .await;
    server
        .append_created("work-1", json!("any"), events("Fine", 5))
        .await;
    let boom = boom["first_position"].as_u64().unwrap();
    let bad = bad["first_position"].as_u64().unwrap();

    let looper = failed(&server, "looper").await;
    assert_eq!(looper["last_error"]["position"], 1);
    assert!(
        looper["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("deadline"),
        "{looper}"
    );
    let hog = failed(&server, "hog").await;
    assert!(
        hog["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("memory"),
        "{hog}"
    );
    let trapper = failed(&server, "trapper").await;
    assert_eq!(
        trapper["last_error"]["position"], boom,
        "the trap is pinned to its event: {trapper}"
    );
    assert_eq!(
        trapper["checkpoint"],
        boom - 1,
        "everything before the trap was applied"
    );
    let failer = failed(&server, "failer").await;
    assert_eq!(failer["last_error"]["position"], bad);
    assert!(
        failer["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot apply Bad event"),
        "{failer}"
    );
    assert_eq!(failer["last_error"]["attempts"], 3);
    assert_eq!(failer["checkpoint"], bad - 1, "{failer}");
    // Deployed after the fact, its first batch holds the bad event and the
    // good ones before it: those are applied, and the failure pinned.
    let (status, body) = server.deploy("late-failer", FAILING).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let late = failed(&server, "late-failer").await;
    assert_eq!(late["last_error"]["position"], bad, "{late}");
    assert_eq!(late["checkpoint"], bad - 1, "{late}");
    let count = server.get_ok("/plugins/late-failer/state/count").await;
    assert_eq!(
        count.as_u64(),
        Some(bad - 1),
        "every event before the bad one counted"
    );

    // The good plugin and the chatty one (whose output is capped) keep up.
    let head = server.head().await;
    server.wait_caught_up("good").await;
    let count = server.get_ok("/plugins/good/state/count").await;
    assert_eq!(count.as_u64(), Some(head));
    let chatty = server.wait_caught_up("chatty").await;
    assert!(chatty["last_error"].is_null(), "{chatty}");
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(
        log.len() < 5 << 20,
        "a plugin flooded the server's log ({} bytes)",
        log.len()
    );
    assert!(
        log.contains("bytes cut"),
        "long log lines are cut with a note"
    );

    // The log still takes appends, and the good plugin follows.
    let (status, _) = server
        .append("work-2", json!("any"), events("Fine", 3))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    server.wait_caught_up("good").await;

    // Skip parks the bad event and the plugin goes on.
    let (status, body) = server.post("/plugins/failer/skip", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["skipped"], bad);
    let failer = server.wait_caught_up("failer").await;
    assert_eq!(failer["parked"], 1);
    let parked = server.get_ok("/plugins/failer/parked").await;
    assert_eq!(parked["parked"][0]["position"], bad);
    assert!(
        parked["parked"][0]["error"]
            .as_str()
            .unwrap()
            .contains("Bad")
    );
    let count = server.get_ok("/plugins/failer/state/count").await;
    assert_eq!(
        count.as_u64(),
        Some(server.head().await - 1),
        "all but the parked event were counted"
    );
    // Skipping a healthy plugin is a conflict.
    let (status, _) = server.post("/plugins/good/skip", &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn pause_and_resume() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;
    server.deploy_all(&[("counter", COUNTER)]).await;
    server
        .append_created("p-1", json!("any"), events("E", 3))
        .await;
    server.wait_caught_up("counter").await;
    let (status, _) = server.post("/plugins/counter/pause", &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    server
        .wait_plugin("counter", "paused", |s| s["state"] == "paused")
        .await;
    server
        .append_created("p-1", json!("any"), events("E", 4))
        .await;
    let status = server
        .wait_plugin("counter", "a lag while paused", |s| s["lag"] == 4)
        .await;
    assert_eq!(status["checkpoint"], 3);
    server
        .post_expecting("/plugins/counter/resume", &json!({}), StatusCode::OK)
        .await;
    server.wait_caught_up("counter").await;
    let count = server.get_ok("/plugins/counter/state/count").await;
    assert_eq!(count, 7);
    let (status, body) = crate::harness::into_json(
        server
            .request(reqwest::Method::DELETE, "/plugins/counter")
            .send()
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deleted"], "counter");
    let (status, _) = server.get("/plugins/counter").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
