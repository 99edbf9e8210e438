//! One plugin's compile holds no other plugin back: a small plugin deploys
//! while a large one compiles, and at a restart every plugin is listed at
//! once, each as `compiling` until it is ready.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, data_dir};

const RUST: &str = env!("USER_DIRECTORY_WASM");
/// A 12-18 MB component: seconds to compile, where the Rust one takes a
/// fraction of a second.
const JS: &str = env!("JS_USER_DIRECTORY_WASM");

fn names(list: &Value) -> Vec<&str> {
    list["plugins"]
        .as_array()
        .expect("a list of plugins")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect()
}

#[tokio::test]
async fn a_small_plugin_deploys_while_a_large_one_compiles() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;
    let upload = reqwest::Client::new()
        .put(format!("{}/plugins/js-users", server.url))
        .header("content-type", "application/wasm")
        .body(std::fs::read(JS).expect("the JavaScript plugin"));
    let deploying = tokio::spawn(upload.send());
    let compiling = server
        .wait_plugin("js-users", "compiling", |s| s["state"] == "compiling")
        .await;
    assert!(compiling["kind"].is_null(), "{compiling}");

    let (status, body) = server.deploy("rust-users", RUST).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The Rust deploy did not queue behind the JavaScript compile.
    let (status, js) = server.get("/plugins/js-users").await;
    assert_eq!(status, StatusCode::OK, "{js}");
    assert_eq!(js["state"], "compiling", "{js}");
    let (status, list) = server.get("/plugins").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(names(&list), ["js-users", "rust-users"], "{list}");

    let response = deploying
        .await
        .expect("the upload task")
        .expect("the upload");
    assert_eq!(response.status(), StatusCode::CREATED);
    let (status, appended) = server
        .append(
            "user-7",
            json!("no_stream"),
            json!([{"type": "UserCreated", "data": {"userId": 7, "name": "Grace"}}]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{appended}");
    for name in ["js-users", "rust-users"] {
        server.wait_caught_up(name).await;
        let (status, value) = server.get(&format!("/plugins/{name}/state/user/7")).await;
        assert_eq!(status, StatusCode::OK, "{name}: {value}");
        assert_eq!(value, json!({"name": "Grace"}), "{name}");
    }
}

#[tokio::test]
async fn at_a_restart_every_plugin_is_listed_at_once_and_the_small_one_is_ready_first() {
    let dir = data_dir();
    let mut server = Server::start_in(dir.path(), &[]).await;
    server
        .deploy_all(&[("js-users", JS), ("rust-users", RUST)])
        .await;
    let (status, appended) = server
        .append(
            "user-7",
            json!("no_stream"),
            json!([{"type": "UserCreated", "data": {"userId": 7, "name": "Grace"}}]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{appended}");
    server.wait_caught_up("js-users").await;
    server.wait_caught_up("rust-users").await;
    assert!(server.terminate().success());
    // Without the compiled cache, the JavaScript plugin compiles for seconds.
    std::fs::remove_dir_all(dir.path().join("cache")).expect("remove the compile cache");

    let server = Server::start_in(dir.path(), &[]).await;
    let (status, list) = server.get("/plugins").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(names(&list), ["js-users", "rust-users"], "{list}");
    // The smaller component is restored first, while the larger compiles.
    server
        .wait_plugin("rust-users", "running", |s| s["state"] == "running")
        .await;
    let (status, js) = server.get("/plugins/js-users").await;
    assert_eq!(status, StatusCode::OK, "{js}");
    assert_eq!(js["state"], "compiling", "{js}");
    let (status, value) = server.get("/plugins/rust-users/state/user/7").await;
    assert_eq!((status, value), (StatusCode::OK, json!({"name": "Grace"})));

    server.wait_caught_up("js-users").await;
    let (status, value) = server.get("/plugins/js-users/state/user/7").await;
    assert_eq!((status, value), (StatusCode::OK, json!({"name": "Grace"})));
}
