//! Prometheus metrics of the server: what `GET /metrics` exposes
//! (`docs/operations.md#metrics`).
//!
//! Counters and gauges are atomics that their owners update where the
//! thing happens (the log's writer once per group, a plugin's runner once
//! per batch); figures that a component already keeps (queued appends,
//! open connections) are [`Sampled`] when scraped instead, so that the hot
//! paths pay nothing for them. Per-plugin series are in [`PluginMetrics`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use parking_lot::RwLock;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// The server's metrics; cheap to clone (every field is shared).
#[derive(Clone, Debug)]
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
    /// The embedded log's writer: its queue and write-ahead log.
    pub writer: WriterMetrics,
    /// Connections, live feeds and append sockets open.
    pub connections: ConnectionMetrics,
    /// Every plugin's series.
    pub plugins: PluginMetrics,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("eventfold");
        let r = &mut registry;
        let latency = exponential_buckets(0.000_05, 2.0, 18);
        let per_commit = exponential_buckets(1.0, 2.0, 16);
        Self {
            storage_failures: register(
                r,
                "storage_failures",
                "Times the log's storage failed (full disk, I/O error) and appends stopped until it reopened",
                Counter::default(),
            ),
            appends: register(
                r,
                "appends",
                "Append requests acknowledged",
                Counter::default(),
            ),
            events_appended: register(r, "events_appended", "Events appended", Counter::default()),
            appends_refused: register(
                r,
                "appends_refused",
                "Append requests refused",
                Counter::default(),
            ),
            append_latency: register(
                r,
                "append_latency_seconds",
                "Time from receiving an append to acknowledging it",
                Histogram::new(latency),
            ),
            events_per_commit: register(
                r,
                "events_per_commit",
                "Events written per group commit",
                Histogram::new(per_commit),
            ),
            head_position: register(
                r,
                "head_position",
                "Last committed position",
                Gauge::default(),
            ),
            writer: WriterMetrics::register(r),
            connections: ConnectionMetrics::register(r),
            plugins: PluginMetrics::register(r),
            registry: Arc::new(registry),
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

/// The embedded log writer's figures (on JetStream they stay 0).
#[derive(Clone, Debug)]
pub struct WriterMetrics {
    /// Append requests queued for the writer or being committed.
    pub queue_depth: Sampled,
    /// Bytes of write-ahead-log records since the last checkpoint.
    pub wal_bytes: Gauge,
    /// Checkpoints (redb made durable, the WAL started over).
    pub wal_checkpoints: Counter,
}

impl WriterMetrics {
    /// Creates the metrics and registers them in `r`.
    fn register(r: &mut Registry) -> Self {
        Self {
            queue_depth: register(
                r,
                "log_queue_depth",
                "Append requests queued for the log's writer or being committed (embedded log)",
                Sampled::default(),
            ),
            wal_bytes: register(
                r,
                "wal_bytes",
                "Bytes of write-ahead-log records since the last checkpoint (embedded log)",
                Gauge::default(),
            ),
            wal_checkpoints: register(
                r,
                "wal_checkpoints",
                "Checkpoints of the embedded log: redb made durable and the write-ahead log started over",
                Counter::default(),
            ),
        }
    }
}

/// What holds a connection open: HTTP connections, and the live feeds and
/// append sockets among their requests.
#[derive(Clone, Debug)]
pub struct ConnectionMetrics {
    /// HTTP connections open.
    pub open: Sampled,
    /// Connections refused because the connection limit was reached.
    pub refused: Counter,
    /// Live feeds (Server-Sent Events) open.
    pub live_feeds: Sampled,
    /// Append sockets (WebSockets) open.
    pub append_sockets: Sampled,
}

impl ConnectionMetrics {
    /// Creates the metrics and registers them in `r`.
    fn register(r: &mut Registry) -> Self {
        Self {
            open: register(
                r,
                "connections_open",
                "HTTP connections open",
                Sampled::default(),
            ),
            refused: register(
                r,
                "connections_refused",
                "Connections refused at the connection limit",
                Counter::default(),
            ),
            live_feeds: register(
                r,
                "live_feeds_open",
                "Live feeds (Server-Sent Events) open",
                Sampled::default(),
            ),
            append_sockets: register(
                r,
                "append_sockets_open",
                "Append sockets (WebSockets) open",
                Sampled::default(),
            ),
        }
    }
}

/// Registers `metric` as `name` with `help`, and answers it.
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// What a [`Sampled`] gauge reads when scraped.
type Source = Box<dyn Fn() -> i64 + Send + Sync>;

/// A gauge read from its source when scraped: for a figure a component
/// keeps anyway (permits of a semaphore), which would otherwise cost an
/// update on a hot path. 0 until a source is set.
#[derive(Clone, Default)]
pub struct Sampled(Arc<RwLock<Option<Source>>>);

impl Sampled {
    /// Reads the gauge from `source` from now on (the last source set wins).
    /// The source must not hold what holds the metrics, or neither is freed.
    pub fn sample_from(&self, source: impl Fn() -> i64 + Send + Sync + 'static) {
        *self.0.write() = Some(Box::new(source));
    }

    /// The value now.
    pub fn get(&self) -> i64 {
        self.0.read().as_ref().map_or(0, |source| source())
    }
}

impl fmt::Debug for Sampled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Sampled").field(&self.get()).finish()
    }
}

impl EncodeMetric for Sampled {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// The states a plugin is shown in, as `eventfold_plugin_state{state}` names
/// them (the kebab-case names of `plugins::RunState`).
pub const PLUGIN_STATES: [&str; 6] = [
    "compiling",
    "catching-up",
    "running",
    "replaying",
    "paused",
    "failed",
];

/// The labels of a per-plugin series: the plugin's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

/// The labels of a plugin's state series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    plugin: String,
    state: &'static str,
}

/// The labels of a plugin's instance recycles: `trap` (thrown away after a
/// trap) or `memory` (recycled near its memory cap).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecycleLabels {
    plugin: String,
    reason: &'static str,
}

/// A family of per-plugin series.
type PerPlugin<M> = Family<PluginLabel, M>;

/// Every plugin's series, labelled `plugin`. A runner takes its own handles
/// once ([`PluginMetrics::series`]), so that a batch updates atomics, not
/// maps; the series go when the plugin does ([`PluginMetrics::remove`]).
#[derive(Clone, Debug)]
pub struct PluginMetrics {
    checkpoint: PerPlugin<Gauge>,
    lag_events: PerPlugin<Gauge>,
    lag_seconds: PerPlugin<Gauge<f64, AtomicU64>>,
    state: Family<StateLabels, Gauge>,
    events_handled: PerPlugin<Counter>,
    handle_seconds: PerPlugin<Histogram>,
    failures: PerPlugin<Counter>,
    retries: PerPlugin<Counter>,
    parked: PerPlugin<Gauge>,
    rebuild_checkpoint: PerPlugin<Gauge>,
    recycles: Family<RecycleLabels, Counter>,
    memory_peak: PerPlugin<Gauge>,
    outputs_appended: PerPlugin<Counter>,
    outputs_suppressed: PerPlugin<Counter>,
}

/// The buckets of a plugin's handle time: 50 µs to about 6.5 s (the
/// default deadline of a call is 5 s).
fn handle_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

impl PluginMetrics {
    /// Creates the families and registers them in `r`.
    // long: one registration per series, each with its help text: a list.
    fn register(r: &mut Registry) -> Self {
        let handle_seconds = Family::new_with_constructor(handle_histogram as fn() -> Histogram);
        Self {
            checkpoint: register(
                r,
                "plugin_checkpoint",
                "Last position the plugin's serving state includes",
                Family::default(),
            ),
            lag_events: register(
                r,
                "plugin_lag_events",
                "Events between the plugin's checkpoint and the head",
                Family::default(),
            ),
            lag_seconds: register(
                r,
                "plugin_lag_seconds",
                "Age of the oldest event the plugin has not handled (0 when caught up)",
                Family::default(),
            ),
            state: register(
                r,
                "plugin_state",
                "The plugin's state: 1 for the one it is in, 0 for the others",
                Family::default(),
            ),
            events_handled: register(
                r,
                "plugin_events_handled",
                "Events the plugin handled (committed batches, serving version and rebuild)",
                Family::default(),
            ),
            handle_seconds: register(
                r,
                "plugin_handle_seconds",
                "Time of one call of the plugin's handle (one batch)",
                handle_seconds,
            ),
            failures: register(
                r,
                "plugin_failures",
                "Failed attempts at a batch (rejected, trapped, out of time or memory, or the host around the call)",
                Family::default(),
            ),
            retries: register(
                r,
                "plugin_retries",
                "Batches tried again after a failed attempt",
                Family::default(),
            ),
            parked: register(
                r,
                "plugin_parked",
                "Events skipped by the operator and parked, in the serving version",
                Family::default(),
            ),
            rebuild_checkpoint: register(
                r,
                "plugin_rebuild_checkpoint",
                "Checkpoint of the rebuild in progress (0: none)",
                Family::default(),
            ),
            recycles: register(
                r,
                "plugin_instance_recycles",
                "Instances thrown away after a trap or recycled near the memory cap",
                Family::default(),
            ),
            memory_peak: register(
                r,
                "plugin_memory_peak_bytes",
                "Most linear memory an instance of the plugin has held",
                Family::default(),
            ),
            outputs_appended: register(
                r,
                "plugin_outputs_appended",
                "Events a reactor appended to the log (retries of a redone batch included)",
                Family::default(),
            ),
            outputs_suppressed: register(
                r,
                "plugin_outputs_suppressed",
                "Events a reactor did not append because they were in the log already (a rebuild's, or another node's)",
                Family::default(),
            ),
        }
    }

    /// The series of `plugin`, created if new: what its runner updates.
    pub fn series(&self, plugin: &str) -> PluginSeries {
        let label = PluginLabel {
            plugin: plugin.to_owned(),
        };
        let recycles = |reason| {
            self.recycles.get_or_create_owned(&RecycleLabels {
                plugin: plugin.to_owned(),
                reason,
            })
        };
        PluginSeries {
            checkpoint: self.checkpoint.get_or_create_owned(&label),
            lag_events: self.lag_events.get_or_create_owned(&label),
            lag_seconds: self.lag_seconds.get_or_create_owned(&label),
            states: self.states(plugin),
            events_handled: self.events_handled.get_or_create_owned(&label),
            handle_seconds: self.handle_seconds.get_or_create_owned(&label),
            failures: self.failures.get_or_create_owned(&label),
            retries: self.retries.get_or_create_owned(&label),
            parked: self.parked.get_or_create_owned(&label),
            rebuild_checkpoint: self.rebuild_checkpoint.get_or_create_owned(&label),
            recycled_after_trap: recycles("trap"),
            recycled_near_cap: recycles("memory"),
            memory_peak: self.memory_peak.get_or_create_owned(&label),
            outputs_appended: self.outputs_appended.get_or_create_owned(&label),
            outputs_suppressed: self.outputs_suppressed.get_or_create_owned(&label),
        }
    }

    /// The state series of `plugin`, in the order of [`PLUGIN_STATES`].
    fn states(&self, plugin: &str) -> [Gauge; 6] {
        PLUGIN_STATES.map(|state| {
            self.state.get_or_create_owned(&StateLabels {
                plugin: plugin.to_owned(),
                state,
            })
        })
    }

    /// Shows `plugin` as compiling: its component is loading, and it has no
    /// runner (and no other series) yet.
    pub fn compiling(&self, plugin: &str) {
        set_state(&self.states(plugin), "compiling");
    }

    /// Removes every series of `plugin` (it was removed, or failed to load).
    pub fn remove(&self, plugin: &str) {
        let label = PluginLabel {
            plugin: plugin.to_owned(),
        };
        self.checkpoint.remove(&label);
        self.lag_events.remove(&label);
        self.lag_seconds.remove(&label);
        self.events_handled.remove(&label);
        self.handle_seconds.remove(&label);
        self.failures.remove(&label);
        self.retries.remove(&label);
        self.parked.remove(&label);
        self.rebuild_checkpoint.remove(&label);
        self.memory_peak.remove(&label);
        self.outputs_appended.remove(&label);
        self.outputs_suppressed.remove(&label);
        for state in PLUGIN_STATES {
            let plugin = label.plugin.clone();
            self.state.remove(&StateLabels { plugin, state });
        }
        for reason in ["trap", "memory"] {
            let plugin = label.plugin.clone();
            self.recycles.remove(&RecycleLabels { plugin, reason });
        }
    }
}

/// One plugin's series, as its runner and generations update them: each
/// field is a handle on an atomic (or the histogram's lock), so an update
/// costs no lookup. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PluginSeries {
    /// The serving generation's checkpoint.
    pub checkpoint: Gauge,
    /// `head - checkpoint`.
    pub lag_events: Gauge,
    /// Seconds since the event after the checkpoint was recorded; 0 when caught up.
    pub lag_seconds: Gauge<f64, AtomicU64>,
    states: [Gauge; 6],
    /// Events in committed batches.
    pub events_handled: Counter,
    /// Seconds per `handle` call.
    pub handle_seconds: Histogram,
    /// Failed attempts at a batch.
    pub failures: Counter,
    /// Batches tried again after a failed attempt.
    pub retries: Counter,
    /// Events parked in the serving generation.
    pub parked: Gauge,
    /// The rebuild's checkpoint; 0 when no rebuild runs.
    pub rebuild_checkpoint: Gauge,
    /// Instances thrown away after a trap.
    pub recycled_after_trap: Counter,
    /// Instances recycled near their memory cap.
    pub recycled_near_cap: Counter,
    /// Most linear memory an instance of the plugin has held, in bytes.
    pub memory_peak: Gauge,
    /// Events a reactor appended.
    pub outputs_appended: Counter,
    /// Events a reactor did not append, as they were in the log already.
    pub outputs_suppressed: Counter,
}

impl PluginSeries {
    /// Series of no plugin, in no registry: what a generation updates
    /// until its runner hands it the plugin's own.
    pub fn detached() -> Self {
        Self {
            checkpoint: Gauge::default(),
            lag_events: Gauge::default(),
            lag_seconds: Gauge::default(),
            states: Default::default(),
            events_handled: Counter::default(),
            handle_seconds: handle_histogram(),
            failures: Counter::default(),
            retries: Counter::default(),
            parked: Gauge::default(),
            rebuild_checkpoint: Gauge::default(),
            recycled_after_trap: Counter::default(),
            recycled_near_cap: Counter::default(),
            memory_peak: Gauge::default(),
            outputs_appended: Counter::default(),
            outputs_suppressed: Counter::default(),
        }
    }

    /// Shows the plugin in `state` (one of [`PLUGIN_STATES`]), and in no other.
    pub fn set_state(&self, state: &str) {
        set_state(&self.states, state);
    }

    /// Raises the memory high-water mark to `bytes`, if above it.
    pub fn raise_memory_peak(&self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        if bytes > self.memory_peak.get() {
            self.memory_peak.set(bytes);
        }
    }
}

/// Sets the series of `state` to 1 and the others to 0.
fn set_state(series: &[Gauge; 6], state: &str) {
    for (gauge, name) in series.iter().zip(PLUGIN_STATES) {
        gauge.set(i64::from(name == state));
    }
}
