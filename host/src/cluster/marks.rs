//! Reactor marks: how far each reactor's outputs are in the log, in KV
//! `<s>-reactors` (entries never expire), so that a node taking a reactor
//! over appends nothing an earlier owner appended, however long ago
//! (`docs/design.md#reactors-on-several-nodes`). The owner writes the mark
//! after each batch's outputs are in the log, before its checkpoint moves.

use async_nats::jetstream::kv;
use futures_util::future::BoxFuture;

use crate::plugins::OutputMarks;

/// The reactors' marks of one log. Cheap to clone.
#[derive(Clone)]
pub struct Marks {
    store: kv::Store,
}

impl Marks {
    pub fn new(store: kv::Store) -> Self {
        Self { store }
    }
}

impl std::fmt::Debug for Marks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Marks").finish_non_exhaustive()
    }
}

impl OutputMarks for Marks {
    fn read<'a>(&'a self, reactor: &'a str) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(async move {
            let value = self
                .store
                .get(reactor)
                .await
                .map_err(|e| format!("reading the mark of {reactor}: {e}"))?;
            let Some(value) = value else {
                return Ok(0);
            };
            std::str::from_utf8(&value)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| format!("the mark of {reactor} is not a position"))
        })
    }

    fn record<'a>(&'a self, reactor: &'a str, position: u64) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.store
                .put(reactor, position.to_string().into())
                .await
                .map(drop)
                .map_err(|e| format!("recording the mark of {reactor}: {e}"))
        })
    }
}
