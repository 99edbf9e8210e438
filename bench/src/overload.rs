//! Appends beyond what the server sustains.
//!
//! First measures what the server sustains closed-loop (32 clients × 1
//! event, as `append` does), then offers `--factor` times that rate
//! open-loop for `--seconds` (`open_loop`: requests on a schedule, whatever
//! the answers). The server bounds its append queue (`--append-queue`) and
//! how long an append waits for a place in it (`--append-wait`), then
//! answers 503 `overloaded` with `Retry-After`. The table counts each
//! outcome with its latency; then the log is read back to check that every
//! 201 names its own event at its position, and that no refused append was
//! written.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::http::Connection;
use crate::open_loop::{self, Kind, Load, Outcome};
use crate::peers::{EVENT_DATA, Eventfold, Launch, Protocol, System, Workload, drive, run_tag};

/// Options of the overload benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Drive this running server instead of starting one.
    #[arg(long)]
    pub url: Option<String>,
    /// Where the server's data goes (a fresh directory under it).
    #[arg(long, default_value = "target/bench-data")]
    pub data_dir: PathBuf,
    /// Seconds the open-loop load runs.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// The offered rate, as a multiple of the closed-loop rate.
    #[arg(long, default_value_t = 4.0)]
    pub factor: f64,
    /// Offer this many appends a second instead (skips the closed-loop
    /// measure).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of the closed-loop measure.
    #[arg(long, default_value_t = 3.0)]
    pub capacity_seconds: f64,
    /// Clients of the closed-loop measure, each appending one event at a time.
    #[arg(long, default_value_t = 32)]
    pub capacity_clients: usize,
    /// Connections of the open-loop load: the most appends in flight. Keep
    /// it under the server's `--max-connections` (10,000) and this
    /// process's file limit.
    #[arg(long, default_value_t = 9000)]
    pub connections: usize,
    /// An `eventfold` binary to start as `eventfold serve` (default: this
    /// benchmark as `serve`, the same code).
    #[arg(long, conflicts_with = "url")]
    pub server: Option<PathBuf>,
    /// A flag for the server started here, e.g.
    /// `--server-arg=--append-queue=512` (repeatable).
    #[arg(long, conflicts_with = "url", allow_hyphen_values = true)]
    pub server_arg: Vec<String>,
}

/// Streams the load appends to, round robin.
const STREAMS: u64 = 1000;

/// Events read back per page.
const PAGE: u64 = 10_000;

/// Runs the benchmark and prints its table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let scratch = crate::scratch_dir(&args.data_dir, "overload-")?;
    let server = match &args.url {
        Some(url) => Eventfold::connect(url),
        None => {
            let launch = Launch {
                binary: args.server.clone(),
                args: args.server_arg.clone(),
            };
            Eventfold::launch(scratch.path(), &launch).await?
        }
    };
    let measured = measure(&args, &server).await;
    server.stop().await?;
    measured
}

async fn measure(args: &Args, server: &Eventfold) -> anyhow::Result<()> {
    let capacity = match args.rate {
        Some(_) => None,
        None => {
            let workload = Workload {
                name: "closed loop",
                clients: args.capacity_clients,
                events: 1,
            };
            let system = System::Eventfold(server.over(Protocol::Http));
            let seconds = Duration::from_secs_f64(args.capacity_seconds);
            let round = drive(&system, workload, seconds, 0).await?;
            eprintln!(
                "closed loop: {:.0} appends/s ({} clients x 1 event, {:.1} s)",
                round.events_per_sec, args.capacity_clients, args.capacity_seconds
            );
            Some(round.events_per_sec)
        }
    };
    let rate = args
        .rate
        .or(capacity.map(|c| c * args.factor))
        .context("no rate")?;
    let before = server.count().await?;
    let prefix = format!("overload{}", run_tag());
    eprintln!(
        "opening {} connections, then offering {rate:.0} appends/s for {:.1} s",
        args.connections, args.seconds
    );
    let load = Load {
        url: server.url(),
        rate,
        connections: args.connections,
    };
    let report = open_loop::run(
        &load,
        || tokio::time::sleep(Duration::from_secs_f64(args.seconds)),
        |seq| {
            (
                format!("/streams/{prefix}-{}", seq % STREAMS),
                format!(
                    r#"{{"expected_version":"any","events":[{{"type":"OrderPlaced","data":{{"seq":{seq},"order":{EVENT_DATA}}}}}]}}"#
                ),
            )
        },
    )
    .await?;
    eprintln!("reading the log back from position {}", before + 1);
    let written = read_back(server.url(), before + 1, &prefix).await?;
    print(
        args,
        capacity,
        rate,
        &report,
        &Check::new(&report.outcomes, &written),
    );
    Ok(())
}

/// The load's events in the log: each `seq` with the positions it is at.
async fn read_back(url: &str, from: u64, prefix: &str) -> anyhow::Result<HashMap<u64, Vec<u64>>> {
    #[derive(Deserialize)]
    struct Page<'a> {
        #[serde(borrow)]
        events: Vec<Event<'a>>,
        next: u64,
        head: u64,
    }
    #[derive(Deserialize)]
    struct Event<'a> {
        position: u64,
        #[serde(borrow)]
        stream: &'a str,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    #[derive(Deserialize)]
    struct Data {
        seq: u64,
    }
    let mut connection = Connection::open(url).await?;
    let mut written: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut from = from;
    let ours = format!("{prefix}-");
    loop {
        let answer = connection
            .get(&format!("/events?from={from}&limit={PAGE}"))
            .await?
            .success()?;
        let page: Page = serde_json::from_slice(&answer.body).context("decoding a page")?;
        for event in page.events.iter().filter(|e| e.stream.starts_with(&ours)) {
            let data: Data = serde_json::from_str(event.data.get())
                .with_context(|| format!("the event at {} has no seq", event.position))?;
            written.entry(data.seq).or_default().push(event.position);
        }
        if page.next > page.head {
            return Ok(written);
        }
        if page.next <= from {
            bail!("reading the log: no progress at position {from}");
        }
        from = page.next;
    }
}

/// What reading the log back found.
struct Check {
    /// 201s.
    acknowledged: usize,
    /// 201s whose position holds another event, or none.
    lost: usize,
    /// Requests answered 503 overloaded whose event is in the log.
    refused_written: usize,
    /// Requests without a 201 or a 503 overloaded whose event is in the log
    /// (an answer lost in transport may have been a success).
    unanswered_written: usize,
    /// Events written more than once.
    duplicated: usize,
}

impl Check {
    fn new(outcomes: &[Outcome], written: &HashMap<u64, Vec<u64>>) -> Self {
        let mut check = Check {
            acknowledged: 0,
            lost: 0,
            refused_written: 0,
            unanswered_written: 0,
            duplicated: written.values().filter(|p| p.len() > 1).count(),
        };
        for outcome in outcomes {
            let found = written.get(&outcome.seq);
            match (&outcome.kind, outcome.position) {
                (Kind::Created, Some(position)) => {
                    check.acknowledged += 1;
                    if found.is_none_or(|p| !p.contains(&position)) {
                        check.lost += 1;
                    }
                }
                (Kind::Overloaded { .. }, _) if found.is_some() => check.refused_written += 1,
                (_, _) if found.is_some() => check.unanswered_written += 1,
                _ => {}
            }
        }
        check
    }
}

/// How a kind of outcome is named in the table.
fn label(kind: &Kind) -> String {
    match kind {
        Kind::Created => "201 created".into(),
        Kind::Overloaded { .. } => "503 overloaded".into(),
        Kind::Other(what) => format!("other: {what}"),
        Kind::NotSent => "not sent (connections busy)".into(),
        Kind::NoAnswer => "no answer in 60 s".into(),
    }
}

fn print(args: &Args, capacity: Option<f64>, rate: f64, report: &open_loop::Report, check: &Check) {
    let seconds = report.elapsed.as_secs_f64();
    let due = report.outcomes.len();
    let server = if args.url.is_some() {
        format!(
            "{} (its own settings)",
            args.url.as_deref().unwrap_or_default()
        )
    } else if args.server_arg.is_empty() {
        "eventfold serve (defaults: --append-queue 8192 --append-wait 2s)".to_owned()
    } else {
        format!("eventfold serve {}", args.server_arg.join(" "))
    };
    println!();
    println!("server: {server}");
    if let Some(capacity) = capacity {
        println!(
            "closed loop: {capacity:.0} appends/s ({} clients x 1 event, {:.1} s)",
            args.capacity_clients, args.capacity_seconds
        );
    }
    println!(
        "offered: {rate:.0} appends/s open loop for {seconds:.1} s ({due} due, at most {} in flight)",
        args.connections
    );
    println!(
        "{:<34} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "outcome", "count", "per s", "p50 ms", "p99 ms", "max ms"
    );
    let mut kinds: BTreeMap<String, Vec<&Outcome>> = BTreeMap::new();
    for kind in [Kind::Created, Kind::Overloaded { retry_after: true }] {
        kinds.entry(label(&kind)).or_default();
    }
    for outcome in &report.outcomes {
        kinds.entry(label(&outcome.kind)).or_default().push(outcome);
    }
    for (name, outcomes) in &kinds {
        let latency = outcomes
            .first()
            .filter(|o| !matches!(o.kind, Kind::NotSent | Kind::NoAnswer))
            .and_then(|_| open_loop::latency_ms(outcomes.iter().copied()));
        let (p50, p99, max) = latency.map_or_else(
            || ("-".to_owned(), "-".to_owned(), "-".to_owned()),
            |(p50, p99, max)| {
                (
                    format!("{p50:.2}"),
                    format!("{p99:.2}"),
                    format!("{max:.2}"),
                )
            },
        );
        println!(
            "{name:<34} {:>10} {:>10.0} {p50:>9} {p99:>9} {max:>9}",
            outcomes.len(),
            outcomes.len() as f64 / seconds,
        );
    }
    let created = kinds.get(&label(&Kind::Created)).map_or(0, Vec::len);
    let accepted = created as f64 / seconds;
    let overloaded: Vec<&&Outcome> = kinds
        .get(&label(&Kind::Overloaded { retry_after: true }))
        .into_iter()
        .flatten()
        .collect();
    let with_retry_after = overloaded
        .iter()
        .filter(|o| o.kind == Kind::Overloaded { retry_after: true })
        .count();
    print!("accepted: {accepted:.0} appends/s");
    if let Some(capacity) = capacity {
        print!(" = {:.2}x the closed-loop rate", accepted / capacity);
    }
    println!(
        "; 503 overloaded with Retry-After: {with_retry_after} of {}",
        overloaded.len()
    );
    let mut lags: Vec<Duration> = report
        .outcomes
        .iter()
        .filter(|o| !matches!(o.kind, Kind::NotSent | Kind::NoAnswer))
        .map(|o| o.lag)
        .collect();
    lags.sort();
    println!(
        "generator: sent {} requests, {:.0}/s; lateness against the schedule p50 {:.2} ms, p99 {:.2} ms (in the latencies)",
        lags.len(),
        lags.len() as f64 / seconds,
        crate::append::percentile(&lags, 0.5).as_secs_f64() * 1000.0,
        crate::append::percentile(&lags, 0.99).as_secs_f64() * 1000.0,
    );
    println!(
        "read back: {} acknowledged appends, lost {} (a 201 whose position does not hold its event); \
         refused but written {}; written without an answer {}; written twice {}",
        check.acknowledged,
        check.lost,
        check.refused_written,
        check.unanswered_written,
        check.duplicated
    );
    println!(
        "(≈220-byte JSON events to {STREAMS} streams, expected version any; latency from when each append was due)"
    );
}
