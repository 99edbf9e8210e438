//! Power loss: the data directory sits on LazyFS (`lazyfs/`), which keeps
//! unsynced writes in memory and drops them, or tears them, when the power
//! is cut. Five times, under load (appends from several writers, a deploy,
//! a replay and its swap, a remove, webhook deliveries), the server is
//! killed, the power cut, and the server started again. After each cut the
//! test checks what the acknowledgements promised, not what happened to
//! survive:
//!
//! - every acknowledged append is at its position, the log has no gaps,
//!   and every stream's versions run 0..n;
//! - every acknowledged deploy, remove, replay and swap is in effect, and
//!   every plugin present loads and runs;
//! - projections count each event exactly once, and the notifier accepted
//!   each key once;
//! - every notification of an acknowledged order is delivered, and a key
//!   is delivered again only after a cut that followed its delivery
//!   (docs/design.md#dispatcher: outcomes are synced when the dispatcher
//!   goes idle, so a cut may send again what was just delivered), at most
//!   a page of them (256) per cut.
//!
//! Needs root and /dev/fuse, as the LazyFS crate's own tests do.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode as AxumStatus;
use eventfold_lazyfs::{CutMode, LazyFs};
use eventfold_plugin_builds::{COUNTER, SHIPMENT_NOTIFIER};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, data_dir, wait_until};

mod checks;

/// The cuts, in order.
const CUTS: [CutMode; 5] = [
    CutMode::Clean,
    CutMode::Torn { seed: 11 },
    CutMode::Torn { seed: 12 },
    CutMode::Clean,
    CutMode::Torn { seed: 13 },
];

/// Concurrent appenders.
const WRITERS: usize = 4;

/// `whsec_` + base64 of 24 bytes, as Standard Webhooks writes secrets.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The dispatcher's page: the most a cut may send again (see the top).
const REDELIVERY_WINDOW: usize = 256;

/// One acknowledged event: its position, stream, version and id.
#[derive(Debug, Clone)]
struct Ack {
    position: u64,
    stream: String,
    version: u64,
    id: String,
}

/// Everything the server acknowledged, over all the cuts.
#[derive(Debug, Default, Clone)]
struct Ledger {
    acks: Vec<Ack>,
    /// Notification keys of acknowledged `OrderShipped` events.
    shipped: BTreeSet<String>,
    /// Plugins whose deploy was answered 201.
    deployed: BTreeSet<String>,
    /// Plugins a remove was sent for (it may have happened, answered or not).
    removing: BTreeSet<String>,
    /// Plugins whose remove was answered 200.
    removed: BTreeSet<String>,
    /// The generation of `counter`'s last acknowledged replay (202).
    replayed: u64,
    /// The generation `counter` was seen serving once that replay swapped.
    swapped: u64,
    /// How many replays were acknowledged (a generation number may come
    /// again after a replay is lost).
    replays: usize,
    /// How many swaps were seen.
    swaps: usize,
    /// Answers that were neither a success nor the server going away.
    refusals: Vec<String>,
}

/// The ledger, and a signal each time it changes: the kill waits on it, so
/// that it comes the moment an acknowledgement arrives.
#[derive(Default)]
struct Book {
    ledger: Mutex<Ledger>,
    changed: tokio::sync::Notify,
}

impl Book {
    fn update<T>(&self, change: impl FnOnce(&mut Ledger) -> T) -> T {
        let out = change(&mut self.ledger.lock().unwrap());
        self.changed.notify_waiters();
        out
    }

    fn snapshot(&self) -> Ledger {
        self.ledger.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_power_cuts() {
    let started = Instant::now();
    let mountpoint = data_dir();
    let mut fs = LazyFs::mount(mountpoint.path()).expect("mount LazyFS (root and /dev/fuse)");
    let dir = fs.path().to_owned();
    let receiver = Receiver::start().await;
    let book = Arc::new(Book::default());
    let mut server = Server::start_in(&dir, &[]).await;
    server
        .deploy_all(&[("counter", COUNTER), ("ship", SHIPMENT_NOTIFIER)])
        .await;
    set_webhook(&server, &receiver.url).await;
    book.update(|l| l.deployed = ["counter".into(), "ship".into()].into());

    for (round, mode) in CUTS.into_iter().enumerate() {
        load_and_kill(&mut server, round, &book).await;
        let server_log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        // A delivery the server sent just before it died is still counted
        // in the epoch before the cut.
        tokio::time::sleep(Duration::from_millis(100)).await;
        receiver.epoch.fetch_add(1, Ordering::SeqCst);
        let report = fs.power_cut(mode).expect("power cut");
        eprintln!("cut {round} ({mode:?}): {report}");
        let log_start = std::fs::metadata(dir.join("server.log")).map_or(0, |m| m.len());
        server = Server::start_in(&dir, &[]).await;
        let acknowledged = book.update(|l| {
            let snapshot = l.clone();
            l.refusals.clear();
            snapshot
        });
        let problems = checks::check(&server, &acknowledged, &receiver, &dir, log_start).await;
        assert!(
            problems.is_empty(),
            "after cut {round} ({mode:?}; {report}):\n- {}\n\nledger: {}\n\n\
             server log before the cut (tail):\n{}",
            problems.join("\n- "),
            summary(&acknowledged),
            tail(&server_log, 40),
        );
        eprintln!("cut {round}: all checks hold ({})", summary(&acknowledged));
    }
    drop(server);
    eprintln!("{} cuts in {:.1?}", CUTS.len(), started.elapsed());
}

fn summary(ledger: &Ledger) -> String {
    format!(
        "{} events acknowledged, {} orders shipped, deployed {:?}, removed {:?}, \
         replayed generation {}, swapped to {}",
        ledger.acks.len(),
        ledger.shipped.len(),
        ledger.deployed,
        ledger.removed,
        ledger.replayed,
        ledger.swapped
    )
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs one round: writers append, the plugin operations start once the
/// load is on, and the server is killed when the round's moment comes.
async fn load_and_kill(server: &mut Server, round: usize, book: &Arc<Book>) {
    let url = server.url.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let writer = Writer {
                url: url.clone(),
                round,
                id: w,
            };
            tokio::spawn(writer.run(stop.clone(), appended.clone(), book.clone()))
        })
        .collect();
    let warm = wait_until(Duration::from_secs(20), || async {
        appended.load(Ordering::SeqCst) >= 50
    })
    .await;
    assert!(warm, "round {round}: the writers got nowhere");
    let ops = start_operations(&url, round, book);
    let moment = kill_moment(round, book).await;
    server.kill9();
    stop.store(true, Ordering::SeqCst);
    for task in writers.into_iter().chain(ops) {
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
    eprintln!(
        "round {round}: killed {moment}, {} appends acknowledged this round",
        appended.load(Ordering::SeqCst)
    );
}

/// Waits for the moment round `round` kills the server at, so that over
/// the rounds each operation is both in flight and just acknowledged at a
/// cut: the kill comes as soon as the acknowledgement is in.
async fn kill_moment(round: usize, book: &Book) -> &'static str {
    let before = book.snapshot();
    let what = match round % 5 {
        0 => "with the operations just sent",
        1 => "as the deploy was acknowledged",
        2 => "as the replay was acknowledged",
        3 => "as the swap was seen",
        _ => "as the remove was acknowledged",
    };
    let reached = |now: &Ledger| match round % 5 {
        0 => true,
        1 => now.deployed.contains(&extra(round)),
        2 => now.replays > before.replays,
        3 => now.swaps > before.swaps,
        _ => now.removed.contains(&extra(round - 1)),
    };
    if round.is_multiple_of(5) {
        // Long enough for the requests to reach the server.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let changed = book.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if reached(&book.ledger.lock().unwrap()) {
            return what;
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return "after 20 s: the moment never came";
        }
    }
}

/// The plugin deployed in round `round`, and removed in the next.
fn extra(round: usize) -> String {
    format!("extra-{round}")
}

/// One appender: alternately 1-3 events on its own stream, and an order
/// placed and shipped in one append (which `ship` notifies).
struct Writer {
    url: String,
    round: usize,
    id: usize,
}

impl Writer {
    async fn run(self, stop: Arc<AtomicBool>, appended: Arc<AtomicUsize>, book: Arc<Book>) {
        let client = reqwest::Client::new();
        for n in 0.. {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let (stream, events) = self.append(n);
            let ids: Vec<String> = events
                .iter()
                .map(|e| e["id"].as_str().unwrap_or("").to_owned())
                .collect();
            let sent = client
                .post(format!("{}/streams/{stream}", self.url))
                .json(&json!({ "events": events }))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let Ok(response) = sent else { return };
            let status = response.status();
            let Ok(body) = response.json::<Value>().await else {
                return;
            };
            if status != StatusCode::CREATED {
                let refusal = format!("append to {stream}: {status} {body}");
                book.update(|l| l.refusals.push(refusal));
                return;
            }
            book.update(|l| record(l, &stream, &ids, &body));
            appended.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The `n`th append of this writer: its stream and events.
    fn append(&self, n: usize) -> (String, Vec<Value>) {
        let id = || uuid::Uuid::now_v7().to_string();
        if n.is_multiple_of(2) {
            let events = (0..1 + n % 3)
                .map(|i| json!({"type": "Written", "id": id(), "data": {"n": n, "i": i}}))
                .collect();
            return (format!("pl-{}", self.id), events);
        }
        let order = format!("order-r{}w{}n{n}", self.round, self.id);
        let events = vec![
            json!({"type": "OrderPlaced", "id": id(), "data": {"customerId": format!("c{}", n % 7), "amount": 10}}),
            json!({"type": "OrderShipped", "id": id(), "data": {"carrier": "ups"}}),
        ];
        (order, events)
    }
}

/// Records an acknowledged append of `ids` to `stream`.
fn record(ledger: &mut Ledger, stream: &str, ids: &[String], body: &Value) {
    let first = body["first_position"].as_u64().unwrap_or(0);
    let next_version = body["next_expected_version"].as_u64().unwrap_or(0);
    let n = ids.len() as u64;
    for (i, id) in ids.iter().enumerate() {
        ledger.acks.push(Ack {
            position: first + i as u64,
            stream: stream.to_owned(),
            version: next_version + 1 + i as u64 - n,
            id: id.clone(),
        });
    }
    if let Some(order) = stream.strip_prefix("order-") {
        ledger.shipped.insert(format!("order-{order}-shipped"));
    }
}

/// Starts the round's plugin operations: deploy `extra-<round>`, remove
/// the previous round's, replay `counter` and follow it to its swap.
fn start_operations(url: &str, round: usize, book: &Arc<Book>) -> Vec<tokio::task::JoinHandle<()>> {
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    let (c, u, b) = (client.clone(), url.to_owned(), book.clone());
    tasks.push(tokio::spawn(async move {
        let wasm = std::fs::read(COUNTER).expect("counter.wasm");
        let sent = c
            .put(format!("{u}/plugins/{}", extra(round)))
            .header("content-type", "application/wasm")
            .body(wasm)
            .send()
            .await;
        answered(&b, "deploy", sent, StatusCode::CREATED, |l, _| {
            l.deployed.insert(extra(round));
        })
        .await;
    }));
    if round > 0 {
        let (c, u, b) = (client.clone(), url.to_owned(), book.clone());
        tasks.push(tokio::spawn(async move {
            let name = extra(round - 1);
            b.update(|l| l.removing.insert(name.clone()));
            let sent = c.delete(format!("{u}/plugins/{name}")).send().await;
            // 404 is the answer when its deploy never finished before a cut.
            if let Ok(response) = &sent
                && response.status() == StatusCode::NOT_FOUND
                && !b.snapshot().deployed.contains(&name)
            {
                return;
            }
            answered(&b, "remove", sent, StatusCode::OK, |l, _| {
                l.removed.insert(name.clone());
            })
            .await;
        }));
    }
    tasks.push(tokio::spawn(replay_and_swap(
        client,
        url.to_owned(),
        book.clone(),
    )));
    tasks
}

/// Records a success with `on_success`; an answer other than `expected`
/// (not the server going away) is a refusal. The answer's body, if any.
async fn answered(
    book: &Arc<Book>,
    what: &str,
    sent: reqwest::Result<reqwest::Response>,
    expected: StatusCode,
    on_success: impl FnOnce(&mut Ledger, &Value),
) -> Option<Value> {
    let response = sent.ok()?;
    let status = response.status();
    let body: Value = response.json().await.ok()?;
    book.update(|ledger| {
        if status == expected {
            on_success(ledger, &body);
            Some(body)
        } else {
            ledger.refusals.push(format!("{what}: {status} {body}"));
            None
        }
    })
}

/// Replays `counter`, then follows its status until the new generation serves.
async fn replay_and_swap(client: reqwest::Client, url: String, book: Arc<Book>) {
    let sent = client
        .post(format!("{url}/plugins/counter/replay"))
        .send()
        .await;
    let generation = |body: &Value| body["replay"]["generation"].as_u64().unwrap_or(0);
    let replayed = answered(&book, "replay", sent, StatusCode::ACCEPTED, |l, body| {
        l.replayed = generation(body);
        l.replays += 1;
    });
    let Some(body) = replayed.await else {
        return;
    };
    let target = generation(&body);
    loop {
        let Ok(response) = client.get(format!("{url}/plugins/counter")).send().await else {
            return;
        };
        let Ok(status) = response.json::<Value>().await else {
            return;
        };
        if status["generation"].as_u64() >= Some(target) && status["rebuild"].is_null() {
            book.update(|l| {
                l.swapped = target;
                l.swaps += 1;
            });
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn set_webhook(server: &Server, url: &str) {
    let settings = json!({"url": url, "secret": SECRET, "backoff_ms": 5});
    let response = server
        .request(reqwest::Method::PUT, "/plugins/ship/webhook")
        .json(&settings)
        .send()
        .await;
    let (status, body) = crate::harness::into_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// What the receiver got: each delivery's key, in arrival order, with the
/// epoch (the number of cuts before it) it arrived in.
struct Receiver {
    url: String,
    epoch: Arc<AtomicUsize>,
    deliveries: Arc<Mutex<Vec<(String, usize)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let epoch = Arc::new(AtomicUsize::new(0));
        let deliveries: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
        let (e, d) = (epoch.clone(), deliveries.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: Bytes| {
                let (e, d) = (e.clone(), d.clone());
                async move {
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let key = body["key"].as_str().unwrap_or("").to_owned();
                    d.lock().unwrap().push((key, e.load(Ordering::SeqCst)));
                    AxumStatus::NO_CONTENT
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url,
            epoch,
            deliveries,
            task,
        }
    }

    /// Each key's deliveries, as the epochs they arrived in.
    fn by_key(&self) -> BTreeMap<String, Vec<usize>> {
        let mut keys: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (key, epoch) in self.deliveries.lock().unwrap().iter() {
            keys.entry(key.clone()).or_default().push(*epoch);
        }
        keys
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
