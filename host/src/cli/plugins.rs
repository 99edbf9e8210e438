//! Client subcommands for plugins: `deploy`, `plugins`, `replay`, `state`,
//! `query`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::client::{Connection, encode_segment, read_json};

/// `eventfold deploy FILE.wasm [--name N]`.
#[derive(Args)]
pub struct DeployArgs {
    #[command(flatten)]
    connection: Connection,
    /// The plugin's component (.wasm).
    file: PathBuf,
    /// The plugin's name (default: the file's stem, `_` turned into `-`).
    #[arg(long)]
    name: Option<String>,
}

/// `eventfold plugins [NAME]`.
#[derive(Args)]
pub struct PluginsArgs {
    #[command(flatten)]
    connection: Connection,
    /// Show this plugin's full status as JSON.
    name: Option<String>,
}

/// `eventfold replay NAME`.
#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    connection: Connection,
    /// The plugin to rebuild.
    name: String,
    /// Start the rebuild and return without waiting for it.
    #[arg(long)]
    no_wait: bool,
}

/// `eventfold state NAME [KEY] [--prefix P]`.
#[derive(Args)]
pub struct StateArgs {
    #[command(flatten)]
    connection: Connection,
    /// The plugin.
    name: String,
    /// One key to print; without it, entries by prefix.
    key: Option<String>,
    /// Keys starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Most entries to print.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[command(flatten)]
    at: ReadAt,
}

/// `eventfold query NAME [REQUEST]`.
#[derive(Args)]
pub struct QueryArgs {
    #[command(flatten)]
    connection: Connection,
    /// The plugin.
    name: String,
    /// The request handed to the plugin's `query` export (JSON; default
    /// `{}`, `-` reads stdin).
    request: Option<String>,
    #[command(flatten)]
    at: ReadAt,
}

/// Reading your own writes: answer once the plugin's state includes a
/// position.
#[derive(Args)]
struct ReadAt {
    /// Answer once the state includes this position (the `last_position`
    /// of your append).
    #[arg(long)]
    min_position: Option<u64>,
    /// How long the server waits for --min-position (e.g. 5s; at most 20s).
    #[arg(long, requires = "min_position")]
    wait: Option<String>,
}

impl ReadAt {
    /// The query parameters that ask for it.
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        query.extend(self.min_position.map(|p| ("min_position", p.to_string())));
        query.extend(self.wait.clone().map(|w| ("wait", w)));
        query
    }
}

/// Uploads the component and prints what the server did.
pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let wasm =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let name = match args.name {
        Some(name) => name,
        None => args
            .file
            .file_stem()
            .and_then(|s| s.to_str())
            .context("cannot name the plugin after the file: pass --name")?
            .replace('_', "-")
            .to_ascii_lowercase(),
    };
    let response = args
        .connection
        .request(
            reqwest::Method::PUT,
            &format!("/plugins/{}", encode_segment(&name)),
        )
        .header("content-type", "application/wasm")
        .body(wasm)
        .send()
        .await;
    let status = read_json(response).await?;
    println!(
        "{}: {} ({} {}, {})",
        name,
        status["deploy"].as_str().unwrap_or("deployed"),
        status["kind"].as_str().unwrap_or("plugin"),
        status["version"].as_str().unwrap_or(""),
        status["state"].as_str().unwrap_or("")
    );
    Ok(())
}

/// Prints a table of plugins, or one plugin's status.
pub async fn list(args: PluginsArgs) -> anyhow::Result<()> {
    if let Some(name) = args.name {
        let response = args
            .connection
            .request(
                reqwest::Method::GET,
                &format!("/plugins/{}", encode_segment(&name)),
            )
            .send()
            .await;
        println!(
            "{}",
            serde_json::to_string_pretty(&read_json(response).await?)?
        );
        return Ok(());
    }
    let answer = read_json(
        args.connection
            .request(reqwest::Method::GET, "/plugins")
            .send()
            .await,
    )
    .await?;
    println!(
        "{:<24} {:<11} {:<12} {:>12} {:>10} {:>10}  last error",
        "NAME", "KIND", "STATE", "CHECKPOINT", "LAG", "EVENTS/S"
    );
    for plugin in answer["plugins"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<11} {:<12} {:>12} {:>10} {:>10.0}  {}",
            plugin["name"].as_str().unwrap_or(""),
            plugin["kind"].as_str().unwrap_or(""),
            plugin["state"].as_str().unwrap_or(""),
            plugin["checkpoint"].as_u64().unwrap_or(0),
            plugin["lag"].as_u64().unwrap_or(0),
            plugin["events_per_sec"].as_f64().unwrap_or(0.0),
            plugin["last_error"]["message"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Starts a rebuild and shows its progress until it has swapped in.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let path = format!("/plugins/{}", encode_segment(&args.name));
    let started = read_json(
        args.connection
            .request(reqwest::Method::POST, &format!("{path}/replay"))
            .send()
            .await,
    )
    .await?;
    let target = started["replay"]["generation"]
        .as_u64()
        .context("the server started no rebuild")?;
    if args.no_wait {
        println!("rebuilding {} as generation {target}", args.name);
        return Ok(());
    }
    let bar = ProgressBar::new(started["head"].as_u64().unwrap_or(0).max(1));
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("replaying {}", args.name));
    loop {
        let status: Value = read_json(
            args.connection
                .request(reqwest::Method::GET, &path)
                .send()
                .await,
        )
        .await?;
        bar.set_length(status["head"].as_u64().unwrap_or(0).max(1));
        match &status["rebuild"] {
            Value::Null if status["generation"].as_u64() >= Some(target) => {
                bar.set_position(status["checkpoint"].as_u64().unwrap_or(0));
                bar.finish_with_message(format!("{} rebuilt (generation {target})", args.name));
                return Ok(());
            }
            // The runner has not picked the rebuild up yet.
            Value::Null => {}
            rebuild => {
                bar.set_position(rebuild["checkpoint"].as_u64().unwrap_or(0));
                if let Some(message) = rebuild["last_error"]["message"].as_str() {
                    bar.set_message(format!("replaying {} (retrying: {message})", args.name));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints one value, or entries by prefix as JSON lines.
pub async fn state(args: StateArgs) -> anyhow::Result<()> {
    let base = format!("/plugins/{}/state", encode_segment(&args.name));
    if let Some(key) = args.key {
        let request = args
            .connection
            .request(reqwest::Method::GET, &format!("{base}/{key}"))
            .query(&args.at.query());
        return print_raw(request).await;
    }
    let mut after: Option<String> = None;
    let mut printed = 0;
    while printed < args.limit {
        let mut query = vec![
            ("prefix", args.prefix.clone()),
            ("limit", (args.limit - printed).min(1000).to_string()),
        ];
        query.extend(after.clone().map(|a| ("after", a)));
        query.extend(args.at.query());
        let page = read_json(
            args.connection
                .request(reqwest::Method::GET, &base)
                .query(&query)
                .send()
                .await,
        )
        .await?;
        for entry in page["entries"].as_array().into_iter().flatten() {
            println!("{entry}");
            printed += 1;
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    Ok(())
}

/// Runs a plugin's `query` export and prints its answer.
pub async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let request = match args.request.as_deref() {
        None => "{}".to_owned(),
        Some("-") => std::io::read_to_string(std::io::stdin()).context("reading stdin")?,
        Some(text) => text.to_owned(),
    };
    let path = format!("/plugins/{}/query", encode_segment(&args.name));
    let request = args
        .connection
        .request(reqwest::Method::POST, &path)
        .query(&args.at.query())
        .body(request);
    print_raw(request).await
}

/// Sends `request` and prints the answer's body as it is, or fails with
/// the error's message (and the checkpoint it names, if any).
async fn print_raw(request: reqwest::RequestBuilder) -> anyhow::Result<()> {
    let response = request.send().await.context("cannot reach the server")?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        let error: Value = serde_json::from_slice(&body).unwrap_or_default();
        let error = &error["error"];
        let at = error["checkpoint"]
            .as_u64()
            .map_or(String::new(), |c| format!(" (checkpoint {c})"));
        anyhow::bail!("{status}: {}{at}", error["message"].as_str().unwrap_or(""));
    }
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}
