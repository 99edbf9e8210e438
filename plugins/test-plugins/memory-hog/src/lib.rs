//! Allocates without bound: the host's memory limit must stop it.

use eventfold_sdk::{Event, Projection, State};

struct MemoryHog;

impl Projection for MemoryHog {
    fn apply(_event: &Event, _state: &mut State) -> eventfold_sdk::Result<()> {
        let mut hoard = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}

eventfold_sdk::export_projection!(MemoryHog);
