//! Emits a 1 MiB payload for every event: over the host's notification cap.

use eventfold_sdk::{Event, Notifier, Outbox, State};

struct Oversize;

impl Notifier for Oversize {
    fn apply(event: &Event, _state: &mut State, outbox: &mut Outbox) -> eventfold_sdk::Result<()> {
        outbox.emit_bytes("webhook", &format!("big-{}", event.position), vec![b'x'; 1 << 20]);
        Ok(())
    }
}

eventfold_sdk::export_notifier!(Oversize);
