//! `relay-reactor` as a projection: the same fold over the same events
//! (`count` → n), appending nothing. The baseline of
//! `eventfold-bench reactor`.

use eventfold_sdk::Projection;

include!("../../relay-reactor/src/relay.rs");

struct RelayProjection;

impl Projection for RelayProjection {
    fn subscription() -> Subscription {
        subscription()
    }

    fn apply(event: &Event, state: &mut State) -> eventfold_sdk::Result<()> {
        relay(event, state, None)
    }

    fn query(_request: &[u8], state: &mut State) -> eventfold_sdk::Result<Vec<u8>> {
        Ok(count(state))
    }
}

eventfold_sdk::export_projection!(RelayProjection);
