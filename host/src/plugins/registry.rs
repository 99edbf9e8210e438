//! The registry of deployed plugins: restore at start, deploy, replace,
//! replay, remove, and the operator's commands. The reads that go to a
//! plugin's serving state are in `reads.rs`; the files in `files.rs`.
//!
//! A component is compiled before any lock is taken, so one plugin's slow
//! compile (seconds for Python or JavaScript) holds no other plugin back.
//! Changes to one plugin (deploy, replay, remove) then run one at a time
//! under that plugin's own lifecycle lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::files::{Manifest, PluginDir};
use super::generation::{Generation, Host};
use super::reactor::{ReactorLease, SharedOutputMarks};
use super::runner::{Control, Runner};
use super::shared::{Progress, Serving, Shared};
use super::status::{PluginStatus, RunState};
use super::store::PluginStore;
use super::{PluginError, PluginName};
use crate::blocking;
use crate::durable;
use crate::log::EventLog;
use crate::metrics::Metrics;
use crate::named_locks::NamedLocks;
use crate::notify::{Mailbox, NotificationFeed, Retention, SharedHandover, dispatcher};
use crate::runtime::{LoadedPlugin, PluginKind, Runtime, SandboxLimits};

/// Settings of the plugin host.
#[derive(Debug, Clone, Default)]
pub struct PluginsConfig {
    /// Limits applied to every plugin.
    pub limits: SandboxLimits,
    /// Most events a second one plugin's rebuild reads; none: no limit.
    pub replay_rate: Option<u64>,
    /// How long notifiers keep delivered notifications.
    pub retention: Retention,
    /// Who delivers each notifier's notifications when nodes share the log
    /// (`crate::cluster`); `None`: this node delivers all of them.
    pub handover: Option<SharedHandover>,
    /// Where reactors record how far their outputs are, when nodes share
    /// the log (`crate::cluster`); `None` on a single node.
    pub marks: Option<SharedOutputMarks>,
    /// Where each plugin's series go (`eventfold_plugin_*`).
    pub metrics: Metrics,
}

/// What a deploy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployOutcome {
    /// A new plugin, now catching up from position 0.
    Created,
    /// New code for an existing plugin: rebuilding (this generation) beside
    /// the serving version.
    Rebuilding(u64),
    /// The same code is already deployed: nothing changed.
    Unchanged,
}

/// A running plugin: what it shares, its runner and a notifier's dispatcher.
pub(super) struct Entry {
    pub shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
    thread: std::thread::JoinHandle<()>,
    /// A notifier's dispatcher: stopped with this token.
    dispatcher: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Entry {
    /// Stops the dispatcher, then the runner once it has made its state durable.
    async fn stop(self) {
        if let Some((token, task)) = self.dispatcher {
            token.cancel();
            let _ = task.await;
        }
        let _ = self.control.send(Control::Stop);
        let thread = self.thread;
        let joined = blocking::run(move || {
            thread
                .join()
                .map_err(|_| PluginError::Internal("the plugin's runner panicked".into()))
        })
        .await;
        if let Err(error) = joined {
            tracing::error!(%error, "stopping a plugin");
        }
    }
}

/// A plugin as the registry holds it.
pub(super) enum Slot {
    /// Its component is loading: a first deploy, or a restore at start.
    /// `loads` counts the loads under way.
    Compiling { loads: usize },
    /// Its runner is at work.
    Running(Entry),
}

/// Every plugin by name; once `closed` (shutting down), none is added.
#[derive(Default)]
pub(super) struct Slots {
    pub plugins: HashMap<PluginName, Slot>,
    closed: bool,
}

/// Every deployed plugin. Cheap to clone.
#[derive(Clone)]
pub struct Plugins {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    dir: PathBuf,
    pub host: Host,
    pub slots: Mutex<Slots>,
    /// One lock per plugin name: changes to a plugin run one at a time.
    lifecycles: NamedLocks<PluginName>,
    /// Where every notifier's accepted notifications are published live.
    pub feed: NotificationFeed,
    /// How long notifiers keep delivered notifications.
    retention: Retention,
    /// The HTTP client of every webhook delivery.
    webhooks: reqwest::Client,
    /// Who delivers notifications, when nodes share the log.
    handover: Option<SharedHandover>,
    marks: Option<SharedOutputMarks>,
}

impl Plugins {
    /// Opens the plugins of `data_dir`. Every plugin found shows at once as
    /// `compiling`; a task loads and starts them one by one, the smallest
    /// component first, so a small plugin never waits for a large one's
    /// compile. Call it within a tokio runtime.
    pub fn open(
        data_dir: &Path,
        log: EventLog,
        config: PluginsConfig,
    ) -> Result<Self, PluginError> {
        let runtime = Arc::new(Runtime::new(&data_dir.join("cache"))?);
        let dir = data_dir.join("plugins");
        durable::create_dir_all(&dir)?;
        let found = deployed_plugins(&dir)?;
        for (name, _) in &found {
            config.metrics.plugins.compiling(name.as_str());
        }
        let slots = found
            .iter()
            .map(|(name, _)| (name.clone(), Slot::Compiling { loads: 1 }))
            .collect();
        let plugins = Self {
            inner: Arc::new(Inner {
                dir,
                host: Host {
                    log,
                    runtime,
                    limits: config.limits,
                    replay_rate: config.replay_rate,
                    metrics: config.metrics,
                },
                slots: Mutex::new(Slots {
                    plugins: slots,
                    closed: false,
                }),
                lifecycles: NamedLocks::default(),
                feed: NotificationFeed::new(),
                retention: config.retention,
                handover: config.handover,
                marks: config.marks,
                webhooks: reqwest::Client::builder()
                    .user_agent(concat!("eventfold/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| PluginError::Internal(format!("webhook client: {e}")))?,
            }),
        };
        if !found.is_empty() {
            tokio::spawn(plugins.clone().restore_all(found));
        }
        Ok(plugins)
    }

    /// Restores each plugin found at open, in order, each under its
    /// lifecycle lock (a deploy of the same name waits for it).
    async fn restore_all(self, found: Vec<(PluginName, PluginDir)>) {
        for (name, dir) in found {
            if self.inner.slots.lock().closed {
                return;
            }
            let _lifecycle = self.lifecycle(&name).await;
            let this = self.clone();
            let restored = blocking::run({
                let name = name.clone();
                move || this.restore(&name, dir)
            })
            .await;
            if let Err(error) = restored {
                self.loaded(&name);
                tracing::error!(plugin = %name, %error, "cannot restore plugin");
            }
        }
    }

    /// Loads the generations its manifest names and starts its runner. Blocking.
    fn restore(&self, name: &PluginName, dir: PluginDir) -> Result<(), PluginError> {
        let manifest = dir.load_manifest()?;
        let live = self.load_generation(&dir, manifest.generation, &manifest.hash)?;
        let rebuild = match &manifest.rebuild {
            Some((number, hash)) => Some(self.load_generation(&dir, *number, hash)?),
            None => None,
        };
        tracing::info!(plugin = %name, checkpoint = live.checkpoint, compiled = ?live.plugin.compiled.origin(), "restored plugin");
        self.start(name, dir, live, rebuild)
    }

    /// Loads generation `number` of a plugin from its directory. Blocking.
    fn load_generation(
        &self,
        dir: &PluginDir,
        number: u64,
        hash: &str,
    ) -> Result<Generation, PluginError> {
        let wasm = dir.read_wasm(hash)?;
        let plugin = self
            .inner
            .host
            .runtime
            .load(&wasm, self.inner.host.limits)?;
        let store = PluginStore::open(&dir.state_path(number))?;
        Generation::new(number, plugin, store)
    }

    /// Starts a runner (and a notifier's dispatcher) serving `live` and
    /// building `rebuild`, and registers it. Blocking (opens the mailbox).
    fn start(
        &self,
        name: &PluginName,
        dir: PluginDir,
        live: Generation,
        rebuild: Option<Generation>,
    ) -> Result<(), PluginError> {
        if live.plugin.is_notifier() {
            dir.take_kept_mailbox()?;
        }
        let mailbox = match live.plugin.is_notifier() {
            true => Some(Arc::new(Mailbox::open(
                &dir.mailbox_path(),
                name.as_str(),
                self.inner.feed.clone(),
                self.inner.retention,
            )?)),
            false => None,
        };
        let latest = rebuild.as_ref().map_or(live.number, |r| r.number);
        let shared = Arc::new(Shared {
            name: name.clone(),
            status: RwLock::new(PluginStatus::starting(
                name,
                &live.plugin,
                live.number,
                live.checkpoint,
            )),
            serving: RwLock::new(Serving {
                plugin: live.plugin.clone(),
                store: live.store.clone(),
            }),
            mailbox: mailbox.clone(),
            latest_generation: AtomicU64::new(latest),
            progress: watch::channel(Progress {
                checkpoint: live.checkpoint,
                state: RunState::CatchingUp,
            })
            .0,
        });
        let lease = self.reactor_lease(name, live.plugin.kind());
        let (control, receiver) = mpsc::unbounded_channel();
        let runner = Runner::new(
            shared.clone(),
            dir,
            self.inner.host.clone(),
            receiver,
            live,
            rebuild,
            (tokio::runtime::Handle::current(), lease),
        );
        let thread = std::thread::Builder::new()
            .name(format!("plugin-{name}"))
            .spawn(move || runner.run())
            .map_err(|e| PluginError::Internal(format!("cannot start the plugin's runner: {e}")))?;
        let dispatcher = mailbox.map(|mailbox| self.dispatch(name, mailbox));
        self.register(
            name,
            Entry {
                shared,
                control,
                thread,
                dispatcher,
            },
        )
    }

    /// On several nodes, a reactor's lease: it runs on one node at a time,
    /// so its appends are not repeated by every node that holds it.
    fn reactor_lease(&self, name: &PluginName, kind: PluginKind) -> Option<ReactorLease> {
        let handover = self.inner.handover.as_ref()?;
        (kind == PluginKind::Reactor)
            .then(|| ReactorLease::new(handover.contend(name.as_str()), self.inner.marks.clone()))
    }

    /// Starts a notifier's dispatcher (on several nodes, contending for the
    /// delivery lease) and answers how to stop it.
    fn dispatch(
        &self,
        name: &PluginName,
        mailbox: Arc<Mailbox>,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let token = CancellationToken::new();
        let ownership = self
            .inner
            .handover
            .as_ref()
            .map(|h| h.contend(name.as_str()));
        let task = tokio::spawn(dispatcher::run(
            mailbox,
            self.inner.webhooks.clone(),
            token.clone(),
            ownership,
        ));
        (token, task)
    }

    /// Registers a started plugin, unless the server is shutting down (then
    /// the plugin is told to stop, and stops by itself).
    fn register(&self, name: &PluginName, entry: Entry) -> Result<(), PluginError> {
        let mut slots = self.inner.slots.lock();
        // Under the plugin's lifecycle lock, nothing else starts it.
        let refused = match slots.plugins.get(name) {
            _ if slots.closed => Some(PluginError::ShuttingDown),
            Some(Slot::Running(_)) => Some(PluginError::Internal(format!(
                "plugin {name} was started twice"
            ))),
            _ => None,
        };
        if let Some(error) = refused {
            if let Some((token, _)) = &entry.dispatcher {
                token.cancel();
            }
            let _ = entry.control.send(Control::Stop);
            return Err(error);
        }
        slots.plugins.insert(name.clone(), Slot::Running(entry));
        Ok(())
    }

    /// Deploys `wasm` as plugin `name`: validates and compiles it off the
    /// async runtime, then starts it from position 0, or rebuilds beside the
    /// serving version when the plugin exists.
    pub async fn deploy(
        &self,
        name: PluginName,
        wasm: bytes::Bytes,
    ) -> Result<DeployOutcome, PluginError> {
        // Shown as compiling until it runs (a new plugin) or the deploy fails.
        let _shown = Loading::begin(self, &name);
        let loaded = {
            let (runtime, limits) = (self.inner.host.runtime.clone(), self.inner.host.limits);
            let wasm = wasm.clone();
            blocking::run(move || Ok::<_, PluginError>(runtime.load(&wasm, limits)?)).await?
        };
        let _lifecycle = self.lifecycle(&name).await;
        let outcome = match self.running(&name) {
            None => self.create(&name, loaded, wasm).await?,
            Some(shared) => self.replace(&name, &shared, loaded, wasm).await?,
        };
        tracing::info!(plugin = %name, ?outcome, "deployed");
        Ok(outcome)
    }

    /// Validates and compiles a component without deploying it (a node
    /// that records a deploy for other nodes checks it first); answers
    /// its kind.
    pub async fn check(
        &self,
        wasm: bytes::Bytes,
    ) -> Result<crate::runtime::PluginKind, PluginError> {
        let (runtime, limits) = (self.inner.host.runtime.clone(), self.inner.host.limits);
        let loaded =
            blocking::run(move || Ok::<_, PluginError>(runtime.load(&wasm, limits)?)).await?;
        Ok(loaded.kind())
    }

    /// Deploys each file's plugin in turn, in the order given, each shown as
    /// `compiling` from the start; answers each one's outcome. Compiles
    /// share the machine's cores: one at a time, smallest first, gets the
    /// small plugins ready first.
    pub async fn deploy_in_turn(
        &self,
        files: Vec<(PathBuf, PluginName, bytes::Bytes)>,
    ) -> Vec<(PathBuf, PluginName, Result<DeployOutcome, PluginError>)> {
        let names: Vec<PluginName> = files.iter().map(|(_, name, _)| name.clone()).collect();
        let shown: Vec<Loading<'_>> = names.iter().map(|n| Loading::begin(self, n)).collect();
        let mut outcomes = Vec::with_capacity(files.len());
        for ((path, name, wasm), shown) in files.into_iter().zip(shown) {
            let outcome = self.deploy(name.clone(), wasm).await;
            drop(shown);
            outcomes.push((path, name, outcome));
        }
        outcomes
    }

    /// A first deploy: starts the plugin at once, then makes its code and
    /// the manifest naming it durable before the deploy is acknowledged.
    async fn create(
        &self,
        name: &PluginName,
        loaded: LoadedPlugin,
        wasm: bytes::Bytes,
    ) -> Result<DeployOutcome, PluginError> {
        let dir = self.plugin_dir(name);
        let manifest = Manifest {
            generation: 1,
            hash: loaded.hash.clone(),
            rebuild: None,
        };
        let this = self.clone();
        let (start_name, start_dir) = (name.clone(), dir.clone());
        let started = blocking::run(move || {
            start_dir.create()?;
            let store = PluginStore::open(&start_dir.state_path(1))?;
            let live = Generation::new(1, loaded, store)?;
            this.start(&start_name, start_dir, live, None)
        })
        .await;
        started?;
        let persist_dir = dir.clone();
        let persisted = blocking::run(move || {
            persist_dir.store_wasm(&manifest.hash, &wasm)?;
            persist_dir.save_manifest(&manifest)
        })
        .await;
        if let Err(error) = persisted {
            if let Some(entry) = self.take_entry(name) {
                entry.stop().await;
            }
            let _ = blocking::run(move || dir.remove(false)).await;
            return Err(error);
        }
        Ok(DeployOutcome::Created)
    }

    /// New code for a running plugin: a rebuild beside the serving version,
    /// unless the code is what already serves.
    async fn replace(
        &self,
        name: &PluginName,
        shared: &Arc<Shared>,
        loaded: LoadedPlugin,
        wasm: bytes::Bytes,
    ) -> Result<DeployOutcome, PluginError> {
        if shared.kind() != loaded.kind() {
            return Err(PluginError::Conflict(format!(
                "plugin {name} is a {} and this component is a {}: \
                 delete the plugin first, or deploy it under another name",
                shared.kind(),
                loaded.kind()
            )));
        }
        let serving_hash = shared.serving.read().plugin.hash.clone();
        let rebuilding = shared.status.read().rebuild.is_some();
        if serving_hash == loaded.hash && !rebuilding {
            return Ok(DeployOutcome::Unchanged);
        }
        let (dir, hash) = (self.plugin_dir(name), loaded.hash.clone());
        blocking::run(move || dir.store_wasm(&hash, &wasm)).await?;
        let generation = self.begin_rebuild(name, shared, loaded).await?;
        Ok(DeployOutcome::Rebuilding(generation))
    }

    /// Hands the runner a new generation of `plugin`, built from position 0
    /// beside the serving one; answers its number.
    async fn begin_rebuild(
        &self,
        name: &PluginName,
        shared: &Shared,
        plugin: LoadedPlugin,
    ) -> Result<u64, PluginError> {
        let number = shared.latest_generation.fetch_add(1, Ordering::SeqCst) + 1;
        let dir = self.plugin_dir(name);
        let generation = blocking::run(move || {
            let store = PluginStore::open(&dir.fresh_state_path(number)?)?;
            Generation::new(number, plugin, store)
        })
        .await?;
        let (saved, manifest) = oneshot::channel();
        let generation = Box::new(generation);
        self.send(name, Control::Rebuild { generation, saved })?;
        manifest.await.map_err(|_| PluginError::ShuttingDown)??;
        // Shown at once, before the runner picks the rebuild up.
        shared.status.write().state = RunState::Replaying;
        Ok(number)
    }

    /// Rebuilds the plugin from position 0 beside the serving version;
    /// answers the generation being built.
    pub async fn replay(&self, name: &PluginName) -> Result<u64, PluginError> {
        let _lifecycle = self.lifecycle(name).await;
        let shared = self.shared(name)?;
        let plugin = shared.serving().plugin;
        self.begin_rebuild(name, &shared, plugin).await
    }

    /// Stops the plugin and deletes its directory (state, code, checkpoint).
    /// A notifier's mailbox is kept aside for a notifier deployed again
    /// under the name, unless `purge` ([`PluginDir::remove`]). Its metrics
    /// series go with its runner.
    pub async fn remove(&self, name: &PluginName, purge: bool) -> Result<(), PluginError> {
        let _lifecycle = self.lifecycle(name).await;
        self.shared(name)?;
        let entry = self
            .take_entry(name)
            .ok_or_else(|| PluginError::NotFound(name.to_string()))?;
        entry.stop().await;
        let dir = self.plugin_dir(name);
        blocking::run(move || dir.remove(purge)).await
    }

    /// Pauses the plugin.
    pub fn pause(&self, name: &PluginName) -> Result<(), PluginError> {
        self.send(name, Control::Pause)
    }

    /// Resumes a paused plugin, or retries a failed one now.
    pub fn resume(&self, name: &PluginName) -> Result<(), PluginError> {
        self.send(name, Control::Resume)
    }

    /// Skips the event a failed plugin is stuck on; answers its position.
    pub async fn skip(&self, name: &PluginName) -> Result<u64, PluginError> {
        let (reply, answer) = oneshot::channel();
        self.send(name, Control::Skip { reply })?;
        answer.await.map_err(|_| PluginError::ShuttingDown)?
    }

    /// Stops every runner after it finishes its batch and makes its state
    /// durable; plugins still loading are not started.
    pub async fn shutdown(&self) {
        let entries: Vec<Entry> = {
            let mut slots = self.inner.slots.lock();
            slots.closed = true;
            slots
                .plugins
                .drain()
                .filter_map(|(_, slot)| match slot {
                    Slot::Running(entry) => Some(entry),
                    Slot::Compiling { .. } => None,
                })
                .collect()
        };
        for entry in entries {
            entry.stop().await;
        }
    }

    fn send(&self, name: &PluginName, control: Control) -> Result<(), PluginError> {
        let slots = self.inner.slots.lock();
        match slots.plugins.get(name) {
            Some(Slot::Running(entry)) => entry
                .control
                .send(control)
                .map_err(|_| PluginError::ShuttingDown),
            Some(Slot::Compiling { .. }) => Err(PluginError::Compiling(name.to_string())),
            None => Err(PluginError::NotFound(name.to_string())),
        }
    }

    /// A running plugin's shared part; `Compiling` or `NotFound` otherwise.
    pub(super) fn shared(&self, name: &PluginName) -> Result<Arc<Shared>, PluginError> {
        match self.inner.slots.lock().plugins.get(name) {
            Some(Slot::Running(entry)) => Ok(entry.shared.clone()),
            Some(Slot::Compiling { .. }) => Err(PluginError::Compiling(name.to_string())),
            None => Err(PluginError::NotFound(name.to_string())),
        }
    }

    fn running(&self, name: &PluginName) -> Option<Arc<Shared>> {
        self.shared(name).ok()
    }

    /// Unregisters the plugin's runner (the caller stops it).
    fn take_entry(&self, name: &PluginName) -> Option<Entry> {
        let mut slots = self.inner.slots.lock();
        match slots.plugins.remove(name)? {
            Slot::Running(entry) => Some(entry),
            compiling @ Slot::Compiling { .. } => {
                slots.plugins.insert(name.clone(), compiling);
                None
            }
        }
    }

    /// Ends one load of `name`: a plugin that is still only loading, with
    /// no other load under way, is no longer shown.
    fn loaded(&self, name: &PluginName) {
        let mut slots = self.inner.slots.lock();
        if let Some(Slot::Compiling { loads }) = slots.plugins.get_mut(name) {
            *loads -= 1;
            if *loads == 0 {
                slots.plugins.remove(name);
                self.inner.host.metrics.plugins.remove(name.as_str());
            }
        }
    }

    /// Waits for the plugin's lifecycle lock.
    async fn lifecycle(&self, name: &PluginName) -> tokio::sync::OwnedMutexGuard<()> {
        self.inner.lifecycles.lock(name).await
    }

    pub(super) fn plugin_dir(&self, name: &PluginName) -> PluginDir {
        PluginDir::new(self.inner.dir.join(name.as_str()))
    }
}

/// Shows a plugin that is not running yet as `compiling` while its
/// component loads for a deploy.
struct Loading<'a> {
    plugins: &'a Plugins,
    name: &'a PluginName,
}

impl<'a> Loading<'a> {
    fn begin(plugins: &'a Plugins, name: &'a PluginName) -> Self {
        let mut slots = plugins.inner.slots.lock();
        match slots.plugins.get_mut(name) {
            Some(Slot::Compiling { loads }) => *loads += 1,
            Some(Slot::Running(_)) => {}
            None => {
                slots
                    .plugins
                    .insert(name.clone(), Slot::Compiling { loads: 1 });
                plugins.inner.host.metrics.plugins.compiling(name.as_str());
            }
        }
        Self { plugins, name }
    }
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        self.plugins.loaded(self.name);
    }
}

/// The plugins in `dir` whose deploy finished, smallest component first;
/// what a cut left half-done is cleared on the way.
fn deployed_plugins(dir: &Path) -> Result<Vec<(PluginName, PluginDir)>, PluginError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| PluginName::new(n).ok())
        else {
            continue;
        };
        let dir = PluginDir::new(path);
        if dir.clear_unfinished()? {
            let size = dir.component_size();
            found.push((size, name, dir));
        }
    }
    found.sort_by_key(|(size, name, _)| (*size, name.clone()));
    Ok(found
        .into_iter()
        .map(|(_, name, dir)| (name, dir))
        .collect())
}
