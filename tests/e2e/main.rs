//! End-to-end tests: the real `eventfold` binary, a temporary data directory,
//! real HTTP.

mod append_socket;
mod bad_input;
mod cluster;
mod compiling;
mod connections;
mod console;
mod durability;
mod full_disk;
mod harness;
mod jetstream_cluster;
mod jetstream_failover;
mod languages;
mod lifecycle;
mod live;
mod log_api;
mod metrics;
mod notifiers;
mod overload;
mod plugin_failures;
mod plugins;
mod power_loss;
mod reactors;
mod read_your_writes;
mod wit_versions;
