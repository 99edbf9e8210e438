//! Never returns: the host's per-batch deadline must stop it.

use eventfold_sdk::{Event, Projection, State};

struct EndlessLoop;

impl Projection for EndlessLoop {
    fn apply(_event: &Event, _state: &mut State) -> eventfold_sdk::Result<()> {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

eventfold_sdk::export_projection!(EndlessLoop);
