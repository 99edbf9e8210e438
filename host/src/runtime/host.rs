//! The host side of the WIT interfaces: one [`PluginHost`] per plugin
//! instance, holding the batch's view of the plugin's state, its limits, and
//! the (empty) WASI context.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use redb::ReadOnlyTable;
use wasmtime::component::ResourceTable;
use wasmtime::format_err;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, notify, v0_4};
use super::limits::SandboxLimits;
use super::memory::MemoryLimiter;
use super::output::PluginOutput;
use crate::log::{EventType, ExpectedVersion, StreamName, portable_json};

/// A plugin's key-value state as one batch sees it: a snapshot of what is
/// committed, plus the writes the batch has made so far. The writes are
/// committed with the checkpoint, or dropped with the batch.
#[derive(Default)]
pub struct StateView {
    committed: Option<ReadOnlyTable<&'static str, &'static [u8]>>,
    /// Key → new value, or `None` for a delete.
    pub writes: BTreeMap<String, Option<Vec<u8>>>,
}

impl StateView {
    /// A view over `committed` with no writes yet.
    pub fn new(committed: Option<ReadOnlyTable<&'static str, &'static [u8]>>) -> Self {
        Self {
            committed,
            writes: BTreeMap::new(),
        }
    }

    /// The current value of `key`.
    pub fn get(&self, key: &str) -> wasmtime::Result<Option<Vec<u8>>> {
        if let Some(value) = self.writes.get(key) {
            return Ok(value.clone());
        }
        match &self.committed {
            Some(table) => Ok(table
                .get(key)
                .map_err(store_error)?
                .map(|v| v.value().to_vec())),
            None => Ok(None),
        }
    }

    /// Up to `limit` entries with keys starting with `prefix`, after `after`.
    pub fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut out = Vec::new();
        let mut overlay = self
            .writes
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        let mut committed: Box<dyn Iterator<Item = wasmtime::Result<(String, Vec<u8>)>>> =
            match &self.committed {
                Some(table) => Box::new(
                    table
                        .range::<&str>((start, Bound::Unbounded))
                        .map_err(store_error)?
                        .map(|entry| {
                            entry
                                .map(|(k, v)| (k.value().to_owned(), v.value().to_vec()))
                                .map_err(store_error)
                        })
                        .take_while(|e| e.as_ref().map_or(true, |(k, _)| k.starts_with(prefix))),
                ),
                None => Box::new(std::iter::empty()),
            };
        let mut next_committed = committed.next().transpose()?;
        while out.len() < limit {
            // Merge the two sorted sources; the batch's writes win on equal keys.
            let take_overlay = match (overlay.peek(), &next_committed) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((ok, _)), Some((ck, _))) => ok.as_str() <= ck.as_str(),
            };
            if take_overlay {
                let (key, value) = overlay.next().expect("peeked");
                if next_committed.as_ref().is_some_and(|(ck, _)| ck == key) {
                    next_committed = committed.next().transpose()?;
                }
                if let Some(value) = value {
                    out.push((key.clone(), value.clone()));
                }
            } else if let Some(entry) = next_committed.take() {
                out.push(entry);
                next_committed = committed.next().transpose()?;
            }
        }
        Ok(out)
    }
}

fn store_error(error: impl std::fmt::Display) -> wasmtime::Error {
    format_err!("plugin state storage failed: {error}")
}

/// Everything a plugin instance's store holds.
pub struct PluginHost {
    /// The plugin's name, for its log lines.
    pub name: Arc<str>,
    /// Its limits.
    pub limits: SandboxLimits,
    /// The current batch's view of its state.
    pub state: StateView,
    /// Notifications emitted by the current call (notifiers only): committed
    /// to the outbox with the batch, or dropped with it.
    pub emitted: Vec<notify::Notification>,
    /// Events appended by the current call (reactors only): appended to the
    /// log after the batch, or dropped with it.
    pub appended: Vec<Appended>,
    /// Bytes of `appended`, and whether the call tried to append past the
    /// per-call limits (the batch is then retried smaller).
    appended_bytes: usize,
    pub appends_overflowed: bool,
    /// The memory cap enforced by the store.
    pub memory: MemoryLimiter,
    /// The plugin's stdout (reset after each call).
    pub output: PluginOutput,
    /// Bytes of `log` messages still allowed in the current call.
    pub log_budget: usize,
    /// Log messages dropped in the current call for lack of budget.
    pub logs_dropped: usize,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl PluginHost {
    /// A host with no filesystem, network, environment or arguments: stdout
    /// and stderr go to the host's log, capped.
    pub fn new(name: Arc<str>, limits: SandboxLimits) -> Self {
        let stdout = PluginOutput::new(
            name.clone(),
            "stdout",
            limits.max_output_bytes,
            limits.max_log_line,
        );
        let stderr = PluginOutput::new(
            name.clone(),
            "stderr",
            limits.max_output_bytes,
            limits.max_log_line,
        );
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr)
            .build();
        Self {
            name,
            limits,
            state: StateView::default(),
            emitted: Vec::new(),
            appended: Vec::new(),
            appended_bytes: 0,
            appends_overflowed: false,
            memory: MemoryLimiter::new(limits.memory_bytes),
            output: stdout,
            log_budget: limits.max_output_bytes,
            logs_dropped: 0,
            wasi,
            table: ResourceTable::new(),
        }
    }

    fn check_key(&self, key: &str) -> wasmtime::Result<()> {
        if key.len() > self.limits.max_key_bytes {
            return Err(format_err!(
                "state key of {} bytes is over the limit of {}",
                key.len(),
                self.limits.max_key_bytes
            ));
        }
        Ok(())
    }
}

impl WasiView for PluginHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The metadata keys the host sets on a reactor's output, which the
/// reactor's own metadata may not hold.
pub const HOST_METADATA_KEYS: [&str; 4] = [
    "causation_id",
    "correlation_id",
    "causation_depth",
    "reactor",
];
/// Bytes of an output's metadata left for the keys the host adds.
const HOST_METADATA_BYTES: usize = 256;
/// Most bytes (types, data and metadata) one call of a reactor may append.
const MAX_APPENDED_BYTES_PER_CALL: usize = 16 << 20;

/// An event a reactor appended while it handled a batch, checked as the
/// log checks a client's.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The position of the event that caused it.
    pub source: u64,
    pub stream: StreamName,
    pub event_type: EventType,
    /// JSON.
    pub data: Vec<u8>,
    /// The reactor's own metadata, without the keys the host sets.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub expected: ExpectedVersion,
}

/// Longest notification channel name, in bytes.
const MAX_CHANNEL_BYTES: usize = 128;

/// What the WIT imports do, once for every version of the package: each
/// version's generated traits delegate here (see [`implement_imports!`]).
impl PluginHost {
    fn state_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.check_key(&key)?;
        self.state.get(&key)
    }

    fn state_set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        self.check_key(&key)?;
        if value.len() > self.limits.max_value_bytes {
            return Err(format_err!(
                "state value of {} bytes for key {key:?} is over the limit of {}",
                value.len(),
                self.limits.max_value_bytes
            ));
        }
        self.state.writes.insert(key, Some(value));
        Ok(())
    }

    fn state_delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.check_key(&key)?;
        self.state.writes.insert(key, None);
        Ok(())
    }

    fn state_scan(
        &mut self,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        self.state
            .scan(&prefix, start_after.as_deref(), limit.min(10_000) as usize)
    }

    fn emit(&mut self, n: notify::Notification) -> wasmtime::Result<()> {
        if n.channel.is_empty() || n.channel.len() > MAX_CHANNEL_BYTES {
            return Err(format_err!(
                "notification channel must be 1-{MAX_CHANNEL_BYTES} bytes, got {}",
                n.channel.len()
            ));
        }
        if n.key.is_empty() || n.key.len() > self.limits.max_key_bytes {
            return Err(format_err!(
                "notification key must be 1-{} bytes, got {}",
                self.limits.max_key_bytes,
                n.key.len()
            ));
        }
        if n.payload.len() > self.limits.max_notification_bytes {
            return Err(format_err!(
                "notification payload of {} bytes (key {:?}) is over the limit of {}",
                n.payload.len(),
                n.key,
                self.limits.max_notification_bytes
            ));
        }
        if self.emitted.len() >= self.limits.max_notifications_per_call {
            return Err(format_err!(
                "more than {} notifications emitted in one call",
                self.limits.max_notifications_per_call
            ));
        }
        self.emitted.push(n);
        Ok(())
    }

    /// Collects one event a reactor appends. What the log would refuse
    /// traps the call; so does going past the per-call limits, noted in
    /// `appends_overflowed` so that the runner retries a smaller batch.
    fn append(
        &mut self,
        source: u64,
        stream: String,
        event_type: String,
        data: Vec<u8>,
        metadata: Vec<u8>,
        expected: ExpectedVersion,
    ) -> wasmtime::Result<()> {
        let stream = StreamName::new(stream).map_err(|e| format_err!("append: {e}"))?;
        let event_type = EventType::new(event_type).map_err(|e| format_err!("append: {e}"))?;
        // The context of an error, written only when there is one.
        let to = || format!("append of {} to {stream}", event_type.as_str());
        let depth = self.limits.max_json_depth;
        serde_json::from_slice::<serde::de::IgnoredAny>(&data)
            .map_err(|e| format_err!("{}: `data` is not JSON: {e}", to()))?;
        portable_json::check("data", &data, depth).map_err(|e| format_err!("{}: {e}", to()))?;
        let size = event_type.as_str().len() + data.len() + metadata.len();
        let metadata = match metadata.as_slice() {
            b"" | b"{}" => serde_json::Map::new(),
            json => {
                portable_json::check("metadata", json, depth)
                    .map_err(|e| format_err!("{}: {e}", to()))?;
                serde_json::from_slice(json)
                    .map_err(|e| format_err!("{}: `metadata` must be a JSON object: {e}", to()))?
            }
        };
        if let Some(key) = HOST_METADATA_KEYS
            .iter()
            .find(|k| metadata.contains_key(**k))
        {
            return Err(format_err!(
                "{}: `metadata` holds `{key}`, which the host sets (causation_id, \
                 correlation_id, causation_depth, reactor)",
                to()
            ));
        }
        let most = self
            .limits
            .max_event_bytes
            .saturating_sub(HOST_METADATA_BYTES);
        if size > most {
            return Err(format_err!(
                "{}: the event is {size} bytes, the limit is {most} (--max-event-bytes, less \
                 {HOST_METADATA_BYTES} for the metadata the host adds)",
                to()
            ));
        }
        let calls = self.limits.max_appends_per_call;
        if self.appended.len() >= calls || self.appended_bytes + size > MAX_APPENDED_BYTES_PER_CALL
        {
            self.appends_overflowed = true;
            return Err(format_err!(
                "one call appended more than {calls} events or {MAX_APPENDED_BYTES_PER_CALL} \
                 bytes: what the log appends in one atomic step"
            ));
        }
        self.appended_bytes += size;
        self.appended.push(Appended {
            source,
            stream,
            event_type,
            data,
            metadata,
            expected,
        });
        Ok(())
    }

    /// Forgets the previous call's appends.
    pub fn clear_appended(&mut self) {
        self.appended.clear();
        self.appended_bytes = 0;
        self.appends_overflowed = false;
    }

    fn log_message(&mut self, level: tracing::Level, message: String) -> wasmtime::Result<()> {
        if self.log_budget == 0 {
            self.logs_dropped += 1;
            return Ok(());
        }
        self.log_budget = self
            .log_budget
            .saturating_sub(message.len().min(self.limits.max_log_line));
        let cut = message.len() > self.limits.max_log_line;
        let mut end = message.len().min(self.limits.max_log_line);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let text = &message[..end];
        let note = if cut {
            format!(" … ({} bytes cut)", message.len() - end)
        } else {
            String::new()
        };
        let plugin = &*self.name;
        match level {
            tracing::Level::TRACE => tracing::trace!(plugin, "{text}{note}"),
            tracing::Level::DEBUG => tracing::debug!(plugin, "{text}{note}"),
            tracing::Level::INFO => tracing::info!(plugin, "{text}{note}"),
            tracing::Level::WARN => tracing::warn!(plugin, "{text}{note}"),
            _ => tracing::error!(plugin, "{text}{note}"),
        }
        Ok(())
    }
}

/// Implements one version's generated import traits (`types`, `state`,
/// `notify`, `log`) for [`PluginHost`] by delegating to the methods above.
macro_rules! implement_imports {
    ($($version:ident)::+) => {
        impl $($version)::+::types::Host for PluginHost {}

        impl $($version)::+::state::Host for PluginHost {
            fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
                self.state_get(key)
            }

            fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
                self.state_set(key, value)
            }

            fn delete(&mut self, key: String) -> wasmtime::Result<()> {
                self.state_delete(key)
            }

            fn scan(
                &mut self,
                prefix: String,
                start_after: Option<String>,
                limit: u32,
            ) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
                self.state_scan(prefix, start_after, limit)
            }
        }

        impl $($version)::+::notify::Host for PluginHost {
            fn emit(&mut self, n: $($version)::+::notify::Notification) -> wasmtime::Result<()> {
                let $($version)::+::notify::Notification { channel, key, payload } = n;
                PluginHost::emit(self, notify::Notification { channel, key, payload })
            }
        }

        impl $($version)::+::log::Host for PluginHost {
            fn log(
                &mut self,
                level: $($version)::+::log::Level,
                message: String,
            ) -> wasmtime::Result<()> {
                use $($version)::+::log::Level;
                let level = match level {
                    Level::Trace => tracing::Level::TRACE,
                    Level::Debug => tracing::Level::DEBUG,
                    Level::Info => tracing::Level::INFO,
                    Level::Warn => tracing::Level::WARN,
                    Level::Error => tracing::Level::ERROR,
                };
                self.log_message(level, message)
            }
        }
    };
}

implement_imports!(bindings);
implement_imports!(bindings::v0_2);
implement_imports!(bindings::v0_3);
implement_imports!(bindings::v0_4);

impl v0_4::append::Host for PluginHost {
    fn append(
        &mut self,
        source: u64,
        stream: String,
        event_type: String,
        data: Vec<u8>,
        metadata: Vec<u8>,
        expected: v0_4::append::ExpectedVersion,
    ) -> wasmtime::Result<()> {
        use v0_4::append::ExpectedVersion as Wit;
        let expected = match expected {
            Wit::Any => ExpectedVersion::Any,
            Wit::NoStream => ExpectedVersion::NoStream,
            Wit::Exists => ExpectedVersion::Exists,
            Wit::Exact(version) => ExpectedVersion::Exact(version),
        };
        PluginHost::append(self, source, stream, event_type, data, metadata, expected)
    }
}
