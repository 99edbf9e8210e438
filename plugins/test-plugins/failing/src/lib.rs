//! Counts events, and returns an error for an event of type `Bad`.

use eventfold_sdk::{Error, Event, Projection, State};

struct Failing;

impl Projection for Failing {
    fn apply(event: &Event, state: &mut State) -> eventfold_sdk::Result<()> {
        if event.event_type == "Bad" {
            return Err(Error::msg(format!("cannot apply Bad event {}", event.id)));
        }
        state.update("count", |n: &mut u64| *n += 1)
    }
}

eventfold_sdk::export_projection!(Failing);
