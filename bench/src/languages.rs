//! The same projection (user-directory) in Rust, Python and JavaScript:
//! replay rate over the same log, first compile, and deploy-to-first-event
//! from the compiled cache.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use eventfold::log::{EventLog, EventType, ExpectedVersion, NewEvent, StreamAppend, StreamName};
use eventfold::metrics::Metrics;
use eventfold::plugins::PluginName;

use crate::median;
use crate::replay::{Sample, deploy_latency, open_plugins, wait_until};

/// Options of the languages benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Where the scratch data goes.
    #[arg(long, default_value = "target/bench-data")]
    pub data_dir: PathBuf,
    /// User events in the log.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Rounds of replay per language; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Where the built plugins are (eventfold-plugin-builds puts them there).
    #[arg(long, default_value = eventfold_plugin_builds::PLUGINS_DIR)]
    pub plugins: PathBuf,
}

impl Default for Args {
    fn default() -> Self {
        crate::defaults()
    }
}

/// The user directory in each language, by file under `--plugins`.
const LANGUAGES: [(&str, &str); 3] = [
    ("Rust", "wasm32-wasip2/release/user_directory.wasm"),
    ("Python", "python/user-directory.wasm"),
    ("JavaScript", "js/user-directory.wasm"),
];

/// Runs the benchmark and prints the table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let scratch = crate::scratch_dir(&args.data_dir, "languages-")?;
    let log = EventLog::open(&scratch.path().join("log"), Metrics::new())?;
    fill(&log, args.events).await?;
    let head = log.head().0;
    let plugins = open_plugins(scratch.path(), &log)?;
    let mut rows = Vec::new();
    for (language, file) in LANGUAGES {
        let path = args.plugins.join(file);
        let wasm = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let name = PluginName::new(language.to_ascii_lowercase())?;
        plugins.deploy(name.clone(), wasm.clone().into()).await?;
        wait_until(&plugins, &name, |s| s.checkpoint >= head).await?;
        let mut replays = Vec::new();
        for round in 0..args.rounds {
            let generation = plugins.replay(&name).await?;
            let took = wait_until(&plugins, &name, |s| {
                s.generation == generation && s.rebuild.is_none()
            })
            .await?;
            eprintln!("{language}: replay {}: {took:?}", round + 1);
            replays.push(took);
        }
        let sample: Sample = ("user-1", "UserCreated", br#"{"userId":1,"name":"Alice"}"#);
        let (compiled_ms, cached_ms) = deploy_latency(&args.data_dir, &wasm, sample).await?;
        rows.push((
            language,
            wasm.len(),
            median(replays),
            compiled_ms,
            cached_ms,
        ));
    }
    plugins.shutdown().await;
    log.shutdown().await;

    let rate = |d: Duration| head as f64 / d.as_secs_f64();
    println!();
    println!(
        "user-directory replayed from zero over {head} events, median of {} rounds",
        args.rounds
    );
    println!(
        "{:<12} {:>10} {:>12} {:>22} {:>22}",
        "language", "size MB", "replay ev/s", "deploy→1st event (ms)", "…from cache (ms)"
    );
    for (language, size, replay, compiled_ms, cached_ms) in rows {
        println!(
            "{:<12} {:>10.1} {:>12.0} {:>22.1} {:>22.1}",
            language,
            size as f64 / 1e6,
            rate(replay),
            compiled_ms,
            cached_ms
        );
    }
    Ok(())
}

/// `n` user events over 10,000 users: each created, then renamed.
async fn fill(log: &EventLog, n: u64) -> anyhow::Result<()> {
    let (created, renamed) = (
        EventType::new("UserCreated")?,
        EventType::new("UserNameUpdated")?,
    );
    let mut written = 0;
    while written < n {
        let mut appends = Vec::new();
        for _ in 0..100 {
            let user = (written / 10) % 10_000;
            let first = written / 10 < 10_000;
            let events = (0..10)
                .map(|i| NewEvent {
                    id: None,
                    event_type: if first && i == 0 { &created } else { &renamed }.clone(),
                    data: format!(
                        r#"{{"userId":{user},"name":"user {user} rename {}"}}"#,
                        written + i
                    )
                    .into_bytes(),
                    metadata: b"{}".to_vec(),
                })
                .collect();
            appends.push(StreamAppend {
                stream: StreamName::new(format!("user-{user}"))?,
                expected_version: ExpectedVersion::Any,
                events,
            });
            written += 10;
        }
        log.append_all(appends).await?;
    }
    Ok(())
}
