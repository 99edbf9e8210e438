//! Reactor throughput: the same fold as a projection and as a reactor that
//! appends one event per event, over the same log, in one run.
//!
//! Each measurement fills a fresh embedded log with `--events` `job` events
//! (small JSON, appended in batches of 100 × 100 as `replay` does), deploys
//! one of the two builds of `plugins/test-plugins/relay-reactor` through
//! the library's plugin host, and times it from the deploy until its
//! checkpoint reaches the last source event. The reactor's outputs extend
//! the log; the clock stops at the source head all the same (its outputs
//! are appended before its checkpoint moves, so all of them are in by
//! then). The two alternate, in a different order each round; medians.
//!
//! After each reactor run the log is checked: exactly one `Relayed` event
//! per source event, at the positions right after the sources, gapless.
//!
//! Where the reactor's time goes: the plugin's own handle time (from its
//! `plugin_handle_seconds` series), and the time the log takes to append
//! the same outputs, measured directly: on a fresh log with the same
//! sources, one single-event append per output with the host's lineage
//! metadata, in `append_all` calls of one batch's worth (10,000), with ids
//! made as the host makes them (name-based, so in random order), and again
//! with ids that grow with the source position and with no ids at all
//! (the log generates them): what the idempotency index costs; and with
//! ids in source order, one append per stream: what the appends cost apart
//! from their events.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use eventfold::log::{
    EventFilter, EventLog, EventType, ExpectedVersion, NewEvent, Position, StreamAppend, StreamName,
};
use eventfold::metrics::Metrics;
use eventfold::plugins::{MAX_BATCH, OutputIds, PluginName, Plugins, PluginsConfig};
use serde::Deserialize;
use uuid::Uuid;

use crate::median;
use crate::replay::wait_until;

/// Options of the reactor benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Where the scratch data goes.
    #[arg(long, default_value = "target/bench-data")]
    pub data_dir: PathBuf,
    /// Source events in the log (category `job`).
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Distinct `job-…` streams the source events spread over.
    #[arg(long, default_value_t = 1000)]
    pub streams: u64,
    /// Rounds; the projection and the reactor alternate and medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Where the built Rust plugins are (eventfold-plugin-builds puts them there).
    #[arg(long, default_value = eventfold_plugin_builds::WASM_DIR)]
    pub plugins: PathBuf,
}

impl Default for Args {
    fn default() -> Self {
        crate::defaults()
    }
}

/// The two builds of the relay.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Build {
    /// `relay-projection`: counts, appends nothing.
    Projection,
    /// `relay-reactor`: counts, and appends one event per event.
    Reactor,
}

impl Build {
    /// The plugin's file in `--plugins`.
    fn wasm(self) -> &'static str {
        match self {
            Build::Projection => "relay_projection.wasm",
            Build::Reactor => "relay_reactor.wasm",
        }
    }

    /// Its name in the table, and the prefix of its plugin's name (short:
    /// the runner thread is `plugin-{name}`, which Linux cuts at 15 bytes).
    fn label(self) -> &'static str {
        match self {
            Build::Projection => "projection",
            Build::Reactor => "reactor",
        }
    }
}

/// What the outputs appended directly carry as ids.
#[derive(Clone, Copy)]
enum Ids {
    /// As the host makes them (`OutputIds`): deterministic, growing with
    /// the source position, so each goes to the index's end.
    Host,
    /// Random (v4), as name-based UUIDv5s are: each a random insert into
    /// the idempotency index (the host's ids before 2026-11-30).
    Random,
    /// None: the log generates them, and they need no index entry.
    Generated,
}

/// One way to append the reactor's outputs directly.
#[derive(Clone, Copy)]
struct Direct {
    /// Its name in the table.
    label: &'static str,
    ids: Ids,
    /// One append per stream and batch (in the order of their first
    /// output) instead of one per output.
    grouped: bool,
}

/// The ways the outputs are appended directly, in the table's order.
const DIRECT: [Direct; 4] = [
    Direct {
        label: "the host's ids (ordered by source)",
        ids: Ids::Host,
        grouped: false,
    },
    Direct {
        label: "random ids (as UUIDv5s were)",
        ids: Ids::Random,
        grouped: false,
    },
    Direct {
        label: "no ids (the log's own)",
        ids: Ids::Generated,
        grouped: false,
    },
    Direct {
        label: "the host's ids, by stream",
        ids: Ids::Host,
        grouped: true,
    },
];

/// The ids the host would give a reactor named `direct`.
fn direct_ids() -> OutputIds {
    OutputIds::of(&PluginName::new("direct").expect("a valid plugin name"))
}

impl Ids {
    /// The id of the output caused by the source at `position`.
    fn id(self, position: u64) -> Option<Uuid> {
        match self {
            Ids::Host => Some(direct_ids().id(position, 0)),
            Ids::Random => Some(Uuid::new_v4()),
            Ids::Generated => None,
        }
    }
}

/// One measurement of one build.
struct Run {
    /// From the deploy until the checkpoint reached the source head.
    took: Duration,
    /// The plugin's handle calls, summed (`plugin_handle_seconds`).
    handle: Duration,
    /// Its handle calls (batches).
    batches: u64,
    /// Outputs it appended (`plugin_outputs_appended`).
    outputs: u64,
    /// The fill of its log: the source events, 100 per append.
    fill: Duration,
    /// For the reactor: its outputs appended again directly on a fresh
    /// log, one time per [`DIRECT`].
    direct: Vec<Duration>,
}

/// The event a reactor output carries.
#[derive(Deserialize)]
struct Relayed {
    position: u64,
}

/// Runs the benchmark and prints its table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    let scratch = crate::scratch_dir(&args.data_dir, "reactor-")?;
    let mut projection = Vec::new();
    let mut reactor = Vec::new();
    for round in 0..args.rounds {
        // Alternate which goes first, so that both see the same machine.
        let order = if round % 2 == 0 {
            [Build::Projection, Build::Reactor]
        } else {
            [Build::Reactor, Build::Projection]
        };
        for build in order {
            let run = measure(&args, scratch.path(), build, round).await?;
            report_round(&args, build, round, &run);
            match build {
                Build::Projection => projection.push(run),
                Build::Reactor => reactor.push(run),
            }
        }
    }
    print(&args, &projection, &reactor);
    Ok(())
}

/// One build on a fresh log of its own: fill, deploy, time until the
/// checkpoint reaches the source head; for the reactor, check its outputs
/// and time the same appends made directly, each way on a fresh log.
async fn measure(args: &Args, dir: &Path, build: Build, round: usize) -> anyhow::Result<Run> {
    let wasm_path = args.plugins.join(build.wasm());
    let wasm: bytes::Bytes = std::fs::read(&wasm_path)
        .with_context(|| format!("reading {}", wasm_path.display()))?
        .into();
    let log_dir = dir.join(format!("log-{}-{round}", build.label()));
    let log = EventLog::open(&log_dir, Metrics::new())?;
    let filling = Instant::now();
    fill(&log, args.events, args.streams).await?;
    let filled = filling.elapsed();
    let head = log.head().0;
    ensure!(
        head == args.events,
        "the fill left {head} events in the log"
    );
    // The plugin host shares `dir` between runs: its compiled cache too.
    let metrics = Metrics::new();
    let config = PluginsConfig {
        metrics: metrics.clone(),
        ..PluginsConfig::default()
    };
    let plugins = Plugins::open(dir, log.clone(), config)?;
    // Compiled on the first run, from the cache after: not timed.
    plugins.check(wasm.clone()).await?;
    let name = PluginName::new(format!("{}-{round}", build.label()))?;
    let started = Instant::now();
    plugins.deploy(name.clone(), wasm).await?;
    wait_until(&plugins, &name, |s| s.checkpoint >= head).await?;
    let took = started.elapsed();
    let text = metrics.render("");
    let value = |family: &str| series(&text, family, &name).unwrap_or(0.0);
    let handle = Duration::from_secs_f64(value("plugin_handle_seconds_sum"));
    let batches = value("plugin_handle_seconds_count") as u64;
    let outputs = value("plugin_outputs_appended_total") as u64;
    plugins.remove(&name, true).await?;
    plugins.shutdown().await;
    let sources = match build {
        Build::Projection => {
            ensure!(log.head().0 == head, "the projection appended to the log");
            None
        }
        Build::Reactor => Some(check_outputs(&log, head, &name).await?),
    };
    log.shutdown().await;
    drop(log);
    remove(&log_dir)?;
    let mut direct = Vec::new();
    if let Some(sources) = sources {
        for way in DIRECT {
            direct.push(append_on_fresh_log(args, dir, &sources, way).await?);
        }
    }
    Ok(Run {
        took,
        handle,
        batches,
        outputs,
        fill: filled,
        direct,
    })
}

/// The value of `plugin`'s series of `family` (without the `eventfold_`
/// prefix) in the metrics' text exposition.
fn series(text: &str, family: &str, plugin: &PluginName) -> Option<f64> {
    let label = format!("plugin=\"{}\"", plugin.as_str());
    text.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        let (metric, labels) = key.split_once('{')?;
        (metric.ends_with(family) && labels.contains(&label))
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// Removes a log's directory.
fn remove(dir: &Path) -> anyhow::Result<()> {
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Appends `n` `JobQueued` events (≈50 bytes of JSON), 100 to a stream per
/// append and 100 appends per `append_all`, over `streams` streams.
async fn fill(log: &EventLog, n: u64, streams: u64) -> anyhow::Result<()> {
    let event_type = EventType::new("JobQueued")?;
    let mut position = 0;
    let mut block = 0;
    while position < n {
        let mut appends = Vec::new();
        while appends.len() < 100 && position < n {
            let stream = StreamName::new(format!("job-{}", block % streams))?;
            let count = 100.min(n - position);
            let events = (position..position + count)
                .map(|k| NewEvent {
                    id: None,
                    event_type: event_type.clone(),
                    data: format!(r#"{{"jobId":{k},"kind":"build","priority":{}}}"#, k % 5)
                        .into_bytes(),
                    metadata: b"{}".to_vec(),
                })
                .collect();
            appends.push(StreamAppend {
                stream,
                expected_version: ExpectedVersion::Any,
                events,
            });
            position += count;
            block += 1;
        }
        log.append_all(appends).await?;
    }
    Ok(())
}

/// Reads the whole log and checks the reactor's work: the `sources` first,
/// then exactly one `Relayed` event per source at the next positions,
/// gapless, each in `relayed-{its source's stream}` with its source's
/// position, appended by `reactor`. Answers each source's stream.
async fn check_outputs(
    log: &EventLog,
    sources: u64,
    reactor: &PluginName,
) -> anyhow::Result<Vec<String>> {
    let head = log.head().0;
    ensure!(
        head == 2 * sources,
        "{} events appended after {sources} sources, one output per source expected",
        head - sources
    );
    let mut streams = Vec::with_capacity(sources as usize);
    let mut relayed = vec![false; sources as usize];
    let own = serde_json::Value::from(reactor.as_str());
    let mut expected = 1;
    while expected <= head {
        let page = log
            .read_log(
                Position(expected),
                MAX_BATCH,
                EventFilter::default(),
                usize::MAX,
            )
            .await?;
        ensure!(!page.events.is_empty(), "no event at {expected}");
        for event in page.events {
            ensure!(
                event.position.0 == expected,
                "position {} where {expected} was expected",
                event.position.0
            );
            expected += 1;
            if event.position.0 <= sources {
                streams.push(event.stream);
                continue;
            }
            let data: Relayed = serde_json::from_slice(&event.data)
                .with_context(|| format!("the output at {}", event.position.0))?;
            let metadata: serde_json::Value = serde_json::from_slice(&event.metadata)?;
            let source = data.position;
            let ok = event.event_type == "Relayed"
                && (1..=sources).contains(&source)
                && event.stream == format!("relayed-{}", streams[source as usize - 1])
                && metadata["reactor"] == own
                && !std::mem::replace(&mut relayed[source as usize - 1], true);
            if !ok {
                bail!(
                    "unexpected output at {}: {} {} {} {}",
                    event.position.0,
                    event.stream,
                    event.event_type,
                    String::from_utf8_lossy(&event.data),
                    String::from_utf8_lossy(&event.metadata)
                );
            }
        }
    }
    ensure!(relayed.iter().all(|r| *r), "some sources have no output");
    Ok(streams)
}

/// Fills a fresh log with the same sources and appends the reactor's
/// outputs to it directly, `way`; the time of the appends.
async fn append_on_fresh_log(
    args: &Args,
    dir: &Path,
    sources: &[String],
    way: Direct,
) -> anyhow::Result<Duration> {
    let log_dir = dir.join("log-direct");
    let log = EventLog::open(&log_dir, Metrics::new())?;
    fill(&log, args.events, args.streams).await?;
    let took = append_directly(&log, sources, way).await;
    log.shutdown().await;
    drop(log);
    remove(&log_dir)?;
    took
}

/// Appends what the reactor appended once more, straight through `log`:
/// one event per source, with the host's lineage metadata and ids made
/// `way`, in one `append_all` per `MAX_BATCH` sources, as the runner does.
/// Only the `append_all` calls are timed.
async fn append_directly(
    log: &EventLog,
    sources: &[String],
    way: Direct,
) -> anyhow::Result<Duration> {
    let event_type = EventType::new("Relayed")?;
    let mut took = Duration::ZERO;
    for (batch, chunk) in sources.chunks(MAX_BATCH).enumerate() {
        let first = (batch * MAX_BATCH) as u64 + 1;
        let mut appends: Vec<StreamAppend> = Vec::with_capacity(chunk.len());
        // Each stream's append in `appends`, when grouped.
        let mut by_stream = std::collections::HashMap::new();
        for (stream, position) in chunk.iter().zip(first..) {
            let cause = Uuid::from_u128(u128::from(position));
            let metadata = format!(
                r#"{{"causation_id":"{cause}","correlation_id":"{cause}","causation_depth":1,"reactor":"direct"}}"#
            );
            let event = NewEvent {
                id: way.ids.id(position),
                event_type: event_type.clone(),
                data: format!(r#"{{"position":{position}}}"#).into_bytes(),
                metadata: metadata.into_bytes(),
            };
            match by_stream.get(stream) {
                Some(&index) if way.grouped => {
                    let append: &mut StreamAppend = &mut appends[index];
                    append.events.push(event);
                }
                _ => {
                    by_stream.insert(stream, appends.len());
                    appends.push(StreamAppend {
                        stream: StreamName::new(format!("relayed-{stream}"))?,
                        expected_version: ExpectedVersion::Any,
                        events: vec![event],
                    });
                }
            }
        }
        let started = Instant::now();
        log.append_all(appends).await?;
        took += started.elapsed();
    }
    Ok(took)
}

/// Prints one round's figures on stderr.
fn report_round(args: &Args, build: Build, round: usize, run: &Run) {
    let direct: Vec<String> = DIRECT
        .iter()
        .zip(&run.direct)
        .map(|(way, d)| format!("{} {:.2} s", way.label, d.as_secs_f64()))
        .collect();
    let direct = if direct.is_empty() {
        String::new()
    } else {
        format!("; appended directly: {}", direct.join(", "))
    };
    eprintln!(
        "round {}: {:<10} {:.2} s, {:.0} events/s, handle {:.2} s in {} calls, {} outputs \
         (log filled in {:.2} s){direct}",
        round + 1,
        build.label(),
        run.took.as_secs_f64(),
        args.events as f64 / run.took.as_secs_f64(),
        run.handle.as_secs_f64(),
        run.batches,
        run.outputs,
        run.fill.as_secs_f64(),
    );
}

/// Prints the table: medians of each build, the ratio, and where the
/// reactor's time goes.
fn print(args: &Args, projection: &[Run], reactor: &[Run]) {
    let events = args.events;
    let took = |runs: &[Run]| median(runs.iter().map(|r| r.took));
    let handle = |runs: &[Run]| median(runs.iter().map(|r| r.handle));
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    let ratio = rate(took(reactor)) / rate(took(projection));
    println!();
    println!(
        "relay over {events} `job` events ({} streams), one output per event for the reactor, median of {} rounds",
        args.streams, args.rounds
    );
    println!(
        "{:<12} {:>10} {:>9} {:>10}",
        "build", "events/s", "total s", "handle s"
    );
    for (label, runs) in [("projection", projection), ("reactor", reactor)] {
        println!(
            "{label:<12} {:>10.0} {:>9.2} {:>10.2}",
            rate(took(runs)),
            took(runs).as_secs_f64(),
            handle(runs).as_secs_f64()
        );
    }
    println!(
        "reactor ÷ projection: {ratio:.2}× (target ≥ 0.5×: {})",
        if ratio >= 0.5 { "met" } else { "not met" }
    );
    let outputs: Vec<u64> = reactor.iter().map(|r| r.outputs).collect();
    println!(
        "outputs appended by each reactor run: {outputs:?} (checked: one per source, right after the sources, gapless)"
    );
    println!();
    println!(
        "the same {events} outputs appended directly on a fresh log with the same sources \
         (one append_all per {MAX_BATCH} outputs, as the runner does)"
    );
    println!(
        "{:<32} {:>9} {:>13} {:>16}",
        "appends", "append s", "outputs/s", "÷ reactor total"
    );
    let fill = median(projection.iter().chain(reactor).map(|r| r.fill));
    let rows = DIRECT
        .iter()
        .enumerate()
        .map(|(i, way)| {
            let append = median(reactor.iter().map(|r| r.direct[i]));
            (way.label, append)
        })
        .chain([("the fill: 100 events each, no ids", fill)]);
    for (label, append) in rows {
        println!(
            "{label:<32} {:>9.2} {:>13.0} {:>16.2}",
            append.as_secs_f64(),
            rate(append),
            append.as_secs_f64() / took(reactor).as_secs_f64()
        );
    }
    println!(
        "(handle: the plugin's handle calls, host calls included (plugin_handle_seconds); the rest of the \
         reactor's total is its outputs' ids and metadata, their append and the state commits. One append \
         per output unless `by stream`)"
    );
}
