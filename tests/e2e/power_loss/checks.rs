//! The checks after each cut and restart: what the acknowledgements in the
//! [`Ledger`] promised, against what the restarted server answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use super::{Ack, Ledger, REDELIVERY_WINDOW, Receiver, WRITERS};
use crate::harness::{Server, wait_until};

/// Every check after a restart; the problems found (empty: all hold).
/// `log_start` is where this start's lines begin in `server.log`.
pub(super) async fn check(
    server: &Server,
    ledger: &Ledger,
    receiver: &Receiver,
    dir: &Path,
    log_start: u64,
) -> Vec<String> {
    let mut problems = ledger.refusals.clone();
    let log = server.read_all().await;
    problems.extend(check_log(server, &log, ledger).await);
    problems.extend(check_plugins(server, ledger).await);
    problems.extend(check_projections(server, &log, ledger).await);
    problems.extend(check_notifications(server, &log, ledger, receiver).await);
    let server_log = std::fs::read(dir.join("server.log")).unwrap_or_default();
    let since_start = server_log.get(log_start as usize..).unwrap_or_default();
    for line in String::from_utf8_lossy(since_start).lines() {
        if line.contains("cannot restore plugin") || line.contains("panicked") {
            problems.push(format!("server log: {line}"));
        }
    }
    problems
}

/// The log: gapless, every acknowledged event where it was acknowledged,
/// each stream's versions 0..n, and the stream index agreeing.
async fn check_log(server: &Server, log: &[Value], ledger: &Ledger) -> Vec<String> {
    let mut problems = Vec::new();
    let positions: Vec<u64> = log
        .iter()
        .map(|e| e["position"].as_u64().unwrap_or(0))
        .collect();
    if positions != (1..=log.len() as u64).collect::<Vec<_>>() {
        problems.push(format!(
            "the log's {} positions are not 1..={}",
            log.len(),
            log.len()
        ));
    }
    let by_position: HashMap<u64, &Value> = log
        .iter()
        .map(|e| (e["position"].as_u64().unwrap_or(0), e))
        .collect();
    let lost: Vec<&Ack> = ledger
        .acks
        .iter()
        .filter(|ack| {
            by_position.get(&ack.position).is_none_or(|e| {
                e["stream"] != ack.stream.as_str()
                    || e["version"] != ack.version
                    || e["id"] != ack.id.as_str()
            })
        })
        .collect();
    if !lost.is_empty() {
        problems.push(format!(
            "{} of {} acknowledged events are not at their position (head {}), e.g. {:?}",
            lost.len(),
            ledger.acks.len(),
            log.len(),
            &lost[..lost.len().min(3)]
        ));
    }
    let mut versions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for event in log {
        let stream = event["stream"].as_str().unwrap_or("");
        versions
            .entry(stream)
            .or_default()
            .push(event["version"].as_u64().unwrap_or(u64::MAX));
    }
    for (stream, versions) in &versions {
        if *versions != (0..versions.len() as u64).collect::<Vec<_>>() {
            problems.push(format!("stream {stream} has versions {versions:?}"));
        }
    }
    for w in 0..WRITERS {
        let stream = format!("pl-{w}");
        // A stream with no events answers 404: no positions.
        let (_, page) = server.get(&format!("/streams/{stream}?limit=10000")).await;
        let read: Vec<u64> = page["events"].as_array().map_or(vec![], |events| {
            events
                .iter()
                .map(|e| e["position"].as_u64().unwrap_or(0))
                .collect()
        });
        let logged: Vec<u64> = log
            .iter()
            .filter(|e| e["stream"] == stream.as_str())
            .map(|e| e["position"].as_u64().unwrap_or(0))
            .collect();
        if read != logged {
            problems.push(format!(
                "reading {stream} gives positions {read:?}, the log {logged:?}"
            ));
        }
    }
    problems
}

/// Plugins: every acknowledged deploy present unless a remove was sent
/// after it, every acknowledged remove absent, every plugin present loaded
/// and not failed.
async fn check_plugins(server: &Server, ledger: &Ledger) -> Vec<String> {
    let mut problems = Vec::new();
    let loaded = wait_until(Duration::from_secs(60), || async {
        let list = server.get_ok("/plugins").await;
        list["plugins"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["state"] != "compiling"))
    })
    .await;
    if !loaded {
        problems.push("some plugins were still compiling after 60 s".into());
    }
    let list = server.get_ok("/plugins").await;
    let present: BTreeMap<String, Value> = list["plugins"]
        .as_array()
        .map_or(vec![], |p| p.clone())
        .into_iter()
        .map(|p| (p["name"].as_str().unwrap_or("").to_owned(), p))
        .collect();
    for name in ledger.deployed.difference(&ledger.removing) {
        if !present.contains_key(name) {
            problems.push(format!("plugin {name} was deployed (201) but is gone"));
        }
    }
    for name in &ledger.removed {
        if present.contains_key(name) {
            problems.push(format!("plugin {name} was removed (200) but is back"));
        }
    }
    for (name, status) in &present {
        if status["state"] == "failed" {
            problems.push(format!("plugin {name} failed: {}", status["last_error"]));
        }
    }
    if let Some(counter) = present.get("counter")
        && counter["generation"].as_u64() < Some(ledger.swapped)
    {
        // Not a failure by itself: the swap shows before its manifest is
        // written (docs/design.md#rebuild-and-swap); it must be back once
        // the rebuild resumed and caught up (check_projections).
        eprintln!(
            "note: counter restarted at generation {} (rebuild {}), {} was seen serving",
            counter["generation"], counter["rebuild"], ledger.swapped
        );
    }
    problems
}

/// Every projection present, once caught up, counted each event once, and
/// `counter` serves at least the generation its last acknowledged replay
/// (and swap) made.
async fn check_projections(server: &Server, log: &[Value], ledger: &Ledger) -> Vec<String> {
    let mut problems = Vec::new();
    let list = server.get_ok("/plugins").await;
    let names: Vec<String> = list["plugins"].as_array().map_or(vec![], |p| {
        p.iter()
            .filter(|p| p["kind"] == "projection")
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect()
    });
    for name in names {
        let status = match caught_up(server, &name).await {
            Ok(status) => status,
            Err(status) => {
                problems.push(format!("projection {name} did not catch up: {status}"));
                continue;
            }
        };
        let generation = status["generation"].as_u64().unwrap_or(0);
        if name == "counter" && generation < ledger.replayed.max(ledger.swapped) {
            problems.push(format!(
                "counter serves generation {generation} once caught up, but its last \
                 acknowledged replay (202) was to build generation {}, and generation {} \
                 was seen serving (0: none)",
                ledger.replayed, ledger.swapped
            ));
        }
        let (status, count) = server.get(&format!("/plugins/{name}/state/count")).await;
        if status != StatusCode::OK || count.as_u64() != Some(log.len() as u64) {
            problems.push(format!(
                "projection {name} counted {count} ({status}) of {} events",
                log.len()
            ));
        }
    }
    problems
}

/// Waits until `name` has handled the whole log with no rebuild running.
async fn caught_up(server: &Server, name: &str) -> Result<Value, Value> {
    let head = server.head().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, status) = server.get(&format!("/plugins/{name}")).await;
        if code == StatusCode::NOT_FOUND {
            return Err(status);
        }
        let done = status["checkpoint"].as_u64() >= Some(head)
            && status["rebuild"].is_null()
            && status["state"] == "running";
        if done {
            return Ok(status);
        }
        if Instant::now() > deadline || status["state"] == "failed" {
            return Err(status);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Notifications: each key accepted once, every acknowledged order
/// delivered, nothing delivered that the log does not hold, and
/// deliveries repeated only within the window a cut allows.
async fn check_notifications(
    server: &Server,
    log: &[Value],
    ledger: &Ledger,
    receiver: &Receiver,
) -> Vec<String> {
    let mut problems = Vec::new();
    let webhook = server.get("/plugins/ship/webhook").await.1;
    if webhook["webhook"]["url"] != receiver.url.as_str() {
        problems.push(format!("ship's webhook is {webhook}"));
    }
    let shipped_in_log: BTreeSet<String> = log
        .iter()
        .filter(|e| e["type"] == "OrderShipped")
        .filter_map(|e| e["stream"].as_str().and_then(|s| s.strip_prefix("order-")))
        .map(|order| format!("order-{order}-shipped"))
        .collect();
    match caught_up(server, "ship").await {
        Ok(_) => {
            let delivered = wait_until(Duration::from_secs(30), || async {
                let status = server.get_ok("/plugins/ship").await;
                status["notifications"]["pending"] == 0
                    && ledger
                        .shipped
                        .is_subset(&receiver.by_key().into_keys().collect())
            })
            .await;
            let status = server.get_ok("/plugins/ship").await;
            let emitted = status["notifications"]["emitted"].as_u64().unwrap_or(0);
            if emitted != shipped_in_log.len() as u64 {
                problems.push(format!(
                    "ship accepted {emitted} notifications for {} orders shipped in the log",
                    shipped_in_log.len()
                ));
            }
            if !delivered {
                problems.push(format!(
                    "deliveries did not finish in 30 s: {}",
                    status["notifications"]
                ));
            }
        }
        Err(status) => problems.push(format!("ship did not catch up: {status}")),
    }
    problems.extend(check_deliveries(
        &receiver.by_key(),
        ledger,
        &shipped_in_log,
        receiver.epoch.load(Ordering::SeqCst),
    ));
    problems
}

/// Compares what the receiver got with what was acknowledged and logged.
fn check_deliveries(
    by_key: &BTreeMap<String, Vec<usize>>,
    ledger: &Ledger,
    shipped_in_log: &BTreeSet<String>,
    epoch: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    let undelivered: Vec<&String> = ledger
        .shipped
        .iter()
        .filter(|k| !by_key.contains_key(*k))
        .collect();
    if !undelivered.is_empty() {
        problems.push(format!(
            "{} of {} acknowledged orders were never notified, e.g. {:?}",
            undelivered.len(),
            ledger.shipped.len(),
            &undelivered[..undelivered.len().min(5)]
        ));
    }
    let phantoms: Vec<&String> = by_key
        .keys()
        .filter(|k| !shipped_in_log.contains(*k))
        .collect();
    if !phantoms.is_empty() {
        problems.push(format!(
            "{} notifications for orders the log does not hold, e.g. {:?}",
            phantoms.len(),
            &phantoms[..phantoms.len().min(5)]
        ));
    }
    let mut again_now = 0;
    for (key, epochs) in by_key {
        for pair in epochs.windows(2) {
            if pair[1] != pair[0] + 1 {
                problems.push(format!("{key} was delivered in epochs {epochs:?}: again without a cut just after its delivery"));
                break;
            }
        }
        again_now += usize::from(epochs.len() > 1 && epochs.last() == Some(&epoch));
    }
    if again_now > REDELIVERY_WINDOW {
        problems.push(format!("{again_now} notifications were sent again after this cut (the window is {REDELIVERY_WINDOW})"));
    }
    eprintln!(
        "deliveries: {} keys, {again_now} sent again after this cut",
        by_key.len()
    );
    problems
}
