//! Append throughput and latency over HTTP, against the disk's fsync rate.
//!
//! The same load generator and workloads as `peers`, against eventfold alone:
//! by default a server started in a process of its own on a fresh directory
//! under `--data-dir`; `--url` drives a server that is already running.
//! `--versus BINARY` starts that `eventfold` binary too and runs every
//! workload on both in turn, round after round: an A/B in one run.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::peers::{
    Eventfold, Launch, Measure, Protocol, Round, System, WORKLOADS, drive, rotation,
};

/// Options of the append benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Drive this running server instead of starting one.
    #[arg(long)]
    pub url: Option<String>,
    /// Where the server's data and the fsync probe go (the disk measured).
    #[arg(long, default_value = "target/bench-data")]
    pub data_dir: PathBuf,
    /// Seconds each workload runs per round.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Rounds; workloads are interleaved and the median round is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// How clients append: `http` (`POST /streams/{stream}`) or `socket`
    /// (`GET /appends`, a WebSocket).
    #[arg(long, value_enum, default_value = "http")]
    pub protocol: Protocol,
    /// Another `eventfold` binary (e.g. the previous commit's) to run the
    /// same workloads on, interleaved, with the ratio of the two.
    #[arg(long, conflicts_with = "url")]
    pub versus: Option<PathBuf>,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            url: None,
            data_dir: PathBuf::from("target/bench-data"),
            seconds: 5.0,
            rounds: 3,
            protocol: Protocol::Http,
            versus: None,
        }
    }
}

/// Runs the append workloads and prints the table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let scratch = crate::scratch_dir(&args.data_dir, "run-")?;
    let fsyncs = fdatasync_rate(scratch.path(), Duration::from_secs(2), false)?;
    let overwrites = fdatasync_rate(scratch.path(), Duration::from_secs(2), true)?;

    let mut systems = vec![(
        "this build".to_owned(),
        System::Eventfold(
            match &args.url {
                Some(url) => Eventfold::connect(url),
                None => Eventfold::start(&scratch.path().join("this")).await?,
            }
            .with_protocol(args.protocol),
        ),
    )];
    if let Some(binary) = &args.versus {
        let launch = Launch {
            binary: Some(binary.clone()),
            args: Vec::new(),
        };
        let other = Eventfold::launch(&scratch.path().join("versus"), &launch).await?;
        systems.push((
            binary.display().to_string(),
            System::Eventfold(other.with_protocol(args.protocol)),
        ));
    }
    let seconds = Duration::from_secs_f64(args.seconds);
    // Per system, per workload: the rounds.
    let mut results: Vec<Vec<Vec<Round>>> = systems
        .iter()
        .map(|_| WORKLOADS.iter().map(|_| Vec::new()).collect())
        .collect();
    let measured: anyhow::Result<()> = async {
        for round in 0..args.rounds {
            for (i, workload) in WORKLOADS.iter().enumerate() {
                for s in rotation(systems.len(), round) {
                    let (name, system) = &systems[s];
                    let result = drive(system, *workload, seconds, round).await?;
                    eprintln!(
                        "round {} {:<24} {:>10.0} events/s  {name}",
                        round + 1,
                        workload.name,
                        result.events_per_sec
                    );
                    results[s][i].push(result);
                }
            }
        }
        Ok(())
    }
    .await;
    let names: Vec<String> = systems.iter().map(|(name, _)| name.clone()).collect();
    for (_, system) in systems {
        system.stop().await?;
    }
    measured?;
    let measures: Vec<Vec<Measure>> = results
        .into_iter()
        .map(|rounds| rounds.into_iter().map(Measure::from).collect())
        .collect();

    println!();
    println!(
        "disk: {fsyncs:.0} fdatasync/s appending 4 KiB, {overwrites:.0}/s overwriting, in {}",
        args.data_dir.display()
    );
    for (s, name) in names.iter().enumerate() {
        if names.len() > 1 {
            println!("{name}:");
        }
        println!(
            "{:<24} {:>12} {:>9} {:>9} {:>14} {:>10} {:>10}",
            "workload", "events/s", "p50 ms", "p99 ms", "events/fsync", "server µs", "client µs"
        );
        for (workload, m) in WORKLOADS.iter().zip(&measures[s]) {
            let server = m
                .server_cpu_us_per_request
                .map_or_else(|| "-".to_owned(), |us| format!("{us:.0}"));
            println!(
                "{:<24} {:>12.0} {:>9.2} {:>9.2} {:>14.2} {server:>10} {:>10.0}",
                workload.name,
                m.events_per_sec,
                m.p50_ms,
                m.p99_ms,
                m.events_per_sec / overwrites,
                m.client_cpu_us_per_request,
            );
        }
    }
    if let [this, versus] = measures.as_slice() {
        println!("this build against {}:", names[1]);
        println!("{:<24} {:>12} {:>12}", "workload", "events/s ×", "p99 ×");
        for (workload, (a, b)) in WORKLOADS.iter().zip(this.iter().zip(versus)) {
            println!(
                "{:<24} {:>12.3} {:>12.3}",
                workload.name,
                a.events_per_sec / b.events_per_sec,
                a.p99_ms / b.p99_ms,
            );
        }
    }
    println!(
        "({} rounds of {:.1} s each, median round; ≈200-byte JSON events, every append fsynced; events/fsync against the overwriting rate;",
        args.rounds, args.seconds
    );
    println!(
        " server µs, client µs = CPU time per request of the server (unknown with --url) and of the load generator)"
    );
    Ok(())
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
