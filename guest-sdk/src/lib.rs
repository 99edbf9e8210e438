//! Write eventfold plugins in Rust (the guide: `docs/plugins/rust.md` in the
//! eventfold repository).
//!
//! A projection is a type that implements [`Projection`]: it declares which
//! events it wants and folds each one into its key-value [`State`]. The SDK
//! loops over each batch the host sends, reports which event failed, and
//! exports the component with one macro. A complete plugin:
//!
//! ```no_run
//! use eventfold_sdk::{Event, Projection, State, Subscription};
//! use serde::{Deserialize, Serialize};
//!
//! /// The events this projection understands, tagged by event type.
//! #[derive(Deserialize)]
//! #[serde(tag = "type", content = "data")]
//! enum UserEvent {
//!     UserCreated { #[serde(rename = "userId")] user_id: u64, name: String },
//!     UserNameUpdated { #[serde(rename = "userId")] user_id: u64, name: String },
//!     UserDeleted { #[serde(rename = "userId")] user_id: u64 },
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! struct User { name: String }
//!
//! struct UserDirectory;
//!
//! impl Projection for UserDirectory {
//!     fn subscription() -> Subscription {
//!         Subscription::categories(["user"])
//!     }
//!
//!     fn apply(event: &Event, state: &mut State) -> eventfold_sdk::Result<()> {
//!         match event.decode_tagged::<UserEvent>()? {
//!             UserEvent::UserCreated { user_id, name } | UserEvent::UserNameUpdated { user_id, name } => {
//!                 state.put(&format!("user/{user_id}"), &User { name })
//!             }
//!             UserEvent::UserDeleted { user_id } => state.delete(&format!("user/{user_id}")),
//!         }
//!         Ok(())
//!     }
//! }
//!
//! eventfold_sdk::export_projection!(UserDirectory);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type
//! `cdylib`) and deploy the `.wasm` with `eventfold deploy`.
//!
//! State writes made while a batch is handled are committed together with the
//! plugin's checkpoint, or not at all: a crash never leaves half a batch.
//!
//! A notifier implements [`Notifier`] instead: its `apply` also gets an
//! [`Outbox`] to emit notifications into, and it is exported with
//! [`export_notifier!`]. See `plugins/shipment-notifier` for a complete one.
//!
//! A reactor implements [`Reactor`]: its `apply` gets an [`Output`] to
//! append new events with, each caused by the event being applied, and it
//! is exported with [`export_reactor!`]. The host appends them exactly
//! once, with causation and correlation in their metadata. See
//! `plugins/order-fulfilment` for a complete one.

mod event;
mod outbox;
mod output;
mod state;

pub use event::Event;
pub use outbox::Outbox;
pub use output::{ExpectedVersion, Output};
pub use state::State;

use std::fmt;

#[doc(hidden)]
pub mod wit {
    wit_bindgen::generate!({
        path: "../wit/v0.4",
        world: "projection",
        pub_export_macro: true,
        export_macro_name: "__export_projection_world",
        default_bindings_module: "eventfold_sdk::wit",
    });
}

/// The notifier world's bindings: its shared interfaces are the projection
/// world's, so [`State`] and [`Event`] serve both.
#[doc(hidden)]
pub mod wit_notifier {
    wit_bindgen::generate!({
        path: "../wit/v0.4",
        world: "notifier",
        pub_export_macro: true,
        export_macro_name: "__export_notifier_world",
        default_bindings_module: "eventfold_sdk::wit_notifier",
        with: {
            "eventfold:plugin/types@0.4.0": crate::wit::eventfold::plugin::types,
            "eventfold:plugin/state@0.4.0": crate::wit::eventfold::plugin::state,
            "eventfold:plugin/log@0.4.0": crate::wit::eventfold::plugin::log,
        },
    });
}

/// The reactor world's bindings, sharing the projection world's interfaces.
#[doc(hidden)]
pub mod wit_reactor {
    wit_bindgen::generate!({
        path: "../wit/v0.4",
        world: "reactor",
        pub_export_macro: true,
        export_macro_name: "__export_reactor_world",
        default_bindings_module: "eventfold_sdk::wit_reactor",
        with: {
            "eventfold:plugin/types@0.4.0": crate::wit::eventfold::plugin::types,
            "eventfold:plugin/state@0.4.0": crate::wit::eventfold::plugin::state,
            "eventfold:plugin/log@0.4.0": crate::wit::eventfold::plugin::log,
        },
    });
}

#[doc(hidden)]
pub use wit_bindgen;

use wit::eventfold::plugin::types as wit_types;

/// The result of a plugin's own code.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an event could not be applied: becomes the plugin's last error, with
/// the event's position, in its status.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Error(message.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        Error(error.to_string())
    }
}

/// Which events a plugin receives; the host skips the rest without calling it.
#[derive(Debug, Clone, Default)]
pub struct Subscription {
    categories: Vec<String>,
    event_types: Vec<String>,
}

impl Subscription {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Events of streams in these categories (`user` for `user-1`).
    pub fn categories<S: Into<String>>(categories: impl IntoIterator<Item = S>) -> Self {
        Self {
            categories: categories.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Only events of these types (combined with the categories, if any).
    pub fn event_types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.event_types = types.into_iter().map(Into::into).collect();
        self
    }
}

/// A projection: folds events into its state, and may answer queries.
pub trait Projection {
    /// Which events to receive. Default: all of them.
    fn subscription() -> Subscription {
        Subscription::all()
    }

    /// Folds one event into the state. An error stops the batch: the host
    /// retries it, then marks the plugin failed at this event.
    fn apply(event: &Event, state: &mut State) -> Result<()>;

    /// Answers `POST /plugins/{name}/query` with the request body. Default: no queries.
    fn query(request: &[u8], state: &mut State) -> Result<Vec<u8>> {
        let _ = (request, state);
        Err(Error::msg("this plugin answers no queries"))
    }
}

/// A notifier: turns events into notifications, and may keep state to do so
/// (e.g. an order's customer, remembered until the order ships).
pub trait Notifier {
    /// Which events to receive. Default: all of them.
    fn subscription() -> Subscription {
        Subscription::all()
    }

    /// Handles one event: reads and writes state, emits into the outbox. An
    /// error stops the batch (nothing of it is committed or sent): the host
    /// retries it, then marks the plugin failed at this event.
    fn apply(event: &Event, state: &mut State, outbox: &mut Outbox) -> Result<()>;
}

/// A reactor: turns events into new events, appended to the log (a process
/// manager, a translator from domain to integration events), and may keep
/// state to do so.
///
/// What `apply` appends is appended after the batch, before the reactor's
/// checkpoint moves, exactly once: a batch redone after a crash appends
/// nothing twice, and a replay or a redeploy appends nothing for events the
/// serving version already handled. The reactor never receives the events
/// it appended itself.
pub trait Reactor {
    /// Which events to receive. Default: all of them.
    fn subscription() -> Subscription {
        Subscription::all()
    }

    /// Handles one event: reads and writes state, appends through `output`.
    /// An error stops the batch (nothing of it is committed or appended):
    /// the host retries it, then marks the plugin failed at this event.
    fn apply(event: &Event, state: &mut State, output: &mut Output) -> Result<()>;

    /// Answers `POST /plugins/{name}/query`. Default: no queries.
    fn query(request: &[u8], state: &mut State) -> Result<Vec<u8>> {
        let _ = (request, state);
        Err(Error::msg("this plugin answers no queries"))
    }
}

/// Severity of a [`log`] message.
pub use wit::eventfold::plugin::log::Level;

/// Writes a message to the host's log, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    wit::eventfold::plugin::log::log(level, message);
}

#[doc(hidden)]
pub fn __describe<P: Projection>(version: &str) -> wit_types::PluginInfo {
    describe(
        wit_types::PluginKind::Projection,
        P::subscription(),
        version,
    )
}

#[doc(hidden)]
pub fn __describe_notifier<N: Notifier>(version: &str) -> wit_types::PluginInfo {
    describe(wit_types::PluginKind::Notifier, N::subscription(), version)
}

#[doc(hidden)]
pub fn __describe_reactor<R: Reactor>(version: &str) -> wit_types::PluginInfo {
    describe(wit_types::PluginKind::Reactor, R::subscription(), version)
}

fn describe(
    kind: wit_types::PluginKind,
    subscription: Subscription,
    version: &str,
) -> wit_types::PluginInfo {
    wit_types::PluginInfo {
        kind,
        subscription: wit_types::Subscription {
            categories: subscription.categories,
            event_types: subscription.event_types,
        },
        version: version.to_owned(),
        // The whole batch as one buffer, read in place (`event::Packed`).
        encoding: wit_types::EventEncoding::Packed,
    }
}

#[doc(hidden)]
pub fn __handle<P: Projection>(events: wit_types::Events) -> Result<(), wit_types::HandleError> {
    handle_batch(events, |event, state| P::apply(event, state))
}

#[doc(hidden)]
pub fn __handle_notifier<N: Notifier>(
    events: wit_types::Events,
) -> Result<(), wit_types::HandleError> {
    let mut outbox = Outbox::new();
    handle_batch(events, |event, state| N::apply(event, state, &mut outbox))
}

#[doc(hidden)]
pub fn __handle_reactor<R: Reactor>(
    events: wit_types::Events,
) -> Result<(), wit_types::HandleError> {
    handle_batch(events, |event, state| {
        R::apply(event, state, &mut Output::caused_by(event.position))
    })
}

#[doc(hidden)]
pub fn __query_reactor<R: Reactor>(request: Vec<u8>) -> Result<Vec<u8>, String> {
    R::query(&request, &mut State::new()).map_err(|e| e.to_string())
}

/// Applies each event in turn; the first error stops the batch and names
/// its index. The state's writes go to the host once, at the end.
fn handle_batch(
    events: wit_types::Events,
    mut apply: impl FnMut(&Event, &mut State) -> Result<()>,
) -> Result<(), wit_types::HandleError> {
    let failed = |index: usize, error: Error| wit_types::HandleError {
        index: index as u32,
        message: error.to_string(),
    };
    // `describe` asks for `packed`; the host sends nothing else.
    let wit_types::Events::Packed(bytes) = events else {
        return Err(failed(
            0,
            Error::msg("the host sent a batch that is not packed"),
        ));
    };
    let mut state = State::new();
    for (index, event) in event::Packed::new(&bytes)
        .map_err(|e| failed(0, e))?
        .enumerate()
    {
        let event = event.map_err(|e| failed(index, e))?;
        apply(&event, &mut state).map_err(|e| failed(index, e))?;
    }
    state.flush();
    Ok(())
}

#[doc(hidden)]
pub fn __query<P: Projection>(request: Vec<u8>) -> Result<Vec<u8>, String> {
    P::query(&request, &mut State::new()).map_err(|e| e.to_string())
}

/// Exports a type implementing [`Projection`] as the plugin's component.
/// Use it once, at the crate root.
#[macro_export]
macro_rules! export_projection {
    ($projection:ty) => {
        #[doc(hidden)]
        struct __EventfoldProjection;

        impl $crate::wit::Guest for __EventfoldProjection {
            fn describe() -> $crate::wit::PluginInfo {
                $crate::__describe::<$projection>(env!("CARGO_PKG_VERSION"))
            }
            fn handle(
                events: $crate::wit::Events,
            ) -> ::std::result::Result<(), $crate::wit::HandleError> {
                $crate::__handle::<$projection>(events)
            }
            fn query(
                request: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                $crate::__query::<$projection>(request)
            }
        }

        $crate::wit::__export_projection_world!(__EventfoldProjection with_types_in $crate::wit);
    };
}

/// Exports a type implementing [`Notifier`] as the plugin's component.
/// Use it once, at the crate root.
#[macro_export]
macro_rules! export_notifier {
    ($notifier:ty) => {
        #[doc(hidden)]
        struct __EventfoldNotifier;

        impl $crate::wit_notifier::Guest for __EventfoldNotifier {
            fn describe() -> $crate::wit_notifier::PluginInfo {
                $crate::__describe_notifier::<$notifier>(env!("CARGO_PKG_VERSION"))
            }
            fn handle(
                events: $crate::wit_notifier::Events,
            ) -> ::std::result::Result<(), $crate::wit_notifier::HandleError> {
                $crate::__handle_notifier::<$notifier>(events)
            }
        }

        $crate::wit_notifier::__export_notifier_world!(__EventfoldNotifier with_types_in $crate::wit_notifier);
    };
}

/// Exports a type implementing [`Reactor`] as the plugin's component.
/// Use it once, at the crate root.
#[macro_export]
macro_rules! export_reactor {
    ($reactor:ty) => {
        #[doc(hidden)]
        struct __EventfoldReactor;

        impl $crate::wit_reactor::Guest for __EventfoldReactor {
            fn describe() -> $crate::wit_reactor::PluginInfo {
                $crate::__describe_reactor::<$reactor>(env!("CARGO_PKG_VERSION"))
            }
            fn handle(
                events: $crate::wit_reactor::Events,
            ) -> ::std::result::Result<(), $crate::wit_reactor::HandleError> {
                $crate::__handle_reactor::<$reactor>(events)
            }
            fn query(
                request: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                $crate::__query_reactor::<$reactor>(request)
            }
        }

        $crate::wit_reactor::__export_reactor_world!(__EventfoldReactor with_types_in $crate::wit_reactor);
    };
}
