//! Client subcommand for the nodes sharing a JetStream log: `cluster status`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use serde_json::Value;

use super::client::{Connection, read_json};

/// `eventfold cluster <COMMAND>`.
#[derive(Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Show the log's stream, each node with the plugins it holds, and who
    /// delivers each notifier.
    Status(StatusArgs),
}

/// `eventfold cluster status [--json]`.
#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    connection: Connection,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs a `cluster` subcommand.
pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::Status(args) => status(args).await,
    }
}

/// Prints `GET /cluster` as a summary, or as JSON with `--json`.
async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let answer = read_json(
        args.connection
            .request(reqwest::Method::GET, "/cluster")
            .send()
            .await,
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    if answer["clustered"].as_bool() != Some(true) {
        println!(
            "{}",
            answer["message"]
                .as_str()
                .unwrap_or("this server is not clustered")
        );
        return Ok(());
    }
    let now = now_ms();
    println!("{}", log_line(&answer["log"]));
    let answering = answer["node"].as_str().unwrap_or("");
    for node in answer["nodes"].as_array().into_iter().flatten() {
        println!();
        print_node(node, answering, now);
    }
    let leases = answer["leases"].as_object().filter(|l| !l.is_empty());
    if let Some(leases) = leases {
        println!("\nleases:");
        for (notifier, lease) in leases {
            println!(
                "  {notifier} -> {} for {}",
                lease["node"].as_str().unwrap_or("?"),
                age(lease["since_ms"].as_u64(), now)
            );
        }
    }
    let records: Vec<_> = answer["plugins"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, record)| record["removed"].is_null())
        .collect();
    if !records.is_empty() {
        println!("\nplugins:");
        for (name, record) in records {
            let hash = record["hash"].as_str().unwrap_or("");
            let mut line = format!(
                "  {name:<24} code {}  replays {}",
                hash.get(..12).unwrap_or(hash),
                record["replays"].as_u64().unwrap_or(0)
            );
            if record["paused"].as_bool() == Some(true) {
                line.push_str("  paused");
            }
            if !record["webhook"].is_null() {
                line.push_str("  webhook");
            }
            println!("{line}");
        }
    }
    Ok(())
}

/// The log's stream: replicas, leader, followers and last sequence, or the
/// error JetStream answered.
fn log_line(log: &Value) -> String {
    let stream = log["stream"].as_str().unwrap_or("?");
    if let Some(error) = log["error"].as_str() {
        return format!("log {stream}: {error}");
    }
    let followers: Vec<String> = log["followers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let mut states = vec![match f["current"].as_bool() {
                Some(true) => "current".to_owned(),
                _ => "not current".to_owned(),
            }];
            if f["offline"].as_bool() == Some(true) {
                states.push("offline".into());
            }
            if let Some(lag) = f["lag"].as_u64() {
                states.push(format!("lag {lag}"));
            }
            format!(
                "{} ({})",
                f["name"].as_str().unwrap_or("?"),
                states.join(", ")
            )
        })
        .collect();
    format!(
        "log {stream}: {} replicas, leader {}, followers {}; last sequence {}",
        log["replicas"].as_u64().unwrap_or(0),
        log["leader"].as_str().unwrap_or("none"),
        match followers.is_empty() {
            true => "none".to_owned(),
            false => followers.join(", "),
        },
        log["last_sequence"].as_u64().unwrap_or(0)
    )
}

/// One node: its heading, then a line per plugin it holds.
fn print_node(node: &Value, answering: &str, now: u64) {
    let name = node["node"].as_str().unwrap_or("?");
    let hold: Vec<&str> = node["hold"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mark = if name == answering {
        " (answering)"
    } else {
        ""
    };
    println!(
        "node {name}{mark} at {}, version {}, seen {} ago, holds {}",
        node["address"].as_str().unwrap_or("?"),
        node["version"].as_str().unwrap_or("?"),
        age(node["seen_ms"].as_u64(), now),
        match hold.is_empty() {
            true => "all".to_owned(),
            false => hold.join(","),
        }
    );
    let mut delivers: Vec<&str> = node["delivers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for plugin in node["plugins"].as_array().into_iter().flatten() {
        let plugin_name = plugin["name"].as_str().unwrap_or("?");
        let mut line = format!(
            "  {plugin_name:<24} {:<11} {:<12} gen {:<4} checkpoint {:<10} lag {}",
            plugin["kind"].as_str().unwrap_or("-"),
            plugin["state"].as_str().unwrap_or("?"),
            plugin["generation"].as_u64().unwrap_or(0),
            plugin["checkpoint"].as_u64().unwrap_or(0),
            plugin["lag"].as_u64().unwrap_or(0)
        );
        if let Some(rebuild) = plugin["rebuild_checkpoint"].as_u64() {
            line.push_str(&format!("  rebuild at {rebuild}"));
        }
        if let Some(at) = delivers.iter().position(|d| *d == plugin_name) {
            delivers.remove(at);
            line.push_str("  delivers");
        }
        println!("{line}");
    }
    if !delivers.is_empty() {
        println!("  delivers {}", delivers.join(", "));
    }
}

/// How long ago `ms` (ms since the Unix epoch) was, to the second.
fn age(ms: Option<u64>, now: u64) -> String {
    match ms {
        Some(ms) => {
            let secs = now.saturating_sub(ms) / 1000;
            humantime::format_duration(Duration::from_secs(secs)).to_string()
        }
        None => "?".to_owned(),
    }
}

/// Now, in ms since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
