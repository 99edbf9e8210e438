//! A full disk: appends are refused with `507 insufficient_storage`, `/health`
//! says the log is degraded, and once space is freed the log reopens by
//! itself, with nothing acknowledged lost and no restart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Server, data_dir, wait_until};

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

#[tokio::test]
async fn a_full_disk_refuses_appends_with_507_and_the_log_recovers_once_space_is_freed() {
    let disk = SmallDisk::mount("48m");
    let data = disk.path().join("data");
    let server = Server::start_in(&data, &[]).await;
    server
        .append_created("before", json!("no_stream"), crate::harness::events("T", 3))
        .await;

    let filler = fill(disk.path());
    let payload = "x".repeat(60 << 10);
    let mut acknowledged = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let refusal = loop {
        assert!(Instant::now() < deadline, "the full disk was never noticed");
        let id = uuid::Uuid::now_v7().to_string();
        let (status, body) = server
            .post(
                "/streams/full",
                &json!({"events": [{"type": "Big", "id": id, "data": {"p": payload}}]}),
            )
            .await;
        match status {
            StatusCode::CREATED => acknowledged.push(id),
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

    // Space freed: appends go on by themselves, with no restart.
    std::fs::remove_file(&filler).expect("free space");
    let recovered = wait_until(Duration::from_secs(20), || async {
        let (status, _) = server
            .append("after", json!("any"), crate::harness::events("T", 1))
            .await;
        status == StatusCode::CREATED
    })
    .await;
    assert!(recovered, "appends did not resume after space was freed");
    let (status, health) = server.get("/health").await;
    assert_eq!(status, StatusCode::OK, "{health}");

    // Nothing acknowledged was lost, and the log has no gap.
    let events = server.read_all().await;
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["position"], i as u64 + 1, "a gap in the log");
    }
    let ids: Vec<&str> = events
        .iter()
        .filter(|e| e["stream"] == "full")
        .map(|e| e["id"].as_str().unwrap_or_default())
        .collect();
    // The write-ahead log is preallocated: appends were acknowledged into it
    // until redb could not grow (205 of 60 KiB here), and those must be back.
    assert!(
        !acknowledged.is_empty(),
        "no append was acknowledged on the full disk"
    );
    assert_eq!(ids, acknowledged, "acknowledged appends lost or reordered");
}
