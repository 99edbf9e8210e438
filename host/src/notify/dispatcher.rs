//! One dispatcher task per notifier: delivers its mailbox to its webhook, in
//! order, after commit. Each notification is tried until the receiver
//! answers 2xx or the attempts run out (then it becomes a dead letter);
//! retries back off exponentially with jitter, and a rate limit keeps a
//! burst or a replay from flooding the receiver.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::handover::{self, KeyId, Ownership, key_id};
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

/// Runs until `shutdown` is cancelled. Alone (`ownership` is `None`), it
/// delivers everything the mailbox holds; with other nodes, only while this
/// node owns the notifier's lease, passing what the ledger says an owner
/// before it delivered.
pub async fn run(
    mailbox: Arc<Mailbox>,
    client: reqwest::Client,
    shutdown: CancellationToken,
    ownership: Option<Ownership>,
) {
    let Some(mut ownership) = ownership else {
        deliver_while(&mailbox, &client, &shutdown, None).await;
        let _ = on_mailbox(&mailbox, Mailbox::sync).await;
        return;
    };
    while wait_for_lease(&mut ownership.owner, &shutdown).await {
        let delivered = tokio::select! {
            delivered = ownership.ledger.delivered() => delivered,
            () = shutdown.cancelled() => break,
        };
        let known = match delivered {
            Ok(known) => known,
            Err(error) => {
                tracing::warn!(plugin = %mailbox.plugin(), %error, "cannot read the delivery ledger yet");
                tokio::select! {
                    () = tokio::time::sleep(STORAGE_RETRY) => continue,
                    () = shutdown.cancelled() => break,
                }
            }
        };
        tracing::info!(plugin = %mailbox.plugin(), delivered = known.len(), "owner of the notifier's delivery");
        // This term ends when the lease is lost or the server stops.
        let term = shutdown.child_token();
        let lost = watch_lease(ownership.owner.clone(), term.clone());
        let ledger = Ledger::new(ownership.ledger.as_ref(), known);
        deliver_while(&mailbox, &client, &term, Some(&ledger)).await;
        term.cancel();
        let _ = lost.await;
        let _ = on_mailbox(&mailbox, Mailbox::sync).await;
        if !shutdown.is_cancelled() {
            tracing::info!(plugin = %mailbox.plugin(), "lost the notifier's lease: delivery stopped here");
        }
    }
    let _ = on_mailbox(&mailbox, Mailbox::sync).await;
}

/// Waits until this node owns the lease; false if the server stops first.
async fn wait_for_lease(owner: &mut watch::Receiver<bool>, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        owned = owner.wait_for(|owned| *owned) => owned.is_ok(),
        () = shutdown.cancelled() => false,
    }
}

/// Cancels `term` once this node no longer owns the lease.
fn watch_lease(
    mut owner: watch::Receiver<bool>,
    term: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            _ = owner.wait_for(|owned| !*owned) => term.cancel(),
            () = term.cancelled() => {}
        }
    })
}

/// Delivers whatever the mailbox holds past the webhook's cursor, makes
/// that progress durable, then waits to be woken, until `stop`. A failure
/// of either looks again a second later; a storage failure (a full disk)
/// reopens the mailbox first, whether a round or the sync of an idle
/// dispatcher met it: after redb's first I/O error every operation on the
/// file fails, so which one meets it is a matter of timing.
async fn deliver_while(
    mailbox: &Arc<Mailbox>,
    client: &reqwest::Client,
    stop: &CancellationToken,
    ledger: Option<&Ledger<'_>>,
) {
    loop {
        // Registered before looking, so that a wake during a round is not lost.
        let woken = mailbox.wake.notified();
        let settled = match round(mailbox, client, stop, ledger).await {
            Ok(true) => continue,
            Ok(false) => on_mailbox(mailbox, Mailbox::sync).await,
            Err(error) => Err(error),
        };
        if let Err(error) = settled {
            tracing::error!(plugin = %mailbox.plugin(), %error, "notification delivery stalled");
            // Reopened, the mailbox holds its last durable commit: outcomes
            // recorded since are delivered again (at least once).
            if error.is_storage_failure()
                && let Err(error) = on_mailbox(mailbox, Mailbox::reopen).await
            {
                tracing::warn!(plugin = %mailbox.plugin(), %error, "cannot reopen the mailbox yet");
            }
            tokio::select! {
                () = tokio::time::sleep(STORAGE_RETRY) => continue,
                () = stop.cancelled() => return,
            }
        }
        tokio::select! {
            () = woken => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The delivery ledger during one term of ownership: the keys delivered
/// by anyone, as read when the term began plus what this node delivered.
struct Ledger<'a> {
    shared: &'a dyn handover::Ledger,
    known: parking_lot::Mutex<HashSet<KeyId>>,
}

impl<'a> Ledger<'a> {
    fn new(shared: &'a dyn handover::Ledger, known: HashSet<KeyId>) -> Self {
        Self {
            shared,
            known: parking_lot::Mutex::new(known),
        }
    }

    fn was_delivered(&self, key: &KeyId) -> bool {
        self.known.lock().contains(key)
    }

    /// Records `keys` in the cluster, trying again until it succeeds or
    /// `stop`; false if stopped first (then the keys may be sent again).
    async fn record(&self, mut keys: Vec<KeyId>, stop: &CancellationToken) -> bool {
        keys.retain(|key| !self.was_delivered(key));
        if keys.is_empty() {
            return true;
        }
        loop {
            match self.shared.record(keys.clone()).await {
                Ok(()) => {
                    self.known.lock().extend(keys);
                    return true;
                }
                Err(error) => tracing::warn!(%error, "cannot record deliveries in the ledger yet"),
            }
            tokio::select! {
                () = tokio::time::sleep(STORAGE_RETRY) => {}
                () = stop.cancelled() => return false,
            }
        }
    }
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
    ledger: Option<&Ledger<'_>>,
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
                let delivered_before =
                    ledger.is_some_and(|l| l.was_delivered(&key_id(plugin, &notification.key)));
                let outcome = if delivered_before {
                    // An owner before this node delivered it.
                    Some(Outcome::Delivered { failed: 0 })
                } else if config.wants(&notification.channel) {
                    deliver(client, config, limiter, plugin, &notification, shutdown).await
                } else {
                    // Not for the webhook: it stays readable from the feed
                    // and the pull API, and the cursor passes it.
                    Some(Outcome::Skipped)
                };
                (notification, retry, outcome)
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
            .map_while(|(notification, retry, outcome)| {
                Some((notification.sequence, *retry, outcome.clone()?))
            })
            .collect();
        let recorded = settled.len();
        if let Some(ledger) = ledger {
            let keys = delivered_keys(&plugin, &chunk[..recorded]);
            if !ledger.record(keys, shutdown).await {
                return Ok(false);
            }
        }
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

/// The ledger's ids of the notifications of `settled` that reached the
/// receiver.
fn delivered_keys(
    plugin: &str,
    settled: &[(StoredNotification, bool, Option<Outcome>)],
) -> Vec<KeyId> {
    settled
        .iter()
        .filter(|(_, _, outcome)| matches!(outcome, Some(Outcome::Delivered { .. })))
        .map(|(notification, _, _)| key_id(plugin, &notification.key))
        .collect()
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
