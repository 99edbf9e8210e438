//! Version 2 of `counter`: counts the same, and stores `version` → 2.

use eventfold_sdk::{Event, Projection, State};

struct CounterV2;

impl Projection for CounterV2 {
    fn apply(event: &Event, state: &mut State) -> eventfold_sdk::Result<()> {
        state.update("count", |n: &mut u64| *n += 1)?;
        state.put("last", &event.position);
        state.put("version", &2);
        Ok(())
    }
}

eventfold_sdk::export_projection!(CounterV2);
