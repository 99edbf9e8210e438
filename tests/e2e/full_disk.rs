//! A full disk: appends are refused with `507 insufficient_storage`, `/health`
//! says the log is degraded, and once space is freed the log reopens by
//! itself, with nothing acknowledged lost and no restart. A projection and a
//! notifier on the same disk stop with it and resume by themselves: the
//! projection counts every acknowledged event once, and every notification
//! reaches the webhook.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode as AxumStatus;
use eventfold_plugin_builds::{COUNTER, SHIPMENT_NOTIFIER};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, data_dir, into_json, wait_until};

/// `whsec_` + base64 of 24 bytes, as Standard Webhooks writes secrets.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A tmpfs of `size` mounted on a temporary directory; unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = data_dir();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(
            mounted.success(),
            "cannot mount a tmpfs (the test needs root)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // The server's log is on the disk: shown before it goes, if the test failed.
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.path().join("data/server.log"));
            let log = log.unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("--- server.log, last lines ---");
            tail.iter().rev().for_each(|line| eprintln!("{line}"));
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the filesystem of `dir` with one file; its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let block = vec![7u8; 64 << 10];
    while file.write_all(&block).is_ok() {}
    path
}

/// A webhook receiver that accepts everything and keeps each delivery's key.
struct Receiver {
    url: String,
    keys: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let keys: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = keys.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: Bytes| {
                let seen = seen.clone();
                async move {
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let key = body["key"].as_str().unwrap_or_default().to_owned();
                    seen.lock().unwrap().push(key);
                    AxumStatus::NO_CONTENT
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, keys, task }
    }

    /// The keys delivered at least once.
    fn distinct_keys(&self) -> BTreeSet<String> {
        self.keys.lock().unwrap().iter().cloned().collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Order `i`, placed and shipped in one append to `order-{i}`; `padding`
/// makes it as large as wanted. The shipment notifier emits one
/// notification per order, keyed `order-{i}-shipped`.
async fn ship_order(server: &Server, i: usize, padding: &str) -> (StatusCode, Value) {
    let events = json!([
        {"type": "OrderPlaced", "data": {"customerId": format!("c{}", i % 7), "p": padding}},
        {"type": "OrderShipped", "data": {"carrier": "ups"}},
    ]);
    server
        .append(&format!("order-{i}"), json!("no_stream"), events)
        .await
}

#[tokio::test]
async fn a_full_disk_refuses_appends_with_507_and_the_log_and_plugins_recover_once_space_is_freed()
{
    let disk = SmallDisk::mount("48m");
    let data = disk.path().join("data");
    let server = Server::start_in(&data, &[]).await;
    // A notifier with a webhook, and a projection that counts every event,
    // their state files and mailbox on the same disk. The projection comes
    // last: it is new, and its first commits are not yet made durable when
    // the disk fills.
    server.deploy_all(&[("ship", SHIPMENT_NOTIFIER)]).await;
    let receiver = Receiver::start().await;
    let settings = json!({"url": receiver.url, "secret": SECRET, "backoff_ms": 5});
    let response = server
        .request(reqwest::Method::PUT, "/plugins/ship/webhook")
        .json(&settings)
        .send()
        .await;
    let (status, body) = into_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.deploy_all(&[("counter", COUNTER)]).await;
    let mut shipped = Vec::new();
    for i in 0..3 {
        let (status, body) = ship_order(&server, i, "").await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        shipped.push(i);
    }

    // The disk fills while appends go on: the plugins are busy, with commits
    // not yet durable, and whichever of their operations comes next (a
    // commit, a sync, a read) meets the full disk.
    let filling = tokio::task::spawn_blocking({
        let dir = disk.path().to_owned();
        move || fill(&dir)
    });
    while !filling.is_finished() {
        let i = shipped.len();
        let (status, _) = ship_order(&server, i, "").await;
        if status != StatusCode::CREATED {
            break;
        }
        shipped.push(i);
    }
    let filler = filling.await.expect("fill the disk");
    let payload = "x".repeat(60 << 10);
    let mut acknowledged = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let refusal = loop {
        assert!(Instant::now() < deadline, "the full disk was never noticed");
        let i = shipped.len();
        let (status, body) = ship_order(&server, i, &payload).await;
        match status {
            StatusCode::CREATED => {
                acknowledged.push(format!("order-{i}"));
                shipped.push(i);
            }
            _ => break (status, body),
        }
    };
    let (status, body) = refusal;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("full"), "{message}");

    let (status, health) = server.get("/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_eq!(health["log"]["status"], "degraded", "{health}");
    let metrics = server.get_text("/metrics").await;
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("eventfold_storage_failures_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(failures.is_some_and(|f| f >= 1.0), "{metrics}");
    for plugin in ["counter", "ship"] {
        let status = server.get_ok(&format!("/plugins/{plugin}")).await;
        eprintln!("on the full disk, {plugin}: {}", status["last_error"]);
    }

    // Space freed: appends go on by themselves, with no restart.
    std::fs::remove_file(&filler).expect("free space");
    let recovered = wait_until(Duration::from_secs(20), || async {
        let i = shipped.len();
        let (status, _) = ship_order(&server, i, "").await;
        status == StatusCode::CREATED
    })
    .await;
    assert!(recovered, "appends did not resume after space was freed");
    shipped.push(shipped.len());
    let (status, health) = server.get("/health").await;
    assert_eq!(status, StatusCode::OK, "{health}");

    // Nothing acknowledged was lost, and the log has no gap.
    let events = server.read_all().await;
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["position"], i as u64 + 1, "a gap in the log");
    }
    let placed: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "OrderPlaced" && e["data"]["p"] == payload.as_str())
        .map(|e| e["stream"].as_str().unwrap_or_default())
        .collect();
    // The write-ahead log is preallocated: appends were acknowledged into it
    // until redb could not grow, and those must be back.
    assert!(
        !acknowledged.is_empty(),
        "no append was acknowledged on the full disk"
    );
    assert_eq!(
        placed, acknowledged,
        "acknowledged appends lost or reordered"
    );
    assert_eq!(
        events.len(),
        2 * shipped.len(),
        "every order and only those"
    );

    // The projection resumed by itself and counted every event exactly once.
    let status = server.wait_caught_up("counter").await;
    assert_eq!(status["last_error"], Value::Null, "{status}");
    let count = server.get_ok("/plugins/counter/state/count").await;
    assert_eq!(count, json!(events.len()), "the projection's count");
    let last = server.get_ok("/plugins/counter/state/last").await;
    assert_eq!(last, json!(events.len()), "the last position it saw");

    // The notifier resumed too, and every order's notification was delivered.
    server.wait_caught_up("ship").await;
    let expected: BTreeSet<String> = shipped
        .iter()
        .map(|i| format!("order-{i}-shipped"))
        .collect();
    let delivered = wait_until(Duration::from_secs(60), || async {
        receiver.distinct_keys().len() >= expected.len()
    })
    .await;
    assert!(
        delivered,
        "the receiver got {} of {} notifications",
        receiver.distinct_keys().len(),
        expected.len()
    );
    assert_eq!(
        receiver.distinct_keys(),
        expected,
        "every key, and only those"
    );
    let status = server
        .wait_plugin("ship", "everything delivered", |s| {
            s["notifications"]["pending"] == 0
        })
        .await;
    let n = &status["notifications"];
    assert_eq!(
        n["emitted"],
        json!(expected.len()),
        "each key accepted once: {n}"
    );
    assert_eq!(n["dead_letters"], 0, "{n}");
}
