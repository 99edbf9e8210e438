//! Prometheus metrics of the server: what `GET /metrics` exposes.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The server's metrics; cheap to clone (every field is shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Append requests acknowledged (single-stream appends and batches).
    pub appends: Counter,
    /// Events appended (idempotent retries not counted).
    pub events_appended: Counter,
    /// Append requests refused (bad input, version conflicts, errors).
    pub appends_refused: Counter,
    /// Seconds from receiving an append request to acknowledging it.
    pub append_latency: Histogram,
    /// Events written per group commit.
    pub events_per_commit: Histogram,
    /// The last committed position.
    pub head_position: Gauge,
    /// Times the log's storage failed (a full disk, an I/O error) and the
    /// writer stopped until the log reopened.
    pub storage_failures: Counter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("eventfold");
        let appends = Counter::default();
        let events_appended = Counter::default();
        let appends_refused = Counter::default();
        let append_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        let events_per_commit = Histogram::new(exponential_buckets(1.0, 2.0, 16));
        let head_position = Gauge::default();
        let storage_failures = Counter::default();
        registry.register(
            "storage_failures",
            "Times the log's storage failed (full disk, I/O error) and appends stopped until it reopened",
            storage_failures.clone(),
        );
        registry.register("appends", "Append requests acknowledged", appends.clone());
        registry.register(
            "events_appended",
            "Events appended",
            events_appended.clone(),
        );
        registry.register(
            "appends_refused",
            "Append requests refused",
            appends_refused.clone(),
        );
        registry.register(
            "append_latency_seconds",
            "Time from receiving an append to acknowledging it",
            append_latency.clone(),
        );
        registry.register(
            "events_per_commit",
            "Events written per group commit",
            events_per_commit.clone(),
        );
        registry.register(
            "head_position",
            "Last committed position",
            head_position.clone(),
        );
        Self {
            registry: Arc::new(registry),
            appends,
            events_appended,
            appends_refused,
            append_latency,
            events_per_commit,
            head_position,
            storage_failures,
        }
    }

    /// The OpenMetrics text exposition of every metric, with `extra`
    /// families (computed at scrape time elsewhere) before the end marker.
    pub fn render(&self, extra: &str) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        if let Some(body) = out.strip_suffix("# EOF\n") {
            out = format!("{body}{extra}# EOF\n");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
