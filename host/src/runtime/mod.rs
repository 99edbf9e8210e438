//! The WebAssembly runtime: one wasmtime engine (component model, epoch
//! interruption), the on-disk cache of compiled components, the sandbox
//! limits, and the host side of the WIT interfaces.
//!
//! Owns loading and calling plugins. Of the log it knows only the event
//! record it hands a plugin (`crate::log::RecordedEvent`); it never reads
//! the log and knows nothing of checkpoints (`crate::plugins` drives the
//! calls).

mod batch;
pub mod bindings;
mod cache;
mod host;
mod instance;
mod limits;
mod memory;
mod output;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

pub use batch::{Encoding, EventBatch, EventForm, WitVersion};
pub use cache::{CompileOrigin, Compiled, wasm_hash};
pub use host::Appended;
pub use host::{PluginHost, StateView};
pub use instance::{CallError, Handled, PluginInfo, PluginInstance};
pub use limits::SandboxLimits;

use bindings::notifier::NotifierPre;
pub use bindings::notify::Notification;
use bindings::projection::{Projection, ProjectionPre};
use bindings::{v0_2, v0_3, v0_4};
use cache::ComponentCache;

/// How often the engine's epoch advances: the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Not a WebAssembly component (or not a valid one).
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// A component, but not of a world this host runs.
    #[error("the component does not fit the eventfold:plugin worlds: {0}")]
    WrongWorld(String),
    /// It loaded, but `describe` failed.
    #[error("the plugin's describe() failed: {0}")]
    Describe(String),
    /// The engine could not be set up.
    #[error("runtime setup: {0}")]
    Setup(String),
    /// The compiled-component cache failed.
    #[error("component cache: {0}")]
    Cache(String),
}

/// A validated, compiled plugin, ready to be instantiated (cheaply) many times.
#[derive(Clone)]
pub struct LoadedPlugin {
    /// SHA-256 of the wasm.
    pub hash: String,
    /// What the plugin said about itself.
    pub info: Arc<PluginInfo>,
    /// How the compiled code was obtained.
    pub compiled: Compiled,
    /// The WIT version it was built against, and how it takes its events.
    pub form: EventForm,
    pre: PluginPre,
}

/// A component linked against the world it targets, ready to instantiate.
#[derive(Clone)]
enum PluginPre {
    Projection(ProjectionPre<PluginHost>),
    Notifier(NotifierPre<PluginHost>),
    ProjectionV0_2(v0_2::projection::ProjectionPre<PluginHost>),
    NotifierV0_2(v0_2::notifier::NotifierPre<PluginHost>),
    ProjectionV0_3(v0_3::projection::ProjectionPre<PluginHost>),
    NotifierV0_3(v0_3::notifier::NotifierPre<PluginHost>),
    ProjectionV0_4(v0_4::projection::ProjectionPre<PluginHost>),
    NotifierV0_4(v0_4::notifier::NotifierPre<PluginHost>),
    ReactorV0_4(v0_4::reactor::ReactorPre<PluginHost>),
}

impl PluginPre {
    /// The kind of plugin the world it was linked against is for.
    fn world(&self) -> PluginKind {
        match self {
            PluginPre::Projection(_)
            | PluginPre::ProjectionV0_2(_)
            | PluginPre::ProjectionV0_3(_)
            | PluginPre::ProjectionV0_4(_) => PluginKind::Projection,
            PluginPre::Notifier(_)
            | PluginPre::NotifierV0_2(_)
            | PluginPre::NotifierV0_3(_)
            | PluginPre::NotifierV0_4(_) => PluginKind::Notifier,
            PluginPre::ReactorV0_4(_) => PluginKind::Reactor,
        }
    }
}

/// What a plugin does with the events it is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// Folds events into queryable state.
    Projection,
    /// Folds events into state and emits notifications.
    Notifier,
    /// Folds events into state and appends new events to the log.
    Reactor,
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginKind::Projection => "projection",
            PluginKind::Notifier => "notifier",
            PluginKind::Reactor => "reactor",
        })
    }
}

impl LoadedPlugin {
    /// The plugin's kind.
    pub fn kind(&self) -> PluginKind {
        self.info.kind
    }

    /// Whether it is a notifier (it may emit notifications).
    pub fn is_notifier(&self) -> bool {
        self.kind() == PluginKind::Notifier
    }

    /// `events` (in log order) in the form this plugin takes them.
    pub fn batch(&self, events: Vec<crate::log::RecordedEvent>) -> EventBatch {
        EventBatch::new(self.form, events)
    }
}

/// The engine, its linkers and the component cache. One per server.
pub struct Runtime {
    engine: Engine,
    /// WASI, `state` and `log` (every version): what a projection may import.
    projection_linker: Linker<PluginHost>,
    /// The same plus `notify`: what a notifier may import.
    notifier_linker: Linker<PluginHost>,
    /// The projection's plus `append`: what a reactor may import.
    reactor_linker: Linker<PluginHost>,
    cache: ComponentCache,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    /// Creates the engine, starts its epoch ticker, and opens the cache in `cache_dir`.
    pub fn new(cache_dir: &Path) -> Result<Self, RuntimeError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // For profiling plugins: `perf` then names each guest function
        // (`wasm[N]::function[M]::<name>`) from /tmp/perf-<pid>.map.
        if std::env::var_os("EVENTFOLD_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine =
            Engine::new(&config).map_err(|e| RuntimeError::Setup(format!("engine: {e:#}")))?;
        let Linkers {
            projection: projection_linker,
            notifier: notifier_linker,
            reactor: reactor_linker,
        } = Linkers::new(&engine)?;
        let cache = ComponentCache::new(cache_dir.to_path_buf(), &engine)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (ticker_engine, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("eventfold-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| RuntimeError::Setup(format!("epoch ticker: {e}")))?;
        Ok(Self {
            engine,
            projection_linker,
            notifier_linker,
            reactor_linker,
            cache,
            ticker_stop,
        })
    }

    /// Validates `wasm` as a plugin component, compiles it (or loads it from
    /// the cache) and asks it to describe itself. Blocking: run it off the
    /// async runtime.
    pub fn load(&self, wasm: &[u8], limits: SandboxLimits) -> Result<LoadedPlugin, RuntimeError> {
        if !is_component(wasm) {
            return Err(RuntimeError::Invalid(
                "the file is not a WebAssembly component (a core module or something else); \
                 build with --target wasm32-wasip2 or wrap it with `wasm-tools component new`"
                    .into(),
            ));
        }
        let hash = wasm_hash(wasm);
        let (component, compiled) = self.cache.load(&self.engine, wasm, &hash)?;
        let mut pre = self.prepare(&component)?;
        let mut instance = PluginInstance::new(&self.engine, &pre, "describe".into(), limits)
            .map_err(|e| RuntimeError::Describe(e.to_string()))?;
        let (info, form) = instance
            .describe()
            .map_err(|e| RuntimeError::Describe(e.to_string()))?;
        // A reactor whose code never appends may not import `append`: its
        // imports then fit the projection world, and its exports the
        // reactor world, which it says it is.
        if (info.kind, pre.world()) == (PluginKind::Reactor, PluginKind::Projection)
            && let Some(Ok(reactor)) =
                self.link(&component, form.wit_version().as_str(), PluginKind::Reactor)
        {
            pre = reactor;
        }
        let (kind, world) = (info.kind, pre.world());
        if kind != world {
            let why = match world {
                PluginKind::Notifier => format!("a {kind} may not import notify"),
                PluginKind::Reactor => format!("a {kind} may not import append"),
                PluginKind::Projection => {
                    format!("it exports query, and no {kind} world's imports")
                }
            };
            return Err(RuntimeError::WrongWorld(format!(
                "describe() says it is a {kind}, but the component targets the {world} world: {why}"
            )));
        }
        Ok(LoadedPlugin {
            hash,
            info: Arc::new(info),
            compiled,
            form,
            pre,
        })
    }

    /// Links the component against the projection world, or failing that
    /// the notifier world (or, from 0.4 on, the reactor world), of the WIT
    /// version whose interfaces it imports.
    fn prepare(&self, component: &Component) -> Result<PluginPre, RuntimeError> {
        let imports = |version: &str| {
            component
                .component_type()
                .imports(&self.engine)
                .any(|(name, _)| name.starts_with("eventfold:plugin/") && name.ends_with(version))
        };
        let version = ["0.4.0", "0.3.0", "0.2.0"]
            .into_iter()
            .find(|v| imports(&format!("@{v}")))
            .unwrap_or("0.1.0");
        let mut errors = Vec::new();
        for kind in [
            PluginKind::Projection,
            PluginKind::Notifier,
            PluginKind::Reactor,
        ] {
            match self.link(component, version, kind) {
                Some(Ok(pre)) => return Ok(pre),
                Some(Err(error)) => errors.push(format!("as a {version} {kind}: {error:#}")),
                None => {}
            }
        }
        Err(RuntimeError::WrongWorld(errors.join("; ")))
    }

    /// Links the component against the world of `kind` in `version`;
    /// `None` when that version has no such world.
    fn link(
        &self,
        component: &Component,
        version: &str,
        kind: PluginKind,
    ) -> Option<wasmtime::Result<PluginPre>> {
        let linker = match kind {
            PluginKind::Projection => &self.projection_linker,
            PluginKind::Notifier => &self.notifier_linker,
            PluginKind::Reactor => &self.reactor_linker,
        };
        let pre = linker.instantiate_pre(component);
        Some(match (version, kind) {
            ("0.4.0", PluginKind::Projection) => pre
                .and_then(v0_4::projection::ProjectionPre::new)
                .map(PluginPre::ProjectionV0_4),
            ("0.4.0", PluginKind::Notifier) => pre
                .and_then(v0_4::notifier::NotifierPre::new)
                .map(PluginPre::NotifierV0_4),
            ("0.4.0", PluginKind::Reactor) => pre
                .and_then(v0_4::reactor::ReactorPre::new)
                .map(PluginPre::ReactorV0_4),
            ("0.3.0", PluginKind::Projection) => pre
                .and_then(v0_3::projection::ProjectionPre::new)
                .map(PluginPre::ProjectionV0_3),
            ("0.3.0", PluginKind::Notifier) => pre
                .and_then(v0_3::notifier::NotifierPre::new)
                .map(PluginPre::NotifierV0_3),
            ("0.2.0", PluginKind::Projection) => pre
                .and_then(v0_2::projection::ProjectionPre::new)
                .map(PluginPre::ProjectionV0_2),
            ("0.2.0", PluginKind::Notifier) => pre
                .and_then(v0_2::notifier::NotifierPre::new)
                .map(PluginPre::NotifierV0_2),
            (_, PluginKind::Reactor) => return None,
            (_, PluginKind::Projection) => {
                pre.and_then(ProjectionPre::new).map(PluginPre::Projection)
            }
            (_, PluginKind::Notifier) => pre.and_then(NotifierPre::new).map(PluginPre::Notifier),
        })
    }

    /// A fresh instance of `plugin` with its own store and limits.
    pub fn instantiate(
        &self,
        plugin: &LoadedPlugin,
        name: Arc<str>,
        limits: SandboxLimits,
    ) -> Result<PluginInstance, CallError> {
        PluginInstance::new(&self.engine, &plugin.pre, name, limits)
    }
}

/// What each kind of plugin may import, in every WIT version (least
/// privilege: only a notifier gets `notify`, only a reactor `append`).
struct Linkers {
    projection: Linker<PluginHost>,
    notifier: Linker<PluginHost>,
    reactor: Linker<PluginHost>,
}

impl Linkers {
    /// WASI, `state` and `log` for all; `notify` for the notifier, `append`
    /// for the reactor.
    fn new(engine: &Engine) -> Result<Self, RuntimeError> {
        let mut linker = Linker::new(engine);
        let link =
            |r: wasmtime::Result<()>| r.map_err(|e| RuntimeError::Setup(format!("linker: {e:#}")));
        // WASI p2 with an empty context: Rust, Python and JS components import
        // some of it (clocks, random, stdio) but get no files, network or env.
        link(wasmtime_wasi::p2::add_to_linker_sync(&mut linker))?;
        type Own = wasmtime::component::HasSelf<PluginHost>;
        link(Projection::add_to_linker::<PluginHost, Own>(
            &mut linker,
            |host| host,
        ))?;
        link(
            v0_2::projection::Projection::add_to_linker::<PluginHost, Own>(&mut linker, |host| {
                host
            }),
        )?;
        link(
            v0_3::projection::Projection::add_to_linker::<PluginHost, Own>(&mut linker, |host| {
                host
            }),
        )?;
        link(
            v0_4::projection::Projection::add_to_linker::<PluginHost, Own>(&mut linker, |host| {
                host
            }),
        )?;
        let projection_linker = linker.clone();
        let mut reactor_linker = linker.clone();
        link(v0_4::append::add_to_linker::<PluginHost, Own>(
            &mut reactor_linker,
            |host| host,
        ))?;
        link(bindings::notify::add_to_linker::<PluginHost, Own>(
            &mut linker,
            |host| host,
        ))?;
        link(v0_2::notify::add_to_linker::<PluginHost, Own>(
            &mut linker,
            |host| host,
        ))?;
        link(v0_3::notify::add_to_linker::<PluginHost, Own>(
            &mut linker,
            |host| host,
        ))?;
        link(v0_4::notify::add_to_linker::<PluginHost, Own>(
            &mut linker,
            |host| host,
        ))?;
        Ok(Self {
            projection: projection_linker,
            notifier: linker,
            reactor: reactor_linker,
        })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Whether the bytes are a WebAssembly component (not a core module): the
/// preamble's version/layer field says so.
fn is_component(bytes: &[u8]) -> bool {
    // `\0asm`, then version 0x0d and layer 0x01 for components (core modules: version 1, layer 0).
    bytes.len() >= 8 && &bytes[0..4] == b"\0asm" && bytes[6..8] == [0x01, 0x00]
}
