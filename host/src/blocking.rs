//! The one rule for blocking work in async code.
//!
//! Anything that may wait on the disk or run a plugin (a redb read or
//! commit, a file write, a wasm call, joining a thread) runs on tokio's
//! blocking pool through [`run`], never on a runtime thread, where it would
//! stall every request that thread serves. Threads that are not tokio's (the
//! log's writer, the plugin runners) block as they like.
//!
//! Locks never poison: the crate uses `parking_lot`'s, and every critical
//! section leaves its data whole, so a panic elsewhere leaves nothing to
//! recover.

/// Runs `work` on the blocking pool and answers what it answers. A task that
/// panicked or was cancelled becomes `E`'s internal error.
pub async fn run<T, E>(work: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<tokio::task::JoinError> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await?
}
