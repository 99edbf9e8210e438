//! [`Outbox`]: where a notifier puts the notifications it emits.

use serde::Serialize;

use crate::wit_notifier::eventfold::plugin::notify as host;

/// The notifications a notifier emits while it handles a batch. They are
/// committed together with its state and checkpoint, then delivered (to its
/// webhook and the live feed) — each `key` at most once, ever: replaying the
/// notifier from zero does not send history again.
pub struct Outbox {
    _private: (),
}

impl Outbox {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }

    /// Emits `payload` as JSON on `channel` (e.g. `"webhook"`), identified by
    /// `key`: choose a key that names this one message, such as
    /// `"order-42-shipped"`, so that it is delivered once.
    pub fn emit<T: Serialize + ?Sized>(
        &mut self,
        channel: &str,
        key: &str,
        payload: &T,
    ) -> crate::Result<()> {
        let payload = serde_json::to_vec(payload)?;
        self.emit_bytes(channel, key, payload);
        Ok(())
    }

    /// Emits raw bytes (receivers get them as a string when they are not JSON).
    pub fn emit_bytes(&mut self, channel: &str, key: &str, payload: Vec<u8>) {
        host::emit(&host::Notification {
            channel: channel.to_owned(),
            key: key.to_owned(),
            payload,
        });
    }
}
