//! The host's bindings to the WIT package, generated once, here: version
//! 0.1.0 (`wit/plugin.wit`) at the root of this module, 0.2.0 (`wit/v0.2`) in
//! [`v0_2`], 0.3.0 (`wit/v0.3`) in [`v0_3`], 0.4.0 (`wit/v0.4`) in [`v0_4`].
//! Everything else imports the generated types from this module.

/// One version of the package: its `projection` world (imports `state` and
/// `log`; exports `describe`, `handle` and `query`) and its `notifier` world
/// (imports `notify` as well; exports `describe` and `handle`), whose shared
/// interfaces are the projection's, so that one host implementation serves
/// both.
macro_rules! version {
    ($path:literal) => {
        /// This version's `projection` world.
        pub mod projection {
            wasmtime::component::bindgen!({
                path: $path,
                world: "projection",
                // Host functions may fail (a value over the size cap): that traps the call.
                imports: { default: trappable },
            });
        }

        /// This version's `notifier` world, sharing the projection's interfaces.
        pub mod notifier {
            wasmtime::component::bindgen!({
                path: $path,
                world: "notifier",
                imports: { default: trappable },
                with: {
                    "eventfold:plugin/types": super::projection::eventfold::plugin::types,
                    "eventfold:plugin/state": super::projection::eventfold::plugin::state,
                    "eventfold:plugin/log": super::projection::eventfold::plugin::log,
                },
            });
        }

        pub use notifier::eventfold::plugin::notify;
        pub use projection::eventfold::plugin::{log, state, types};
    };
}

version!("../wit");

/// Version 0.2 of the package (`wit/v0.2`): the same interfaces, and a
/// plugin that chooses how `handle` receives its events (records or JSON).
pub mod v0_2 {
    version!("../wit/v0.2");
}

/// Version 0.3 (`wit/v0.3`): 0.2 and a third encoding, `packed`: the batch
/// as one byte buffer the plugin reads in place.
pub mod v0_3 {
    version!("../wit/v0.3");
}

/// Version 0.4 (`wit/v0.4`): 0.3 and a third world, `reactor`, which
/// imports `append` to add events to the log.
pub mod v0_4 {
    version!("../wit/v0.4");

    /// The `reactor` world, sharing the projection's interfaces.
    pub mod reactor {
        wasmtime::component::bindgen!({
            path: "../wit/v0.4",
            world: "reactor",
            imports: { default: trappable },
            with: {
                "eventfold:plugin/types": super::projection::eventfold::plugin::types,
                "eventfold:plugin/state": super::projection::eventfold::plugin::state,
                "eventfold:plugin/log": super::projection::eventfold::plugin::log,
            },
        });
    }

    pub use reactor::eventfold::plugin::append;
}
