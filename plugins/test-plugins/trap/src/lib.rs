//! Counts events, and panics (a trap in wasm) on an event of type `Boom`.

use eventfold_sdk::{Event, Projection, State};

struct Trap;

impl Projection for Trap {
    fn apply(event: &Event, state: &mut State) -> eventfold_sdk::Result<()> {
        if event.event_type == "Boom" {
            panic!("boom at position {}", event.position);
        }
        state.update("count", |n: &mut u64| *n += 1)
    }
}

eventfold_sdk::export_projection!(Trap);
