//! Writes a 10 MB log line and 10 MB to stdout on every event, then counts it.

use eventfold_sdk::{Event, Level, Projection, State};

struct Chatty;

impl Projection for Chatty {
    fn apply(_event: &Event, state: &mut State) -> eventfold_sdk::Result<()> {
        let line = "x".repeat(10 << 20);
        eventfold_sdk::log(Level::Info, &line);
        println!("{line}");
        state.update("count", |n: &mut u64| *n += 1)
    }
}

eventfold_sdk::export_projection!(Chatty);
