//! Projection plugins end to end: real .wasm components deployed over HTTP,
//! folding the log, replayed, swapped and restarted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use eventfold_plugin_builds::{COUNTER, COUNTER_V2, ORDER_TOTALS, USER_DIRECTORY};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, Server, backend_tests, data_dir, events};

backend_tests!(
    the_user_directory_follows_the_classic_example,
    replay_rebuilds_identical_state_while_reads_and_appends_go_on,
);

fn user(event_type: &str, id: u64, name: Option<&str>) -> Value {
    match name {
        Some(name) => json!({"type": event_type, "data": {"userId": id, "name": name}}),
        None => json!({"type": event_type, "data": {"userId": id}}),
    }
}

/// Appends one user event to that user's own stream, `user-{id}`, and
/// asserts it was appended.
async fn append_user(
    server: &Server,
    expected: Value,
    event_type: &str,
    id: u64,
    name: Option<&str>,
) -> Value {
    server
        .append_created(
            &format!("user-{id}"),
            expected,
            json!([user(event_type, id, name)]),
        )
        .await
}

async fn the_user_directory_follows_the_classic_example(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    append_user(&server, json!("no_stream"), "UserCreated", 1, Some("Alice")).await;
    append_user(&server, json!("no_stream"), "UserCreated", 2, Some("Bob")).await;
    server
        .append_created("order-9", json!("any"), events("OrderPlaced", 3))
        .await;
    let (status, body) = server.deploy("users", USER_DIRECTORY).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["kind"], "projection");
    assert_eq!(body["categories"], json!(["user"]));
    append_user(
        &server,
        json!(0),
        "UserNameUpdated",
        1,
        Some("Alice Cooper"),
    )
    .await;
    append_user(&server, json!(1), "UserDeleted", 1, None).await;
    append_user(&server, json!(0), "UserNameUpdated", 2, Some("Robert")).await;
    append_user(&server, json!("no_stream"), "UserCreated", 3, Some("Carol")).await;
    let status = server.wait_caught_up("users").await;
    assert_eq!(status["lag"], 0);

    let (code, body) = server.get("/plugins/users/state/user/1").await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "a deleted user no longer exists: {body}"
    );
    assert_eq!(body["error"]["code"], "key_not_found");
    let (code, body) = server.get("/plugins/users/state/user/2").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body, json!({"name": "Robert"}));
    assert_eq!(
        server.plugin_state("users").await,
        vec![
            ("user/2".to_owned(), json!({"name": "Robert"})),
            ("user/3".to_owned(), json!({"name": "Carol"}))
        ]
    );
    // Live: a new event shows up in the state.
    append_user(&server, json!("no_stream"), "UserCreated", 4, Some("Dan")).await;
    server.wait_caught_up("users").await;
    let body = server.get_ok("/plugins/users/state/user/4").await;
    assert_eq!(body["name"], "Dan");
    let list = server.get_ok("/plugins").await;
    assert_eq!(list["plugins"][0]["name"], "users");
}

#[tokio::test]
async fn order_totals_answers_queries() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;
    server.deploy_all(&[("totals", ORDER_TOTALS)]).await;
    let orders = [
        ("c1", 10.0),
        ("c2", 5.5),
        ("c1", 2.5),
        ("c3", 30.0),
        ("c2", 1.0),
    ];
    for (i, (customer, amount)) in orders.iter().enumerate() {
        let event =
            json!([{"type": "OrderPlaced", "data": {"customerId": customer, "amount": amount}}]);
        server
            .append_created(&format!("order-{i}"), json!("no_stream"), event)
            .await;
    }
    server
        .append_created(
            "order-0",
            json!(0),
            json!([{"type": "OrderShipped", "data": {}}]),
        )
        .await;
    server.wait_caught_up("totals").await;
    let c1 = server.get_ok("/plugins/totals/state/customer/c1").await;
    assert_eq!(c1, json!({"orders": 2, "total": 12.5}));
    let response = server
        .request(reqwest::Method::POST, "/plugins/totals/query")
        .body(r#"{"top": 2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let top: Value = response.json().await.unwrap();
    assert_eq!(
        top,
        json!([{"customer": "c3", "orders": 1, "total": 30.0}, {"customer": "c1", "orders": 2, "total": 12.5}])
    );
    let (status, body) = server
        .post("/plugins/totals/query", &json!("not a query"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "query_rejected");
}

async fn replay_rebuilds_identical_state_while_reads_and_appends_go_on(backend: Backend) {
    let dir = data_dir();
    let server = Arc::new(Server::start_on(backend, dir.path(), &[]).await);
    // 3,000 users, some renamed, some deleted.
    for chunk in 0..30u64 {
        let appends: Vec<Value> = (0..100u64)
            .map(|i| {
                let id = chunk * 100 + i;
                let mut evs = vec![user("UserCreated", id, Some(&format!("user {id}")))];
                if id % 3 == 0 {
                    evs.push(user("UserNameUpdated", id, Some(&format!("renamed {id}"))));
                }
                if id % 7 == 0 {
                    evs.push(user("UserDeleted", id, None));
                }
                json!({"stream": format!("user-{id}"), "events": evs})
            })
            .collect();
        let (status, body) = server.post("/batch", &json!({ "appends": appends })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    server.deploy_all(&[("users", USER_DIRECTORY)]).await;
    server.wait_caught_up("users").await;
    let before = server.plugin_state("users").await;
    assert_eq!(before.len(), 3000 - 3000 / 7 - 1);

    let (status, started) = server.post("/plugins/users/replay", &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["replay"]["generation"], 2);
    assert_eq!(started["state"], "replaying");
    // While it rebuilds: reads keep answering from the old state, appends go on.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (server, done) = (server.clone(), done.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) {
                let (status, body) = server.get("/plugins/users/state/user/1").await;
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "a read failed during the rebuild: {body}"
                );
                assert_eq!(body["name"], "user 1");
                reads += 1;
            }
            reads
        })
    };
    for id in 5000..5020u64 {
        append_user(&server, json!("no_stream"), "UserCreated", id, Some("late")).await;
    }
    let status = server
        .wait_plugin("users", "generation 2", |s| {
            s["generation"] == 2 && s["rebuild"].is_null()
        })
        .await;
    done.store(true, Ordering::Relaxed);
    assert!(reader.await.unwrap() > 0);
    assert_eq!(status["state"], "running", "{status}");
    server.wait_caught_up("users").await;
    let after: BTreeMap<String, Value> = server.plugin_state("users").await.into_iter().collect();
    for (key, value) in &before {
        assert_eq!(
            after.get(key),
            Some(value),
            "{key} differs after the replay"
        );
    }
    assert_eq!(after.len(), before.len() + 20);
    assert_eq!(after["user/5019"], json!({"name": "late"}));
}

#[tokio::test]
async fn deploying_v2_while_events_stream_in_swaps_without_failed_reads() {
    let dir = data_dir();
    let server = Arc::new(Server::start_in(dir.path(), &[]).await);
    server
        .append_created("tick-0", json!("any"), events("Tick", 500))
        .await;
    server.deploy_all(&[("counter", COUNTER)]).await;
    server.wait_caught_up("counter").await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (status, _) = server
                    .append(&format!("tick-{}", n % 5), json!("any"), events("Tick", 10))
                    .await;
                assert_eq!(status, StatusCode::CREATED);
                n += 1;
            }
        })
    };
    let reader = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                let (status, count) = server.get("/plugins/counter/state/count").await;
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "the state was unreadable during the swap"
                );
                last = count.as_u64().expect("a count");
                assert!(last >= 500);
            }
            last
        })
    };
    let (status, body) = server.deploy("counter", COUNTER_V2).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deploy"], "rebuilding");
    server
        .wait_plugin("counter", "the swap to v2", |s| {
            s["generation"] == 2 && s["rebuild"].is_null()
        })
        .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    reader.await.unwrap();
    let status = server.wait_caught_up("counter").await;
    let head = status["head"].as_u64().unwrap();
    let version = server.get_ok("/plugins/counter/state/version").await;
    assert_eq!(version, 2, "v2's state serves after the swap");
    let count = server.get_ok("/plugins/counter/state/count").await;
    assert_eq!(count.as_u64(), Some(head));
    // Deploying the same code again changes nothing.
    let (status, body) = server.deploy("counter", COUNTER_V2).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["deploy"], "unchanged");
}

#[tokio::test]
async fn a_counting_projection_is_exactly_once_across_kill_9_during_catch_up() {
    let dir = data_dir();
    let mut server = Server::start_in(dir.path(), &[]).await;
    // The log is written before the deploy and holds many batches (a batch
    // is at most 10,000 events), so the plugin commits its checkpoint many
    // times on its way to the head: the kill falls between two of them.
    let batch = |n: usize| json!({"appends": [{"stream": format!("count-{n}"), "events": events("Counted", 2_000)}]});
    for n in 0..100 {
        server
            .post_expecting("/batch", &batch(n), StatusCode::CREATED)
            .await;
    }
    let head = server.head().await;
    assert_eq!(head, 200_000);
    server.deploy_all(&[("counter", COUNTER)]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let seen = loop {
        let body = server.get_ok("/plugins/counter").await;
        let checkpoint = body["checkpoint"].as_u64().expect("a checkpoint");
        if checkpoint > 0 {
            break checkpoint;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the plugin never moved: {body}"
        );
    };
    server.kill9();
    assert!(
        seen < head,
        "the plugin had caught up ({seen}) before it was seen part-way: no crash during catch-up"
    );

    let server = Server::start_in(dir.path(), &[]).await;
    // The checkpoint the plugin restarts from is what the crash left behind:
    // its last durable commit (later ones are not fsynced and may be lost, so
    // it can be below the one seen), and below the head, so the restarted
    // plugin is still catching up.
    let restored = restored_checkpoint(dir.path(), "counter").await;
    assert!(
        restored < head,
        "restored from {restored}: the crash was not part-way (seen {seen}, head {head})"
    );
    for n in 100..110 {
        server
            .post_expecting("/batch", &batch(n), StatusCode::CREATED)
            .await;
    }
    let status = server.wait_caught_up("counter").await;
    assert_eq!(status["head"], 220_000);
    let count = server.get_ok("/plugins/counter/state/count").await;
    assert_eq!(count, 220_000, "every event counted exactly once");
}

/// The checkpoint that plugin `name` was restored from at the last start,
/// read from the server's log (its `restored plugin` line), waiting for it.
pub(crate) async fn restored_checkpoint(dir: &std::path::Path, name: &str) -> u64 {
    let log = || std::fs::read_to_string(dir.join("server.log")).expect("server.log");
    let logged = crate::harness::wait_until(std::time::Duration::from_secs(30), || async {
        log().contains("restored plugin")
    })
    .await;
    let log = log();
    assert!(logged, "no `restored plugin` line in:\n{log}");
    // The log may be coloured: drop the escape sequences first.
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    let line = plain
        .lines()
        .rev()
        .find(|l| l.contains("restored plugin") && l.contains(&format!("plugin={name}")))
        .unwrap_or_else(|| panic!("no `restored plugin` line for {name} in:\n{plain}"));
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("checkpoint="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no checkpoint in {line:?}"))
}

#[tokio::test]
async fn plugins_survive_a_restart_without_recompiling() {
    let dir = data_dir();
    let mut server = Server::start_in(dir.path(), &[]).await;
    let body = server
        .deploy_expecting("users", USER_DIRECTORY, StatusCode::CREATED)
        .await;
    assert_eq!(body["compiled"], "compiled");
    append_user(&server, json!("any"), "UserCreated", 1, Some("Alice")).await;
    let before = server.wait_caught_up("users").await;
    assert!(server.terminate().success());

    let server = Server::start_in(dir.path(), &[]).await;
    let after = server.wait_caught_up("users").await;
    assert_eq!(after["checkpoint"], before["checkpoint"]);
    assert_eq!(after["compiled"], "cache", "{after}");
    append_user(&server, json!("any"), "UserCreated", 2, Some("Bob")).await;
    server.wait_caught_up("users").await;
    let bob = server.get_ok("/plugins/users/state/user/2").await;
    assert_eq!(bob["name"], "Bob");
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(log.contains("restored plugin"), "{log}");
}

#[tokio::test]
async fn a_deploy_that_never_finished_leaves_nothing_behind() {
    let dir = data_dir();
    let mut server = Server::start_in(dir.path(), &[]).await;
    server.deploy_all(&[("p", COUNTER)]).await;
    server
        .append_created("other-1", json!("any"), events("E", 3))
        .await;
    server.wait_caught_up("p").await;
    assert!(server.terminate().success());
    // The process died after the plugin started but before its manifest
    // was written: its state file is there, nothing says it was deployed.
    let plugin_dir = dir.path().join("plugins/p");
    std::fs::remove_file(plugin_dir.join("plugin.json")).unwrap();
    assert!(plugin_dir.join("state-1.redb").exists());

    let server = Server::start_in(dir.path(), &[]).await;
    let (status, _) = server.get("/plugins/p").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "an unfinished deploy is not restored"
    );
    // Another plugin under that name starts from nothing: no counter keys.
    server.deploy_all(&[("p", USER_DIRECTORY)]).await;
    append_user(&server, json!("any"), "UserCreated", 1, Some("Alice")).await;
    server.wait_caught_up("p").await;
    let keys: Vec<String> = server
        .plugin_state("p")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["user/1"]);
}

#[tokio::test]
async fn bad_deploys_and_unknown_plugins_get_clear_errors() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;
    let put = |name: &str, content_type: &str, body: Vec<u8>| {
        server
            .request(reqwest::Method::PUT, &format!("/plugins/{name}"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "junk",
            "application/wasm",
            b"definitely not wasm".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plugin",
        ),
        (
            "core",
            "application/wasm",
            b"\0asm\x01\0\0\0".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plugin",
        ),
        (
            "empty",
            "application/wasm",
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "empty_body",
        ),
        (
            "typed",
            "text/plain",
            b"x".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "Bad Name",
            "application/wasm",
            b"x".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_plugin_name",
        ),
    ];
    for (name, content_type, body, expected, code) in cases {
        let (status, error) = crate::harness::into_json(put(name, content_type, body).await).await;
        assert_eq!(status, expected, "{name}: {error}");
        assert_eq!(error["error"]["code"], code, "{name}: {error}");
    }
    let list = server.get_ok("/plugins").await;
    assert_eq!(
        list["plugins"],
        json!([]),
        "a refused deploy left something behind"
    );
    for path in [
        "/plugins/nope",
        "/plugins/nope/state/k",
        "/plugins/nope/parked",
    ] {
        let (status, error) = server.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error["error"]["code"], "plugin_not_found");
    }
    let (status, _) = server.post("/plugins/nope/replay", &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_plugins_directory_is_deployed_at_start_and_hot_loaded() {
    let dir = data_dir();
    let drop_dir = data_dir();
    std::fs::copy(COUNTER, drop_dir.path().join("tally.wasm")).unwrap();
    let drop_path = drop_dir.path().to_str().unwrap().to_owned();
    let server = Server::start_in(dir.path(), &["--plugins-dir", &drop_path]).await;
    server
        .append_created("hot-1", json!("any"), events("E", 5))
        .await;
    server.wait_caught_up("tally").await;
    let count = server.get_ok("/plugins/tally/state/count").await;
    assert_eq!(count, 5);

    // A file that appears is deployed; one that changes is rebuilt as v2.
    std::fs::copy(USER_DIRECTORY, drop_dir.path().join("user_directory.wasm")).unwrap();
    server
        .wait_plugin("user-directory", "deployed from the directory", |s| {
            s["state"] == "running"
        })
        .await;
    std::fs::copy(COUNTER_V2, drop_dir.path().join("tally.wasm")).unwrap();
    server
        .wait_plugin("tally", "the swap to v2", |s| {
            s["generation"] == 2 && s["rebuild"].is_null()
        })
        .await;
    let version = server.get_ok("/plugins/tally/state/version").await;
    assert_eq!(version, 2);
}

#[tokio::test]
async fn a_rebuild_reads_no_faster_than_the_replay_rate_while_the_serving_plugin_keeps_up() {
    const RATE: u64 = 400;
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &["--replay-rate", &RATE.to_string()]).await;
    server.deploy_all(&[("counter", COUNTER)]).await;
    let batch: Vec<Value> = (0..1200)
        .map(|i| json!({"type": "Counted", "data": {"i": i}}))
        .collect();
    server
        .append_created("c-1", json!("any"), json!(batch))
        .await;
    let head = server.head().await;
    server
        .wait_plugin("counter", "caught up", |s| s["checkpoint"] == head)
        .await;

    let started = std::time::Instant::now();
    let (status, body) = server.post("/plugins/counter/replay", &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let mut samples = 0;
    loop {
        let status = server.get_ok("/plugins/counter").await;
        let elapsed = started.elapsed().as_secs_f64();
        if status["generation"] == 2 && status["rebuild"].is_null() {
            break;
        }
        // Null until the runner picks the rebuild up.
        let checkpoint = status["rebuild"]["checkpoint"].as_u64().unwrap_or(0);
        // The bucket holds a tenth of a second's worth when the rebuild
        // starts; beyond it, no more than the rate.
        let most = (RATE as f64 * (elapsed + 0.1)) as u64 + 1;
        assert!(
            checkpoint <= most,
            "read {checkpoint} events in {elapsed:.2} s"
        );
        // Appends and the serving generation are not held back meanwhile.
        let appended = server
            .append_created("c-2", json!("any"), events("Counted", 1))
            .await;
        let position = appended["first_position"].as_u64().expect("position");
        server
            .wait_plugin("counter", "the serving plugin", |s| {
                s["checkpoint"].as_u64() >= Some(position)
            })
            .await;
        samples += 1;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(samples >= 10, "the rebuild ended after {samples} samples");
    assert!(started.elapsed().as_secs_f64() >= 1200.0 / RATE as f64 * 0.9);
}
