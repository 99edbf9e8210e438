// The body of `relay-reactor`, shared with `relay-projection`: the same
// fold, so that `eventfold-bench reactor` measures what appending one
// event per event costs and nothing else.
//
// Subscribes to the `job` category only. For each event:
// - both builds count it: `count` → n;
// - the reactor build also appends `Relayed` to `relayed-{stream}`, with
//   data `{"position": <the event's position>}` and no expected version.

use eventfold_sdk::{Event, ExpectedVersion, Output, State, Subscription};
use serde::Serialize;

/// The event the reactor appends for each event.
#[derive(Serialize)]
struct Relayed {
    position: u64,
}

/// The category the relay reads.
fn subscription() -> Subscription {
    Subscription::categories(["job"])
}

/// Folds one event: both builds count it, and the reactor's (given an
/// `output`) relays it.
fn relay(
    event: &Event,
    state: &mut State,
    output: Option<&mut Output>,
) -> eventfold_sdk::Result<()> {
    state.update("count", |n: &mut u64| *n += 1)?;
    if let Some(output) = output {
        let stream = format!("relayed-{}", event.stream);
        let data = Relayed {
            position: event.position,
        };
        output.append(&stream, "Relayed", &data, ExpectedVersion::Any)?;
    }
    Ok(())
}

/// Answers any query with the count.
fn count(state: &mut State) -> Vec<u8> {
    state.get_bytes("count").unwrap_or_else(|| b"0".to_vec())
}
