//! One instance of a plugin: its store, its bindings, and calls into it under
//! the sandbox limits.

use std::sync::Arc;

use wasmtime::{Engine, Store, Trap};

use super::batch::{EventBatch, EventForm};
use super::bindings::notifier::Notifier;
use super::bindings::notify::Notification;
use super::bindings::projection::Projection;
use super::bindings::types::{HandleError, PluginKind as WitPluginKind, Subscription};
use super::bindings::{v0_2, v0_3, v0_4};
use super::host::Appended;
use super::host::{PluginHost, StateView};
use super::limits::SandboxLimits;
use super::{EPOCH_TICK, PluginKind, PluginPre};

/// How a call into a plugin failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The plugin returned an error for the event at this index of the batch.
    #[error("{message}")]
    Rejected {
        /// Index of the failing event in the batch.
        index: u32,
        /// The plugin's message.
        message: String,
    },
    /// The call ran past its deadline and was interrupted.
    #[error("deadline exceeded: the call ran longer than {0:?}")]
    Deadline(std::time::Duration),
    /// The plugin tried to grow its memory past the limit.
    #[error("memory limit exceeded: the plugin tried to grow past {0} bytes")]
    Memory(usize),
    /// A reactor appended more in one call than the log appends in one
    /// atomic step.
    #[error("{0}")]
    TooManyAppends(String),
    /// Any other trap: a panic, an out-of-bounds access, a host call refused.
    #[error("trap: {0}")]
    Trap(String),
}

/// What a plugin says about itself, in the host's terms whatever its WIT
/// version.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    pub kind: PluginKind,
    pub subscription: Subscription,
    /// The plugin's own version.
    pub version: String,
}

impl CallError {
    /// Whether the instance must be thrown away (true for every trap).
    pub fn poisons_instance(&self) -> bool {
        !matches!(self, CallError::Rejected { .. })
    }
}

/// The exports of an instance, by world and WIT version.
enum Bindings {
    Projection(Projection),
    Notifier(Notifier),
    ProjectionV0_2(v0_2::projection::Projection),
    NotifierV0_2(v0_2::notifier::Notifier),
    ProjectionV0_3(v0_3::projection::Projection),
    NotifierV0_3(v0_3::notifier::Notifier),
    ProjectionV0_4(v0_4::projection::Projection),
    NotifierV0_4(v0_4::notifier::Notifier),
    ReactorV0_4(v0_4::reactor::Reactor),
}

/// A plugin instance and its store.
pub struct PluginInstance {
    store: Store<PluginHost>,
    bindings: Bindings,
}

/// What one `handle` call leaves behind.
pub struct Handled {
    /// Whether the batch was handled.
    pub result: Result<(), CallError>,
    /// The state view, with the batch's writes.
    pub state: StateView,
    /// The notifications the batch emitted (a notifier's).
    pub emitted: Vec<Notification>,
    /// The events the batch appended (a reactor's).
    pub appended: Vec<Appended>,
}

impl PluginInstance {
    pub(super) fn new(
        engine: &Engine,
        pre: &PluginPre,
        name: Arc<str>,
        limits: SandboxLimits,
    ) -> Result<Self, CallError> {
        let mut store = Store::new(engine, PluginHost::new(name, limits));
        store.limiter(|host| &mut host.memory);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(limits.deadline));
        let bindings = match pre {
            PluginPre::Projection(pre) => pre.instantiate(&mut store).map(Bindings::Projection),
            PluginPre::Notifier(pre) => pre.instantiate(&mut store).map(Bindings::Notifier),
            PluginPre::ProjectionV0_2(pre) => {
                pre.instantiate(&mut store).map(Bindings::ProjectionV0_2)
            }
            PluginPre::NotifierV0_2(pre) => pre.instantiate(&mut store).map(Bindings::NotifierV0_2),
            PluginPre::ProjectionV0_3(pre) => {
                pre.instantiate(&mut store).map(Bindings::ProjectionV0_3)
            }
            PluginPre::NotifierV0_3(pre) => pre.instantiate(&mut store).map(Bindings::NotifierV0_3),
            PluginPre::ProjectionV0_4(pre) => {
                pre.instantiate(&mut store).map(Bindings::ProjectionV0_4)
            }
            PluginPre::NotifierV0_4(pre) => pre.instantiate(&mut store).map(Bindings::NotifierV0_4),
            PluginPre::ReactorV0_4(pre) => pre.instantiate(&mut store).map(Bindings::ReactorV0_4),
        }
        .map_err(|e| classify(e, store.data()))?;
        Ok(Self { store, bindings })
    }

    /// The plugin's own description, and how it takes its events.
    pub fn describe(&mut self) -> Result<(PluginInfo, EventForm), CallError> {
        self.arm();
        let result = match &self.bindings {
            Bindings::Projection(b) => b.call_describe(&mut self.store).map(from_v0_1),
            Bindings::Notifier(b) => b.call_describe(&mut self.store).map(from_v0_1),
            Bindings::ProjectionV0_2(b) => b.call_describe(&mut self.store).map(from_v0_2),
            Bindings::NotifierV0_2(b) => b.call_describe(&mut self.store).map(from_v0_2),
            Bindings::ProjectionV0_3(b) => b.call_describe(&mut self.store).map(from_v0_3),
            Bindings::NotifierV0_3(b) => b.call_describe(&mut self.store).map(from_v0_3),
            Bindings::ProjectionV0_4(b) => b.call_describe(&mut self.store).map(from_v0_4),
            Bindings::NotifierV0_4(b) => b.call_describe(&mut self.store).map(from_v0_4),
            Bindings::ReactorV0_4(b) => b.call_describe(&mut self.store).map(from_v0_4),
        };
        self.finish_call();
        result.map_err(|e| classify(e, self.store.data()))
    }

    /// Hands a batch to the plugin with `state` as its view. The batch must
    /// be in the plugin's own form ([`super::LoadedPlugin::batch`]).
    pub fn handle(&mut self, events: &EventBatch, state: StateView) -> Handled {
        self.store.data_mut().state = state;
        self.store.data_mut().emitted.clear();
        self.store.data_mut().clear_appended();
        self.arm();
        let result = match (&self.bindings, events) {
            (Bindings::Projection(b), EventBatch::V0_1(events)) => {
                b.call_handle(&mut self.store, events)
            }
            (Bindings::Notifier(b), EventBatch::V0_1(events)) => {
                b.call_handle(&mut self.store, events)
            }
            (Bindings::ProjectionV0_2(b), EventBatch::V0_2(events)) => b
                .call_handle(&mut self.store, events)
                .map(|r| r.map_err(from_v0_2_error)),
            (Bindings::NotifierV0_2(b), EventBatch::V0_2(events)) => b
                .call_handle(&mut self.store, events)
                .map(|r| r.map_err(from_v0_2_error)),
            (Bindings::ProjectionV0_3(b), EventBatch::V0_3(events)) => b
                .call_handle(&mut self.store, events)
                .map(|r| r.map_err(from_v0_3_error)),
            (Bindings::NotifierV0_3(b), EventBatch::V0_3(events)) => b
                .call_handle(&mut self.store, events)
                .map(|r| r.map_err(from_v0_3_error)),
            (Bindings::ProjectionV0_4(b), EventBatch::V0_4(events)) => b
                .call_handle(&mut self.store, events)
                .map(|r| r.map_err(from_v0_4_error)),
            (Bindings::NotifierV0_4(b), EventBatch::V0_4(events)) => b
                .call_handle(&mut self.store, events)
                .map(|r| r.map_err(from_v0_4_error)),
            (Bindings::ReactorV0_4(b), EventBatch::V0_4(events)) => b
                .call_handle(&mut self.store, events)
                .map(|r| r.map_err(from_v0_4_error)),
            _ => Err(wasmtime::format_err!(
                "a batch built for another WIT version than the plugin's"
            )),
        };
        self.finish_call();
        let result = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(HandleError { index, message })) => Err(CallError::Rejected { index, message }),
            Err(error) => Err(classify(error, self.store.data())),
        };
        let host = self.store.data_mut();
        let state = std::mem::take(&mut host.state);
        let emitted = std::mem::take(&mut host.emitted);
        let appended = std::mem::take(&mut host.appended);
        Handled {
            result,
            state,
            emitted,
            appended,
        }
    }

    /// Runs the plugin's `query` export against `state`.
    pub fn query(
        &mut self,
        request: &[u8],
        state: StateView,
    ) -> Result<Result<Vec<u8>, String>, CallError> {
        let notifier_answer = || Err("this plugin is a notifier: it answers no queries".into());
        if matches!(
            self.bindings,
            Bindings::Notifier(_)
                | Bindings::NotifierV0_2(_)
                | Bindings::NotifierV0_3(_)
                | Bindings::NotifierV0_4(_)
        ) {
            return Ok(notifier_answer());
        }
        self.store.data_mut().state = state;
        self.arm();
        let result = match &self.bindings {
            Bindings::Projection(b) => b.call_query(&mut self.store, request),
            Bindings::ProjectionV0_2(b) => b.call_query(&mut self.store, request),
            Bindings::ProjectionV0_3(b) => b.call_query(&mut self.store, request),
            Bindings::ProjectionV0_4(b) => b.call_query(&mut self.store, request),
            Bindings::ReactorV0_4(b) => b.call_query(&mut self.store, request),
            Bindings::Notifier(_)
            | Bindings::NotifierV0_2(_)
            | Bindings::NotifierV0_3(_)
            | Bindings::NotifierV0_4(_) => Ok(notifier_answer()),
        };
        self.finish_call();
        self.store.data_mut().state = StateView::default();
        result.map_err(|e| classify(e, self.store.data()))
    }

    /// The most linear memory this instance has held, in bytes.
    pub fn memory_peak(&self) -> usize {
        self.store.data().memory.peak
    }

    fn arm(&mut self) {
        self.store.data_mut().memory.reset();
        let limits = self.store.data().limits;
        self.store.set_epoch_deadline(ticks(limits.deadline));
        let host = self.store.data_mut();
        host.log_budget = limits.max_output_bytes;
        host.logs_dropped = 0;
    }

    fn finish_call(&mut self) {
        let host = self.store.data_mut();
        host.output.reset(host.limits.max_output_bytes);
        if host.logs_dropped > 0 {
            tracing::warn!(plugin = %host.name, "{} log messages dropped (over the cap)", host.logs_dropped);
        }
    }
}

/// A 0.1 description in the host's terms (0.1 has one encoding).
fn from_v0_1(info: super::bindings::types::PluginInfo) -> (PluginInfo, EventForm) {
    let kind = match info.kind {
        WitPluginKind::Projection => PluginKind::Projection,
        WitPluginKind::Notifier => PluginKind::Notifier,
    };
    let info = PluginInfo {
        kind,
        subscription: info.subscription,
        version: info.version,
    };
    (info, EventForm::RecordsV0_1)
}

/// Converts a later version's description and handle error into the
/// host's terms.
macro_rules! from_version {
    ($version:ident, $describe:ident, $error:ident,
     { $($wit_kind:ident => $kind:ident),+ $(,)? },
     { $($encoding:ident => $form:ident),+ $(,)? }) => {
        /// A description in the host's terms, and the encoding it asks for.
        fn $describe(info: $version::types::PluginInfo) -> (PluginInfo, EventForm) {
            let $version::types::PluginInfo {
                kind,
                subscription,
                version,
                encoding,
            } = info;
            let kind = match kind {
                $($version::types::PluginKind::$wit_kind => PluginKind::$kind,)+
            };
            let subscription = Subscription {
                categories: subscription.categories,
                event_types: subscription.event_types,
            };
            let form = match encoding {
                $($version::types::EventEncoding::$encoding => EventForm::$form,)+
            };
            let info = PluginInfo {
                kind,
                subscription,
                version,
            };
            (info, form)
        }

        fn $error(error: $version::types::HandleError) -> HandleError {
            HandleError {
                index: error.index,
                message: error.message,
            }
        }
    };
}

from_version!(v0_2, from_v0_2, from_v0_2_error,
    { Projection => Projection, Notifier => Notifier },
    { Records => RecordsV0_2, Json => JsonV0_2 });
from_version!(v0_3, from_v0_3, from_v0_3_error,
    { Projection => Projection, Notifier => Notifier },
    { Records => RecordsV0_3, Json => JsonV0_3, Packed => PackedV0_3 });
from_version!(v0_4, from_v0_4, from_v0_4_error,
    { Projection => Projection, Notifier => Notifier, Reactor => Reactor },
    { Records => RecordsV0_4, Json => JsonV0_4, Packed => PackedV0_4 });

fn ticks(deadline: std::time::Duration) -> u64 {
    (deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

fn classify(error: wasmtime::Error, host: &PluginHost) -> CallError {
    let limits = &host.limits;
    if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
        return CallError::Deadline(limits.deadline);
    }
    // The guest was refused memory and then trapped (an allocator aborting).
    if host.memory.refused {
        return CallError::Memory(limits.memory_bytes);
    }
    if host.appends_overflowed {
        return CallError::TooManyAppends(error.root_cause().to_string());
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        return CallError::Trap(trap.to_string());
    }
    // A host call refused (a value over a cap): the root cause says why; the
    // outer layers only say where in the wasm it happened.
    CallError::Trap(format!("host call refused: {}", error.root_cause()))
}
