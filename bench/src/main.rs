//! `eventfold-bench`: benchmarks that print a table (never timed tests).
//!
//! - `append`: the append workloads of the targets over HTTP, with the disk's
//!   raw fdatasync rate measured in the same run.
//! - `replay`: a projection rebuilt from zero through a Rust WASM plugin and
//!   through the same fold written natively, plus deploy-to-first-event times.
//! - `languages`: the same projection in Rust, Python and JavaScript.
//! - `notify`: notifications delivered to a webhook receiver, against a bare
//!   loop of HTTP POSTs.
//! - `peers`: eventfold against Redis Streams and PostgreSQL in one run
//!   (appends, a read of the whole log, replay), with the targets
//!   (`docs/design.md#targets`) as ratios, written as JSON and a PNG chart.
//! - `storage`: the log's file size for 1 KB events against their payload.
//! - `streams`: the server's RSS and append rate as appends reach millions
//!   of distinct streams; `--compare`: 1,000 streams against 1 M.
//! - `overload`: appends offered open-loop at 4× what the server sustains:
//!   201s, 503 `overloaded` refusals and their latencies, and every 201
//!   read back.
//! - `rebuild`: append latency while a projection rebuilds, with and
//!   without `--replay-rate`, against no rebuild.
//! - `reactor`: a reactor appending one event per event against the same
//!   fold as a projection, with where the reactor's time goes.
//! - `jetstream`: eventfold on a JetStream cluster (R1 and R3) against the
//!   same appends published straight to JetStream, and its replay against
//!   an ordered consumer of the same stream.
//! - `all`: `peers`, `languages`, `notify` and `storage`.

mod append;
mod chart;
mod control;
mod http;
mod jetstream;
mod languages;
mod notify;
mod open_loop;
mod overload;
mod peers;
mod reactor;
mod rebuild;
mod replay;
mod storage;
mod streams;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Benchmarks eventfold.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Append throughput and latency over HTTP (the default).
    Append(append::Args),
    /// Replay from zero: WASM plugin vs native fold; deploy latency.
    Replay(replay::Args),
    /// The same projection in Rust, Python and JavaScript.
    Languages(languages::Args),
    /// Notifications delivered per second to a webhook receiver.
    Notify(notify::Args),
    /// eventfold against Redis Streams and PostgreSQL, started here, in one run.
    Peers(peers::Args),
    /// The log's file size for 1 KB events, against their payload.
    Storage(storage::Args),
    /// Server RSS and append rate against the number of streams (10 M by default).
    Streams(streams::Args),
    /// Appends offered open-loop at 4× what the server sustains: accepted,
    /// refused (503 overloaded) and their latencies; no 201 lost.
    Overload(overload::Args),
    /// Append latency during a projection's rebuild, with and without
    /// `--replay-rate`, against no rebuild.
    Rebuild(rebuild::Args),
    /// A reactor that appends one event per event against the same fold as
    /// a projection: events/s of each, and where the reactor's time goes.
    Reactor(reactor::Args),
    /// eventfold on JetStream (R1, R3) against JetStream direct: appends
    /// and replay.
    Jetstream(jetstream::Args),
    /// `peers`, `languages`, `notify` and `storage` with their defaults.
    All {
        /// Where data and the fsync probe go (the disk measured).
        #[arg(long, default_value = "target/bench-data")]
        data_dir: PathBuf,
    },
}

/// The middle of `values` once sorted (the upper of the two middle ones
/// of an even count); the default for none. Every table's round figures.
fn median<T: PartialOrd + Copy + Default>(values: impl IntoIterator<Item = T>) -> T {
    let mut values: Vec<T> = values.into_iter().collect();
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// A fresh directory under `data_dir` (created if missing) for one run's
/// data, removed when dropped.
fn scratch_dir(data_dir: &std::path::Path, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    use anyhow::Context as _;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    Ok(tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(data_dir)?)
}

fn defaults<T: clap::Args>() -> T {
    #[derive(Parser)]
    struct Wrapper<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }
    Wrapper::<T>::parse_from(["eventfold-bench"]).args
}

/// The server's allocator (host/src/main.rs), for what runs the library in
/// this process (the reactor benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // The peer benchmark runs the server in a process of its own: this
    // binary, re-executed as `eventfold-bench serve …`, is `eventfold serve`.
    if std::env::args().nth(1).as_deref() == Some("serve") {
        return match eventfold::cli::main() {
            std::process::ExitCode::SUCCESS => Ok(()),
            _ => anyhow::bail!("eventfold serve failed"),
        };
    }
    // The server's own log (warnings by default; RUST_LOG for more) on stderr.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    match Cli::parse().command {
        None => runtime.block_on(append::run(append::Args::default())),
        Some(Command::Append(args)) => runtime.block_on(append::run(args)),
        Some(Command::Replay(args)) => runtime.block_on(replay::run(args)),
        Some(Command::Languages(args)) => runtime.block_on(languages::run(args)),
        Some(Command::Notify(args)) => runtime.block_on(notify::run(args)),
        Some(Command::Peers(args)) => runtime.block_on(peers::run(args)),
        Some(Command::Storage(args)) => runtime.block_on(storage::run(args)),
        Some(Command::Streams(args)) => runtime.block_on(streams::run(args)),
        Some(Command::Overload(args)) => runtime.block_on(overload::run(args)),
        Some(Command::Rebuild(args)) => runtime.block_on(rebuild::run(args)),
        Some(Command::Reactor(args)) => runtime.block_on(reactor::run(args)),
        Some(Command::Jetstream(args)) => runtime.block_on(jetstream::run(args)),
        Some(Command::All { data_dir }) => {
            // `peers` covers the append and replay benchmarks.
            runtime.block_on(peers::run(peers::Args {
                data_dir: data_dir.clone(),
                ..Default::default()
            }))?;
            runtime.block_on(languages::run(languages::Args {
                data_dir: data_dir.clone(),
                ..Default::default()
            }))?;
            runtime.block_on(notify::run(notify::Args {
                data_dir: data_dir.clone(),
                ..Default::default()
            }))?;
            runtime.block_on(storage::run(storage::Args {
                data_dir,
                ..Default::default()
            }))
        }
    }
}
