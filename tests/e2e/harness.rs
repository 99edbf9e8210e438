//! The end-to-end harness: start the real `eventfold` binary on a temporary
//! data directory and a free port, talk HTTP to it, stop or kill it. Its log
//! can be on either backend (`backend`, with the `backend_tests!` macro),
//! and JetStream clusters for the tests are in `nats`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

pub mod backend;
pub mod nats;

pub use backend::Backend;
pub(crate) use backend::backend_tests;
pub use nats::Cluster;

/// A running server (killed when dropped) and the data directory it uses.
pub struct Server {
    child: Child,
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    token: Option<String>,
    client: reqwest::Client,
}

/// A temporary data directory for one test.
pub fn data_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("eventfold-test-")
        .tempdir()
        .expect("temp dir")
}

impl Server {
    /// Starts a server on `dir` with extra `serve` flags; waits until `/health` answers.
    pub async fn start_in(dir: &Path, args: &[&str]) -> Server {
        let token = args
            .iter()
            .position(|a| *a == "--token")
            .and_then(|i| args.get(i + 1))
            .map(|t| t.to_string());
        let (child, url) = spawn(dir, args).unwrap_or_else(|e| panic!("server did not start: {e}"));
        let server = Server {
            child,
            url,
            token,
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = server.request(reqwest::Method::GET, "/health").send().await
                && r.status() == StatusCode::OK
            {
                return server;
            }
            assert!(Instant::now() < deadline, "server did not become healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A request with the server's token, if it has one.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// GET, answering the status and the JSON body.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        into_json(self.request(reqwest::Method::GET, path).send().await).await
    }

    /// GET, asserting `200 OK`; the JSON body.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// GET, answering the body as text (for non-JSON or byte-exact checks).
    pub async fn get_text(&self, path: &str) -> String {
        let response = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("request failed");
        response.text().await.expect("body")
    }

    /// POST a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        into_json(
            self.request(reqwest::Method::POST, path)
                .json(body)
                .send()
                .await,
        )
        .await
    }

    /// POST raw bytes with a content type.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let request = self
            .request(reqwest::Method::POST, path)
            .header("content-type", content_type)
            .body(body);
        into_json(request.send().await).await
    }

    /// Appends `events` to `stream` with an expected version.
    pub async fn append(
        &self,
        stream: &str,
        expected_version: Value,
        events: Value,
    ) -> (StatusCode, Value) {
        self.post(
            &format!("/streams/{stream}"),
            &json!({ "expected_version": expected_version, "events": events }),
        )
        .await
    }

    /// POSTs a JSON body and asserts the answer's status; the body.
    pub async fn post_expecting(&self, path: &str, body: &Value, expected: StatusCode) -> Value {
        let (status, answer) = self.post(path, body).await;
        assert_eq!(status, expected, "POST {path}: {answer}");
        answer
    }

    /// Appends like [`Server::append`] and asserts `201 Created`; the body.
    pub async fn append_created(
        &self,
        stream: &str,
        expected_version: Value,
        events: Value,
    ) -> Value {
        let (status, body) = self.append(stream, expected_version, events).await;
        assert_eq!(status, StatusCode::CREATED, "append to {stream}: {body}");
        body
    }

    /// The whole global log, following pages.
    pub async fn read_all(&self) -> Vec<Value> {
        let mut events = Vec::new();
        let mut from = 1;
        loop {
            let (status, page) = self.get(&format!("/events?from={from}&limit=10000")).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let batch = page["events"].as_array().expect("events").clone();
            let next = page["next"].as_u64().expect("next");
            let head = page["head"].as_u64().expect("head");
            events.extend(batch);
            if next > head {
                return events;
            }
            from = next;
        }
    }

    /// The last committed position.
    pub async fn head(&self) -> u64 {
        let (status, health) = self.get("/health").await;
        assert_eq!(status, StatusCode::OK);
        health["head"].as_u64().expect("head")
    }

    /// `kill -9`: no chance to flush or commit anything.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `eventfold serve` and reads the address it prints. Logs go to
/// `server.log` in the data directory.
pub fn spawn(dir: &Path, args: &[&str]) -> Result<(Child, String), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .map_err(|e| e.to_string())?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventfold"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--addr", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let url = line
        .trim()
        .strip_prefix("eventfold listening on ")
        .ok_or_else(|| {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            format!("unexpected first line {line:?}; exit {status}; log:\n{log}")
        })?
        .to_string();
    Ok((child, url))
}

/// The status and JSON body of a response (`Value::Null` for an empty body).
pub async fn into_json(response: reqwest::Result<reqwest::Response>) -> (StatusCode, Value) {
    let response = response.expect("request failed");
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {bytes:?}"))
    };
    (status, body)
}

/// Waits for `condition` to hold, polling, up to `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// `n` events of type `t` with data `{"i": k}`.
pub fn events(t: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({ "type": t, "data": { "i": i } }))
            .collect(),
    )
}

impl Server {
    /// Deploys the component at `wasm` as plugin `name`.
    pub async fn deploy(&self, name: &str, wasm: &str) -> (StatusCode, Value) {
        let bytes = std::fs::read(wasm).unwrap_or_else(|e| panic!("{wasm}: {e}"));
        let request = self
            .request(reqwest::Method::PUT, &format!("/plugins/{name}"))
            .header("content-type", "application/wasm")
            .body(bytes);
        into_json(request.send().await).await
    }

    /// Deploys `wasm` as plugin `name` and asserts the answer's status
    /// (`201 Created` for a new plugin, `202 Accepted` for a new version).
    pub async fn deploy_expecting(&self, name: &str, wasm: &str, expected: StatusCode) -> Value {
        let (status, body) = self.deploy(name, wasm).await;
        assert_eq!(status, expected, "deploy {name}: {body}");
        body
    }

    /// Deploys each `(name, wasm)` as a new plugin, asserting 201 for each.
    pub async fn deploy_all(&self, plugins: &[(&str, &str)]) {
        for &(name, wasm) in plugins {
            self.deploy_expecting(name, wasm, StatusCode::CREATED).await;
        }
    }

    /// Waits until the plugin's status satisfies `condition`; the last status.
    pub async fn wait_plugin(
        &self,
        name: &str,
        what: &str,
        condition: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get(&format!("/plugins/{name}")).await;
            if status == StatusCode::OK && condition(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "plugin {name} never got {what}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the plugin has processed everything up to the head, with no rebuild running.
    pub async fn wait_caught_up(&self, name: &str) -> Value {
        let head = self.head().await;
        self.wait_plugin(name, "caught up", |s| {
            s["checkpoint"].as_u64() >= Some(head)
                && s["rebuild"].is_null()
                && s["state"] == "running"
        })
        .await
    }

    /// The whole serving state of a plugin: key → value.
    pub async fn plugin_state(&self, name: &str) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/plugins/{name}/state?limit=1000");
            if let Some(after) = &after {
                path.push_str(&format!("&after={after}"));
            }
            let (status, page) = self.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            for entry in page["entries"].as_array().unwrap() {
                out.push((
                    entry["key"].as_str().unwrap().to_owned(),
                    entry["value"].clone(),
                ));
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => return out,
            }
        }
    }
}
