//! The harness's JetStream clusters themselves (issue 18): the installed
//! nats-server forms a healthy 3-node cluster, the `JetStream` backend's
//! flags point at it, and a cluster of a test's own fails over when a
//! stream's leader is killed and takes the node back when it restarts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::backend::stream_name;
use crate::harness::nats::nats_server;
use crate::harness::{Backend, Cluster, data_dir};

#[tokio::test]
async fn the_shared_cluster_has_three_healthy_nodes_and_a_meta_leader() {
    let version = std::process::Command::new(nats_server())
        .arg("--version")
        .output()
        .expect("run nats-server --version");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        "nats-server: v2.15.1"
    );
    let dir = data_dir();
    let args = Backend::JetStream.serve_args(dir.path()).await;
    let cluster = Cluster::shared();
    assert_eq!(cluster.node_count(), 3);
    let client = reqwest::Client::new();
    let mut leaders = Vec::new();
    for node in 0..cluster.node_count() {
        assert!(cluster.pid(node).is_some(), "node {node} is not running");
        let monitor = cluster.monitor_url(node);
        let health = client
            .get(format!("{monitor}/healthz"))
            .send()
            .await
            .expect("/healthz");
        assert_eq!(health.status(), StatusCode::OK, "node {node}");
        let jsz: Value = client
            .get(format!("{monitor}/jsz"))
            .send()
            .await
            .expect("/jsz")
            .json()
            .await
            .expect("/jsz is JSON");
        assert_eq!(jsz["meta_cluster"]["name"], "eventfold-test", "{jsz}");
        leaders.push(jsz["meta_cluster"]["leader"].clone());
    }
    assert!(leaders[0].is_string(), "no meta leader: {leaders:?}");
    assert!(leaders.iter().all(|l| *l == leaders[0]), "{leaders:?}");
    let stream = stream_name(dir.path());
    assert_eq!(
        args,
        [
            "--log",
            "jetstream",
            "--nats-url",
            &cluster.urls(),
            "--nats-stream",
            &stream,
            "--nats-replicas",
            "3",
        ]
    );
    assert_eq!(cluster.urls().split(',').count(), 3);
    assert!(Backend::Embedded.serve_args(dir.path()).await.is_empty());
}

#[tokio::test]
async fn a_cluster_of_its_own_elects_a_new_stream_leader_and_takes_a_killed_node_back() {
    let cluster = Cluster::start(3).await;
    assert!(cluster.dir().join("n0.conf").exists());
    create_stream(&cluster, "failover", 3);
    let leader = cluster
        .wait_stream_leader("failover", None, Duration::from_secs(10))
        .await;
    let pid = cluster.pid(leader).expect("the leader runs");

    cluster.kill9(leader);
    assert!(cluster.pid(leader).is_none());
    assert!(
        !std::path::Path::new("/proc").join(pid.to_string()).exists(),
        "the killed node's process is still there"
    );
    let new_leader = cluster
        .wait_stream_leader("failover", Some(leader), Duration::from_secs(20))
        .await;
    assert_ne!(new_leader, leader);

    cluster.restart(leader);
    cluster.wait_healthy().await;
    assert!(cluster.pid(leader).is_some());
    // The node is back in the stream's group: it reports the stream and its leader.
    let jsz: Value = reqwest::get(format!("{}/jsz?streams=true", cluster.monitor_url(leader)))
        .await
        .expect("/jsz")
        .json()
        .await
        .expect("/jsz is JSON");
    let text = jsz.to_string();
    assert!(text.contains(r#""name":"failover""#), "{text}");
    assert!(cluster.stream_leader("failover").is_some());
}

/// Creates an R`replicas` file stream `name` on subjects `name.>` through
/// the JetStream API, speaking the NATS protocol by hand (the harness needs
/// no NATS client); retried while JetStream is not ready for it.
fn create_stream(cluster: &Cluster, name: &str, replicas: usize) {
    let config = json!({
        "name": name,
        "subjects": [format!("{name}.>")],
        "num_replicas": replicas,
        "storage": "file",
    })
    .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = nats_request(
            cluster,
            &format!("$JS.API.STREAM.CREATE.{name}"),
            config.as_bytes(),
        );
        if reply["error"].is_null() {
            assert_eq!(reply["config"]["num_replicas"], replicas, "{reply}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cannot create stream {name}: {reply}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One request over a fresh connection to node 0: the JSON reply.
fn nats_request(cluster: &Cluster, subject: &str, payload: &[u8]) -> Value {
    let url = cluster.url(0);
    let address = url.strip_prefix("nats://").expect("a nats:// URL");
    let mut socket = TcpStream::connect(address).expect("connect to NATS");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let inbox = "_INBOX.harness";
    write!(
        socket,
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {inbox} 1\r\nPUB {subject} {inbox} {}\r\n",
        payload.len()
    )
    .expect("send");
    socket.write_all(payload).expect("send");
    socket.write_all(b"\r\n").expect("send");
    // INFO first, maybe PINGs, then `MSG <subject> <sid> <len>\r\n<payload>\r\n`.
    let mut received = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(start) = text.find("\r\nMSG ").map(|i| i + 2)
            && let Some(header_end) = text[start..].find("\r\n").map(|i| start + i)
        {
            let length: usize = text[start..header_end]
                .split_whitespace()
                .last()
                .and_then(|l| l.parse().ok())
                .expect("a MSG length");
            let body = header_end + 2;
            if received.len() >= body + length {
                return serde_json::from_slice(&received[body..body + length])
                    .expect("a JSON reply");
            }
        }
        if text.ends_with("PING\r\n") {
            socket.write_all(b"PONG\r\n").expect("send");
        }
        let n = socket.read(&mut chunk).expect("a reply from NATS");
        assert!(n > 0, "NATS closed the connection: {text}");
        received.extend_from_slice(&chunk[..n]);
    }
}
