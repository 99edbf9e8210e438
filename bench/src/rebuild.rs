//! Append latency while a projection rebuilds.
//!
//! Starts the server (as `append` does, or `--server BINARY`), fills its
//! log with `--events` `OrderPlaced` events over HTTP (`POST /batch`),
//! deploys the order-totals plugin and waits until it has caught up. Then,
//! under a steady open-loop load of single-event appends (`--rate` a
//! second over HTTP, each latency measured), in three configurations:
//!
//! 1. `POST /plugins/{name}/replay` on the server without a limit, timed
//!    until the new generation swaps in (`GET /plugins/{name}`: the serving
//!    `generation` reaches the replay's and `rebuild` is gone);
//! 2. the same after restarting the server with `--replay-rate` at
//!    `--limit-fraction` of the rate the first rebuild read the log at;
//! 3. no rebuild, as long as the longer of the two: the baseline.
//!
//! Each configuration's latencies are those of the appends due between the
//! replay's request and the swap.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::control;
use crate::http::Connection;
use crate::open_loop::{self, Kind, Load, Outcome};
use crate::peers::{Eventfold, Launch};

/// Options of the rebuild benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Where the server's data goes (a fresh directory under it).
    #[arg(long, default_value = "target/bench-data")]
    pub data_dir: PathBuf,
    /// An `eventfold` binary to start as `eventfold serve` (default: this
    /// benchmark as `serve`, the same code).
    #[arg(long)]
    pub server: Option<PathBuf>,
    /// Events in the log before the rebuilds.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Distinct customers the orders spread over.
    #[arg(long, default_value_t = 1000)]
    pub customers: u64,
    /// Single-event appends a second during each configuration (0: none).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Connections of the append load: the most appends in flight.
    #[arg(long, default_value_t = 256)]
    pub connections: usize,
    /// `--replay-rate` of the second configuration, as a fraction of the
    /// first rebuild's events/s (0: no second configuration, for a server
    /// without the flag).
    #[arg(long, default_value_t = 0.25)]
    pub limit_fraction: f64,
    /// Seconds of appends before each rebuild is asked for.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Where the built Rust plugins are (eventfold-plugin-builds puts them there).
    #[arg(long, default_value = eventfold_plugin_builds::WASM_DIR)]
    pub plugins: PathBuf,
}

/// The plugin rebuilt: `plugins/order-totals` (JSON decode, one key per event).
const WASM: &str = "order_totals.wasm";
/// Its name on the server.
const PLUGIN: &str = "totals";

/// One configuration's measures.
struct Measured {
    name: String,
    /// From the replay's request to the swap (the baseline: as long as the
    /// longest rebuild).
    window: Duration,
    /// Positions the rebuild covered (its checkpoint at the swap).
    rebuilt: Option<u64>,
    /// The appends due in the window.
    appends: Vec<Outcome>,
}

/// Runs the benchmark and prints its table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let wasm_path = args.plugins.join(WASM);
    let wasm =
        std::fs::read(&wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
    let scratch = crate::scratch_dir(&args.data_dir, "rebuild-")?;
    let mut server = Some(
        Eventfold::launch(
            scratch.path(),
            &Launch {
                binary: args.server.clone(),
                args: Vec::new(),
            },
        )
        .await?,
    );
    let measured = configurations(&args, scratch.path(), wasm, &mut server).await;
    if let Some(server) = server {
        server.stop().await?;
    }
    let (head, caught_up, results) = measured?;
    print(&args, head, caught_up, &results);
    Ok(())
}

/// Fills the log, deploys the plugin, and measures each configuration,
/// restarting the server in `server` for the one with `--replay-rate`.
async fn configurations(
    args: &Args,
    scratch: &Path,
    wasm: Vec<u8>,
    server: &mut Option<Eventfold>,
) -> anyhow::Result<(u64, Duration, Vec<Measured>)> {
    let url = |server: &Option<Eventfold>| -> anyhow::Result<String> {
        Ok(server.as_ref().context("no server")?.url().to_owned())
    };
    let started = Instant::now();
    control::fill_orders(&url(server)?, args.events, args.customers).await?;
    let head = server.as_ref().context("no server")?.count().await?;
    eprintln!(
        "filled {head} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let caught_up = control::deploy(&url(server)?, PLUGIN, wasm).await?;
    eprintln!(
        "deployed {PLUGIN} ({WASM}): caught up with {head} events in {:.2} s, {:.0} events/s",
        caught_up.as_secs_f64(),
        head as f64 / caught_up.as_secs_f64()
    );
    let mut results = Vec::new();
    let first = measure(args, &url(server)?, "rebuild, no limit".into(), None).await?;
    let mut longest = first.window;
    let rebuilt = first.rebuilt.unwrap_or(0) as f64 / first.window.as_secs_f64();
    results.push(first);
    if args.limit_fraction > 0.0 {
        let limit = ((rebuilt * args.limit_fraction) as u64).max(1);
        if let Some(running) = server.take() {
            running.stop().await?;
        }
        let launch = Launch {
            binary: args.server.clone(),
            args: vec!["--replay-rate".into(), limit.to_string()],
        };
        *server = Some(Eventfold::launch(scratch, &launch).await?);
        control::wait_caught_up(&url(server)?, PLUGIN).await?;
        let name = format!("rebuild, --replay-rate {limit}");
        let limited = measure(args, &url(server)?, name, None).await?;
        longest = longest.max(limited.window);
        results.push(limited);
    }
    if args.rate > 0.0 {
        let baseline = measure(args, &url(server)?, "no rebuild".into(), Some(longest)).await?;
        results.insert(0, baseline);
    }
    Ok((head, caught_up, results))
}

/// One configuration: the append load, with a rebuild (`baseline: None`)
/// or without one for `baseline`.
async fn measure(
    args: &Args,
    url: &str,
    name: String,
    baseline: Option<Duration>,
) -> anyhow::Result<Measured> {
    eprintln!("{name}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let control = async {
        let mut connection = Connection::open(url).await?;
        tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
        let from = Instant::now();
        let rebuilt = match baseline {
            Some(duration) => {
                // The same status reads as during a rebuild.
                while from.elapsed() < duration {
                    control::status(&mut connection, PLUGIN).await?;
                    tokio::time::sleep(control::POLL).await;
                }
                None
            }
            None => Some(control::replay(&mut connection, PLUGIN).await?),
        };
        let to = Instant::now();
        // The load goes on a little past the window.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = stop.send(());
        anyhow::Ok((from, to, rebuilt))
    };
    let load = async {
        if args.rate <= 0.0 {
            let _ = stopped.await;
            return Ok(None);
        }
        let load = Load {
            url,
            rate: args.rate,
            connections: args.connections,
        };
        let customers = args.customers;
        let report = open_loop::run(
            &load,
            || async {
                let _ = stopped.await;
            },
            |seq| {
                (
                    format!("/streams/order-live-{}", seq % 100),
                    format!(
                        r#"{{"events":[{{"type":"OrderPlaced","data":{{"orderId":"live-{seq:010}","customerId":"c{}","currency":"EUR","amount":1.50,"items":[{{"sku":"SKU-1","qty":1}}],"channel":"web"}}}}]}}"#,
                        seq % customers
                    ),
                )
            },
        )
        .await?;
        anyhow::Ok(Some(report))
    };
    let (control, load) = tokio::join!(control, load);
    let (from, to, rebuilt) = control?;
    let appends = match load? {
        Some(report) => {
            let (start, end) = (from - report.started, to - report.started);
            report
                .outcomes
                .into_iter()
                .filter(|o| o.due >= start && o.due < end)
                .collect()
        }
        None => Vec::new(),
    };
    let measured = Measured {
        name,
        window: to - from,
        rebuilt,
        appends,
    };
    eprintln!(
        "  {:.2} s, {} appends due{}",
        measured.window.as_secs_f64(),
        measured.appends.len(),
        measured.rebuilt.map_or_else(String::new, |n| format!(
            ", {:.0} events/s rebuilt",
            n as f64 / measured.window.as_secs_f64()
        ))
    );
    Ok(measured)
}

fn print(args: &Args, head: u64, caught_up: Duration, results: &[Measured]) {
    println!();
    println!(
        "{head} events in the log; {PLUGIN} ({WASM}) deployed and caught up in {:.2} s ({:.0} events/s)",
        caught_up.as_secs_f64(),
        head as f64 / caught_up.as_secs_f64()
    );
    if args.rate > 0.0 {
        println!(
            "append load: {:.0} single-event appends/s over HTTP, open loop (at most {} in flight)",
            args.rate, args.connections
        );
    }
    println!(
        "{:<32} {:>9} {:>13} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}",
        "configuration",
        "window s",
        "rebuild ev/s",
        "appends",
        "p50 ms",
        "p99 ms",
        "max ms",
        "not sent",
        "failed"
    );
    for m in results {
        let rebuilt = m.rebuilt.map_or_else(
            || "-".to_owned(),
            |n| format!("{:.0}", n as f64 / m.window.as_secs_f64()),
        );
        let created = m.appends.iter().filter(|o| o.kind == Kind::Created);
        let (p50, p99, max) = open_loop::latency_ms(created).map_or_else(
            || ("-".to_owned(), "-".to_owned(), "-".to_owned()),
            |(a, b, c)| (format!("{a:.2}"), format!("{b:.2}"), format!("{c:.2}")),
        );
        let not_sent = m.appends.iter().filter(|o| o.kind == Kind::NotSent).count();
        let failed = m
            .appends
            .iter()
            .filter(|o| !matches!(o.kind, Kind::Created | Kind::NotSent))
            .count();
        println!(
            "{:<32} {:>9.2} {rebuilt:>13} {:>8} {p50:>8} {p99:>8} {max:>8} {not_sent:>9} {failed:>7}",
            m.name,
            m.window.as_secs_f64(),
            m.appends.len(),
        );
    }
    println!(
        "(window: from the replay's request to the swap, read every {} ms; the baseline as long as the longest; \
         latencies of the 201s due in it, from when each was due; not sent: every connection was busy)",
        control::POLL.as_millis()
    );
}
