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
//! Where the reactor's time goes: the plugin's own handle time (from its
//! `plugin_handle_seconds` series), and the time the log takes to append
//! the same outputs, measured directly on the same log right after: as
//! many single-event appends with ids and the same metadata, in
//! `append_all` calls of one batch's worth (10,000).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use eventfold::log::{
    EventFilter, EventLog, EventType, ExpectedVersion, NewEvent, Position, StreamAppend,
    StreamName,
};
use eventfold::metrics::Metrics;
use eventfold::plugins::{MAX_BATCH, PluginName, Plugins, PluginsConfig};
use serde::Deserialize;
use uuid::Uuid;

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
    /// The reactor's outputs appended again directly with `append_all`.
    direct_append: Option<Duration>,
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
/// and time the same appends made directly.
async fn measure(args: &Args, dir: &Path, build: Build, round: usize) -> anyhow::Result<Run> {
    let wasm_path = args.plugins.join(build.wasm());
    let wasm: bytes::Bytes = std::fs::read(&wasm_path)
        .with_context(|| format!("reading {}", wasm_path.display()))?
        .into();
    let log_dir = dir.join(format!("log-{}-{round}", build.label()));
    let log = EventLog::open(&log_dir, Metrics::new())?;
    fill(&log, args.events, args.streams).await?;
    let head = log.head().0;
    ensure!(head == args.events, "the fill left {head} events in the log");
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
    let series = metrics.plugins.series(name.as_str());
    let (handle, batches) = (series.handle_seconds.sum(), series.handle_seconds.count());
    let outputs = series.outputs_appended.get();
    plugins.remove(&name, true).await?;
    plugins.shutdown().await;
    let direct_append = match build {
        Build::Projection => {
            ensure!(log.head().0 == head, "the projection appended to the log");
            None
        }
        Build::Reactor => {
            let sources = check_outputs(&log, head, &name).await?;
            Some(append_directly(&log, &sources).await?)
        }
    };
    log.shutdown().await;
    drop(log);
    std::fs::remove_dir_all(&log_dir)
        .with_context(|| format!("removing {}", log_dir.display()))?;
    Ok(Run {
        took,
        handle: Duration::from_secs_f64(handle),
        batches,
        outputs,
        direct_append,
    })
}

/// Appends `n` `JobQueued` events (≈60 bytes of JSON), 100 to a stream per
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
            .read_log(Position(expected), MAX_BATCH, EventFilter::default(), usize::MAX)
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
    ensure!(
        relayed.iter().all(|r| *r),
        "some sources have no output"
    );
    Ok(streams)
}

/// Appends what the reactor appended once more, straight through the log:
/// one single-event append with an id and the host's lineage metadata per
/// source, `MAX_BATCH` appends per `append_all`, as the runner does. Only
/// the `append_all` calls are timed.
async fn append_directly(log: &EventLog, sources: &[String]) -> anyhow::Result<Duration> {
    let event_type = EventType::new("Relayed")?;
    let namespace = Uuid::from_u128(0x6265_6e63_685f_6469_7265_6374_0000_0001);
    let mut took = Duration::ZERO;
    for (batch, chunk) in sources.chunks(MAX_BATCH).enumerate() {
        let first = (batch * MAX_BATCH) as u64 + 1;
        let appends = chunk
            .iter()
            .zip(first..)
            .map(|(stream, position)| {
                let source_id = Uuid::new_v5(&namespace, &position.to_le_bytes());
                let metadata = format!(
                    r#"{{"causation_id":"{source_id}","correlation_id":"{source_id}","causation_depth":1,"reactor":"direct"}}"#
                );
                Ok(StreamAppend {
                    stream: StreamName::new(format!("relayed-{stream}"))?,
                    expected_version: ExpectedVersion::Any,
                    events: vec![NewEvent {
                        id: Some(Uuid::new_v5(&namespace, format!("direct/{position}/0").as_bytes())),
                        event_type: event_type.clone(),
                        data: format!(r#"{{"position":{position}}}"#).into_bytes(),
                        metadata: metadata.into_bytes(),
                    }],
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let started = Instant::now();
        log.append_all(appends).await?;
        took += started.elapsed();
    }
    Ok(took)
}

/// Prints one round's figures on stderr.
fn report_round(args: &Args, build: Build, round: usize, run: &Run) {
    let direct = run.direct_append.map_or_else(String::new, |d| {
        format!(", the same appends directly {:.2} s", d.as_secs_f64())
    });
    eprintln!(
        "round {}: {:<10} {:.2} s, {:.0} events/s, handle {:.2} s in {} calls, {} outputs{direct}",
        round + 1,
        build.label(),
        run.took.as_secs_f64(),
        args.events as f64 / run.took.as_secs_f64(),
        run.handle.as_secs_f64(),
        run.batches,
        run.outputs,
    );
}

/// The median of `values`.
fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Prints the table: medians of each build, the ratio, and where the time goes.
fn print(args: &Args, projection: &[Run], reactor: &[Run]) {
    let events = args.events;
    let medians = |runs: &[Run]| {
        (
            median(runs.iter().map(|r| r.took).collect()),
            median(runs.iter().map(|r| r.handle).collect()),
        )
    };
    let (projection_took, projection_handle) = medians(projection);
    let (reactor_took, reactor_handle) = medians(reactor);
    let direct = median(reactor.iter().filter_map(|r| r.direct_append).collect());
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    let ratio = rate(reactor_took) / rate(projection_took);
    let outputs: Vec<u64> = reactor.iter().map(|r| r.outputs).collect();
    println!();
    println!(
        "relay over {events} `job` events ({} streams), one output per event for the reactor, median of {} rounds",
        args.streams, args.rounds
    );
    println!(
        "{:<12} {:>10} {:>9} {:>9} {:>11} {:>9}",
        "build", "events/s", "total s", "handle s", "appending s", "other s"
    );
    let row = |label: &str, took: Duration, handle: Duration, append: Option<Duration>| {
        let other = took.saturating_sub(handle + append.unwrap_or_default());
        let append = append.map_or_else(|| "-".to_owned(), |a| format!("{:.2}", a.as_secs_f64()));
        println!(
            "{label:<12} {:>10.0} {:>9.2} {:>9.2} {append:>11} {:>9.2}",
            rate(took),
            took.as_secs_f64(),
            handle.as_secs_f64(),
            other.as_secs_f64()
        );
    };
    row("projection", projection_took, projection_handle, None);
    row("reactor", reactor_took, reactor_handle, Some(direct));
    println!(
        "reactor ÷ projection: {ratio:.2}× (target ≥ 0.5×: {})",
        if ratio >= 0.5 { "met" } else { "not met" }
    );
    println!(
        "outputs appended by each reactor run: {outputs:?} (each checked: one per source, gapless after the sources)"
    );
    println!(
        "(handle: the plugin's handle calls, host calls included; appending: the same {events} outputs \
         appended again straight through the log, {MAX_BATCH} single-event appends with ids per append_all; \
         other: the rest of the runner's time, the outputs' ids and metadata, state commits, the read-ahead)"
    );
}
