//! Failover of the JetStream log (issue 18). Eight writers append through
//! one eventfold server whose log is an R3 stream on a cluster of the
//! test's own, first while the stream's leader is killed with `kill -9` and
//! restarted, then while eventfold itself is killed with `kill -9` and
//! restarted on the same data directory and stream.
//!
//! Every event carries an id chosen by its writer, so that a writer can
//! retry a request whose outcome it does not know (a 503, a connection cut
//! by the kill). What is asserted is what acknowledgements promised, never
//! how long anything took: every acknowledged event is in the log exactly
//! once, at the position it was acknowledged at; the log is gapless from 1,
//! each stream's versions are gapless from 0, the log holds nothing that
//! was not acknowledged and as many events as JetStream's stream; and the
//! writers saw only 201, 200 (a retry recognised) and 503 with
//! `Retry-After`: never a 500, nor a 409 for an expected version that an
//! acknowledgement gave them. The times are printed for the record, and a
//! failure quotes the stream's answers that led to it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::harness::backend::stream_name;
use crate::harness::{Cluster, Server, data_dir, wait_until};

/// Concurrent writers.
const WRITERS: usize = 8;
/// The eventfold stream every writer also appends to, with `"any"`.
const SHARED_STREAM: &str = "failover-shared";
/// The longest a writer waits before retrying, whatever `Retry-After` says.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long a writer keeps retrying its last request once told to stop.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

/// The scenario's phases; statuses and connection errors are counted per phase.
const PHASES: [&str; 5] = [
    "steady",
    "leader killed",
    "leader back",
    "eventfold killed",
    "eventfold back",
];
const STEADY: usize = 0;
const LEADER_KILLED: usize = 1;
const LEADER_BACK: usize = 2;
const EVENTFOLD_KILLED: usize = 3;
const EVENTFOLD_BACK: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_appends_survive_kill_9_of_the_stream_leader_and_of_eventfold() {
    let cluster = Cluster::start(3).await;
    let dir = data_dir();
    let stream = stream_name(dir.path());
    let args = cluster.serve_args(&stream, 3);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start_in(dir.path(), &args).await;

    // Round 1: the stream's leader dies under load and comes back.
    let shared = Shared::new(&server.url);
    let writers = start_writers(1, &shared);
    keep_writing(&shared, Instant::now(), Duration::from_secs(1), 200).await;
    let leader = cluster
        .wait_stream_leader(&stream, None, Duration::from_secs(10))
        .await;
    let killed = Instant::now();
    let killed_at = killed - shared.began;
    shared.phase.store(LEADER_KILLED, Ordering::SeqCst);
    cluster.kill9(leader);
    let new_leader = cluster
        .wait_stream_leader(&stream, Some(leader), Duration::from_secs(30))
        .await;
    let elected = killed.elapsed();
    // Five seconds of writing since the kill, and some on the new leader.
    keep_writing(&shared, killed, Duration::from_secs(5), 100).await;
    let restarting = Instant::now();
    cluster.restart(leader);
    cluster.wait_healthy().await;
    let healthy = restarting.elapsed();
    shared.phase.store(LEADER_BACK, Ordering::SeqCst);
    keep_writing(&shared, Instant::now(), Duration::from_millis(1500), 100).await;
    let mut records = stop_writers(&shared, writers).await;
    let figures = summary(&records, killed);
    let (length, problems) = check(&server, &cluster, &stream, &records).await;
    eprintln!(
        "jetstream failover, round 1: stream leader n{leader} killed {killed_at:.1?} into the \
         round, n{new_leader} elected {elected:.1?} later, n{leader} restarted and healthy \
         again {healthy:.1?} after that; {figures}; the log holds {length} events"
    );
    assert!(
        problems.is_empty(),
        "round 1:\n{}\n{}",
        problems.join("\n"),
        warnings(dir.path())
    );

    // Round 2: eventfold itself dies under load and starts again on the
    // same data directory and stream, on a new port.
    let shared = Shared::new(&server.url);
    let writers = start_writers(2, &shared);
    keep_writing(&shared, Instant::now(), Duration::from_secs(1), 200).await;
    let killed = Instant::now();
    let killed_at = killed - shared.began;
    shared.phase.store(EVENTFOLD_KILLED, Ordering::SeqCst);
    server.kill9();
    let server = Server::start_in(dir.path(), &args).await;
    let restarted = killed.elapsed();
    *shared.url.lock().expect("url lock") = server.url.clone();
    shared.phase.store(EVENTFOLD_BACK, Ordering::SeqCst);
    keep_writing(&shared, Instant::now(), Duration::from_secs(2), 200).await;
    let round = stop_writers(&shared, writers).await;
    let figures = summary(&round, killed);
    records.extend(round);
    let (length, problems) = check(&server, &cluster, &stream, &records).await;
    eprintln!(
        "jetstream failover, round 2: eventfold killed {killed_at:.1?} into the round, \
         answering again {restarted:.1?} later; {figures}; the log holds {length} events, \
         rounds 1 and 2"
    );
    assert!(
        problems.is_empty(),
        "round 2:\n{}\n{}",
        problems.join("\n"),
        warnings(dir.path())
    );
}

/// What the test and its writers share during a round.
struct Shared {
    /// eventfold's base URL: it changes when eventfold starts again.
    url: Mutex<String>,
    /// The index in [`PHASES`] of the phase the scenario is in.
    phase: AtomicUsize,
    /// Set to make the writers finish their request and return.
    stop: AtomicBool,
    /// Requests acknowledged so far, for [`keep_writing`].
    acked: AtomicUsize,
    /// When the round began, for the writers' histories.
    began: Instant,
}

impl Shared {
    /// A round beginning now, in phase [`STEADY`], on eventfold at `url`.
    fn new(url: &str) -> Arc<Shared> {
        Arc::new(Shared {
            url: Mutex::new(url.to_owned()),
            phase: AtomicUsize::new(STEADY),
            stop: AtomicBool::new(false),
            acked: AtomicUsize::new(0),
            began: Instant::now(),
        })
    }
}

/// One event as its append's acknowledgement placed it.
#[derive(Debug)]
struct Ack {
    id: Uuid,
    stream: String,
    position: u64,
    version: u64,
}

/// What one writer sent and saw.
#[derive(Default)]
struct Record {
    /// Every event id the writer sent.
    sent: Vec<Uuid>,
    /// Every acknowledged event.
    acks: Vec<Ack>,
    /// Per acknowledged request: when its last attempt started, and when
    /// the acknowledgement came.
    ack_times: Vec<(Instant, Instant)>,
    /// Acknowledgements that were retries recognised (200, `duplicate`).
    duplicates: usize,
    /// Answers per phase and status.
    statuses: BTreeMap<(usize, u16), usize>,
    /// The error codes of 503 answers.
    unavailable: BTreeMap<String, usize>,
    /// Failed connections and cut responses, per phase.
    connection_errors: BTreeMap<usize, usize>,
    /// The ids of requests given up without an acknowledgement.
    unresolved: Vec<Vec<Uuid>>,
    /// Every answer, per stream: when (since the round began), what was
    /// sent and what came back; quoted with an anomaly.
    history: HashMap<String, Vec<String>>,
    /// Everything the server should not have done, precisely.
    anomalies: Vec<String>,
}

impl Record {
    /// Records something the server should not have done on `stream`, with
    /// the stream's last answers before it.
    fn anomaly(&mut self, stream: &str, what: String) {
        let history = self.history.get(stream).map_or(&[][..], Vec::as_slice);
        let recent = &history[history.len().saturating_sub(8)..];
        self.anomalies.push(format!(
            "{what}\n    answers on {stream} until then:\n      {}",
            recent.join("\n      ")
        ));
    }

    /// Notes one answer on `stream`.
    fn note(&mut self, shared: &Shared, stream: &str, what: String) {
        let at = shared.began.elapsed();
        let phase = PHASES[shared.phase.load(Ordering::SeqCst)];
        self.history
            .entry(stream.to_owned())
            .or_default()
            .push(format!("{at:.3?} ({phase}) {what}"));
    }
}

/// Starts the [`WRITERS`] writers of round `round`.
fn start_writers(round: usize, shared: &Arc<Shared>) -> Vec<JoinHandle<Record>> {
    (0..WRITERS)
        .map(|writer| tokio::spawn(write(round, writer, shared.clone())))
        .collect()
}

/// Tells the writers to stop, and collects what each sent and saw once it
/// has its last request answered.
async fn stop_writers(shared: &Shared, writers: Vec<JoinHandle<Record>>) -> Vec<Record> {
    shared.stop.store(true, Ordering::SeqCst);
    let mut records = Vec::new();
    for writer in writers {
        records.push(writer.await.expect("a writer panicked"));
    }
    records
}

/// Lets the writers run until `duration` after `since`, and until they
/// have had `requests` more requests acknowledged (up to a minute more:
/// they must get through, whatever happened).
async fn keep_writing(shared: &Shared, since: Instant, duration: Duration, requests: usize) {
    let target = shared.acked.load(Ordering::SeqCst) + requests;
    let progressed = wait_until(duration + Duration::from_secs(60), || async {
        since.elapsed() >= duration && shared.acked.load(Ordering::SeqCst) >= target
    })
    .await;
    let acked = shared.acked.load(Ordering::SeqCst);
    assert!(
        progressed,
        "the writers got {} of {requests} requests acknowledged in the phase {:?}",
        requests + acked - target,
        PHASES[shared.phase.load(Ordering::SeqCst)]
    );
}

/// One writer: appends of 1 to 3 events until told to stop, three in four
/// to its own two streams with exact expected versions and one in four to
/// [`SHARED_STREAM`] with `"any"`; each request retried until acknowledged.
async fn write(round: usize, writer: usize, shared: Arc<Shared>) -> Record {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("an HTTP client");
    let mut record = Record::default();
    let mut versions: [Option<u64>; 2] = [None, None];
    let mut k = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let own = (k % 4 != 3).then_some(k % 2);
        let (stream, expected) = match own {
            Some(s) => (
                format!("failover-r{round}w{writer}-{s}"),
                versions[s].map_or(json!("no_stream"), Value::from),
            ),
            None => (SHARED_STREAM.to_owned(), json!("any")),
        };
        let count = [1, 3, 1, 2, 1][k % 5];
        let ids: Vec<Uuid> = (0..count)
            .map(|i| match (k + i) % 3 {
                0 => Uuid::new_v4(),
                _ => Uuid::now_v7(),
            })
            .collect();
        record.sent.extend(&ids);
        let events: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                json!({"type": "Written", "id": id, "data": {"round": round, "writer": writer, "k": k, "i": i}})
            })
            .collect();
        let body = json!({ "expected_version": expected, "events": events });
        let Some((status, outcome)) = append(&client, &shared, &mut record, &stream, &body).await
        else {
            record.unresolved.push(ids);
            return record;
        };
        let request = format!("POST /streams/{stream} {body}");
        let numbers = (
            outcome["first_position"].as_u64(),
            outcome["last_position"].as_u64(),
            outcome["next_expected_version"].as_u64(),
        );
        let (Some(first), Some(last), Some(next)) = numbers else {
            record.anomaly(&stream, format!("{request}: answered {status} {outcome}"));
            return record;
        };
        let count = count as u64;
        let first_version = (next + 1).checked_sub(count);
        let expected_first = own.map(|s| versions[s].map_or(0, |v| v + 1));
        if last + 1 != first + count
            || first_version.is_none()
            || expected_first.is_some_and(|v| first_version != Some(v))
            || (status == StatusCode::OK) != (outcome["duplicate"] == true)
        {
            record.anomaly(&stream, format!("{request}: answered {status} {outcome}"));
        }
        for (i, id) in ids.into_iter().enumerate() {
            record.acks.push(Ack {
                id,
                stream: stream.clone(),
                position: first + i as u64,
                version: first_version.unwrap_or(0) + i as u64,
            });
        }
        if let Some(s) = own {
            versions[s] = Some(next);
        }
        record.duplicates += usize::from(status == StatusCode::OK);
        shared.acked.fetch_add(1, Ordering::SeqCst);
        k += 1;
    }
    record
}

/// Sends one append until it is acknowledged (201 or 200): the status and
/// body. Retries after a 503 (pausing as `Retry-After` says, briefly), a
/// 5xx or a failed connection, since the ids make a retry safe; gives up on
/// any other answer, or once stopped and still unanswered after
/// [`SETTLE_WITHIN`].
async fn append(
    client: &reqwest::Client,
    shared: &Shared,
    record: &mut Record,
    stream: &str,
    body: &Value,
) -> Option<(StatusCode, Value)> {
    let request = format!("POST /streams/{stream} {body}");
    let sent = format!(
        "expected {} ids {}",
        body["expected_version"],
        body["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["id"].as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut settle_by = None;
    loop {
        if shared.stop.load(Ordering::SeqCst)
            && Instant::now() > *settle_by.get_or_insert(Instant::now() + SETTLE_WITHIN)
        {
            let what =
                format!("{request}: no acknowledgement within {SETTLE_WITHIN:?} of the stop");
            record.anomaly(stream, what);
            return None;
        }
        let url = shared.url.lock().expect("url lock").clone();
        let started = Instant::now();
        let answer = match client
            .post(format!("{url}/streams/{stream}"))
            .json(body)
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                response
                    .text()
                    .await
                    .map(|text| (status, retry_after, text))
            }
            Err(e) => Err(e),
        };
        let phase = shared.phase.load(Ordering::SeqCst);
        let (status, retry_after, text) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                record.note(shared, stream, format!("{sent} -> no answer: {e}"));
                *record.connection_errors.entry(phase).or_default() += 1;
                // Expected only once eventfold has been killed.
                if phase < EVENTFOLD_KILLED {
                    let what = format!("{request} in phase {:?}: no answer: {e:?}", PHASES[phase]);
                    record.anomaly(stream, what);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let retry = retry_after.map_or(String::new(), |s| format!(" (Retry-After: {s})"));
        record.note(shared, stream, format!("{sent} -> {status}{retry} {text}"));
        *record.statuses.entry((phase, status.as_u16())).or_default() += 1;
        let json = serde_json::from_str::<Value>(&text);
        let what = format!(
            "{request} in phase {:?}: answered {status}{retry}: {text}",
            PHASES[phase]
        );
        match status {
            StatusCode::CREATED | StatusCode::OK => match json {
                Ok(outcome) => {
                    record.ack_times.push((started, Instant::now()));
                    return Some((status, outcome));
                }
                Err(_) => {
                    record.anomaly(stream, what);
                    return None;
                }
            },
            StatusCode::SERVICE_UNAVAILABLE => {
                let code = json.map_or_else(
                    |_| format!("not JSON: {text}"),
                    |b| b["error"]["code"].as_str().unwrap_or("no code").to_owned(),
                );
                *record.unavailable.entry(code).or_default() += 1;
                match retry_after {
                    Some(seconds) => {
                        tokio::time::sleep(Duration::from_secs(seconds).min(RETRY_PAUSE)).await
                    }
                    None => {
                        record.anomaly(stream, what);
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
            status if status.is_server_error() => {
                // Not what a client should see, but the append may have
                // landed: retrying it keeps the other checks meaningful.
                record.anomaly(stream, what);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            _ => {
                // What the stream looks like right after, for the record.
                let after = client
                    .get(format!("{url}/streams/{stream}?direction=backward&limit=3"))
                    .send()
                    .await;
                let after = match after {
                    Ok(response) => format!(
                        "{} {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    ),
                    Err(e) => format!("no answer: {e}"),
                };
                record.note(
                    shared,
                    stream,
                    format!("GET /streams/{stream}?direction=backward&limit=3 -> {after}"),
                );
                record.anomaly(stream, what);
                return None;
            }
        }
    }
}

/// Checks the whole log against what the writers of every round so far
/// sent and were acknowledged; the log's length and every problem found
/// (the writers' anomalies first).
async fn check(
    server: &Server,
    cluster: &Cluster,
    stream: &str,
    records: &[Record],
) -> (usize, Vec<String>) {
    let mut problems: Vec<String> = records
        .iter()
        .flat_map(|r| r.anomalies.iter().cloned())
        .collect();
    let log = read_log(server).await;
    if let Some((index, event)) = log
        .iter()
        .enumerate()
        .find(|(i, e)| e["position"].as_u64() != Some(*i as u64 + 1))
    {
        problems.push(format!(
            "the log is not gapless from 1: event {index} of the read is {event}"
        ));
    }
    let mut by_id: HashMap<Uuid, &Value> = HashMap::new();
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for event in &log {
        let Some(id) = event["id"].as_str().and_then(|id| Uuid::parse_str(id).ok()) else {
            problems.push(format!("an event without an id: {event}"));
            continue;
        };
        if let Some(first) = by_id.insert(id, event) {
            problems.push(format!("id {id} is in the log twice: {first} and {event}"));
        }
        let name = event["stream"].as_str().unwrap_or_default();
        let version = versions.entry(name).or_default();
        if event["version"].as_u64() != Some(*version) {
            problems.push(format!(
                "stream {name} should have version {version} next, the log holds {event}"
            ));
        }
        *version = event["version"].as_u64().unwrap_or(*version) + 1;
    }
    let by_position: HashMap<u64, &Value> = log
        .iter()
        .filter_map(|e| Some((e["position"].as_u64()?, e)))
        .collect();
    let acks = records.iter().flat_map(|r| &r.acks);
    for ack in acks.clone() {
        match by_position.get(&ack.position) {
            None => problems.push(format!("acknowledged {ack:?} is not in the log")),
            Some(event)
                if event["id"] != ack.id.to_string()
                    || event["stream"] != ack.stream
                    || event["version"] != ack.version =>
            {
                problems.push(format!("acknowledged {ack:?}, the log holds {event}"))
            }
            Some(_) => {}
        }
    }
    let acked: HashSet<Uuid> = acks.map(|a| a.id).collect();
    let sent: HashSet<Uuid> = records.iter().flat_map(|r| r.sent.clone()).collect();
    let unresolved: HashSet<Uuid> = records
        .iter()
        .flat_map(|r| r.unresolved.iter().flatten().copied())
        .collect();
    for (id, event) in &by_id {
        if !sent.contains(id) {
            problems.push(format!("no writer sent {event}"));
        } else if !acked.contains(id) && !unresolved.contains(id) {
            problems.push(format!("never acknowledged, yet in the log: {event}"));
        }
    }
    // The read stopped at eventfold's head: JetStream must hold no more.
    let (messages, last) = stream_state(cluster, stream).await;
    if (messages, last) != (log.len() as u64, log.len() as u64) {
        problems.push(format!(
            "the log reads {} events, JetStream's stream holds {messages} messages up to sequence {last}",
            log.len()
        ));
    }
    (log.len(), problems)
}

/// The whole global log, page by page; a page answered 503 is asked again
/// (for up to 30 s, as the cluster settles).
async fn read_log(server: &Server) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = 1;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let path = format!("/events?from={from}&limit=1000");
        let (status, page) = server.get(&path).await;
        if status == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline {
            eprintln!("GET {path} answered 503: {page}");
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        }
        assert_eq!(status, StatusCode::OK, "GET {path}: {page}");
        events.extend(page["events"].as_array().expect("events").iter().cloned());
        let next = page["next"].as_u64().expect("next");
        if next > page["head"].as_u64().expect("head") {
            return events;
        }
        from = next;
    }
}

/// The message count and last sequence of JetStream stream `stream`, as
/// its leader reports them.
async fn stream_state(cluster: &Cluster, stream: &str) -> (u64, u64) {
    let leader = cluster
        .wait_stream_leader(stream, None, Duration::from_secs(10))
        .await;
    let url = format!("{}/jsz?streams=true", cluster.monitor_url(leader));
    let jsz: Value = reqwest::get(&url)
        .await
        .and_then(|r| r.error_for_status())
        .expect("/jsz")
        .json()
        .await
        .expect("/jsz is JSON");
    let detail = jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|account| account["stream_detail"].as_array())
        .flatten()
        .find(|s| s["name"] == stream)
        .unwrap_or_else(|| panic!("no stream {stream} in {url}: {jsz}"));
    let state = &detail["state"];
    (
        state["messages"].as_u64().expect("messages"),
        state["last_seq"].as_u64().expect("last_seq"),
    )
}

/// The warnings and errors in eventfold's log (`server.log` in its data
/// directory), for a failure's message.
fn warnings(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    let shown = &lines[lines.len().saturating_sub(40)..];
    format!(
        "{} warnings and errors in server.log, the last {}:\n{}",
        lines.len(),
        shown.len(),
        shown.join("\n")
    )
}

/// The figures of one round, for the record; `killed`: when its kill happened.
fn summary(records: &[Record], killed: Instant) -> String {
    let requests: usize = records.iter().map(|r| r.ack_times.len()).sum();
    let events: usize = records.iter().map(|r| r.acks.len()).sum();
    let duplicates: usize = records.iter().map(|r| r.duplicates).sum();
    let mut unavailable: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_phase: BTreeMap<usize, BTreeMap<String, usize>> = BTreeMap::new();
    for record in records {
        for (code, n) in &record.unavailable {
            *unavailable.entry(code).or_default() += n;
        }
        for (&(phase, status), n) in &record.statuses {
            *by_phase
                .entry(phase)
                .or_default()
                .entry(status.to_string())
                .or_default() += n;
        }
        for (&phase, n) in &record.connection_errors {
            *by_phase
                .entry(phase)
                .or_default()
                .entry("no answer".into())
                .or_default() += n;
        }
    }
    let mut answered: Vec<Instant> = records
        .iter()
        .flat_map(|r| r.ack_times.iter().map(|&(_, at)| at))
        .collect();
    answered.sort();
    let longest_pause = answered
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let recovered = records
        .iter()
        .flat_map(|r| &r.ack_times)
        .filter(|&&(started, _)| started >= killed)
        .map(|&(_, at)| at - killed)
        .min();
    let phases: Vec<String> = by_phase
        .iter()
        .map(|(&phase, statuses)| format!("{}: {statuses:?}", PHASES[phase]))
        .collect();
    format!(
        "{WRITERS} writers, {requests} requests acknowledged ({duplicates} of them as \
         retries recognised, 200; {events} events), 503s {unavailable:?}; the first request \
         sent after the kill acknowledged {recovered:.1?} after it, longest pause between \
         acknowledgements {longest_pause:.1?}; answers by phase: {}",
        phases.join("; ")
    )
}
