//! One dispatcher task per notifier: delivers its mailbox to its webhook, in
//! order, after commit. Each notification is tried until the receiver
//! answers 2xx or the attempts run out (then it becomes a dead letter);
//! retries back off exponentially with jitter, and a rate limit keeps a
//! burst or a replay from flooding the receiver.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::mailbox::{Mailbox, Outcome};
use super::webhook::WebhookConfig;
use super::{NotifyError, StoredNotification};
use crate::blocking;

/// Notifications read from the mailbox at a time.
const PAGE: usize = 256;
/// Most outcomes recorded in one mailbox transaction.
const RECORD_CHUNK: usize = 64;
/// How long to wait before looking again after the mailbox itself failed.
const STORAGE_RETRY: Duration = Duration::from_secs(1);

/// Runs until `shutdown` is cancelled: delivers whatever the mailbox holds
/// past the webhook's cursor, makes that progress durable, then waits to be
/// woken. A failure of either looks again a second later; a storage failure
/// (a full disk) reopens the mailbox first, whether a round or the sync of
/// an idle dispatcher met it: after redb's first I/O error every operation
/// on the file fails, so which one meets it is a matter of timing.
pub async fn run(mailbox: Arc<Mailbox>, client: reqwest::Client, shutdown: CancellationToken) {
    loop {
        // Registered before looking, so that a wake during a round is not lost.
        let woken = mailbox.wake.notified();
        let settled = match round(&mailbox, &client, &shutdown).await {
            Ok(true) => continue,
            Ok(false) => on_mailbox(&mailbox, Mailbox::sync).await,
            Err(error) => Err(error),
        };
        if let Err(error) = settled {
            tracing::error!(plugin = %mailbox.plugin(), %error, "notification delivery stalled");
            // Reopened, the mailbox holds its last durable commit: outcomes
            // recorded since are delivered again (at least once).
            if error.is_storage_failure()
                && let Err(error) = on_mailbox(&mailbox, Mailbox::reopen).await
            {
                tracing::warn!(plugin = %mailbox.plugin(), %error, "cannot reopen the mailbox yet");
            }
            tokio::select! {
                () = tokio::time::sleep(STORAGE_RETRY) => continue,
                () = shutdown.cancelled() => break,
            }
        }
        tokio::select! {
            () = woken => {}
            () = shutdown.cancelled() => break,
        }
    }
    let _ = on_mailbox(&mailbox, Mailbox::sync).await;
}

/// A mailbox operation (a redb read or commit), off the runtime's threads.
async fn on_mailbox<T: Send + 'static>(
    mailbox: &Arc<Mailbox>,
    operation: impl FnOnce(&Mailbox) -> Result<T, NotifyError> + Send + 'static,
) -> Result<T, NotifyError> {
    let mailbox = mailbox.clone();
    blocking::run(move || operation(&mailbox)).await
}

/// What a round delivers: the dead letters the operator asked to retry
/// (marked `true`), then a page of notifications past the cursor; and how
/// many retries lead it.
fn pending(mailbox: &Mailbox) -> Result<(Vec<(StoredNotification, bool)>, usize), NotifyError> {
    let mut work: Vec<(StoredNotification, bool)> = Vec::new();
    for sequence in mailbox.retries()? {
        if let Some(n) = mailbox.get(sequence)? {
            work.push((n, true));
        }
    }
    let retries = work.len();
    work.extend(
        mailbox
            .read(mailbox.cursor()?, PAGE)?
            .into_iter()
            .map(|n| (n, false)),
    );
    Ok((work, retries))
}

/// One page of work; true if there may be more.
async fn round(
    mailbox: &Arc<Mailbox>,
    client: &reqwest::Client,
    shutdown: &CancellationToken,
) -> Result<bool, NotifyError> {
    let Some(config) = on_mailbox(mailbox, Mailbox::webhook).await? else {
        return Ok(false);
    };
    let limiter = RateLimiter::new(config.max_per_second);
    let (work, retries) = on_mailbox(mailbox, pending).await?;
    if work.is_empty() {
        return Ok(false);
    }
    let more = work.len() - retries == PAGE;
    let plugin = mailbox.plugin().clone();
    let deliveries = futures_util::stream::iter(work)
        .map(|(notification, retry)| {
            let (config, limiter, plugin) = (&config, &limiter, &plugin);
            async move {
                let outcome = if config.wants(&notification.channel) {
                    deliver(client, config, limiter, plugin, &notification, shutdown).await
                } else {
                    // Not for the webhook: it stays readable from the feed
                    // and the pull API, and the cursor passes it.
                    Some(Outcome::Skipped)
                };
                (notification.sequence, retry, outcome)
            }
        })
        // In order: outcomes come back in sequence, so the cursor only
        // ever passes notifications that are settled.
        .buffered(config.max_in_flight as usize);
    // Outcomes that are ready together are recorded in one transaction.
    let deliveries = deliveries.ready_chunks(RECORD_CHUNK);
    futures_util::pin_mut!(deliveries);
    while let Some(chunk) = deliveries.next().await {
        let settled: Vec<(u64, bool, Outcome)> = chunk
            .iter()
            .map_while(|(sequence, retry, outcome)| Some((*sequence, *retry, outcome.clone()?)))
            .collect();
        let recorded = settled.len();
        // One trip to the blocking pool records the chunk and reads the
        // settings back: new settings (or a removed webhook) take effect
        // from the next page.
        let current = on_mailbox(mailbox, move |m| {
            m.record(&settled)?;
            m.webhook()
        })
        .await?;
        if recorded < chunk.len() {
            // Shutting down mid-delivery: the rest goes after the restart.
            return Ok(false);
        }
        if current.as_ref() != Some(&config) {
            return Ok(true);
        }
    }
    Ok(more || retries > 0)
}

/// Tries one notification until it is delivered or its attempts run out;
/// `None` if the server shut down first.
async fn deliver(
    client: &reqwest::Client,
    config: &WebhookConfig,
    limiter: &RateLimiter,
    plugin: &str,
    notification: &StoredNotification,
    shutdown: &CancellationToken,
) -> Option<Outcome> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        tokio::select! {
            () = limiter.acquire() => {}
            () = shutdown.cancelled() => return None,
        }
        let error = tokio::select! {
            result = config.send(client, plugin, notification) => match result {
                Ok(()) => return Some(Outcome::Delivered { failed: attempt - 1 }),
                Err(error) => error,
            },
            () = shutdown.cancelled() => return None,
        };
        if attempt >= config.max_attempts {
            tracing::warn!(
                plugin,
                sequence = notification.sequence,
                attempts = attempt,
                "notification dead-lettered: {error}"
            );
            return Some(Outcome::Dead {
                attempts: attempt,
                error,
            });
        }
        tracing::debug!(
            plugin,
            sequence = notification.sequence,
            attempt,
            "delivery failed, will retry: {error}"
        );
        tokio::select! {
            () = tokio::time::sleep(config.backoff(attempt)) => {}
            () = shutdown.cancelled() => return None,
        }
    }
}

/// Spaces attempts out to at most `rate` per second.
struct RateLimiter {
    interval: Option<Duration>,
    next: Mutex<Instant>,
}

impl RateLimiter {
    fn new(rate: Option<f64>) -> Self {
        Self {
            interval: rate.map(|r| Duration::from_secs_f64(1.0 / r)),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for the next free slot.
    async fn acquire(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}
