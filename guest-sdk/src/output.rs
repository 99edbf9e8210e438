//! [`Output`]: where a reactor appends the events it causes.

use serde::Serialize;

use crate::wit_reactor::eventfold::plugin::append as host;

/// What a reactor expects a stream's version to be when its output is
/// appended: the same choices as `expected_version` in the HTTP API. An
/// expectation that does not hold fails the batch at the event that caused
/// the output (and the host retries it, then marks the reactor failed).
pub use host::ExpectedVersion;

/// The events a reactor appends while it handles one event: each is caused
/// by that event. The host gives them ids and lineage metadata
/// (`causation_id`, `correlation_id`, `causation_depth`, `reactor`) and
/// appends them after the batch, exactly once.
pub struct Output {
    source: u64,
}

impl Output {
    pub(crate) fn caused_by(source: u64) -> Self {
        Self { source }
    }

    /// Appends an event of `event_type` with `data` (as JSON) to `stream`.
    pub fn append<T: Serialize + ?Sized>(
        &mut self,
        stream: &str,
        event_type: &str,
        data: &T,
        expected: ExpectedVersion,
    ) -> crate::Result<()> {
        let data = serde_json::to_vec(data)?;
        host::append(self.source, stream, event_type, &data, &[], expected);
        Ok(())
    }

    /// Appends an event with metadata of its own: a JSON object, without the
    /// keys the host sets.
    pub fn append_with_metadata<T: Serialize + ?Sized, M: Serialize + ?Sized>(
        &mut self,
        stream: &str,
        event_type: &str,
        data: &T,
        metadata: &M,
        expected: ExpectedVersion,
    ) -> crate::Result<()> {
        let data = serde_json::to_vec(data)?;
        let metadata = serde_json::to_vec(metadata)?;
        host::append(self.source, stream, event_type, &data, &metadata, expected);
        Ok(())
    }
}
