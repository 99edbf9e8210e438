//! Plugins in Python and JavaScript beside the Rust one: the same projection
//! in three languages over the same log ends in the same state, byte for
//! byte, also after a replay; and their failures are reported like Rust's.

use eventfold_plugin_builds::JS_ENDLESS_LOOP;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, Server, backend_tests, data_dir};

backend_tests!(rust_python_and_javascript_projections_agree_key_by_key,);

const RUST: &str = eventfold_plugin_builds::USER_DIRECTORY;
const PYTHON: &str = eventfold_plugin_builds::PYTHON_USER_DIRECTORY;
const JS: &str = eventfold_plugin_builds::JS_USER_DIRECTORY;

const PLUGINS: [(&str, &str); 3] = [
    ("rust-users", RUST),
    ("python-users", PYTHON),
    ("js-users", JS),
];

/// A few thousand user events over 300 users: creations, renames (names
/// with quotes, backslashes and non-ASCII) and deletions.
fn generated_users() -> Vec<Value> {
    let mut appends = Vec::new();
    for user in 10..310u64 {
        let mut events = vec![
            json!({"type": "UserCreated", "data": {"userId": user, "name": format!("user {user}")}}),
        ];
        for rename in 0..(user % 9) {
            let name = format!("Zoë \"{user}\" \\ {rename} — ünïcødé");
            events.push(json!({"type": "UserNameUpdated", "data": {"userId": user, "name": name}}));
        }
        if user % 5 == 0 {
            events.push(json!({"type": "UserDeleted", "data": {"userId": user}}));
        }
        appends.push(json!({"stream": format!("user-{user}"), "expected_version": "no_stream", "events": events}));
    }
    appends
}

async fn raw_state(server: &Server, plugin: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (key, _) in server.plugin_state(plugin).await {
        let value = server
            .get_text(&format!("/plugins/{plugin}/state/{key}"))
            .await;
        out.push((key, value));
    }
    out
}

async fn assert_same_state(server: &Server, when: &str) {
    let rust = raw_state(server, "rust-users").await;
    assert!(
        rust.len() > 200,
        "{when}: the Rust state is too small to prove anything"
    );
    for (name, _) in &PLUGINS[1..] {
        let other = raw_state(server, name).await;
        assert_eq!(
            other.len(),
            rust.len(),
            "{when}: {name} has another number of keys"
        );
        for (a, b) in rust.iter().zip(&other) {
            assert_eq!(a, b, "{when}: {name} differs from Rust");
        }
    }
}

async fn rust_python_and_javascript_projections_agree_key_by_key(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    // An 18 MB component compiles off the request path: while it does, the
    // plugin shows as compiling and the server answers everything else.
    let upload = reqwest::Client::new()
        .put(format!("{}/plugins/python-users", server.url))
        .header("content-type", "application/wasm")
        .body(std::fs::read(PYTHON).unwrap());
    let deploying = tokio::spawn(upload.send());
    let compiling = server
        .wait_plugin("python-users", "compiling", |s| s["state"] == "compiling")
        .await;
    assert!(compiling["kind"].is_null(), "{compiling}");
    let (status, _) = server.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.get("/plugins/python-users/state/user/1").await;
    let code = &body["error"]["code"];
    assert!(
        status == StatusCode::SERVICE_UNAVAILABLE && code == "plugin_compiling"
            // Unless it has just finished compiling: then the read is answered.
            || status == StatusCode::NOT_FOUND && code == "key_not_found",
        "{status} {body}"
    );
    let (status, _) = server.get("/plugins").await;
    assert_eq!(status, StatusCode::OK);
    let response = deploying.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    server.deploy_all(&[PLUGINS[0], PLUGINS[2]]).await;
    // The classic example first.
    let classic = json!([
        {"type": "UserCreated", "data": {"userId": 1, "name": "Alice"}},
        {"type": "UserNameUpdated", "data": {"userId": 1, "name": "Alice Cooper"}},
        {"type": "UserDeleted", "data": {"userId": 1}},
    ]);
    server
        .append_created("user-1", json!("no_stream"), classic)
        .await;
    server
        .append_created(
            "user-2",
            json!("no_stream"),
            json!([{"type": "UserCreated", "data": {"userId": 2, "name": "Bob"}}]),
        )
        .await;
    // In batches of 100 streams: at most 1,000 events each, as JetStream takes.
    for appends in generated_users().chunks(100) {
        let (status, body) = server.post("/batch", &json!({ "appends": appends })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for (name, _) in PLUGINS {
        server.wait_caught_up(name).await;
        let (status, _) = server.get(&format!("/plugins/{name}/state/user/1")).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{name}: a deleted user no longer exists"
        );
        let bob = server
            .get_ok(&format!("/plugins/{name}/state/user/2"))
            .await;
        assert_eq!(bob, json!({"name": "Bob"}), "{name}");
    }
    assert_same_state(&server, "live").await;

    for (name, _) in PLUGINS {
        let (status, body) = server
            .post(&format!("/plugins/{name}/replay"), &json!({}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{name}: {body}");
    }
    for (name, _) in PLUGINS {
        let status = server.wait_caught_up(name).await;
        assert_eq!(status["generation"], 2, "{name}: {status}");
    }
    assert_same_state(&server, "after replay").await;
}

#[tokio::test]
async fn python_and_javascript_failures_are_stopped_and_reported() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &["--plugin-deadline", "1s"]).await;
    server
        .deploy_all(&[
            ("python-users", PYTHON),
            ("js-users", JS),
            ("js-loop", JS_ENDLESS_LOOP),
            ("rust-users", RUST),
        ])
        .await;
    server
        .append_created(
            "user-1",
            json!("no_stream"),
            json!([{"type": "UserCreated", "data": {"userId": 1, "name": "Alice"}}]),
        )
        .await;
    // A UserCreated without a name: the Python plugin raises on it.
    let bad = server
        .append_created(
            "user-2",
            json!("no_stream"),
            json!([{"type": "UserCreated", "data": {"userId": 2}}]),
        )
        .await;
    let bad = bad["first_position"].as_u64().unwrap();

    let python = server
        .wait_plugin("python-users", "failed", |s| s["state"] == "failed")
        .await;
    assert_eq!(python["last_error"]["position"], bad, "{python}");
    assert_eq!(python["checkpoint"], bad - 1, "{python}");
    let message = python["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains("KeyError") && message.contains("name"),
        "{python}"
    );

    // The JS one refuses it too: its thrown `{index, message}` is the
    // handle-error that names the event.
    let js = server
        .wait_plugin("js-users", "failed", |s| s["state"] == "failed")
        .await;
    assert_eq!(js["last_error"]["position"], bad, "{js}");
    assert_eq!(js["checkpoint"], bad - 1, "{js}");
    assert!(
        js["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("name must be a string"),
        "{js}"
    );

    let looper = server
        .wait_plugin("js-loop", "failed", |s| s["state"] == "failed")
        .await;
    assert!(
        looper["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("deadline"),
        "{looper}"
    );
    assert_eq!(looper["last_error"]["position"], 1, "{looper}");

    // The Rust one is unaffected by the misbehaviour beside it (it fails on
    // the same bad event, on its own, and has applied the good one).
    let alice = server.get_ok("/plugins/rust-users/state/user/1").await;
    assert_eq!(alice, json!({"name": "Alice"}));
    let (status, _) = server
        .append(
            "user-3",
            json!("no_stream"),
            json!([{"type": "UserCreated", "data": {"userId": 3, "name": "Carol"}}]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "the log goes on");
}
