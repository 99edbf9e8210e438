//! One plugin's compile holds no other plugin back: a small plugin deploys
//! while a large one compiles, and at a restart every plugin is listed at
//! once, each as `compiling` until it is ready.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, data_dir};

const RUST: &str = eventfold_plugin_builds::USER_DIRECTORY;
/// A 12-18 MB component: seconds to compile, where the Rust one takes a
/// fraction of a second.
const JS: &str = eventfold_plugin_builds::JS_USER_DIRECTORY;

fn names(list: &Value) -> Vec<&str> {
    list["plugins"]
        .as_array()
        .expect("a list of plugins")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect()
}

/// Deploys the JavaScript plugin in the background; answers the upload.
fn upload_js(server: &Server) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let upload = reqwest::Client::new()
        .put(format!("{}/plugins/js-users", server.url))
        .header("content-type", "application/wasm")
        .body(std::fs::read(JS).expect("the JavaScript plugin"));
    tokio::spawn(upload.send())
}

async fn assert_state(server: &Server, name: &str) {
    let (status, value) = server.get(&format!("/plugins/{name}/state/user/7")).await;
    assert_eq!(status, StatusCode::OK, "{name}: {value}");
    assert_eq!(value, json!({"name": "Grace"}), "{name}");
}

/// Two cold compiles of the JavaScript plugin (seconds each), in one test
/// to pay for them once: at the deploy, and at a restart without the cache.
#[tokio::test]
async fn a_large_compile_holds_no_other_plugin_back_at_deploy_or_restart() {
    let dir = data_dir();
    let mut server = Server::start_in(dir.path(), &[]).await;
    let deploying = upload_js(&server);
    let compiling = server
        .wait_plugin("js-users", "compiling", |s| s["state"] == "compiling")
        .await;
    assert!(compiling["kind"].is_null(), "{compiling}");
    let (status, body) = server.deploy("rust-users", RUST).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The Rust deploy did not queue behind the JavaScript compile.
    let (status, js) = server.get("/plugins/js-users").await;
    assert_eq!(
        (status, &js["state"]),
        (StatusCode::OK, &json!("compiling")),
        "{js}"
    );
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
        assert_state(&server, name).await;
    }

    // A restart without the compiled cache: the JavaScript plugin compiles
    // again, for seconds.
    assert!(server.terminate().success());
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
    assert_eq!(
        (status, &js["state"]),
        (StatusCode::OK, &json!("compiling")),
        "{js}"
    );
    assert_state(&server, "rust-users").await;
    // A deploy of the same code waits for the restore, then changes nothing.
    let response = upload_js(&server)
        .await
        .expect("the upload task")
        .expect("the upload");
    assert_eq!(response.status(), StatusCode::OK);
    server.wait_caught_up("js-users").await;
    assert_state(&server, "js-users").await;
}

#[tokio::test]
async fn a_plugins_directory_lists_every_plugin_at_once_and_readies_the_small_first() {
    let dir = data_dir();
    let drop_dir = data_dir();
    std::fs::copy(JS, drop_dir.path().join("js_users.wasm")).expect("copy the JavaScript plugin");
    std::fs::copy(RUST, drop_dir.path().join("rust_users.wasm")).expect("copy the Rust plugin");
    let drop_path = drop_dir.path().to_str().expect("a UTF-8 path").to_owned();
    let server = Server::start_in(dir.path(), &["--plugins-dir", &drop_path]).await;
    let rust = server
        .wait_plugin("rust-users", "running", |s| s["state"] == "running")
        .await;
    assert_eq!(rust["kind"], "projection", "{rust}");
    // Deployed in turn, smallest first: the Rust plugin did not wait for
    // the JavaScript compile, which was listed all along.
    let (status, js) = server.get("/plugins/js-users").await;
    assert_eq!(
        (status, &js["state"]),
        (StatusCode::OK, &json!("compiling")),
        "{js}"
    );
    server.wait_caught_up("js-users").await;
}
