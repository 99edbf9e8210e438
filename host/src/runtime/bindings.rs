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

pub use projection::eventfold::plugin::{log, state, types};
