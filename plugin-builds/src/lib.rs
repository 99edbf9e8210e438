//! The example and test plugins, built: one constant per component's path.
//!
//! The build script (`build.rs`) builds `plugins/` (its own workspace) for
//! wasm32-wasip2 into `target/plugins`, the Python and JavaScript plugins
//! with componentize-py and componentize-js (installed there with pip and
//! npm), and copies the examples to [`EXAMPLES_DIR`]. Depending on this crate
//! is what triggers those builds: the server (`eventfold`) does not, so
//! `cargo build -p eventfold` needs neither pip nor npm. The end-to-end tests
//! and the benchmarks depend on it; `scripts/serve` builds it before
//! `serve --plugins-dir target/plugins/examples`.
//!
//! ```
//! let wasm = std::fs::read(eventfold_plugin_builds::USER_DIRECTORY).unwrap();
//! assert!(!wasm.is_empty());
//! ```
//!
//! This crate owns the build and the paths; it does not know what the
//! plugins do (the `plugins/` crates) nor how they are deployed (the host).

include!(concat!(env!("OUT_DIR"), "/paths.rs"));
