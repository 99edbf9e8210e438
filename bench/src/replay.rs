//! Replay from zero: the order-totals projection as a Rust WASM plugin (the
//! real runner, state in its redb file) against the same fold written
//! natively over the same log and the same kind of state store; and the time
//! from deploy to first event, compiled and from the cache.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use eventfold::log::{
    EventFilter, EventLog, EventType, ExpectedVersion, NewEvent, Position, RecordedEvent,
    StreamAppend, StreamName,
};
use eventfold::metrics::Metrics;
use eventfold::plugins::{MAX_BATCH, PluginName, PluginStore, Plugins, PluginsConfig, RunState};
use eventfold::runtime::StateView;
use serde::{Deserialize, Serialize};

use crate::median;

/// Options of the replay benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Where the scratch data goes.
    #[arg(long, default_value = "target/bench-data")]
    pub data_dir: PathBuf,
    /// Events in the log.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Distinct customers the orders spread over.
    #[arg(long, default_value_t = 1000)]
    pub customers: u64,
    /// Rounds; native and WASM folds alternate and medians are reported.
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

/// The plugin's event, decoded natively the same way.
#[derive(Deserialize)]
struct OrderPlaced {
    #[serde(rename = "customerId")]
    customer_id: String,
    amount: f64,
}

/// The plugin's state value, encoded natively the same way.
#[derive(Serialize, Deserialize, Default)]
struct Totals {
    orders: u64,
    total: f64,
}

/// A fold measured both ways: as a plugin, and natively over the same store.
struct Fold {
    /// What it computes.
    label: &'static str,
    /// The plugin's file in `--plugins`.
    wasm: &'static str,
    /// The plugin's subscription, applied by the host for both.
    filter: fn() -> EventFilter,
    /// The same fold in Rust: one event into the batch's state view.
    apply: fn(&RecordedEvent, &mut StateView) -> anyhow::Result<()>,
}

const FOLDS: [Fold; 2] = [
    Fold {
        label: "order totals (JSON decode, 1 key per event)",
        wasm: "order_totals.wasm",
        filter: || EventFilter {
            categories: vec!["order".into()],
            event_types: vec!["OrderPlaced".into()],
            ..EventFilter::default()
        },
        apply: order_totals,
    },
    Fold {
        label: "counter (trivial: count and last position)",
        wasm: "counter.wasm",
        filter: EventFilter::default,
        apply: counter,
    },
];

/// One fold's replay times (medians of the rounds).
#[derive(Clone, Copy)]
pub struct FoldTimes {
    /// What the fold computes.
    pub label: &'static str,
    /// The native fold from zero.
    pub native: Duration,
    /// The plugin's first run from zero after its deploy.
    pub first: Duration,
    /// The plugin's replay from zero (a rebuild beside the serving state).
    pub rebuild: Duration,
}

/// What the replay benchmark measured.
pub struct Report {
    /// Events in the log.
    pub events: u64,
    /// Distinct customers the orders spread over.
    pub customers: u64,
    /// Rounds each median is taken over.
    pub rounds: usize,
    /// The folds, order totals first, the trivial counter second.
    pub folds: Vec<FoldTimes>,
    /// Deploy to first event handled, compiling, in ms.
    pub compiled_ms: f64,
    /// The same from the compiled cache, in ms.
    pub cached_ms: f64,
}

impl FoldTimes {
    /// Events per second of the native fold.
    pub fn native_rate(&self, events: u64) -> f64 {
        events as f64 / self.native.as_secs_f64()
    }

    /// Events per second of the plugin's replay.
    pub fn replay_rate(&self, events: u64) -> f64 {
        events as f64 / self.rebuild.as_secs_f64()
    }
}

/// Runs the replay benchmark and prints the table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    print(&measure(args).await?);
    Ok(())
}

/// Runs the replay benchmark.
pub async fn measure(args: Args) -> anyhow::Result<Report> {
    let scratch = crate::scratch_dir(&args.data_dir, "replay-")?;
    let log = EventLog::open(&scratch.path().join("log"), Metrics::new())?;
    let started = Instant::now();
    fill(&log, args.events, args.customers).await?;
    eprintln!(
        "filled {} events in {:.1} s",
        args.events,
        started.elapsed().as_secs_f64()
    );
    let head = log.head().0;
    let plugins = open_plugins(scratch.path(), &log)?;

    let mut folds = Vec::new();
    for (n, fold) in FOLDS.iter().enumerate() {
        let wasm_path = args.plugins.join(fold.wasm);
        let wasm = std::fs::read(&wasm_path)
            .with_context(|| format!("reading {}", wasm_path.display()))?;
        let name = PluginName::new(format!("fold-{n}"))?;
        plugins.deploy(name.clone(), wasm.into()).await?;
        let first = wait_until(&plugins, &name, |s| s.checkpoint >= head).await?;
        // Alternate the two ways so that both see the same machine.
        let mut natives = Vec::new();
        let mut rebuilds = Vec::new();
        for round in 0..args.rounds {
            let native_log = log.clone();
            let native_path = scratch.path().join(format!("native-{n}-{round}.redb"));
            let (filter, apply) = (fold.filter, fold.apply);
            natives.push(
                tokio::task::spawn_blocking(move || {
                    native_fold(&native_log, &native_path, filter(), apply)
                })
                .await??,
            );
            let generation = plugins.replay(&name).await?;
            rebuilds.push(
                wait_until(&plugins, &name, |s| {
                    s.generation == generation && s.rebuild.is_none()
                })
                .await?,
            );
            eprintln!(
                "{}: round {}: native {:?}, wasm replay {:?}",
                fold.label,
                round + 1,
                natives[round],
                rebuilds[round]
            );
        }
        // Both ways must agree.
        let native = PluginStore::open(&scratch.path().join(format!("native-{n}-0.redb")))?;
        for key in ["count", "last", "customer/c0", "customer/c1"] {
            if plugins.state_get(&name, key.into()).await?.0 != native.get(key)?.0 {
                bail!(
                    "{}: the plugin and the native fold disagree on {key}",
                    fold.label
                );
            }
        }
        folds.push(FoldTimes {
            label: fold.label,
            native: median(natives),
            first,
            rebuild: median(rebuilds),
        });
    }
    plugins.shutdown().await;
    let wasm = std::fs::read(args.plugins.join(FOLDS[0].wasm))?;
    let sample = (
        "order-1",
        "OrderPlaced",
        &br#"{"customerId":"c1","amount":1.5}"#[..],
    );
    let (compiled_ms, cached_ms) = deploy_latency(&args.data_dir, &wasm, sample).await?;
    log.shutdown().await;
    Ok(Report {
        events: head,
        customers: args.customers,
        rounds: args.rounds,
        folds,
        compiled_ms,
        cached_ms,
    })
}

/// Prints the replay table.
pub fn print(report: &Report) {
    let events = report.events;
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    println!();
    println!(
        "replay from zero of {events} events ({} customers), median of {} rounds",
        report.customers, report.rounds
    );
    println!(
        "{:<44} {:>12} {:>14} {:>14} {:>8}",
        "fold", "native/s", "wasm deploy/s", "wasm replay/s", "ratio"
    );
    for fold in &report.folds {
        println!(
            "{:<44} {:>12.0} {:>14.0} {:>14.0} {:>8.2}",
            fold.label,
            fold.native_rate(events),
            rate(fold.first),
            fold.replay_rate(events),
            fold.replay_rate(events) / fold.native_rate(events)
        );
    }
    println!();
    println!(
        "deploy to first event handled: {:.1} ms compiling, {:.1} ms from the compiled cache",
        report.compiled_ms, report.cached_ms
    );
}

/// Appends `n` OrderPlaced events (≈200 bytes of JSON) over 10,000 streams.
async fn fill(log: &EventLog, n: u64, customers: u64) -> anyhow::Result<()> {
    let event_type = EventType::new("OrderPlaced")?;
    let mut position = 0;
    while position < n {
        let mut appends = Vec::new();
        for _ in 0..100 {
            let stream = StreamName::new(format!("order-{}", position % 10_000))?;
            let events = (0..100)
                .map(|i| {
                    let k = position + i;
                    NewEvent {
                        id: None,
                        event_type: event_type.clone(),
                        data: format!(
                            r#"{{"orderId":"ord-{k:010}","customerId":"c{}","currency":"EUR","amount":{}.{:02},"items":[{{"sku":"SKU-{}","qty":2}}],"channel":"web"}}"#,
                            k % customers,
                            k % 500,
                            k % 100,
                            k % 9973
                        )
                        .into_bytes(),
                        metadata: b"{}".to_vec(),
                    }
                })
                .collect();
            appends.push(StreamAppend {
                stream,
                expected_version: ExpectedVersion::Any,
                events,
            });
            position += 100;
        }
        log.append_all(appends).await?;
    }
    Ok(())
}

/// A fold in plain Rust over the same log and state store, with the
/// runner's batch size and commit policy.
fn native_fold(
    log: &EventLog,
    path: &std::path::Path,
    filter: EventFilter,
    apply: fn(&RecordedEvent, &mut StateView) -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let store = PluginStore::open(path)?;
    let head = log.head().0;
    let started = Instant::now();
    let mut checkpoint = 0;
    let mut last_sync = Instant::now();
    while checkpoint < head {
        let page = log.read_log_blocking(Position(checkpoint + 1), MAX_BATCH, &filter)?;
        let mut view = store.view()?;
        for event in &page.events {
            apply(event, &mut view)?;
        }
        checkpoint = page.next.0 - 1;
        let durable = last_sync.elapsed() >= Duration::from_secs(1);
        store.commit(view.writes, &[], checkpoint, durable)?;
        if durable {
            last_sync = Instant::now();
        }
    }
    store.sync()?;
    Ok(started.elapsed())
}

/// `plugins/order-totals`, natively.
fn order_totals(event: &RecordedEvent, view: &mut StateView) -> anyhow::Result<()> {
    let order: OrderPlaced = serde_json::from_slice(&event.data)?;
    let key = format!("customer/{}", order.customer_id);
    let mut totals: Totals = match view.get(&key).map_err(|e| anyhow!("{e:#}"))? {
        Some(bytes) => serde_json::from_slice(&bytes)?,
        None => Totals::default(),
    };
    totals.orders += 1;
    totals.total += order.amount;
    view.writes.insert(key, Some(serde_json::to_vec(&totals)?));
    Ok(())
}

/// `plugins/test-plugins/counter`, natively.
fn counter(event: &RecordedEvent, view: &mut StateView) -> anyhow::Result<()> {
    let count: u64 = match view.get("count").map_err(|e| anyhow!("{e:#}"))? {
        Some(bytes) => serde_json::from_slice(&bytes)?,
        None => 0,
    };
    view.writes
        .insert("count".into(), Some(serde_json::to_vec(&(count + 1))?));
    view.writes
        .insert("last".into(), Some(serde_json::to_vec(&event.position.0)?));
    Ok(())
}

/// The plugin host over `log`, with default limits, in `dir`.
pub fn open_plugins(dir: &std::path::Path, log: &EventLog) -> anyhow::Result<Plugins> {
    Ok(Plugins::open(dir, log.clone(), PluginsConfig::default())?)
}

/// Polls the plugin's status until `done`; the time it took.
pub async fn wait_until(
    plugins: &Plugins,
    name: &PluginName,
    done: impl Fn(&eventfold::plugins::PluginStatus) -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let status = plugins.status(name).await?;
        if done(&status) {
            return Ok(started.elapsed());
        }
        if status.state == RunState::Failed
            && let Some(error) = &status.last_error
        {
            bail!("the plugin failed: {}", error.message);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One event a plugin handles: stream, type and data.
pub type Sample<'a> = (&'a str, &'a str, &'a [u8]);

/// Deploy-to-first-event: on a fresh data directory (compiling), then again
/// under another name (the compiled form comes from the cache), with `event`
/// (one the plugin subscribes to) in the log. The clock stops when the
/// plugin has handled the event, which may be before the deploy is
/// acknowledged (that waits for the code to be fsynced).
pub async fn deploy_latency(
    data_dir: &std::path::Path,
    wasm: &[u8],
    event: Sample<'_>,
) -> anyhow::Result<(f64, f64)> {
    let (stream, event_type, data) = event;
    let scratch = tempfile::Builder::new()
        .prefix("deploy-")
        .tempdir_in(data_dir)?;
    let log = EventLog::open(&scratch.path().join("log"), Metrics::new())?;
    log.append(StreamAppend {
        stream: StreamName::new(stream)?,
        expected_version: ExpectedVersion::Any,
        events: vec![NewEvent {
            id: None,
            event_type: EventType::new(event_type)?,
            data: data.to_vec(),
            metadata: b"{}".to_vec(),
        }],
    })
    .await?;
    let plugins = open_plugins(scratch.path(), &log)?;
    let mut times = Vec::new();
    for name in ["first", "second"] {
        let name = PluginName::new(name)?;
        let started = Instant::now();
        let first_event = async {
            loop {
                // Not found until the deploy has registered the name.
                if let Ok(status) = plugins.status(&name).await {
                    if status.checkpoint >= 1 {
                        return anyhow::Ok(started.elapsed());
                    }
                    if let Some(error) = status.last_error {
                        bail!("the plugin failed: {}", error.message);
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let deploy = async { Ok(plugins.deploy(name.clone(), wasm.to_vec().into()).await?) };
        let (_, took) = tokio::try_join!(deploy, first_event)?;
        times.push(took.as_secs_f64() * 1000.0);
    }
    plugins.shutdown().await;
    log.shutdown().await;
    Ok((times[0], times[1]))
}
