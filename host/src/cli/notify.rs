//! Client subcommands for notifiers: `webhook` (set, show or remove a
//! notifier's webhook) and `notifications` (its notifications or dead letters).

use clap::Args;
use serde_json::{Value, json};

use super::client::{Connection, encode_segment, read_json};

/// `eventfold webhook NAME [--endpoint URL --secret S …] [--remove]`.
#[derive(Args)]
pub struct WebhookArgs {
    #[command(flatten)]
    connection: Connection,
    /// The notifier.
    name: String,
    /// Where to POST notifications (without it: show the current settings).
    /// Not `--url`: that names the eventfold server.
    #[arg(long, requires = "secret")]
    endpoint: Option<String>,
    /// The signing secret, `whsec_` + base64.
    #[arg(long, env = "EVENTFOLD_WEBHOOK_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Per-attempt timeout in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Attempts before a notification becomes a dead letter.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// First retry delay in milliseconds (doubles each time).
    #[arg(long)]
    backoff_ms: Option<u64>,
    /// Most attempts started per second.
    #[arg(long)]
    max_per_second: Option<f64>,
    /// Most deliveries in flight (1 keeps them strictly in order).
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// Remove the webhook (notifications then wait in the mailbox).
    #[arg(long, conflicts_with = "endpoint")]
    remove: bool,
}

/// `eventfold notifications NAME [--after N] [--limit N] [--dead-letters]`.
#[derive(Args)]
pub struct NotificationsArgs {
    #[command(flatten)]
    connection: Connection,
    /// The notifier.
    name: String,
    /// Start after this sequence.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Most to print.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print the dead letters instead.
    #[arg(long)]
    dead_letters: bool,
    /// Send the dead letter with this id again.
    #[arg(long, conflicts_with = "dead_letters")]
    retry: Option<u64>,
}

/// Sets, removes or shows the webhook, and prints the settings (never the secret).
pub async fn webhook(args: WebhookArgs) -> anyhow::Result<()> {
    let path = format!("/plugins/{}/webhook", encode_segment(&args.name));
    let request = if args.remove {
        args.connection.request(reqwest::Method::DELETE, &path)
    } else if let Some(endpoint) = &args.endpoint {
        let mut settings = json!({ "url": endpoint, "secret": args.secret });
        for (field, value) in [
            ("timeout_ms", args.timeout_ms.map(Value::from)),
            ("max_attempts", args.max_attempts.map(Value::from)),
            ("backoff_ms", args.backoff_ms.map(Value::from)),
            ("max_per_second", args.max_per_second.map(Value::from)),
            ("max_in_flight", args.max_in_flight.map(Value::from)),
        ] {
            if let Some(value) = value {
                settings[field] = value;
            }
        }
        args.connection
            .request(reqwest::Method::PUT, &path)
            .json(&settings)
    } else {
        args.connection.request(reqwest::Method::GET, &path)
    };
    let answer = read_json(request.send().await).await?;
    println!("{}", serde_json::to_string_pretty(&answer["webhook"])?);
    Ok(())
}

/// Prints notifications (or dead letters) one JSON object per line, or retries one.
pub async fn notifications(args: NotificationsArgs) -> anyhow::Result<()> {
    let name = encode_segment(&args.name);
    if let Some(id) = args.retry {
        let path = format!("/plugins/{name}/dead-letters/{id}/retry");
        read_json(
            args.connection
                .request(reqwest::Method::POST, &path)
                .send()
                .await,
        )
        .await?;
        println!("dead letter {id} will be sent again");
        return Ok(());
    }
    let (resource, field) = if args.dead_letters {
        ("dead-letters", "dead_letters")
    } else {
        ("notifications", "notifications")
    };
    let path = format!(
        "/plugins/{name}/{resource}?after={}&limit={}",
        args.after, args.limit
    );
    let answer = read_json(
        args.connection
            .request(reqwest::Method::GET, &path)
            .send()
            .await,
    )
    .await?;
    for item in answer[field].as_array().into_iter().flatten() {
        println!("{item}");
    }
    Ok(())
}
