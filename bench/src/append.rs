//! Append throughput and latency over HTTP, against the disk's fsync rate.
//!
//! By default it starts a server in-process on a fresh directory under
//! `--data-dir`; `--url` drives a server that is already running instead.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::peers::{EVENT_DATA, EVENT_TYPE, WORKLOADS, Workload};

/// Options of the append benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Drive this running server instead of starting one.
    #[arg(long)]
    pub url: Option<String>,
    /// Where the in-process server's data and the fsync probe go (the disk measured).
    #[arg(long, default_value = "target/bench-data")]
    pub data_dir: PathBuf,
    /// Seconds each workload runs per round.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Rounds; workloads are interleaved and the median round is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            url: None,
            data_dir: PathBuf::from("target/bench-data"),
            seconds: 5.0,
            rounds: 3,
        }
    }
}

struct RoundResult {
    events_per_sec: f64,
    latencies: Vec<Duration>,
}

/// Runs the append workloads and prints the table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&args.data_dir)?;
    let fsyncs = fdatasync_rate(scratch.path(), Duration::from_secs(2), false)?;
    let overwrites = fdatasync_rate(scratch.path(), Duration::from_secs(2), true)?;

    let shutdown = CancellationToken::new();
    let (url, server) = match &args.url {
        Some(url) => (url.trim_end_matches('/').to_owned(), None),
        None => {
            let config = eventfold::Config::new(scratch.path().join("data"));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let server = eventfold::server::Server::open(config, listener)?;
            let url = format!("http://{}", server.local_addr());
            (url, Some(tokio::spawn(server.run(shutdown.clone()))))
        }
    };

    let seconds = Duration::from_secs_f64(args.seconds);
    let mut results: Vec<Vec<RoundResult>> = WORKLOADS.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for (i, workload) in WORKLOADS.iter().enumerate() {
            let result = drive(&url, *workload, seconds, round).await?;
            eprintln!(
                "round {} {:<24} {:>10.0} events/s",
                round + 1,
                workload.name,
                result.events_per_sec
            );
            results[i].push(result);
        }
    }
    shutdown.cancel();
    if let Some(server) = server {
        server.await??;
    }

    println!();
    println!(
        "disk: {fsyncs:.0} fdatasync/s appending 4 KiB, {overwrites:.0}/s overwriting, in {}",
        args.data_dir.display()
    );
    println!(
        "{:<24} {:>12} {:>9} {:>9} {:>14}",
        "workload", "events/s", "p50 ms", "p99 ms", "events/fsync"
    );
    for (workload, rounds) in WORKLOADS.iter().zip(&mut results) {
        rounds.sort_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
        let median = &rounds[rounds.len() / 2];
        let mut latencies: Vec<Duration> = rounds
            .iter()
            .flat_map(|r| r.latencies.iter().copied())
            .collect();
        latencies.sort();
        println!(
            "{:<24} {:>12.0} {:>9.2} {:>9.2} {:>14.2}",
            workload.name,
            median.events_per_sec,
            percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
            percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
            median.events_per_sec / fsyncs,
        );
    }
    println!(
        "({} rounds of {:.1} s each, median round; ~200-byte JSON events, every append fsynced)",
        args.rounds, args.seconds
    );
    Ok(())
}

/// Runs one workload for `duration` and measures it.
async fn drive(
    url: &str,
    workload: Workload,
    duration: Duration,
    round: usize,
) -> anyhow::Result<RoundResult> {
    let body = Arc::new(request_body(workload.events));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for client in 0..workload.clients {
        let body = body.clone();
        let url = format!(
            "{url}/streams/bench{}x{}-{client}-r{round}",
            workload.clients, workload.events
        );
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.as_ref().clone())
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!(
                        "append failed: {} {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    );
                }
                response.bytes().await?;
                latencies.push(sent.elapsed());
            }
            Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let events = latencies.len() * workload.events;
    Ok(RoundResult {
        events_per_sec: events as f64 / elapsed,
        latencies,
    })
}

/// An append request of `n` of the benchmark's events.
fn request_body(n: usize) -> String {
    let event = format!(r#"{{"type":"{EVENT_TYPE}","data":{EVENT_DATA}}}"#);
    let events = vec![event; n].join(",");
    format!(r#"{{"expected_version":"any","events":[{events}]}}"#)
}

/// How many 4 KiB write + fdatasync cycles the disk does per second in
/// `dir`, appending to a file or overwriting one already written.
pub fn fdatasync_rate(dir: &Path, duration: Duration, overwrite: bool) -> anyhow::Result<f64> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fsync-probe");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let block = [0u8; 4096];
    if overwrite {
        for _ in 0..4096 {
            file.write_all(&block)?;
        }
        file.sync_all()?;
    }
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < duration {
        if overwrite {
            file.write_all_at(&block, (count % 4096) * 4096)?;
        } else {
            file.write_all(&block)?;
        }
        file.sync_data()?;
        count += 1;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(path)?;
    Ok(rate)
}

/// The `p` quantile of sorted durations (zero when there are none).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
