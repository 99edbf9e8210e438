//! The host's bindings to the WIT package (`wit/`), generated once, here.
//! Everything else imports the generated types from this module.

/// The `projection` world: imports `state` and `log`; exports `describe`,
/// `handle` and `query`.
pub mod projection {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "projection",
        // Host functions may fail (a value over the size cap): that traps the call.
        imports: { default: trappable },
    });
}

/// The `notifier` world: imports `state`, `notify` and `log`; exports
/// `describe` and `handle`. The interfaces it shares with `projection` are
/// the projection's, so one host implementation serves both.
pub mod notifier {
    wasmtime::component::bindgen!({
        path: "../wit",
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
