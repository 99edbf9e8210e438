//! eventfold side by side with Redis Streams and PostgreSQL, in one run on
//! loopback: the same load generator and the same ≈200-byte JSON events for
//! all, systems alternating between rounds (eventfold twice: appending over
//! HTTP and over its append socket); the disk's fsync rate and
//! a replay through a WASM plugin against the native fold in the same run;
//! one table, the targets (`docs/design.md#targets`) as ratios, and the
//! report as JSON and as a PNG chart.

pub mod cpu;
mod eventfold;
mod jetstream;
mod postgres;
mod redis;
mod report;
mod service;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

pub use self::eventfold::{Eventfold, Launch, Protocol};
pub use self::jetstream::{DirectJetStream, leader_of};
use self::postgres::Postgres;
use self::redis::Redis;
use self::report::Replay;
pub use self::report::{Measure, Report};
use crate::append::fdatasync_rate;

/// The benchmark's event type.
pub const EVENT_TYPE: &str = "OrderPlaced";
/// The benchmark's event data: with its type, about 200 bytes of JSON.
pub const EVENT_DATA: &str = r#"{"orderId":"ord-5f0c2a9e-7d41","customerId":"cus-81b3","currency":"EUR","amount":129.95,"items":[{"sku":"SKU-1042","qty":2,"price":39.99},{"sku":"SKU-2210","qty":1,"price":49.97}],"channel":"web"}"#;
/// Events per page when reading the log.
pub const PAGE: u64 = 1000;

/// Options of the peer benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Where the servers' data and the fsync probe go (the disk measured).
    #[arg(long, default_value = "target/bench-data")]
    pub data_dir: PathBuf,
    /// Where the report goes: `peers.json` and `peers.png`.
    #[arg(long, default_value = "target/bench-report")]
    pub out: PathBuf,
    /// Seconds each append workload runs per system and round.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Events read from each log, and replayed.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Where the built Rust plugins are (eventfold-plugin-builds puts them there).
    #[arg(long, default_value = eventfold_plugin_builds::WASM_DIR)]
    pub plugins: PathBuf,
}

impl Default for Args {
    fn default() -> Self {
        crate::defaults()
    }
}

/// One append workload: `clients` concurrent clients, each sending requests
/// of `events` events one after the other.
#[derive(Clone, Copy)]
pub struct Workload {
    /// How the table names it.
    pub name: &'static str,
    /// Concurrent clients.
    pub clients: usize,
    /// Events per request.
    pub events: usize,
}

/// The append workloads of the targets (`docs/design.md#targets`).
pub const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "1 client x 1 event",
        clients: 1,
        events: 1,
    },
    Workload {
        name: "32 clients x 1 event",
        clients: 32,
        events: 1,
    },
    Workload {
        name: "4 clients x 100 events",
        clients: 4,
        events: 100,
    },
];

/// How the table names eventfold appending over HTTP.
pub const EVENTFOLD_HTTP: &str = "eventfold HTTP";
/// How the table names eventfold appending over its append socket.
pub const EVENTFOLD_SOCKET: &str = "eventfold socket";
/// How the table names Redis.
pub const REDIS: &str = "Redis";
/// How the table names PostgreSQL.
pub const POSTGRES: &str = "PostgreSQL";
/// How the table names JetStream published to directly.
pub const JETSTREAM: &str = "JetStream direct";

/// A running system under test.
pub enum System {
    /// eventfold, over HTTP or over its append socket.
    Eventfold(Eventfold),
    /// Redis Streams, every write fsynced.
    Redis(Redis),
    /// PostgreSQL with a Message-DB-like table.
    Postgres(Postgres),
    /// A JetStream stream published to with `async-nats` (the `jetstream`
    /// benchmark's peer; appends only).
    JetStream(DirectJetStream),
}

/// One client of a system, appending to a stream of its own.
enum Client {
    Eventfold(eventfold::Client),
    Redis(redis::Client),
    Postgres(postgres::Client),
    JetStream(Box<jetstream::Client>),
}

impl System {
    fn name(&self) -> &'static str {
        match self {
            System::Eventfold(s) => match s.protocol() {
                Protocol::Http => EVENTFOLD_HTTP,
                Protocol::Socket => EVENTFOLD_SOCKET,
            },
            System::Redis(_) => REDIS,
            System::Postgres(_) => POSTGRES,
            System::JetStream(_) => JETSTREAM,
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            System::Eventfold(s) => s.pid(),
            System::Redis(s) => Some(s.pid()),
            System::Postgres(s) => Some(s.pid()),
            System::JetStream(_) => None,
        }
    }

    /// Its name and version, as the server reports it.
    async fn version(&self) -> anyhow::Result<String> {
        Ok(match self {
            System::Eventfold(_) => format!("eventfold {}", env!("CARGO_PKG_VERSION")),
            System::Redis(s) => format!("{REDIS} {}", s.version().await?),
            System::Postgres(s) => format!("{POSTGRES} {}", s.version().await?),
            System::JetStream(s) => format!("{JETSTREAM}, nats-server {}", s.version()),
        })
    }

    /// Whether the read is measured through it: eventfold's log is read
    /// once, over HTTP, whatever its appends went over.
    fn reads(&self) -> bool {
        match self {
            System::Eventfold(s) => s.protocol() == Protocol::Http,
            System::JetStream(_) => false,
            System::Redis(_) | System::Postgres(_) => true,
        }
    }

    async fn client(&self, stream: &str, batch: usize) -> anyhow::Result<Client> {
        Ok(match self {
            System::Eventfold(s) => Client::Eventfold(s.client(stream, batch).await?),
            System::Redis(s) => Client::Redis(s.client(stream, batch).await?),
            System::Postgres(s) => Client::Postgres(s.client(stream, batch).await?),
            System::JetStream(s) => Client::JetStream(Box::new(s.client(stream, batch))),
        })
    }

    /// Makes sure the log holds at least `n` events to read.
    async fn fill(&self, n: u64) -> anyhow::Result<()> {
        let have = match self {
            System::Eventfold(s) => s.count().await?,
            System::Redis(s) => return s.fill_log(n).await,
            System::Postgres(s) => s.count().await?,
            System::JetStream(_) => anyhow::bail!("{JETSTREAM} is not read here"),
        };
        if have >= n {
            return Ok(());
        }
        let requests = (n - have).div_ceil(PAGE);
        let mut tasks = Vec::new();
        for i in 0..4 {
            let mut client = self.client(&format!("fill-{i}"), PAGE as usize).await?;
            let mine = requests / 4 + u64::from(i < requests % 4);
            tasks.push(tokio::spawn(async move {
                for _ in 0..mine {
                    client.append().await?;
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    }

    async fn read(&self, n: u64) -> anyhow::Result<Vec<Duration>> {
        match self {
            System::Eventfold(s) => s.read(n).await,
            System::Redis(s) => s.read(n).await,
            System::Postgres(s) => s.read(n).await,
            System::JetStream(_) => anyhow::bail!("{JETSTREAM} is not read here"),
        }
    }

    /// Stops it, if it was started here.
    pub async fn stop(self) -> anyhow::Result<()> {
        match self {
            System::Eventfold(s) => s.stop().await,
            System::Redis(s) => s.stop().await,
            System::Postgres(s) => s.stop().await,
            System::JetStream(s) => s.delete().await,
        }
    }
}

impl Client {
    async fn append(&mut self) -> anyhow::Result<()> {
        match self {
            Client::Eventfold(c) => c.append().await,
            Client::Redis(c) => c.append().await,
            Client::Postgres(c) => c.append().await,
            Client::JetStream(c) => c.append().await,
        }
    }
}

/// Runs the comparison, prints the table and writes the report.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("peers-")
        .tempdir_in(&args.data_dir)?;
    let fsync_append = fdatasync_rate(scratch.path(), Duration::from_secs(2), false)?;
    let fsync_overwrite = fdatasync_rate(scratch.path(), Duration::from_secs(2), true)?;
    eprintln!("disk: {fsync_append:.0} fdatasync/s appending, {fsync_overwrite:.0}/s overwriting");

    let eventfold = Eventfold::start(scratch.path()).await?;
    let systems = vec![
        System::Eventfold(eventfold.over(Protocol::Socket)),
        System::Eventfold(eventfold),
        System::Redis(Redis::start(scratch.path()).await?),
        System::Postgres(Postgres::start(scratch.path()).await?),
    ];
    let mut versions = Vec::new();
    for system in systems.iter().filter(|s| s.reads()) {
        let version = system.version().await?;
        eprintln!(
            "{version} running, pid {}",
            system.pid().unwrap_or_default()
        );
        versions.push(version);
    }
    let measured = measure_all(&args, &systems).await;
    for system in systems {
        system.stop().await?;
    }
    let (appends, reads) = measured?;

    eprintln!(
        "replaying {} events: WASM plugin and native fold",
        args.events
    );
    let replay = crate::replay::measure(crate::replay::Args {
        data_dir: scratch.path().to_owned(),
        events: args.events,
        rounds: args.rounds,
        plugins: args.plugins.clone(),
        ..Default::default()
    })
    .await?;

    let report = Report::new(
        &args,
        versions,
        (fsync_append, fsync_overwrite),
        appends,
        reads,
        Replay::from(&replay),
        started.elapsed(),
    );
    report.print();
    let json = args.out.join("peers.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let png = args.out.join("peers.png");
    report.chart(&png)?;
    println!("report: {} and {}", json.display(), png.display());
    Ok(())
}

/// Each system's name and measure.
pub type Measures = Vec<(&'static str, Measure)>;

/// Append workloads and reads, every system in every round, the systems'
/// order rotating from round to round.
async fn measure_all(args: &Args, systems: &[System]) -> anyhow::Result<(Vec<Measures>, Measures)> {
    let seconds = Duration::from_secs_f64(args.seconds);
    let mut appends: Vec<Vec<Vec<Round>>> = WORKLOADS
        .iter()
        .map(|_| systems.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..args.rounds {
        for (w, workload) in WORKLOADS.iter().enumerate() {
            for s in rotation(systems.len(), round) {
                let result = drive(&systems[s], *workload, seconds, round).await?;
                log_round(round, workload.name, &systems[s], &result);
                appends[w][s].push(result);
            }
        }
    }
    let readers: Vec<&System> = systems.iter().filter(|s| s.reads()).collect();
    for system in &readers {
        eprintln!(
            "{}: filling to {} events to read",
            system.name(),
            args.events
        );
        system.fill(args.events).await?;
    }
    let mut reads: Vec<Vec<Round>> = readers.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for s in rotation(readers.len(), round) {
            let cpu = cpu::Clock::start(readers[s].pid());
            let started = Instant::now();
            let latencies = readers[s].read(args.events).await?;
            let elapsed = started.elapsed();
            let (server_cpu, client_cpu) = cpu.stop();
            let result = Round {
                events_per_sec: args.events as f64 / elapsed.as_secs_f64(),
                latencies,
                server_cpu,
                client_cpu,
            };
            log_round(round, "read", readers[s], &result);
            reads[s].push(result);
        }
    }
    let named = |systems: Vec<&System>, rounds: Vec<Vec<Round>>| -> Measures {
        systems
            .into_iter()
            .zip(rounds)
            .map(|(s, r)| (s.name(), Measure::from(r)))
            .collect()
    };
    Ok((
        appends
            .into_iter()
            .map(|w| named(systems.iter().collect(), w))
            .collect(),
        named(readers, reads),
    ))
}

/// The systems' indices in the order they run in `round`: rotated by one
/// each round, so that none always runs first (whoever follows a heavy
/// workload pays for its writeback: one binary A/B'd against itself gave
/// the first 0.95x at 1 client).
pub fn rotation(systems: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..systems).map(move |i| (i + round) % systems)
}

fn log_round(round: usize, what: &str, system: &System, result: &Round) {
    eprintln!(
        "round {} {what:<24} {:<16} {:>10.0} events/s",
        round + 1,
        system.name(),
        result.events_per_sec
    );
}

/// A tag for this run of the benchmark: its start, in seconds since the epoch.
pub fn run_tag() -> u64 {
    static TAG: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TAG.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// One system's result in one round.
pub struct Round {
    /// Events appended (or read) per second.
    pub events_per_sec: f64,
    /// Each request's latency.
    pub latencies: Vec<Duration>,
    /// CPU time the server's processes used meanwhile (unknown for a server
    /// not started here).
    pub server_cpu: Option<Duration>,
    /// CPU time the load generator (this process) used meanwhile.
    pub client_cpu: Duration,
}

/// Runs one workload against one system for `duration`; `round` names the
/// streams (with a tag of this run, so that a server already running can be
/// driven again, and the system's name).
pub async fn drive(
    system: &System,
    workload: Workload,
    duration: Duration,
    round: usize,
) -> anyhow::Result<Round> {
    let mut clients = Vec::new();
    for client in 0..workload.clients {
        // Systems may share a server (eventfold over HTTP and over its
        // socket): each gets streams of its own.
        let stream = format!(
            "bench{}x{}-{client}-r{round}-{}-{}",
            workload.clients,
            workload.events,
            run_tag(),
            system.name().replace(' ', "-")
        );
        clients.push(system.client(&stream, workload.events).await?);
    }
    let cpu = cpu::Clock::start(system.pid());
    let started = Instant::now();
    let deadline = started + duration;
    let barrier = Arc::new(tokio::sync::Barrier::new(workload.clients));
    let mut tasks = Vec::new();
    for mut client in clients {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                client.append().await?;
                latencies.push(sent.elapsed());
            }
            // The client too: its connection (a PostgreSQL backend) closes
            // after the CPU clock has stopped.
            anyhow::Ok((latencies, client))
        }));
    }
    let mut latencies = Vec::new();
    let mut clients = Vec::new();
    for task in tasks {
        let (mine, client) = task.await??;
        latencies.extend(mine);
        clients.push(client);
    }
    let elapsed = started.elapsed();
    let (server_cpu, client_cpu) = cpu.stop();
    drop(clients);
    let events = latencies.len() * workload.events;
    Ok(Round {
        events_per_sec: events as f64 / elapsed.as_secs_f64(),
        latencies,
        server_cpu,
        client_cpu,
    })
}
