//! Several eventfold nodes on one JetStream log (issue 19): plugins
//! deployed, replayed, paused and removed through any node are served by
//! every node that holds them, a node started later picks them all up, and
//! with two nodes under load, `kill -9` of a node and of the stream's
//! leader loses no append, leaves the projections identical to a fold of
//! the whole log by a fresh node, and hands the notifier over with every
//! notification delivered and signed; a reactor runs on one node at a time
//! and moves when that node dies, each output appended once.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventfold_plugin_builds::{
    COUNTER, COUNTER_V2, ORDER_TOTALS, SCRIPTED_REACTOR, SHIPMENT_NOTIFIER,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::backend::stream_name;
use crate::harness::{Cluster, Server, data_dir, events, wait_until};
use crate::notifiers::{Receiver, SECRET, set_webhook};

/// How long a notifier's lease lasts unrenewed in these tests.
const LEASE_TTL: &str = "2s";

/// The `serve` flags of node `node` on the log in `stream` of `nats`.
fn node_args(nats: &Cluster, stream: &str, node: &str, extra: &[&str]) -> Vec<String> {
    let mut args = nats.serve_args(stream, 3);
    args.extend(["--node-name", node, "--lease-ttl", LEASE_TTL].map(String::from));
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

async fn start_node(dir: &Path, args: &[String]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_in(dir, &args).await
}

/// A plugin's state on `server` and the checkpoint its answer carries.
async fn state_at(server: &Server, plugin: &str) -> (Vec<(String, Value)>, u64) {
    let response = server
        .request(
            reqwest::Method::GET,
            &format!("/plugins/{plugin}/state?limit=10000"),
        )
        .send()
        .await
        .expect("state request");
    assert_eq!(response.status(), StatusCode::OK);
    let checkpoint = response
        .headers()
        .get("eventfold-checkpoint")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("every state answer carries Eventfold-Checkpoint");
    (server.plugin_state(plugin).await, checkpoint)
}

/// The SHA-256 of a component, as statuses show it.
fn hash_of(wasm: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(std::fs::read(wasm).expect("component"));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_changed_through_any_node_are_served_by_every_node_that_holds_them() {
    let nats = tokio::task::spawn_blocking(Cluster::shared)
        .await
        .expect("the shared NATS cluster");
    let dirs = [data_dir(), data_dir(), data_dir(), data_dir()];
    let stream = stream_name(dirs[0].path());
    let a = start_node(dirs[0].path(), &node_args(nats, &stream, "a", &[])).await;
    let b = start_node(dirs[1].path(), &node_args(nats, &stream, "b", &[])).await;
    a.append_created("counted-1", json!("no_stream"), events("Counted", 60))
        .await;
    b.append_created("counted-2", json!("no_stream"), events("Counted", 40))
        .await;

    // A deploy through A is served by B.
    let deployed = Instant::now();
    a.deploy_expecting("counter", COUNTER, StatusCode::CREATED)
        .await;
    b.wait_caught_up("counter").await;
    eprintln!(
        "deployed through a, caught up on b {:.1?} later",
        deployed.elapsed()
    );
    a.wait_caught_up("counter").await;
    let (on_a, at_a) = state_at(&a, "counter").await;
    let (on_b, at_b) = state_at(&b, "counter").await;
    assert_eq!(
        (&on_a, at_a),
        (&on_b, at_b),
        "a and b at the same checkpoint"
    );
    assert_eq!(at_a, 100);

    // A replay through A rebuilds on B too.
    let (status, body) = a.post("/plugins/counter/replay", &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let replayed = Instant::now();
    b.wait_plugin("counter", "generation 2", |s| {
        s["generation"] == 2 && s["rebuild"].is_null() && s["checkpoint"] == 100
    })
    .await;
    eprintln!(
        "replayed through a, swapped in on b {:.1?} later",
        replayed.elapsed()
    );

    // New code through B reaches A.
    b.deploy_expecting("counter", COUNTER_V2, StatusCode::ACCEPTED)
        .await;
    let v2 = hash_of(COUNTER_V2);
    a.wait_plugin("counter", "the new code", |s| {
        s["hash"] == v2.as_str() && s["rebuild"].is_null() && s["checkpoint"] == 100
    })
    .await;

    // A node started afterwards picks up every plugin, at the latest code;
    // one that holds only label `eu` picks up only what carries it.
    let c = start_node(dirs[2].path(), &node_args(nats, &stream, "c", &[])).await;
    let eu = ["--hold", "label:eu"];
    let d = start_node(dirs[3].path(), &node_args(nats, &stream, "d", &eu)).await;
    let (status, body) = a.deploy("totals?labels=eu", ORDER_TOTALS).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    c.wait_plugin("counter", "the new code", |s| {
        s["hash"] == v2.as_str() && s["checkpoint"] == 100
    })
    .await;
    assert_eq!(state_at(&c, "counter").await, state_at(&a, "counter").await);
    c.wait_caught_up("totals").await;
    d.wait_caught_up("totals").await;
    let (status, body) = d.get("/plugins/counter").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "d holds only label:eu: {body}"
    );

    // Pause through C pauses everywhere; resume through D resumes.
    let (status, body) = c.post("/plugins/totals/pause", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for node in [&a, &b, &d] {
        node.wait_plugin("totals", "paused", |s| s["state"] == "paused")
            .await;
    }
    let (status, body) = d.post("/plugins/totals/resume", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for node in [&a, &b, &c] {
        node.wait_plugin("totals", "running", |s| s["state"] == "running")
            .await;
    }

    // GET /cluster on any node shows every node and what it holds (as of
    // each node's last heartbeat).
    let holds = |view: &Value, node: &str| -> BTreeSet<String> {
        view["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["node"] == node)
            .flat_map(|n| n["plugins"].as_array().into_iter().flatten())
            .filter_map(|p| p["name"].as_str().map(String::from))
            .collect()
    };
    let both: BTreeSet<String> = BTreeSet::from(["counter".into(), "totals".into()]);
    let totals: BTreeSet<String> = BTreeSet::from(["totals".into()]);
    let shown = wait_until(Duration::from_secs(10), || async {
        let view = b.get_ok("/cluster").await;
        ["a", "b", "c"].iter().all(|n| holds(&view, n) == both) && holds(&view, "d") == totals
    })
    .await;
    let view = b.get_ok("/cluster").await;
    assert!(shown, "GET /cluster: {view}");
    assert_eq!(view["log"]["replicas"], 3, "{view}");
    assert!(view["log"]["leader"].is_string(), "{view}");

    // A remove through A removes it everywhere, and it stays removed on a
    // node that comes back.
    let response = a
        .request(reqwest::Method::DELETE, "/plugins/counter")
        .send()
        .await;
    let (status, body) = crate::harness::into_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for node in [&b, &c] {
        let gone = wait_until(Duration::from_secs(30), || async {
            node.get("/plugins/counter").await.0 == StatusCode::NOT_FOUND
        })
        .await;
        assert!(gone, "counter still on {}", node.url);
    }
}

/// Concurrent writers in the failover test.
const WRITERS: usize = 8;
/// Notifications a new owner may deliver again: those whose delivery was
/// not yet in the ledger when the owner died (at most one chunk of
/// outcomes, `notify/dispatcher.rs`).
const REDELIVERY_WINDOW: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_lose_nothing_when_a_node_and_the_stream_leader_are_killed() {
    let nats = Cluster::start(3).await;
    let dirs = [data_dir(), data_dir(), data_dir()];
    let stream = stream_name(dirs[0].path());
    let args = [
        node_args(&nats, &stream, "a", &[]),
        node_args(&nats, &stream, "b", &[]),
    ];
    let mut nodes = [
        start_node(dirs[0].path(), &args[0]).await,
        start_node(dirs[1].path(), &args[1]).await,
    ];
    let receiver = Receiver::start(0).await;
    nodes[0]
        .deploy_all(&[
            ("counter", COUNTER),
            ("totals", ORDER_TOTALS),
            ("ship", SHIPMENT_NOTIFIER),
        ])
        .await;
    for plugin in ["counter", "totals", "ship"] {
        nodes[1].wait_caught_up(plugin).await;
    }
    set_webhook(
        &nodes[1],
        "ship",
        json!({ "url": receiver.url, "secret": SECRET, "backoff_ms": 50 }),
    )
    .await;

    let writing = Writing::new(nodes.iter().map(|n| n.url.clone()).collect());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(write(w, writing.clone())))
        .collect();
    writing.keep_writing(Duration::from_secs(2), 100).await;

    // 1. kill -9 the node that delivers the notifier.
    let owner = lease_owner(&nodes[0], "ship").await;
    let (dead, survivor) = if owner == "a" { (0, 1) } else { (1, 0) };
    let killed = Instant::now();
    nodes[dead].kill9();
    writing.keep_writing(Duration::from_secs(3), 100).await;
    let survivor_name = ["a", "b"][survivor];
    let moved = wait_until(Duration::from_secs(30), || async {
        lease_owner(&nodes[survivor], "ship").await == survivor_name
    })
    .await;
    assert!(moved, "the notifier's lease never moved to {survivor_name}");
    let status = nodes[survivor].get_ok("/plugins/ship").await;
    assert_eq!(status["delivery"]["node"], survivor_name, "{status}");
    eprintln!(
        "cluster failover: node {owner} killed; {survivor_name} delivers the notifier {:.1?} later",
        killed.elapsed()
    );

    // 2. kill -9 the stream's leader, then bring it back.
    let leader = nats
        .wait_stream_leader(&stream, None, Duration::from_secs(10))
        .await;
    nats.kill9(leader);
    nats.wait_stream_leader(&stream, Some(leader), Duration::from_secs(30))
        .await;
    writing.keep_writing(Duration::from_secs(3), 100).await;
    nats.restart(leader);
    nats.wait_healthy().await;

    // 3. restart the killed node.
    nodes[dead] = start_node(dirs[dead].path(), &args[dead]).await;
    writing.set_url(dead, &nodes[dead].url);
    writing.keep_writing(Duration::from_secs(2), 100).await;
    writing.stop.store(true, Ordering::SeqCst);
    let mut acks: Vec<(Uuid, u64, String)> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for writer in writers {
        let (written, anomalies) = writer.await.expect("a writer panicked");
        acks.extend(written);
        problems.extend(anomalies);
    }
    assert!(
        problems.is_empty(),
        "the writers saw:\n{}",
        problems.join("\n")
    );

    // Every acknowledged append once, at its position, gapless.
    let log = nodes[survivor].read_all().await;
    let mut at: HashMap<Uuid, u64> = HashMap::new();
    for (i, event) in log.iter().enumerate() {
        assert_eq!(
            event["position"].as_u64(),
            Some(i as u64 + 1),
            "gapless from 1"
        );
        let id = event["id"].as_str().and_then(|id| Uuid::parse_str(id).ok());
        let id = id.expect("an event id");
        assert!(
            at.insert(id, i as u64 + 1).is_none(),
            "{id} twice in the log"
        );
    }
    for (id, position, stream) in &acks {
        assert_eq!(
            at.get(id),
            Some(position),
            "{id} of {stream} acknowledged at {position}"
        );
    }
    assert_eq!(
        log.len(),
        acks.len(),
        "the log holds only acknowledged events"
    );

    // The projections on both nodes equal a fresh node's fold of the log.
    let fresh = start_node(dirs[2].path(), &node_args(&nats, &stream, "fresh", &[])).await;
    for plugin in ["counter", "totals"] {
        let mut states = Vec::new();
        for node in [&nodes[0], &nodes[1], &fresh] {
            node.wait_caught_up(plugin).await;
            states.push(state_at(node, plugin).await);
        }
        assert_eq!(states[0], states[2], "{plugin} on a against a fresh fold");
        assert_eq!(states[1], states[2], "{plugin} on b against a fresh fold");
    }

    // Every order's notification delivered, signed, none twice beyond the
    // window.
    let expected: BTreeSet<String> = acks
        .iter()
        .map(|(_, _, stream)| format!("{stream}-shipped"))
        .collect();
    let keys = |receiver: &Receiver| -> BTreeSet<String> {
        receiver
            .accepted()
            .iter()
            .filter_map(|d| d.body["key"].as_str().map(String::from))
            .collect()
    };
    let all = wait_until(Duration::from_secs(60), || async {
        keys(&receiver).len() >= expected.len()
    })
    .await;
    let delivered = keys(&receiver);
    assert!(
        all,
        "{} of {} notifications delivered",
        delivered.len(),
        expected.len()
    );
    assert_eq!(delivered, expected);
    let accepted = receiver.accepted().len();
    let again = accepted - receiver.distinct_ids().len();
    eprintln!(
        "cluster failover: {} events, {} notifications delivered, {again} delivered again",
        log.len(),
        expected.len()
    );
    assert!(
        again <= REDELIVERY_WINDOW,
        "{again} notifications delivered twice"
    );
    assert_eq!(
        receiver.received.lock().expect("receiver").bad_signatures,
        0
    );
}

#[tokio::test]
async fn a_reactor_runs_on_one_node_and_moves_with_its_lease_appending_each_output_once() {
    const SOURCES: usize = 10_000;
    let nats = Cluster::start(3).await;
    let dirs = [data_dir(), data_dir()];
    let stream = stream_name(dirs[0].path());
    let mut nodes = [
        start_node(dirs[0].path(), &node_args(&nats, &stream, "a", &[])).await,
        start_node(dirs[1].path(), &node_args(&nats, &stream, "b", &[])).await,
    ];
    crate::reactors::ask(&nodes[0], SOURCES, 3).await;
    nodes[0].deploy_all(&[("echo", SCRIPTED_REACTOR)]).await;
    // Killed once some outputs are in and the reactor is part-way.
    let running = wait_until(Duration::from_secs(60), || async {
        nodes[0].head().await > SOURCES as u64
    })
    .await;
    assert!(running, "no output appeared");
    let owner = lease_owner(&nodes[0], "echo").await;
    let (dead, survivor) = if owner == "a" { (0, 1) } else { (1, 0) };
    let idle = nodes[survivor].get_ok("/plugins/echo").await;
    nodes[dead].kill9();
    assert_eq!(
        idle["checkpoint"], 0,
        "the node without the lease ran the reactor: {idle}"
    );
    let head = nodes[survivor].head().await;
    assert!(
        head < (SOURCES * 4) as u64,
        "the reactor had finished before the kill"
    );

    let survivor_name = ["a", "b"][survivor];
    let moved = wait_until(Duration::from_secs(30), || async {
        lease_owner(&nodes[survivor], "echo").await == survivor_name
    })
    .await;
    assert!(moved, "the reactor's lease never moved to {survivor_name}");
    let done = wait_until(Duration::from_secs(120), || async {
        let status = nodes[survivor].get_ok("/plugins/echo").await;
        status["checkpoint"].as_u64() == Some(nodes[survivor].head().await)
            && nodes[survivor].head().await == (SOURCES * 4) as u64
    })
    .await;
    let status = nodes[survivor].get_ok("/plugins/echo").await;
    assert!(
        done,
        "the reactor never finished on {survivor_name}: {status}"
    );
    let log = nodes[survivor].read_all().await;
    let positions: Vec<u64> = log
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, (1..=(SOURCES * 4) as u64).collect::<Vec<_>>());
    let mut outputs = BTreeSet::new();
    for event in log.iter().filter(|e| e["metadata"]["reactor"] == "echo") {
        let pair = (event["data"]["i"].as_u64(), event["data"]["k"].as_u64());
        assert!(outputs.insert(pair), "output {pair:?} twice");
    }
    assert_eq!(outputs.len(), SOURCES * 3);
}

#[tokio::test]
async fn a_node_taking_a_reactor_over_appends_nothing_an_earlier_owner_appended() {
    const SOURCES: usize = 2_000;
    let nats = Cluster::start(3).await;
    let dirs = [data_dir(), data_dir()];
    let stream = stream_name(dirs[0].path());
    // JetStream forgets ids after a second: what keeps the next owner from
    // appending again is the mark, not the duplicate window.
    let forgetful = ["--nats-duplicate-window", "1s"];
    let mut nodes = [
        start_node(dirs[0].path(), &node_args(&nats, &stream, "a", &forgetful)).await,
        start_node(dirs[1].path(), &node_args(&nats, &stream, "b", &forgetful)).await,
    ];
    crate::reactors::ask(&nodes[0], SOURCES, 1).await;
    nodes[0].deploy_all(&[("echo", SCRIPTED_REACTOR)]).await;
    let total = (SOURCES * 2) as u64;
    let done = wait_until(Duration::from_secs(60), || async {
        nodes[0].head().await == total
    })
    .await;
    assert!(done, "the reactor never appended its outputs");
    let owner = lease_owner(&nodes[0], "echo").await;
    let (dead, survivor) = if owner == "a" { (0, 1) } else { (1, 0) };
    let idle = nodes[survivor].get_ok("/plugins/echo").await;
    assert_eq!(idle["checkpoint"], 0, "{idle}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[dead].kill9();

    let survivor_name = ["a", "b"][survivor];
    let status = nodes[survivor]
        .wait_plugin("echo", "caught up after taking the lease", |s| {
            s["checkpoint"].as_u64() >= Some(total)
        })
        .await;
    assert_eq!(lease_owner(&nodes[survivor], "echo").await, survivor_name);
    assert_eq!(status["outputs_suppressed"], SOURCES, "{status}");
    assert_eq!(
        nodes[survivor].head().await,
        total,
        "the new owner appended again"
    );
    assert_eq!(
        nodes[survivor].get_ok("/plugins/echo/state/handled").await,
        SOURCES
    );
}

/// The node that delivers `plugin`'s notifications, as `server` sees it.
async fn lease_owner(server: &Server, plugin: &str) -> String {
    let view = server.get_ok("/cluster").await;
    view["leases"][plugin]["node"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// What the writers share.
struct Writing {
    urls: Mutex<Vec<String>>,
    stop: AtomicBool,
    acked: AtomicUsize,
}

impl Writing {
    fn new(urls: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            urls: Mutex::new(urls),
            stop: AtomicBool::new(false),
            acked: AtomicUsize::new(0),
        })
    }

    fn set_url(&self, node: usize, url: &str) {
        self.urls.lock().expect("urls")[node] = url.to_owned();
    }

    /// Lets the writers run for `duration` and until `requests` more are
    /// acknowledged (up to a minute more).
    async fn keep_writing(&self, duration: Duration, requests: usize) {
        let since = Instant::now();
        let target = self.acked.load(Ordering::SeqCst) + requests;
        let progressed = wait_until(duration + Duration::from_secs(60), || async {
            since.elapsed() >= duration && self.acked.load(Ordering::SeqCst) >= target
        })
        .await;
        assert!(progressed, "the writers stalled");
    }
}

/// One writer: orders `order-w<w>-<k>`, each placed and shipped in one
/// append with ids, through one node and then the other when a node does
/// not answer; each retried until acknowledged. Answers every event
/// acknowledged (id, position, stream) and anything unexpected.
async fn write(w: usize, writing: Arc<Writing>) -> (Vec<(Uuid, u64, String)>, Vec<String>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("an HTTP client");
    let (mut acks, mut anomalies) = (Vec::new(), Vec::new());
    let mut node = w % 2;
    let mut k = 0;
    while !writing.stop.load(Ordering::SeqCst) {
        let stream = format!("order-w{w}-{k}");
        let ids = [Uuid::now_v7(), Uuid::now_v7()];
        let body = json!({"expected_version": "no_stream", "events": [
            {"id": ids[0], "type": "OrderPlaced", "data": {"customerId": format!("c{}", k % 7), "amount": k % 50 + 1}},
            {"id": ids[1], "type": "OrderShipped", "data": {"carrier": "ups"}},
        ]});
        let give_up = Instant::now() + Duration::from_secs(90);
        loop {
            let url = writing.urls.lock().expect("urls")[node].clone();
            let answer = client
                .post(format!("{url}/streams/{stream}"))
                .json(&body)
                .send()
                .await;
            let (status, text) = match answer {
                Ok(r) => (r.status(), r.text().await.unwrap_or_default()),
                Err(_) if Instant::now() < give_up => {
                    node = 1 - node;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => {
                    anomalies.push(format!("{stream}: no answer for 90 s: {e}"));
                    return (acks, anomalies);
                }
            };
            match status {
                StatusCode::CREATED | StatusCode::OK => {
                    let outcome: Value = serde_json::from_str(&text).unwrap_or_default();
                    let Some(first) = outcome["first_position"].as_u64() else {
                        anomalies.push(format!("{stream}: {status} {text}"));
                        return (acks, anomalies);
                    };
                    acks.push((ids[0], first, stream.clone()));
                    acks.push((ids[1], first + 1, stream.clone()));
                    writing.acked.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                StatusCode::SERVICE_UNAVAILABLE if Instant::now() < give_up => {
                    node = 1 - node;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => {
                    anomalies.push(format!("{stream}: {status} {text}"));
                    return (acks, anomalies);
                }
            }
        }
        k += 1;
    }
    (acks, anomalies)
}
