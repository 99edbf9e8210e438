//! Counts every event: `count` → n, `last` → the last position seen.

use eventfold_sdk::{Event, Projection, State};

struct Counter;

impl Projection for Counter {
    fn apply(event: &Event, state: &mut State) -> eventfold_sdk::Result<()> {
        state.update("count", |n: &mut u64| *n += 1)?;
        state.put("last", &event.position);
        Ok(())
    }

    fn query(_request: &[u8], state: &mut State) -> eventfold_sdk::Result<Vec<u8>> {
        Ok(state.get_bytes("count").unwrap_or_else(|| b"0".to_vec()))
    }
}

eventfold_sdk::export_projection!(Counter);
