//! eventfold: an append-only event log (redb) that runs sandboxed WebAssembly
//! plugins against it.
//!
//! # Layout
//!
//! - [`log`]: the event log. Typed redb tables, the binary form of an event,
//!   the single group-commit writer (the one place an append becomes durable)
//!   and the readers (MVCC snapshots that never block the writer).
//! - [`runtime`]: the WebAssembly runtime: one wasmtime engine (component
//!   model, epoch deadlines), the on-disk cache of compiled components, the
//!   sandbox limits, and the host side of the WIT interfaces (`bindings`,
//!   generated once from `wit/`).
//! - [`plugins`]: the registry of deployed plugins, one runner thread per
//!   plugin (the one place a plugin's checkpoint moves), each plugin's redb
//!   state file, replay and the blue/green swap.
//! - [`notify`]: notifications of notifier plugins after they are committed:
//!   each notifier's mailbox (every key accepted once, so a replay never
//!   re-sends), the dispatcher that delivers it to a signed webhook with
//!   retries and dead letters, and the live feed.
//! - [`api`]: the HTTP API (axum), one file per resource: `streams`, `events`
//!   (including the live SSE feed), `batch`, `plugins`, `notifications`,
//!   `cluster`, `health`; `error` turns every failure into the JSON error
//!   body; `openapi` is the OpenAPI document; `console` serves the web
//!   console at `/ui`.
//! - [`cluster`]: several nodes on one JetStream log: each plugin's record
//!   in a shared bucket that every node converges to, the components in an
//!   object store, notifier leases and the delivery ledger, heartbeats and
//!   `GET /cluster`.
//! - [`server`]: [`server::run`] takes a [`Config`], a `TcpListener` and a
//!   cancellation token, opens the log and the plugins, and serves until the
//!   token is cancelled; then drains requests, stops the runners and commits.
//! - [`cli`]: the `eventfold` command line: `serve`, and the client
//!   subcommands that talk to a running server (`append`, `read`, `tail`;
//!   `deploy`, `plugins`, `replay`, `state`, `query`; `webhook`,
//!   `notifications`; `cluster status`).
//! - [`config`], [`metrics`]: configuration with its defaults; Prometheus
//!   metrics, the server's and each plugin's.
//! - [`named_locks`]: one async lock per name (a plugin's changes, one at a
//!   time).
//! - [`blocking`]: the one rule for blocking work in async code, and the
//!   helper that follows it.

/// Implements `From` for each of redb's error types into `$target::Storage`
/// (which holds a `redb::Error`), so `?` works on every redb call.
macro_rules! from_redb_errors {
    ($target:ident) => {
        from_redb_errors!(
            $target: redb::DatabaseError,
            redb::TransactionError,
            redb::TableError,
            redb::StorageError,
            redb::CommitError
        );
    };
    ($target:ident: $($t:ty),*) => {$(
        impl From<$t> for $target {
            fn from(e: $t) -> Self {
                $target::Storage(e.into())
            }
        }
    )*};
}

pub mod api;
pub mod blocking;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod durable;
pub mod log;
pub mod metrics;
pub mod named_locks;
pub mod notify;
pub mod plugins;
pub mod runtime;
pub mod server;

pub use config::{Config, Limits};
pub use server::run;
