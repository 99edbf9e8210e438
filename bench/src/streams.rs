//! Memory and throughput against the number of streams.
//!
//! Appends one event to each of `--streams` new streams (`POST /batch`,
//! `--batch` streams a request, `--clients` connections), and prints the
//! server's RSS (`VmRSS` of `/proc/<pid>/status`) and the append rate as it
//! goes, then a summary. The writer keeps the heads of recent streams in a
//! cache bounded in bytes (`--stream-cache`), so RSS should stop growing
//! once that cache is full. `--compare` measures instead, in one run and in
//! alternating rounds, the same number of appends over 1,000 streams, to as
//! many new streams, and to those streams again (the heads mostly evicted).
//!
//! The server is started as `append` starts it (`EVENTFOLD_STREAM_CACHE`
//! in the environment reaches it), or `--url` (with `--pid` for RSS) drives
//! one already running.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::http::Connection;
use crate::peers::{EVENT_DATA, EVENT_TYPE, Eventfold};

/// Options of the streams benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Drive this running server instead of starting one.
    #[arg(long)]
    pub url: Option<String>,
    /// The process id of the server at `--url`, to read its RSS.
    #[arg(long, requires = "url")]
    pub pid: Option<u32>,
    /// Where the server's data goes.
    #[arg(long, default_value = "target/bench-data")]
    pub data_dir: PathBuf,
    /// New streams to append to (one event each).
    #[arg(long, default_value_t = 10_000_000)]
    pub streams: u64,
    /// Appends (each to a stream of its own) per `POST /batch`.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Seconds between two lines of progress.
    #[arg(long, default_value_t = 5.0)]
    pub every: f64,
    /// Compare appends over 1,000 streams with appends to 1 M distinct
    /// streams instead (`--appends` each, `--rounds` times).
    #[arg(long)]
    pub compare: bool,
    /// With `--compare`: appends per workload and round.
    #[arg(long, default_value_t = 1_000_000)]
    pub appends: u64,
    /// With `--compare`: rounds, in alternating order; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// Streams of the `--compare` workload that appends over few streams.
const FEW_STREAMS: u64 = 1000;

/// Runs the benchmark and prints its table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.batch > 0 && args.clients > 0,
        "--batch and --clients must be positive"
    );
    let scratch = crate::scratch_dir(&args.data_dir, "run-")?;
    let (server, url, pid) = match &args.url {
        Some(url) => (Eventfold::connect(url), url.clone(), args.pid),
        None => {
            let server = Eventfold::start(scratch.path()).await?;
            let pid = server.pid().context("the server started here has a pid")?;
            (server, url_of(pid)?, Some(pid))
        }
    };
    let target = Target { url, pid };
    let measured = if args.compare {
        compare(&args, &target).await
    } else {
        fill(&args, &target).await
    };
    server.stop().await?;
    measured
}

/// The server under test.
struct Target {
    url: String,
    pid: Option<u32>,
}

impl Target {
    /// The server's resident memory in MiB, when its pid is known.
    fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }

    /// The server's CPU time so far in seconds (user and system, every
    /// thread), from `/proc/<pid>/stat` in `USER_HZ` ticks: 100 a second.
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid?)).ok()?;
        // Counted from the state, after `pid (comm) `: utime is the 12th
        // field, stime the 13th.
        let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ');
        let utime: f64 = fields.nth(11)?.parse().ok()?;
        let stime: f64 = fields.next()?.parse().ok()?;
        Some((utime + stime) / 100.0)
    }
}

/// The URL of a server `Eventfold::start` started: it passes `--addr` on
/// the command line.
fn url_of(pid: u32) -> anyhow::Result<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let mut args = cmdline.split(|&b| b == 0).map(String::from_utf8_lossy);
    args.find(|a| a == "--addr")
        .and(args.next())
        .map(|addr| format!("http://{addr}"))
        .context("the server's command line names no --addr")
}

/// The name of the `i`th stream of a set: scattered over the stream index
/// as names with ids in them are (a bijective mix of `i`).
fn stream_name(set: &str, i: u64) -> String {
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("{set}-{:016x}", x ^ (x >> 31))
}

/// One HTTP/1 connection posting `/batch`.
struct Client {
    connection: Connection,
    body: String,
}

impl Client {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            connection: Connection::open(url).await?,
            body: String::new(),
        })
    }

    /// Appends one event to each stream named, each with its expected
    /// version (`None`: the stream must not exist), in one atomic batch.
    async fn append(&mut self, appends: &[(String, Option<u64>)]) -> anyhow::Result<()> {
        self.body.clear();
        self.body.push_str(r#"{"appends":["#);
        for (i, (stream, expected)) in appends.iter().enumerate() {
            if i > 0 {
                self.body.push(',');
            }
            let _ = write!(self.body, r#"{{"stream":"{stream}","expected_version":"#);
            match expected {
                Some(v) => write!(self.body, "{v}")?,
                None => self.body.push_str(r#""no_stream""#),
            }
            let _ = write!(
                self.body,
                r#","events":[{{"type":"{EVENT_TYPE}","data":{EVENT_DATA}}}]}}"#
            );
        }
        self.body.push_str("]}");
        let answer = self
            .connection
            .post_json("/batch", self.body.clone())
            .await?;
        if answer.status != hyper::StatusCode::CREATED {
            bail!(
                "batch failed: {} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        Ok(())
    }
}

/// One line of progress.
struct Sample {
    seconds: f64,
    streams: u64,
    rate: f64,
    rss_mib: Option<f64>,
}

fn mib(rss: Option<f64>) -> String {
    rss.map_or_else(|| "-".to_owned(), |m| format!("{m:.0}"))
}

/// Appends one event to each of `--streams` new streams, printing progress.
async fn fill(args: &Args, target: &Target) -> anyhow::Result<()> {
    let start_rss = target.rss_mib();
    println!(
        "{} new streams, {} per batch, {} clients; server RSS at start {} MiB",
        args.streams,
        args.batch,
        args.clients,
        mib(start_rss)
    );
    println!(
        "{:>8} {:>12} {:>12} {:>9}",
        "seconds", "streams", "appends/s", "RSS MiB"
    );
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let mut client = Client::connect(&target.url).await?;
        let (next, done, total, batch) = (next.clone(), done.clone(), args.streams, args.batch);
        tasks.spawn(async move {
            let mut appends = Vec::with_capacity(batch);
            loop {
                let first = next.fetch_add(batch as u64, Ordering::Relaxed);
                if first >= total {
                    return anyhow::Ok(());
                }
                appends.clear();
                appends.extend(
                    (first..total.min(first + batch as u64)).map(|i| (stream_name("s", i), None)),
                );
                client.append(&appends).await?;
                done.fetch_add(appends.len() as u64, Ordering::Relaxed);
            }
        });
    }
    let started = Instant::now();
    let every = Duration::from_secs_f64(args.every);
    let mut samples: Vec<Sample> = Vec::new();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let finished = tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(result) => {
                    result??;
                    if !tasks.is_empty() {
                        continue; // one client is done, the others go on
                    }
                    true
                }
                None => true,
            },
            _ = ticks.tick() => false,
        };
        let seconds = started.elapsed().as_secs_f64();
        let streams = done.load(Ordering::Relaxed);
        let (s0, n0) = samples.last().map_or((0.0, 0), |s| (s.seconds, s.streams));
        let sample = Sample {
            seconds,
            streams,
            rate: (streams - n0) as f64 / (seconds - s0).max(1e-9),
            rss_mib: target.rss_mib(),
        };
        println!(
            "{:>8.1} {:>12} {:>12.0} {:>9}",
            sample.seconds,
            sample.streams,
            sample.rate,
            mib(sample.rss_mib)
        );
        samples.push(sample);
        if finished {
            break;
        }
    }
    summarize(start_rss, &samples);
    Ok(())
}

/// The summary of a fill: the rate, and how RSS moved in each half.
fn summarize(start_rss: Option<f64>, samples: &[Sample]) {
    let Some(end) = samples.last() else {
        return;
    };
    println!(
        "{} streams in {:.1} s: {:.0} appends/s on average",
        end.streams,
        end.seconds,
        end.streams as f64 / end.seconds
    );
    let rss: Vec<(u64, f64)> = samples
        .iter()
        .filter_map(|s| Some((s.streams, s.rss_mib?)))
        .collect();
    if let (Some(start), Some(&(_, max))) =
        (start_rss, rss.iter().max_by(|a, b| a.1.total_cmp(&b.1)))
    {
        println!("server RSS: {start:.0} MiB at start, {max:.0} MiB at most");
        // The growth per million streams over each half of the run: flat
        // once the caches are full means the second half's is near zero.
        let half = end.streams / 2;
        let at = |n: u64| rss.iter().find(|(s, _)| *s >= n).copied();
        let a = (0, start);
        if let (Some(b), Some(c)) = (at(half).filter(|b| b.0 > 0), rss.last().copied())
            && c.0 > b.0
        {
            let per_million = |(s0, r0): (u64, f64), (s1, r1): (u64, f64)| {
                (r1 - r0) / ((s1 - s0).max(1) as f64 / 1e6)
            };
            println!(
                "RSS growth: {:.1} MiB per million streams over the first half, {:.1} over the second \
                 ({} to {} MiB from {} to {} streams)",
                per_million(a, b),
                per_million(b, c),
                b.1.round(),
                c.1.round(),
                b.0,
                c.0,
            );
        }
    }
    let rates: Vec<f64> = samples.iter().map(|s| s.rate).collect();
    if rates.len() >= 4 {
        let quarter = rates.len() / 4;
        let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
        println!(
            "append rate: {:.0} appends/s over the first quarter of the samples, {:.0} over the last",
            mean(&rates[..quarter]),
            mean(&rates[rates.len() - quarter..]),
        );
    }
}

/// A workload of `--compare`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// `--appends` appends over 1,000 streams, each with its expected version.
    Few,
    /// One append to each of `--appends` new streams.
    New,
    /// One more append to each of the streams `New` created, expecting
    /// version 0: their heads are mostly no longer cached.
    Again,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Few => "1,000 streams",
            Workload::New => "1 M new streams",
            Workload::Again => "1 M streams again",
        }
    }
}

/// Runs each workload `--rounds` times, alternating the order, and prints
/// medians with the ratios against appends over 1,000 streams.
async fn compare(args: &Args, target: &Target) -> anyhow::Result<()> {
    anyhow::ensure!(
        FEW_STREAMS / args.clients as u64 >= args.batch as u64,
        "--compare needs --clients × --batch ≤ {FEW_STREAMS}"
    );
    println!(
        "{} appends per workload and round, {} per batch, {} clients; server RSS at start {} MiB",
        args.appends,
        args.batch,
        args.clients,
        mib(target.rss_mib())
    );
    // The 1,000 streams' versions, carried from round to round.
    let mut few: Vec<Option<u64>> = vec![None; FEW_STREAMS as usize];
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut cpu: [Vec<f64>; 3] = Default::default();
    for round in 0..args.rounds {
        let mut order = [Workload::Few, Workload::New, Workload::Again];
        if round % 2 == 1 {
            // The new streams must exist before they are appended to again.
            order = [Workload::New, Workload::Again, Workload::Few];
        }
        for workload in order {
            let started = Instant::now();
            let cpu_before = target.cpu_seconds();
            drive(args, target, workload, round, &mut few).await?;
            let rate = args.appends as f64 / started.elapsed().as_secs_f64();
            let us = cpu_before
                .zip(target.cpu_seconds())
                .map(|(a, b)| (b - a) * 1e6 / args.appends as f64);
            println!(
                "round {} {:<20} {:>10.0} appends/s {:>6} server µs/append   RSS {} MiB",
                round + 1,
                workload.name(),
                rate,
                us.map_or_else(|| "-".to_owned(), |us| format!("{us:.1}")),
                mib(target.rss_mib())
            );
            rates[workload as usize].push(rate);
            cpu[workload as usize].extend(us);
        }
    }
    let median = |r: &mut Vec<f64>| {
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied()
    };
    let few_rate = median(&mut rates[0]).unwrap_or(f64::NAN);
    println!();
    println!(
        "{:<20} {:>12} {:>16} {:>18}",
        "workload", "appends/s", "÷ 1,000 streams", "server µs/append"
    );
    for workload in [Workload::Few, Workload::New, Workload::Again] {
        let rate = median(&mut rates[workload as usize]).unwrap_or(f64::NAN);
        let us = median(&mut cpu[workload as usize]);
        println!(
            "{:<20} {:>12.0} {:>16.2} {:>18}",
            workload.name(),
            rate,
            rate / few_rate,
            us.map_or_else(|| "-".to_owned(), |us| format!("{us:.1}"))
        );
    }
    println!(
        "(medians of {} rounds; one ≈200-byte event per append, every batch fsynced)",
        args.rounds
    );
    Ok(())
}

/// Runs one workload of `--compare` to its end.
async fn drive(
    args: &Args,
    target: &Target,
    workload: Workload,
    round: usize,
    few: &mut [Option<u64>],
) -> anyhow::Result<()> {
    let clients = args.clients as u64;
    let mut tasks = tokio::task::JoinSet::new();
    // Client c takes the streams i with i % clients == c, so that no stream
    // is in two requests at once and each client knows its versions.
    for c in 0..clients {
        let mut client = Client::connect(&target.url).await?;
        let count = args.appends / clients + u64::from(c < args.appends % clients);
        let batch = args.batch as u64;
        let set = format!("r{round}");
        let mut versions: Vec<(u64, Option<u64>)> = (c..FEW_STREAMS)
            .step_by(clients as usize)
            .map(|i| (i, few[i as usize]))
            .collect();
        tasks.spawn(async move {
            let mut appends = Vec::with_capacity(batch as usize);
            let mut sent = 0;
            let mut cursor = 0;
            while sent < count {
                appends.clear();
                let n = batch.min(count - sent);
                for k in sent..sent + n {
                    appends.push(match workload {
                        Workload::Few => {
                            let streams = versions.len();
                            let (i, version) = &mut versions[cursor];
                            cursor = (cursor + 1) % streams;
                            let expected = *version;
                            *version = Some(version.map_or(0, |v| v + 1));
                            (stream_name("few", *i), expected)
                        }
                        Workload::New => (stream_name(&set, k * clients + c), None),
                        Workload::Again => (stream_name(&set, k * clients + c), Some(0)),
                    });
                }
                client.append(&appends).await?;
                sent += n;
            }
            anyhow::Ok(versions)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        for (i, version) in joined?? {
            few[i as usize] = version;
        }
    }
    Ok(())
}
