//! Notifier plugins end to end: the real binary, the real shipment-notifier
//! component, and a real webhook receiver on loopback started by the test.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use eventfold_plugin_builds::{COUNTER, OVERSIZE_NOTIFIER, SHIPMENT_NOTIFIER, SNEAKY_PROJECTION};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::{Backend, Server, backend_tests, data_dir, wait_until};

backend_tests!(every_notification_arrives_signed_and_in_order_despite_failures,);

/// `whsec_` + base64 of 24 bytes, as Standard Webhooks writes secrets.
pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request the receiver accepted.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) id: String,
    pub(crate) body: Value,
}

#[derive(Default)]
pub(crate) struct Received {
    /// Accepted deliveries, in arrival order.
    pub(crate) accepted: Vec<Delivery>,
    /// Attempts per `webhook-id`, refused ones included.
    attempts: HashMap<String, u32>,
    /// Requests whose signature did not verify.
    pub(crate) bad_signatures: u32,
}

/// A webhook receiver that checks every signature and refuses the first
/// `fail_first` attempts of each message.
pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub(crate) async fn start(fail_first: u32) -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap(), fail_first).await
    }

    async fn start_on(addr: SocketAddr, fail_first: u32) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Received::default()));
        let state = received.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { receive(&state, fail_first, &headers, &body) }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url,
            received,
            task,
        }
    }

    pub(crate) fn accepted(&self) -> Vec<Delivery> {
        self.received.lock().unwrap().accepted.clone()
    }

    pub(crate) fn distinct_ids(&self) -> BTreeSet<String> {
        self.accepted().into_iter().map(|d| d.id).collect()
    }

    async fn wait_for(&self, n: usize) {
        let ok = wait_until(Duration::from_secs(60), || async {
            self.distinct_ids().len() >= n
        })
        .await;
        assert!(ok, "the receiver got {} of {n}", self.distinct_ids().len());
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn receive(
    state: &Mutex<Received>,
    fail_first: u32,
    headers: &HeaderMap,
    body: &[u8],
) -> AxumStatus {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let mut state = state.lock().unwrap();
    let key = BASE64.decode(SECRET.trim_start_matches("whsec_")).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    if signature != expected {
        state.bad_signatures += 1;
        return AxumStatus::UNAUTHORIZED;
    }
    let attempts = state.attempts.entry(id.clone()).or_default();
    *attempts += 1;
    if *attempts <= fail_first {
        return AxumStatus::SERVICE_UNAVAILABLE;
    }
    let body = serde_json::from_slice(body).unwrap_or(Value::Null);
    state.accepted.push(Delivery { id, body });
    AxumStatus::NO_CONTENT
}

/// Appends `OrderPlaced` then `OrderShipped` for orders `range`.
async fn ship_orders(server: &Server, range: std::ops::Range<u64>) {
    let appends: Vec<Value> = range
        .map(|i| {
            json!({"stream": format!("order-{i}"), "expected_version": "no_stream", "events": [
                {"type": "OrderPlaced", "data": {"customerId": format!("c{}", i % 7), "amount": 10}},
                {"type": "OrderShipped", "data": {"carrier": "ups"}},
            ]})
        })
        .collect();
    let (status, body) = server.post("/batch", &json!({ "appends": appends })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

pub(crate) async fn set_webhook(server: &Server, plugin: &str, settings: Value) -> Value {
    let response = server
        .request(reqwest::Method::PUT, &format!("/plugins/{plugin}/webhook"))
        .json(&settings)
        .send()
        .await;
    let (status, body) = crate::harness::into_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn deploy_notifier(server: &Server) {
    let (status, body) = server.deploy("ship", SHIPMENT_NOTIFIER).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["kind"], "notifier");
}

async fn every_notification_arrives_signed_and_in_order_despite_failures(backend: Backend) {
    let dir = data_dir();
    let server = Server::start_on(backend, dir.path(), &[]).await;
    deploy_notifier(&server).await;
    let receiver = Receiver::start(3).await;
    let shown = set_webhook(
        &server,
        "ship",
        json!({"url": receiver.url, "secret": SECRET, "backoff_ms": 5, "max_attempts": 5}),
    )
    .await;
    assert!(
        !shown.to_string().contains(SECRET),
        "the secret is never echoed: {shown}"
    );
    let view = server.get_ok("/plugins/ship/webhook").await;
    assert!(!view.to_string().contains(SECRET), "{view}");
    assert_eq!(view["webhook"]["url"], receiver.url);

    // A live subscriber from the start.
    let live = server
        .request(
            reqwest::Method::GET,
            "/notifications/live?plugin=ship&after=0",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);

    ship_orders(&server, 0..20).await;
    receiver.wait_for(20).await;

    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 20, "each delivered once after its retries");
    let sequences: Vec<u64> = accepted
        .iter()
        .map(|d| d.body["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, (1..=20).collect::<Vec<_>>(), "in order");
    for (i, delivery) in accepted.iter().enumerate() {
        let body = &delivery.body;
        assert_eq!(
            body["id"], delivery.id,
            "webhook-id is the notification's id"
        );
        assert_eq!(body["channel"], "webhook");
        assert_eq!(body["key"], format!("order-{i}-shipped"));
        assert_eq!(body["data"]["orderId"], i.to_string());
        assert_eq!(
            body["data"]["customerId"],
            format!("c{}", i % 7),
            "customer kept in state"
        );
    }
    {
        let received = receiver.received.lock().unwrap();
        assert_eq!(received.bad_signatures, 0);
        assert!(
            received.attempts.values().all(|&a| a == 4),
            "{:?}",
            received.attempts
        );
    }
    let status = server
        .wait_plugin("ship", "all delivered", |s| {
            s["notifications"]["delivered"] == 20
        })
        .await;
    let n = &status["notifications"];
    assert_eq!(n["emitted"], 20);
    assert_eq!(n["pending"], 0);
    assert_eq!(n["failed_attempts"], 60);
    assert_eq!(n["dead_letters"], 0);

    // The pull API pages through the same notifications.
    let page = server
        .get_ok("/plugins/ship/notifications?after=15&limit=3")
        .await;
    let keys: Vec<&str> = page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["order-15-shipped", "order-16-shipped", "order-17-shipped"]
    );
    assert_eq!(page["next"], 18);

    // The live feed caught up from 0 and carried all of them.
    let mut feed = live.bytes_stream().eventsource();
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let event = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("live feed stalled")
            .expect("feed ended")
            .expect("feed error");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(event.id, data["sequence"].to_string());
        seen.push(data["key"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen[0], "order-0-shipped");
    assert_eq!(seen[19], "order-19-shipped");

    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("eventfold_notifications_delivered_total{plugin=\"ship\"} 20"),
        "{metrics}"
    );
    assert!(
        metrics.contains("eventfold_notifications_pending{plugin=\"ship\"} 0"),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"));
}

#[tokio::test]
async fn kill_9_during_deliveries_loses_none() {
    let dir = data_dir();
    let mut server = Server::start_in(dir.path(), &[]).await;
    deploy_notifier(&server).await;
    let receiver = Receiver::start(0).await;
    // Slow enough that deliveries are still in flight when the server dies.
    set_webhook(
        &server,
        "ship",
        json!({"url": receiver.url, "secret": SECRET, "max_per_second": 40}),
    )
    .await;
    ship_orders(&server, 0..60).await;
    receiver.wait_for(5).await;
    server.kill9();
    let before = receiver.distinct_ids().len();
    assert!(
        before < 60,
        "the kill came too late to test anything ({before})"
    );

    let server = Server::start_in(dir.path(), &[]).await;
    receiver.wait_for(60).await;
    let expected: BTreeSet<String> = (0..60).map(|i| format!("order-{i}-shipped")).collect();
    let keys: BTreeSet<String> = receiver
        .accepted()
        .iter()
        .map(|d| d.body["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        keys, expected,
        "every notification delivered after the restart"
    );
    let status = server
        .wait_plugin("ship", "all delivered", |s| {
            s["notifications"]["pending"] == 0
        })
        .await;
    assert_eq!(
        status["notifications"]["emitted"], 60,
        "nothing accepted twice"
    );
}

#[tokio::test]
async fn a_receiver_down_for_good_fills_dead_letters_and_a_retry_delivers() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;
    deploy_notifier(&server).await;
    // A port nobody listens on (yet).
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    set_webhook(
        &server,
        "ship",
        json!({"url": format!("http://{addr}/hook"), "secret": SECRET, "backoff_ms": 5, "max_attempts": 3, "timeout_ms": 2000}),
    )
    .await;
    ship_orders(&server, 0..3).await;
    let status = server
        .wait_plugin("ship", "dead letters", |s| {
            s["notifications"]["dead_letters"] == 3
        })
        .await;
    assert_eq!(status["notifications"]["failed_attempts"], 9);
    assert_eq!(status["notifications"]["pending"], 0);
    let (status, dead) = server.get("/plugins/ship/dead-letters").await;
    assert_eq!(status, StatusCode::OK);
    let dead = dead["dead_letters"].as_array().unwrap().clone();
    assert_eq!(dead.len(), 3);
    for letter in &dead {
        assert_eq!(letter["attempts"], 3);
        let error = letter["error"].as_str().unwrap().to_lowercase();
        assert!(error.contains("connect"), "the cause is named: {letter}");
    }
    let (status, body) = server
        .post("/plugins/ship/dead-letters/999/retry", &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // The receiver comes back; the operator retries each dead letter.
    let receiver = Receiver::start_on(addr, 0).await;
    for letter in &dead {
        let id = letter["id"].as_u64().unwrap();
        let (status, body) = server
            .post(
                &format!("/plugins/ship/dead-letters/{id}/retry"),
                &json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let listed = server.get_ok("/plugins/ship/dead-letters").await;
    for letter in listed["dead_letters"].as_array().unwrap() {
        // A dead letter until its retry delivers it; marked meanwhile.
        assert_eq!(letter["retrying"], true, "{letter}");
    }
    receiver.wait_for(3).await;
    let status = server
        .wait_plugin("ship", "no dead letters", |s| {
            s["notifications"]["dead_letters"] == 0
        })
        .await;
    assert_eq!(status["notifications"]["delivered"], 3);
}

#[tokio::test]
async fn replaying_a_notifier_sends_nothing_new() {
    let dir = data_dir();
    // Delivered notifications are deleted past the newest 3: their keys
    // stay, so the replay still sends none of them again.
    let server = Server::start_in(dir.path(), &["--keep-delivered", "3"]).await;
    deploy_notifier(&server).await;
    let receiver = Receiver::start(0).await;
    set_webhook(
        &server,
        "ship",
        json!({"url": receiver.url, "secret": SECRET}),
    )
    .await;
    ship_orders(&server, 0..10).await;
    receiver.wait_for(10).await;
    // Half-way orders: placed before the replay, shipped after it.
    let (status, _) = server
        .append(
            "order-10",
            json!("no_stream"),
            json!([{"type": "OrderPlaced", "data": {"customerId": "c3"}}]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, body) = server.post("/plugins/ship/replay", &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    server.wait_caught_up("ship").await;
    let (status, _) = server
        .append(
            "order-10",
            json!(0),
            json!([{"type": "OrderShipped", "data": {}}]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    receiver.wait_for(11).await;

    let accepted = receiver.accepted();
    assert_eq!(
        accepted.len(),
        11,
        "history was not sent again: {accepted:?}"
    );
    let last = &accepted[10].body;
    assert_eq!(last["key"], "order-10-shipped");
    assert_eq!(
        last["data"]["customerId"], "c3",
        "the rebuilt state knew the customer"
    );
    let status = server.get_ok("/plugins/ship").await;
    assert_eq!(status["notifications"]["emitted"], 11);
    let kept = || async {
        let page = server.get_ok("/plugins/ship/notifications").await;
        let sequences: Vec<u64> = page["notifications"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["sequence"].as_u64())
            .collect();
        sequences == [9, 10, 11]
    };
    assert!(
        wait_until(Duration::from_secs(10), kept).await,
        "the mailbox keeps the newest 3 delivered notifications"
    );
}

#[tokio::test]
async fn projections_cannot_emit_and_notifier_misuse_gets_clear_errors() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;

    // A component that imports notify but says it is a projection.
    let (status, body) = server.deploy("sneaky", SNEAKY_PROJECTION).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may not import notify"),
        "{body}"
    );

    // A notifier whose payloads are over the cap fails at that event.
    let (status, body) = server.deploy("oversize", OVERSIZE_NOTIFIER).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = server
        .append("any-1", json!("any"), json!([{"type": "Big", "data": {}}]))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let status = server
        .wait_plugin("oversize", "failed", |s| s["state"] == "failed")
        .await;
    let message = status["last_error"]["message"].as_str().unwrap();
    assert!(message.contains("over the limit"), "{status}");
    assert_eq!(status["last_error"]["position"], 1);
    assert_eq!(
        status["notifications"]["emitted"], 0,
        "nothing of the failed batch got out"
    );

    // Webhooks belong to notifiers, and bad settings are refused.
    server.deploy_all(&[("counter", COUNTER)]).await;
    let put = |plugin: &'static str, body: Value| {
        let request = server
            .request(reqwest::Method::PUT, &format!("/plugins/{plugin}/webhook"))
            .json(&body);
        async move { crate::harness::into_json(request.send().await).await }
    };
    let good = json!({"url": "http://127.0.0.1:9/hook", "secret": SECRET});
    let (status, body) = put("counter", good.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = put("nobody", good.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    for bad in [
        json!({"url": "http://127.0.0.1:9/hook", "secret": "plain"}),
        json!({"url": "not a url", "secret": SECRET}),
        json!({"url": "http://127.0.0.1:9/hook", "secret": SECRET, "max_attempts": 0}),
        json!({"url": "http://127.0.0.1:9/hook", "secret": SECRET, "surprise": 1}),
    ] {
        let (status, body) = put("oversize", bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {body}");
        assert!(body["error"]["message"].is_string());
    }
    let body = server.get_ok("/plugins/oversize/webhook").await;
    assert_eq!(
        body["webhook"],
        Value::Null,
        "nothing was set by the refused requests"
    );

    // A plugin's kind cannot change under its name.
    let (status, body) = server.deploy("counter", SHIPMENT_NOTIFIER).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

/// `openssl s_server` with a fresh self-signed certificate, killed on drop.
struct TlsServer {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl TlsServer {
    fn start() -> TlsServer {
        let dir = data_dir();
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl is installed");
        assert!(made.status.success(), "{made:?}");
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = std::process::Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                "-www",
                "-accept",
                &addr.port().to_string(),
                "-cert",
            ])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server");
        TlsServer {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn an_https_webhook_checks_the_receivers_certificate() {
    let tls = TlsServer::start();
    let listening = wait_until(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(tls.addr).await.is_ok()
    })
    .await;
    assert!(listening, "s_server did not start");
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;
    deploy_notifier(&server).await;
    set_webhook(
        &server,
        "ship",
        json!({"url": format!("https://{}/hook", tls.addr), "secret": SECRET, "max_attempts": 1}),
    )
    .await;
    ship_orders(&server, 0..1).await;
    server
        .wait_plugin("ship", "a dead letter", |s| {
            s["notifications"]["dead_letters"] == 1
        })
        .await;
    let dead = server.get_ok("/plugins/ship/dead-letters").await;
    let error = dead["dead_letters"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    // TLS was spoken, and a self-signed certificate is not trusted.
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

#[tokio::test]
async fn a_removed_notifier_deployed_again_sends_nothing_twice_unless_purged() {
    let dir = data_dir();
    let server = Server::start_in(dir.path(), &[]).await;
    deploy_notifier(&server).await;
    let receiver = Receiver::start(0).await;
    set_webhook(
        &server,
        "ship",
        json!({"url": receiver.url, "secret": SECRET}),
    )
    .await;
    ship_orders(&server, 0..5).await;
    receiver.wait_for(5).await;

    // Removed and deployed again: the kept mailbox knows every key, and
    // its webhook setting, so only the new order is sent.
    let removed = server.request(reqwest::Method::DELETE, "/plugins/ship");
    let (status, body) = crate::harness::into_json(removed.send().await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["purged"], false);
    deploy_notifier(&server).await;
    server.wait_caught_up("ship").await;
    ship_orders(&server, 5..6).await;
    receiver.wait_for(6).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(receiver.accepted().len(), 6, "history was sent again");

    // Purged: a notifier deployed again starts from nothing (and has no
    // webhook until one is set), so history goes out again.
    let purged = server.request(reqwest::Method::DELETE, "/plugins/ship?purge=true");
    let (status, body) = crate::harness::into_json(purged.send().await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["purged"], true);
    deploy_notifier(&server).await;
    let view = server.get_ok("/plugins/ship/webhook").await;
    assert!(view["webhook"].is_null(), "{view}");
    set_webhook(
        &server,
        "ship",
        json!({"url": receiver.url, "secret": SECRET}),
    )
    .await;
    // The same keys, so the same webhook ids: counted as deliveries.
    let resent = wait_until(Duration::from_secs(60), || async {
        receiver.accepted().len() >= 12
    })
    .await;
    assert!(resent, "history was not sent again after the purge");
}
