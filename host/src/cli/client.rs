//! Client subcommands: `append`, `read` and `tail` against a running server.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Where the server is and how to authenticate.
#[derive(Args)]
pub struct Connection {
    /// Base URL of the server.
    #[arg(long, env = "EVENTFOLD_URL", default_value = "http://127.0.0.1:7411")]
    url: String,
    /// Bearer token, when the server requires one.
    #[arg(long, env = "EVENTFOLD_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Connection {
    /// A request to `path` on the server, with the token if there is one.
    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{}", self.url.trim_end_matches('/'), path);
        let request = reqwest::Client::new().request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

/// `eventfold append STREAM TYPE [DATA]`.
#[derive(Args)]
pub struct AppendArgs {
    #[command(flatten)]
    connection: Connection,
    /// Stream to append to, e.g. `user-1`.
    stream: String,
    /// Event type, e.g. `UserCreated`.
    event_type: String,
    /// Event data as JSON; `-` reads it from standard input.
    #[arg(default_value = "{}")]
    data: String,
    /// Metadata as a JSON object.
    #[arg(long)]
    metadata: Option<String>,
    /// Event id (a UUID; UUIDv7 keeps the id index fast) for idempotent retries.
    #[arg(long)]
    id: Option<uuid::Uuid>,
    /// `any`, `no_stream`, `exists`, or the version of the stream's last event.
    #[arg(long, default_value = "any")]
    expected_version: String,
}

/// `eventfold read [STREAM]`.
#[derive(Args)]
pub struct ReadArgs {
    #[command(flatten)]
    connection: Connection,
    /// Stream to read; without it, the global log.
    stream: Option<String>,
    /// First version (stream) or position (log) to read.
    #[arg(long)]
    from: Option<u64>,
    /// Most events to print.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Newest first (stream reads only).
    #[arg(long)]
    backward: bool,
    /// Keep only these stream categories (log reads; comma-separated).
    #[arg(long)]
    category: Option<String>,
    /// Keep only these event types (log reads; comma-separated).
    #[arg(long = "type")]
    event_type: Option<String>,
}

/// `eventfold tail`.
#[derive(Args)]
pub struct TailArgs {
    #[command(flatten)]
    connection: Connection,
    /// First position to print (default: only new events).
    #[arg(long)]
    from: Option<u64>,
    /// Keep only these stream categories (comma-separated).
    #[arg(long)]
    category: Option<String>,
    /// Keep only these event types (comma-separated).
    #[arg(long = "type")]
    event_type: Option<String>,
}

/// Runs a client command on a small runtime of its own.
pub fn run(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(command)
}

/// Sends the event; prints where it landed.
pub async fn append(args: AppendArgs) -> anyhow::Result<()> {
    let data = if args.data == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading data from stdin")?;
        text
    } else {
        args.data
    };
    let data: Value = serde_json::from_str(&data).context("DATA is not valid JSON")?;
    let mut event = json!({ "type": args.event_type, "data": data });
    if let Some(metadata) = args.metadata {
        event["metadata"] =
            serde_json::from_str(&metadata).context("--metadata is not valid JSON")?;
    }
    if let Some(id) = args.id {
        event["id"] = json!(id);
    }
    let expected_version = match args.expected_version.parse::<u64>() {
        Ok(v) => json!(v),
        Err(_) => json!(args.expected_version),
    };
    let body = json!({ "expected_version": expected_version, "events": [event] });
    let path = format!("/streams/{}", encode_segment(&args.stream));
    let response = args
        .connection
        .request(reqwest::Method::POST, &path)
        .json(&body)
        .send()
        .await;
    let answer = read_json(response).await?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

/// Prints events as JSON lines, following pages up to `--limit`.
pub async fn read(args: ReadArgs) -> anyhow::Result<()> {
    let mut printed = 0;
    let mut from = args.from;
    let mut out = std::io::stdout().lock();
    while printed < args.limit {
        let page_size = (args.limit - printed).min(1000);
        let mut query = vec![("limit", page_size.to_string())];
        if let Some(from) = from {
            query.push(("from", from.to_string()));
        }
        let path = match &args.stream {
            Some(stream) => {
                if args.backward {
                    query.push(("direction", "backward".into()));
                }
                format!("/streams/{}", encode_segment(stream))
            }
            None => {
                query.extend(args.category.clone().map(|c| ("category", c)));
                query.extend(args.event_type.clone().map(|t| ("type", t)));
                "/events".to_string()
            }
        };
        let response = args
            .connection
            .request(reqwest::Method::GET, &path)
            .query(&query)
            .send()
            .await;
        let page = read_json(response).await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for event in &events {
            writeln!(out, "{event}")?;
        }
        printed += events.len();
        let next = page["next"].as_u64();
        let at_end = match &args.stream {
            Some(_) => next.is_none(),
            None => next
                .zip(page["head"].as_u64())
                .is_none_or(|(next, head)| next > head),
        };
        if at_end || (events.is_empty() && args.stream.is_some()) {
            break;
        }
        from = next;
    }
    Ok(())
}

/// Follows the live feed, printing each event as a JSON line; reconnects after
/// a dropped connection, resuming after the last event printed.
pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let mut last: Option<u64> = None;
    let mut from = args.from;
    if from.is_none() {
        // Only new events: start after the current head.
        let health = read_json(
            args.connection
                .request(reqwest::Method::GET, "/health")
                .send()
                .await,
        )
        .await?;
        from = health["head"].as_u64().map(|head| head + 1);
    }
    loop {
        let mut query = Vec::new();
        query.extend(from.map(|f| ("from", f.to_string())));
        query.extend(args.category.clone().map(|c| ("category", c)));
        query.extend(args.event_type.clone().map(|t| ("type", t)));
        let mut request = args
            .connection
            .request(reqwest::Method::GET, "/events/live")
            .query(&query);
        if let Some(last) = last {
            request = request.header("Last-Event-ID", last.to_string());
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                let mut events = response.bytes_stream().eventsource();
                while let Some(event) = events.next().await {
                    let Ok(event) = event else { break };
                    println!("{}", event.data);
                    last = event.id.parse().ok().or(last);
                }
            }
            Ok(response) => {
                read_json(Ok(response)).await?;
            }
            Err(error) => eprintln!("connection lost ({error}); reconnecting"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

use eventsource_stream::Eventsource;

/// The JSON body of a successful response, or the server's error as an error.
pub(super) async fn read_json(
    response: reqwest::Result<reqwest::Response>,
) -> anyhow::Result<Value> {
    let response =
        response.context("cannot reach the server (is `eventfold serve` running? see --url)")?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("{status}: the body is not JSON"))?;
    if !status.is_success() {
        let code = body["error"]["code"].as_str().unwrap_or("error");
        let message = body["error"]["message"].as_str().unwrap_or("");
        bail!("{status} {code}: {message}");
    }
    Ok(body)
}

/// Percent-encodes a stream name for use as one path segment.
pub(super) fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
