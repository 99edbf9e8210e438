//! The log's backends (issue 18), for the log-contract tests: the same
//! scenario runs on the embedded log and on JetStream, written once with
//! [`backend_tests!`].

use std::path::Path;

use super::Server;
use super::nats::Cluster;

/// Where a server under test keeps its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded redb log in the data directory (`--log embedded`, the default).
    Embedded,
    /// A stream of the test binary's shared 3-node JetStream cluster
    /// ([`Cluster::shared`]), replicated 3 times (`--log jetstream`).
    JetStream,
}

impl Backend {
    /// The `serve` flags that put the log of the server on `dir` on this
    /// backend. For JetStream: the shared cluster (started on first use),
    /// `--nats-replicas 3`, and a stream named after `dir`, so that each
    /// server has its own stream and one started again on the same data
    /// directory finds its log again.
    pub async fn serve_args(self, dir: &Path) -> Vec<String> {
        match self {
            Backend::Embedded => Vec::new(),
            Backend::JetStream => {
                let cluster = tokio::task::spawn_blocking(Cluster::shared)
                    .await
                    .expect("starting the shared NATS cluster panicked");
                cluster.serve_args(&stream_name(dir), 3)
            }
        }
    }
}

/// The JetStream stream of the server on `dir`: the directory's name (a
/// temporary directory's, unique), with any character that a stream name or
/// a subject token cannot hold replaced by `_`.
pub fn stream_name(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("ef-{name}")
}

impl Server {
    /// Starts a server on `dir` with its log on `backend` and extra `serve`
    /// flags; waits until `/health` answers.
    pub async fn start_on(backend: Backend, dir: &Path, args: &[&str]) -> Server {
        let mut all = backend.serve_args(dir).await;
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        Server::start_in(dir, &all).await
    }
}

/// Runs log-contract tests on every backend. Each test is an `async fn`
/// taking the [`Backend`] (and starting its server with
/// [`Server::start_on`]); naming it here
///
/// ```ignore
/// backend_tests!(appends_read_back, batches_are_atomic);
///
/// async fn appends_read_back(backend: Backend) {
///     let dir = data_dir();
///     let server = Server::start_on(backend, dir.path(), &[]).await;
///     // …
/// }
/// ```
///
/// adds a module of the same name with one `#[tokio::test]` per backend:
/// `appends_read_back::embedded` and `appends_read_back::jetstream`
/// (`cargo test -p eventfold --test e2e jetstream` picks the latter).
///
/// The backends are listed once, here: every test runs on each.
macro_rules! backend_tests {
    ($($test:ident),* $(,)?) => {
        $crate::harness::backend::each_backend! {
            backends: [embedded: Embedded, jetstream: JetStream],
            tests: [$($test),*]
        }
    };
}
pub(crate) use backend_tests;

/// [`backend_tests!`] with the list of backends, one test at a time.
macro_rules! each_backend {
    (backends: [$($name:ident: $backend:ident),*], tests: []) => {};
    (
        backends: [$($name:ident: $backend:ident),*],
        tests: [$test:ident $(, $rest:ident)*]
    ) => {
        mod $test {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$test($crate::harness::Backend::$backend).await
                }
            )*
        }

        $crate::harness::backend::each_backend! {
            backends: [$($name: $backend),*],
            tests: [$($rest),*]
        }
    };
}
pub(crate) use each_backend;
