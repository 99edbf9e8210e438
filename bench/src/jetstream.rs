//! eventfold on a JetStream cluster against JetStream itself, in one run.
//!
//! Starts a local 3-node cluster (`scripts/nats-cluster`, its own ports and
//! data under `--data-dir`) unless `--nats-url` names one. For each
//! replication factor (`--replicas 1,3`):
//!
//! - **appends**: eventfold `serve --log jetstream` on a stream of its own,
//!   appended to over HTTP, against the same load published straight to
//!   another stream with `async-nats` ([`DirectJetStream`]); the workloads
//!   of `append`, alternating between the two, round after round, each
//!   with the CPU time per request of eventfold, of the cluster's
//!   nats-servers and of the load generator (they share the machine);
//! - **replay**: the log filled with `--events` orders, the trivial
//!   counter plugin deployed, then replayed from zero (timed from the
//!   request to the swap), against an ordered pull consumer of `async-nats`
//!   reading the same stream from its first message, alternating.
//!
//! The same replay on the embedded log is the reference row.
//!
//! Both sides talk to the server that leads their stream: eventfold is
//! restarted connected to the leader of the stream it created, and the
//! direct stream is created again until that server leads it too. A
//! publish one route hop away from its stream's leader moved either side's
//! figures by 2x, so that ratios depended on where the streams landed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures_util::StreamExt;

use crate::control;
use crate::http::Connection;
use crate::median;
use crate::peers::cpu;
use crate::peers::{
    DirectJetStream, Eventfold, Launch, Measure, Protocol, Round, System, WORKLOADS, drive,
    leader_of, rotation, run_tag,
};

/// Options of the JetStream benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Where eventfold's data (and the cluster started here) go.
    #[arg(long, default_value = "target/bench-data")]
    pub data_dir: PathBuf,
    /// A running cluster's URLs (comma-separated) instead of starting one.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// The first client port of the cluster started here (three in a row).
    #[arg(long, default_value_t = 14222)]
    pub base_port: u16,
    /// Replication factors measured, in turn.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub replicas: Vec<usize>,
    /// Seconds each append workload runs per system and round.
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// Rounds of appends and of replays; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Events in the log for the replay (0: no replay).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Where the built Rust plugins are (eventfold-plugin-builds puts them there).
    #[arg(long, default_value = eventfold_plugin_builds::WASM_DIR)]
    pub plugins: PathBuf,
    /// How eventfold's clients append: `http` or `socket` (the append socket).
    #[arg(long, value_enum, default_value = "http")]
    pub protocol: Protocol,
    /// The direct publishes carry a message id and the expected last
    /// sequence, as eventfold's do (what JetStream's checks cost).
    #[arg(long)]
    pub guarded: bool,
}

/// The plugin replayed: `plugins/counter` (counts events; the log's read
/// is most of its time).
const WASM: &str = "counter.wasm";
/// Its name on the server.
const PLUGIN: &str = "counter";

/// Replays of one log, eventfold's and the bare reader's, events/s.
struct Replays {
    label: String,
    events: u64,
    eventfold: Vec<f64>,
    consumer: Vec<f64>,
}

/// Runs the benchmark and prints its tables.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let scratch = crate::scratch_dir(&args.data_dir, "jetstream-")?;
    let cluster = match &args.nats_url {
        Some(_) => None,
        None => Some(Cluster::start(
            &scratch.path().join("nats"),
            args.base_port,
        )?),
    };
    let urls = match (&args.nats_url, &cluster) {
        (Some(urls), _) => urls.clone(),
        (None, Some(cluster)) => cluster.urls(),
        (None, None) => bail!("no cluster"),
    };
    let nats_pids = cluster.as_ref().map(Cluster::pids).unwrap_or_default();
    let measured = measure(&args, scratch.path(), &urls, &nats_pids).await;
    if let Some(cluster) = cluster {
        cluster.stop()?;
    }
    let (appends, replays) = measured?;
    print(&args, &appends, &replays);
    Ok(())
}

/// Per replication factor, per system (eventfold, direct), per workload.
type Appends = Vec<(usize, [Vec<Appended>; 2])>;

/// One round of one system, with the CPU time the nats-servers used in it.
type RoundNats = (Round, Option<Duration>);

/// One system's appends in one workload, over every round.
struct Appended {
    measure: Measure,
    /// CPU time the cluster's nats-servers used per request meanwhile, in µs
    /// (`None`: a cluster not started here).
    nats_cpu_us_per_request: Option<f64>,
}

async fn measure(
    args: &Args,
    scratch: &Path,
    urls: &str,
    nats_pids: &[u32],
) -> anyhow::Result<(Appends, Vec<Replays>)> {
    let wasm_path = args.plugins.join(WASM);
    let wasm =
        std::fs::read(&wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
    let servers: Vec<&str> = urls.split(',').collect();
    let client = async_nats::connect(servers.as_slice())
        .await
        .with_context(|| format!("connecting to NATS at {urls}"))?;
    let names = server_names(&servers).await?;
    let mut appends = Vec::new();
    let mut replays = Vec::new();
    for &replicas in &args.replicas {
        let stream = format!("efbench-r{replicas}-{}", run_tag());
        let launch = |nats_url: &str| Launch {
            binary: None,
            args: [
                "--log",
                "jetstream",
                "--nats-url",
                nats_url,
                "--nats-stream",
                &stream,
                "--nats-replicas",
                &replicas.to_string(),
            ]
            .map(String::from)
            .to_vec(),
        };
        let scratch = scratch.join(format!("r{replicas}"));
        let eventfold = Eventfold::launch(&scratch.join("created"), &launch(urls)).await?;
        let leader = leader_of(&client, &stream).await?;
        let near = names.iter().find(|(name, _)| *name == leader);
        let (eventfold, near_client) = match near {
            Some((_, near)) => {
                eventfold.stop().await?;
                let eventfold = Eventfold::launch(&scratch.join("near"), &launch(near)).await?;
                (eventfold, async_nats::connect(near.as_str()).await?)
            }
            None => (eventfold, client.clone()),
        };
        let url = eventfold.url().to_owned();
        let direct = format!("direct-r{replicas}-{}", run_tag());
        let direct = DirectJetStream::create(
            near_client.clone(),
            &direct,
            replicas,
            args.guarded,
            &leader,
        )
        .await?;
        eprintln!(
            "R{replicas}: eventfold on stream {stream}, JetStream direct on nats-server {}; \
             both streams led by {leader}, {}",
            direct.version(),
            match near {
                Some((_, url)) => format!("both connected to it ({url})"),
                None => "which no URL given names: connected at random".to_owned(),
            }
        );
        let eventfold = eventfold.with_protocol(args.protocol);
        let systems = [System::Eventfold(eventfold), System::JetStream(direct)];
        let measured = append_rounds(args, &systems, nats_pids).await;
        let replayed = match (&measured, args.events) {
            (Ok(_), 1..) => {
                let label = format!("JetStream R{replicas}");
                let consumer = Some((&near_client, stream.as_str()));
                Some(replay(args, &url, consumer, wasm.clone(), label).await)
            }
            _ => None,
        };
        for system in systems {
            system.stop().await?;
        }
        appends.push((replicas, measured?));
        if let Some(replayed) = replayed {
            replays.push(replayed?);
        }
    }
    if args.events > 0 {
        let embedded = Eventfold::launch(&scratch.join("embedded"), &Launch::default()).await?;
        let url = embedded.url().to_owned();
        let replayed = replay(args, &url, None, wasm, "embedded (reference)".into()).await;
        embedded.stop().await?;
        replays.push(replayed?);
    }
    Ok((appends, replays))
}

/// Each server's name, with its URL among `urls`.
async fn server_names(urls: &[&str]) -> anyhow::Result<Vec<(String, String)>> {
    let mut names = Vec::new();
    for &url in urls {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        names.push((client.server_info().server_name, url.to_owned()));
    }
    Ok(names)
}

/// The append workloads on eventfold and on JetStream direct, alternating,
/// with the CPU time the nats-servers (`nats_pids`) use meanwhile.
async fn append_rounds(
    args: &Args,
    systems: &[System; 2],
    nats_pids: &[u32],
) -> anyhow::Result<[Vec<Appended>; 2]> {
    let seconds = Duration::from_secs_f64(args.seconds);
    let mut rounds: [Vec<Vec<RoundNats>>; 2] =
        std::array::from_fn(|_| WORKLOADS.iter().map(|_| Vec::new()).collect());
    for round in 0..args.rounds {
        for (w, workload) in WORKLOADS.iter().enumerate() {
            for s in rotation(systems.len(), round) {
                let nats_before = cpu::trees(nats_pids);
                let result = drive(&systems[s], *workload, seconds, round).await?;
                let nats = nats_before
                    .zip(cpu::trees(nats_pids))
                    .map(|(before, after)| after.saturating_sub(before));
                eprintln!(
                    "round {} {:<24} {:>10.0} events/s  {}",
                    round + 1,
                    workload.name,
                    result.events_per_sec,
                    ["eventfold", "JetStream direct"][s]
                );
                rounds[s][w].push((result, nats));
            }
        }
    }
    Ok(rounds.map(|per_workload| per_workload.into_iter().map(Appended::from).collect()))
}

impl From<Vec<RoundNats>> for Appended {
    fn from(rounds: Vec<RoundNats>) -> Self {
        let requests = rounds.iter().map(|(r, _)| r.latencies.len()).sum::<usize>();
        let nats: Option<Duration> = rounds.iter().map(|(_, nats)| *nats).sum();
        Self {
            nats_cpu_us_per_request: nats
                .map(|cpu| cpu.as_secs_f64() * 1e6 / requests.max(1) as f64),
            measure: Measure::from(rounds.into_iter().map(|(r, _)| r).collect::<Vec<_>>()),
        }
    }
}

/// Fills the log of the server at `url` with `--events` orders, deploys the
/// counter and replays it `--rounds` times, each time after reading the same
/// stream with an ordered consumer if `consumer` names one.
async fn replay(
    args: &Args,
    url: &str,
    consumer: Option<(&async_nats::Client, &str)>,
    wasm: Vec<u8>,
    label: String,
) -> anyhow::Result<Replays> {
    let started = Instant::now();
    control::fill_orders(url, args.events, 1000).await?;
    eprintln!(
        "{label}: filled {} events in {:.1} s",
        args.events,
        started.elapsed().as_secs_f64()
    );
    control::deploy(url, PLUGIN, wasm).await?;
    let mut connection = Connection::open(url).await?;
    let head = control::status(&mut connection, PLUGIN).await?.head;
    let mut replays = Replays {
        label,
        events: head,
        eventfold: Vec::new(),
        consumer: Vec::new(),
    };
    for round in 0..args.rounds {
        if let Some((client, stream)) = consumer {
            let rate = read_ordered(client, stream, head).await?;
            eprintln!("round {} ordered consumer {rate:>10.0} events/s", round + 1);
            replays.consumer.push(rate);
        }
        let started = Instant::now();
        control::replay(&mut connection, PLUGIN).await?;
        let rate = head as f64 / started.elapsed().as_secs_f64();
        eprintln!(
            "round {} eventfold replay  {rate:>10.0} events/s",
            round + 1
        );
        replays.eventfold.push(rate);
    }
    Ok(replays)
}

/// Reads the first `count` messages of `stream` with an ordered pull
/// consumer; messages a second.
async fn read_ordered(
    client: &async_nats::Client,
    stream: &str,
    count: u64,
) -> anyhow::Result<f64> {
    let context = async_nats::jetstream::new(client.clone());
    let started = Instant::now();
    let consumer = context
        .get_stream(stream)
        .await?
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut read = 0u64;
    let mut bytes = 0usize;
    while read < count {
        let message = messages
            .next()
            .await
            .with_context(|| format!("the stream ended after {read} messages"))??;
        bytes += message.payload.len();
        read += 1;
    }
    let elapsed = started.elapsed();
    std::hint::black_box(bytes);
    Ok(read as f64 / elapsed.as_secs_f64())
}

/// A 3-node cluster started here with `scripts/nats-cluster`.
struct Cluster {
    dir: PathBuf,
    base_port: u16,
}

/// The script that runs a local cluster.
const NATS_CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/nats-cluster");

impl Cluster {
    fn start(dir: &Path, base_port: u16) -> anyhow::Result<Self> {
        let status = Command::new(NATS_CLUSTER)
            .arg("start")
            .arg("--dir")
            .arg(dir)
            .args(["--base-port", &base_port.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .with_context(|| format!("running {NATS_CLUSTER}"))?;
        if !status.success() {
            bail!("{NATS_CLUSTER} start failed: {status}");
        }
        Ok(Self {
            dir: dir.to_owned(),
            base_port,
        })
    }

    /// The nodes' PIDs, from the files the script keeps.
    fn pids(&self) -> Vec<u32> {
        (1..=3)
            .filter_map(|i| std::fs::read_to_string(self.dir.join(format!("n{i}.pid"))).ok())
            .filter_map(|pid| pid.trim().parse().ok())
            .collect()
    }

    fn urls(&self) -> String {
        (0..3)
            .map(|i| format!("nats://127.0.0.1:{}", self.base_port + i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn stop(self) -> anyhow::Result<()> {
        let status = Command::new(NATS_CLUSTER)
            .arg("stop")
            .arg("--dir")
            .arg(&self.dir)
            .status()
            .with_context(|| format!("running {NATS_CLUSTER}"))?;
        if !status.success() {
            bail!("{NATS_CLUSTER} stop failed: {status}");
        }
        Ok(())
    }
}

/// Where the two cores went: CPU time per request of each process, and
/// the cores that kept busy at the rate measured.
fn print_cpu(eventfold: &[Appended], direct: &[Appended]) {
    println!(
        "CPU per request, µs: eventfold + nats-servers + load generator = total (cores busy at that rate)"
    );
    let side = |a: &Appended, events_per_request: usize| {
        let m = &a.measure;
        let parts = [m.server_cpu_us_per_request, a.nats_cpu_us_per_request]
            .into_iter()
            .flatten()
            .chain([m.client_cpu_us_per_request]);
        let total: f64 = parts.clone().sum();
        let requests_per_sec = m.events_per_sec / events_per_request as f64;
        let terms: Vec<String> = parts.map(|us| format!("{us:.0}")).collect();
        format!(
            "{} = {total:.0} ({:.2})",
            terms.join(" + "),
            total * requests_per_sec / 1e6
        )
    };
    for (workload, (e, d)) in WORKLOADS.iter().zip(eventfold.iter().zip(direct)) {
        let events = workload.events;
        println!(
            "{:<24} {:<34} direct: {}",
            workload.name,
            side(e, events),
            side(d, events)
        );
    }
}

fn print(args: &Args, appends: &Appends, replays: &[Replays]) {
    for (replicas, [eventfold, direct]) in appends {
        println!();
        println!(
            "JetStream R{replicas}: eventfold over {} against the same appends published with async-nats",
            match args.protocol {
                Protocol::Http => "HTTP",
                Protocol::Socket => "its append socket",
            }
        );
        println!(
            "{:<24} {:>14} {:>9} {:>14} {:>9} {:>8}",
            "workload", "eventfold ev/s", "p99 ms", "direct ev/s", "p99 ms", "ratio"
        );
        for (workload, (e, d)) in WORKLOADS.iter().zip(eventfold.iter().zip(direct)) {
            let (e, d) = (&e.measure, &d.measure);
            println!(
                "{:<24} {:>14.0} {:>9.2} {:>14.0} {:>9.2} {:>8.2}",
                workload.name,
                e.events_per_sec,
                e.p99_ms,
                d.events_per_sec,
                d.p99_ms,
                e.events_per_sec / d.events_per_sec
            );
        }
        print_cpu(eventfold, direct);
    }
    if !replays.is_empty() {
        println!();
        println!(
            "replay from zero: the counter plugin rebuilt (request to swap) against an ordered pull consumer of the same stream"
        );
        println!(
            "{:<24} {:>10} {:>16} {:>16} {:>8}",
            "log", "events", "eventfold ev/s", "consumer ev/s", "ratio"
        );
        for replay in replays {
            let eventfold = median(replay.eventfold.iter().copied());
            let (consumer, ratio) = match replay.consumer.is_empty() {
                true => ("-".to_owned(), "-".to_owned()),
                false => {
                    let consumer = median(replay.consumer.iter().copied());
                    (
                        format!("{consumer:.0}"),
                        format!("{:.2}", eventfold / consumer),
                    )
                }
            };
            println!(
                "{:<24} {:>10} {:>16.0} {:>16} {:>8}",
                replay.label, replay.events, eventfold, consumer, ratio
            );
        }
    }
    let direct = match args.guarded {
        true => "the direct ones too (--guarded)",
        false => "the direct ones neither",
    };
    println!(
        "({} rounds, medians; appends of {:.1} s per workload and system; ≈200-byte JSON events; eventfold's events carry ids and expected sequences, {direct})",
        args.rounds, args.seconds
    );
}
