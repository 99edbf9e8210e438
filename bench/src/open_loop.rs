//! An open-loop append load: requests launched on a schedule, `rate` a
//! second, whether or not earlier ones have been answered, each on an idle
//! connection of a pool opened beforehand. A request that falls due when
//! every connection is busy is not sent and is counted as such, never
//! delayed: a closed-loop client would slow down with the server and hide
//! its queueing (coordinated omission). Latency runs from when a request
//! was due, so the generator's own lateness is in it too (and reported).

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hyper::StatusCode;
use serde::Deserialize;

use crate::append::percentile;
use crate::http::Connection;

/// Connections opened at once while the pool fills.
const OPENING: usize = 64;

/// How long the load waits, after its schedule ends, for the answers still
/// due: past the server's longest wait for a place in its queue.
const DRAIN: Duration = Duration::from_secs(60);

/// What became of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// 201: appended; its first position is in [`Outcome::position`].
    Created,
    /// 503 `overloaded`: refused because the append queue stayed full;
    /// whether `Retry-After` came with it.
    Overloaded {
        /// A `Retry-After` header came with it.
        retry_after: bool,
    },
    /// Any other answer or failure: status and error code, or the
    /// transport's failure.
    Other(String),
    /// Every connection was busy when it fell due.
    NotSent,
    /// Sent, but not answered within [`DRAIN`] of the schedule's end.
    NoAnswer,
}

/// One request of the load.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Its number in the schedule (0, 1, 2, …).
    pub seq: u64,
    /// When it was due, from the start of the load.
    pub due: Duration,
    /// How late after `due` it was sent.
    pub lag: Duration,
    /// From `due` to its whole answer (zero when not sent or unanswered).
    pub latency: Duration,
    /// What the server said.
    pub kind: Kind,
    /// A 201's `first_position`.
    pub position: Option<u64>,
}

/// The load's options.
pub struct Load<'a> {
    /// The server, `http://host:port`.
    pub url: &'a str,
    /// Requests a second.
    pub rate: f64,
    /// Connections in the pool: the most requests in flight at once.
    pub connections: usize,
}

/// What a load did.
pub struct Report {
    /// Every request due, in order of `seq`.
    pub outcomes: Vec<Outcome>,
    /// When the schedule started.
    pub started: Instant,
    /// How long the schedule ran.
    pub elapsed: Duration,
}

/// A pool of idle connections.
type Pool = Arc<Mutex<Vec<Connection>>>;

/// Opens `n` connections to `url`, [`OPENING`] at a time.
pub async fn open_pool(url: &str, n: usize) -> anyhow::Result<Vec<Connection>> {
    let opened: Vec<anyhow::Result<Connection>> = futures_util::stream::iter(0..n)
        .map(|_| Connection::open(url))
        .buffer_unordered(OPENING)
        .collect()
        .await;
    opened.into_iter().collect()
}

/// Opens the pool, then runs the load until the future `stop()` gives
/// completes, `request(seq)` giving each request's path and JSON body, and
/// then waits for the answers still due.
pub async fn run<F: Future<Output = ()>>(
    load: &Load<'_>,
    stop: impl FnOnce() -> F,
    request: impl Fn(u64) -> (String, String),
) -> anyhow::Result<Report> {
    anyhow::ensure!(load.rate > 0.0, "an open-loop load needs a positive rate");
    let pool: Pool = Arc::new(Mutex::new(open_pool(load.url, load.connections).await?));
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let mut outcomes = Vec::new();
    let mut launched = 0usize;
    let mut due = 0u64;
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stop = std::pin::pin!(stop());
    let started = Instant::now();
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticks.tick() => {}
        }
        let now = started.elapsed();
        let until = (now.as_secs_f64() * load.rate) as u64;
        while due < until {
            let seq = due;
            due += 1;
            let at = Duration::from_secs_f64(seq as f64 / load.rate);
            let connection = pool.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let Some(connection) = connection else {
                outcomes.push(Outcome {
                    seq,
                    due: at,
                    lag: Duration::ZERO,
                    latency: Duration::ZERO,
                    kind: Kind::NotSent,
                    position: None,
                });
                continue;
            };
            let (path, body) = request(seq);
            let (pool, answers, url) = (pool.clone(), answers.clone(), load.url.to_owned());
            launched += 1;
            tokio::spawn(async move {
                let outcome = send(connection, &pool, &url, &path, body, seq, started, at).await;
                let _ = answers.send(outcome);
            });
        }
    }
    let elapsed = started.elapsed();
    drop(answers);
    let deadline = tokio::time::Instant::now() + DRAIN;
    let mut received = 0;
    while received < launched {
        match tokio::time::timeout_at(deadline, answered.recv()).await {
            Ok(Some(outcome)) => {
                outcomes.push(outcome);
                received += 1;
            }
            Ok(None) | Err(_) => break,
        }
    }
    // What was sent and never answered.
    let mut seen = vec![false; due as usize];
    for outcome in &outcomes {
        seen[outcome.seq as usize] = true;
    }
    for (seq, _) in seen.iter().enumerate().filter(|(_, seen)| !**seen) {
        outcomes.push(Outcome {
            seq: seq as u64,
            due: Duration::from_secs_f64(seq as f64 / load.rate),
            lag: Duration::ZERO,
            latency: Duration::ZERO,
            kind: Kind::NoAnswer,
            position: None,
        });
    }
    outcomes.sort_by_key(|o| o.seq);
    Ok(Report {
        outcomes,
        started,
        elapsed,
    })
}

/// Sends one request, classifies its answer, and gives its connection back
/// to the pool (a new one if the server closed it).
#[allow(clippy::too_many_arguments)]
async fn send(
    mut connection: Connection,
    pool: &Pool,
    url: &str,
    path: &str,
    body: String,
    seq: u64,
    started: Instant,
    due: Duration,
) -> Outcome {
    let lag = started.elapsed().saturating_sub(due);
    let answer = connection.post_json(path, body).await;
    let latency = started.elapsed().saturating_sub(due);
    let (kind, position) = match answer {
        Ok(answer) if answer.status == StatusCode::CREATED => {
            #[derive(Deserialize)]
            struct Appended {
                first_position: u64,
            }
            match answer.json::<Appended>() {
                Ok(appended) => (Kind::Created, Some(appended.first_position)),
                Err(_) => (Kind::Other("201 without a position".into()), None),
            }
        }
        Ok(answer) => match (answer.status, answer.error_code()) {
            (StatusCode::SERVICE_UNAVAILABLE, code) if code == "overloaded" => (
                Kind::Overloaded {
                    retry_after: answer.retry_after,
                },
                None,
            ),
            (status, code) => (Kind::Other(format!("{} {code}", status.as_u16())), None),
        },
        Err(_) => (Kind::Other("no answer: connection failed".into()), None),
    };
    let back = if connection.is_closed() {
        Connection::open(url).await.ok()
    } else {
        Some(connection)
    };
    if let Some(connection) = back {
        pool.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(connection);
    }
    Outcome {
        seq,
        due,
        lag,
        latency,
        kind,
        position,
    }
}

/// p50, p99 and max of some outcomes' latencies, in ms (`None` without any).
pub fn latency_ms<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> Option<(f64, f64, f64)> {
    let mut latencies: Vec<Duration> = outcomes.map(|o| o.latency).collect();
    if latencies.is_empty() {
        return None;
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Some((
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
    ))
}
