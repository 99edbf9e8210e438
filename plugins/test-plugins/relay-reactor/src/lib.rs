//! Counts `job` events and appends one `Relayed` event to
//! `relayed-{stream}` for each: see `relay.rs` (shared with
//! `relay-projection`, which does not append).

use eventfold_sdk::Reactor;

include!("relay.rs");

struct RelayReactor;

impl Reactor for RelayReactor {
    fn subscription() -> Subscription {
        subscription()
    }

    fn apply(event: &Event, state: &mut State, output: &mut Output) -> eventfold_sdk::Result<()> {
        relay(event, state, Some(output))
    }

    fn query(_request: &[u8], state: &mut State) -> eventfold_sdk::Result<Vec<u8>> {
        Ok(count(state))
    }
}

eventfold_sdk::export_reactor!(RelayReactor);
