//! Notification delivery: how many notifications per second the
//! shipment-notifier's webhook dispatcher delivers to a receiver on
//! loopback, strictly in order (1 in flight) and with 16 in flight, against
//! a bare loop of HTTP POSTs of the same size to the same receiver (the
//! limit of the HTTP stack itself), measured in the same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eventfold::log::{EventLog, EventType, ExpectedVersion, NewEvent, StreamAppend, StreamName};
use eventfold::metrics::Metrics;
use eventfold::notify::WebhookRequest;
use eventfold::plugins::{PluginName, Plugins, PluginsConfig};

use crate::median;

/// Options of the notification benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Where the scratch data goes.
    #[arg(long, default_value = "target/bench-data")]
    pub data_dir: PathBuf,
    /// Orders placed and shipped: one notification each.
    #[arg(long, default_value_t = 20_000)]
    pub orders: u64,
    /// Rounds; modes alternate and medians are reported.
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

/// Runs the benchmark and prints the table.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let scratch = crate::scratch_dir(&args.data_dir, "notify-")?;
    let log = EventLog::open(&scratch.path().join("log"), Metrics::new())?;
    fill(&log, args.orders).await?;
    let wasm_path = args.plugins.join("shipment_notifier.wasm");
    let wasm =
        std::fs::read(&wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
    let plugins = Plugins::open(scratch.path(), log.clone(), PluginsConfig::default())?;
    let (url, received) = receiver().await?;
    let client = reqwest::Client::new();
    let body = sample_body();

    let modes: [(&str, Option<u32>); 4] = [
        ("bare POST loop, 1 in flight", None),
        ("webhook dispatcher, 1 in flight (in order)", Some(1)),
        ("bare POST loop, 16 in flight", None),
        ("webhook dispatcher, 16 in flight", Some(16)),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); modes.len()];
    let mut emit_times = Vec::new();
    for round in 0..args.rounds {
        for (m, (label, in_flight)) in modes.iter().enumerate() {
            let elapsed = match in_flight {
                None => {
                    let concurrency = if m == 0 { 1 } else { 16 };
                    bare_posts(&client, &url, &body, args.orders, concurrency).await?
                }
                Some(in_flight) => {
                    let name = PluginName::new(format!("ship-{round}-{in_flight}"))?;
                    let started = Instant::now();
                    plugins.deploy(name.clone(), wasm.clone().into()).await?;
                    wait_for(&plugins, &name, |n| n.emitted >= args.orders).await?;
                    emit_times.push(started.elapsed());
                    let before = received.load(Ordering::Relaxed);
                    let started = Instant::now();
                    let config = WebhookRequest {
                        url: url.clone(),
                        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                        timeout_ms: None,
                        max_attempts: None,
                        max_per_second: None,
                        max_in_flight: Some(*in_flight),
                        backoff_ms: None,
                        channels: None,
                    }
                    .validate()?;
                    plugins.mailbox(&name)?.set_webhook(Some(&config))?;
                    while received.load(Ordering::Relaxed) < before + args.orders {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    let elapsed = started.elapsed();
                    plugins.remove(&name, true).await?;
                    elapsed
                }
            };
            eprintln!("round {}: {label}: {elapsed:?}", round + 1);
            times[m].push(elapsed);
        }
    }
    plugins.shutdown().await;
    log.shutdown().await;

    let rate = |d: Duration| args.orders as f64 / d.as_secs_f64();
    println!();
    println!(
        "{} notifications delivered to a webhook receiver on loopback, median of {} rounds",
        args.orders, args.rounds
    );
    println!("{:<46} {:>16} {:>10}", "mode", "notifications/s", "vs bare");
    let medians: Vec<Duration> = times.iter().map(|t| median(t.iter().copied())).collect();
    for (m, (label, _)) in modes.iter().enumerate() {
        let bare = if m < 2 { medians[0] } else { medians[2] };
        println!(
            "{:<46} {:>16.0} {:>10.2}",
            label,
            rate(medians[m]),
            rate(medians[m]) / rate(bare)
        );
    }
    let emit = median(emit_times);
    println!();
    println!(
        "deploy + fold {} events into {} notifications in the mailbox: {:.0} notifications/s",
        args.orders * 2,
        args.orders,
        rate(emit)
    );
    Ok(())
}

/// Places and ships `orders` orders, one stream each.
async fn fill(log: &EventLog, orders: u64) -> anyhow::Result<()> {
    let (placed, shipped) = (
        EventType::new("OrderPlaced")?,
        EventType::new("OrderShipped")?,
    );
    let mut order = 0;
    while order < orders {
        let mut appends = Vec::new();
        for _ in 0..100.min(orders - order) {
            appends.push(StreamAppend {
                stream: StreamName::new(format!("order-{order}"))?,
                expected_version: ExpectedVersion::NoStream,
                events: vec![
                    event(
                        &placed,
                        format!(r#"{{"customerId":"c{}","amount":12.5}}"#, order % 1000),
                    ),
                    event(&shipped, r#"{"carrier":"ups"}"#.into()),
                ],
            });
            order += 1;
        }
        log.append_all(appends).await?;
    }
    Ok(())
}

fn event(event_type: &EventType, data: String) -> NewEvent {
    NewEvent {
        id: None,
        event_type: event_type.clone(),
        data: data.into_bytes(),
        metadata: b"{}".to_vec(),
    }
}

/// A body of the size the dispatcher sends.
fn sample_body() -> Vec<u8> {
    br#"{"id":"msg_0123456789abcdef0123456789abcdef","plugin":"ship-0-1","sequence":12345,"channel":"webhook","key":"order-12345-shipped","timestamp":"2026-11-27T08:00:00.000000Z","data":{"orderId":"12345","customerId":"c345","carrier":"ups"}}"#.to_vec()
}

/// A receiver that counts what it accepts; its URL and the count.
async fn receiver() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |_body: axum::body::Bytes| {
            counter.fetch_add(1, Ordering::Relaxed);
            async { axum::http::StatusCode::NO_CONTENT }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, count))
}

/// `n` POSTs of `body`, `concurrency` at a time.
async fn bare_posts(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    n: u64,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    use futures_util::StreamExt;
    let started = Instant::now();
    let mut posts = futures_util::stream::iter(0..n)
        .map(|_| {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_vec())
                .send()
        })
        .buffer_unordered(concurrency);
    while let Some(response) = posts.next().await {
        if !response?.status().is_success() {
            bail!("the receiver refused a POST");
        }
    }
    Ok(started.elapsed())
}

/// Polls the notifier's mailbox figures until `done`.
async fn wait_for(
    plugins: &Plugins,
    name: &PluginName,
    done: impl Fn(&eventfold::notify::MailboxStats) -> bool,
) -> anyhow::Result<()> {
    loop {
        let status = plugins.status(name).await?;
        if let Some(error) = &status.last_error {
            bail!("the notifier failed: {}", error.message);
        }
        if status
            .notifications
            .as_ref()
            .is_some_and(|n| done(&n.stats))
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
