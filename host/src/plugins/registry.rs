//! The registry of deployed plugins: deploy, replace, replay, remove, and
//! the reads that go to a plugin's serving state.
//!
//! On disk, each plugin has a directory `data-dir/plugins/<name>/` with its
//! components (`<sha256>.wasm`), one state file per generation
//! (`state-<n>.redb`) and `plugin.json` naming the serving generation and a
//! rebuild in progress. Compiled components are cached in `data-dir/cache/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::runner::{Control, Generation, Host, Runner, Shared, compile_ms, compiled_word};
use super::status::{NotificationStatus, PluginStatus, RunState};
use super::store::PluginStore;
use super::{PluginError, PluginName};
use crate::log::EventLog;
use crate::notify::{Mailbox, NotificationFeed, dispatcher};
use crate::runtime::{LoadedPlugin, Runtime, SandboxLimits};

/// What `plugin.json` records.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Manifest {
    /// The serving generation.
    pub generation: u64,
    /// SHA-256 of its component.
    pub hash: String,
    /// A rebuild in progress: its generation and component hash.
    pub rebuild: Option<(u64, String)>,
}

impl Manifest {
    const FILE: &'static str = "plugin.json";

    fn load(dir: &Path) -> Result<Self, PluginError> {
        let text = std::fs::read_to_string(dir.join(Self::FILE))?;
        serde_json::from_str(&text)
            .map_err(|e| PluginError::Internal(format!("{}: {e}", dir.display())))
    }

    /// Writes the manifest atomically.
    pub fn save(&self, dir: &Path) -> Result<(), PluginError> {
        let tmp = dir.join("plugin.json.tmp");
        let text =
            serde_json::to_vec_pretty(self).map_err(|e| PluginError::Internal(e.to_string()))?;
        std::fs::write(&tmp, text)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dir.join(Self::FILE))?;
        Ok(())
    }
}

/// The serving generation: what reads and queries use.
#[derive(Clone)]
pub(super) struct Serving {
    pub plugin: LoadedPlugin,
    pub store: Arc<PluginStore>,
    pub generation: u64,
}

/// Settings of the plugin host.
#[derive(Debug, Clone)]
pub struct PluginsConfig {
    /// Limits applied to every plugin.
    pub limits: SandboxLimits,
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

struct Entry {
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// A notifier's dispatcher: stopped with this token.
    dispatcher: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

/// Every deployed plugin. Cheap to clone.
#[derive(Clone)]
pub struct Plugins {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    runtime: Arc<Runtime>,
    log: EventLog,
    config: PluginsConfig,
    entries: Mutex<HashMap<PluginName, Entry>>,
    /// Plugins being compiled for their first deploy (shown as `compiling`).
    compiling: Mutex<HashMap<PluginName, PluginStatus>>,
    /// Serialises deploys, replays and removals of the same plugins.
    lifecycle: tokio::sync::Mutex<()>,
    /// Where every notifier's accepted notifications are published live.
    feed: NotificationFeed,
    /// The HTTP client of every webhook delivery.
    webhooks: reqwest::Client,
}

impl Plugins {
    /// Opens the plugins of `data_dir` and starts a runner for each. Blocking
    /// (loads components, from the cache when possible).
    pub fn open(
        data_dir: &Path,
        log: EventLog,
        config: PluginsConfig,
    ) -> Result<Self, PluginError> {
        let runtime = Arc::new(Runtime::new(&data_dir.join("cache"))?);
        let dir = data_dir.join("plugins");
        std::fs::create_dir_all(&dir)?;
        let plugins = Self {
            inner: Arc::new(Inner {
                dir: dir.clone(),
                runtime,
                log,
                config,
                entries: Mutex::new(HashMap::new()),
                compiling: Mutex::new(HashMap::new()),
                lifecycle: tokio::sync::Mutex::new(()),
                feed: NotificationFeed::new(),
                webhooks: reqwest::Client::builder()
                    .user_agent(concat!("eventfold/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| PluginError::Internal(format!("webhook client: {e}")))?,
            }),
        };
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| PluginName::new(n).ok())
            else {
                continue;
            };
            if !path.join(Manifest::FILE).exists() {
                continue;
            }
            if let Err(error) = plugins.restore(&name, &path) {
                tracing::error!(plugin = %name, %error, "cannot restore plugin");
            }
        }
        Ok(plugins)
    }

    fn restore(&self, name: &PluginName, dir: &Path) -> Result<(), PluginError> {
        let manifest = Manifest::load(dir)?;
        let live = self.generation(dir, manifest.generation, &manifest.hash)?;
        let rebuild = match &manifest.rebuild {
            Some((number, hash)) => Some(self.generation(dir, *number, hash)?),
            None => None,
        };
        tracing::info!(plugin = %name, checkpoint = live.checkpoint, compiled = compiled_word(live.plugin.compiled), "restored plugin");
        self.start(name.clone(), dir.to_path_buf(), live, rebuild)
    }

    /// Loads generation `number` of a plugin from its directory.
    fn generation(&self, dir: &Path, number: u64, hash: &str) -> Result<Generation, PluginError> {
        let wasm = std::fs::read(dir.join(format!("{hash}.wasm")))?;
        let plugin = self.inner.runtime.load(&wasm, self.inner.config.limits)?;
        let store = PluginStore::open(&dir.join(format!("state-{number}.redb")))?;
        Generation::new(number, plugin, store)
    }

    fn start(
        &self,
        name: PluginName,
        dir: PathBuf,
        live: Generation,
        rebuild: Option<Generation>,
    ) -> Result<(), PluginError> {
        let mailbox = if live.plugin.is_notifier() {
            let path = dir.join("mailbox.redb");
            Some(Arc::new(Mailbox::open(
                &path,
                name.as_str(),
                self.inner.feed.clone(),
            )?))
        } else {
            None
        };
        let plugin = &live.plugin;
        let status = PluginStatus {
            name: name.to_string(),
            kind: plugin.kind().into(),
            state: RunState::CatchingUp,
            version: plugin.info.version.clone(),
            wit: plugin.form.wit_version().into(),
            encoding: plugin.form.encoding().into(),
            hash: plugin.hash.clone(),
            generation: live.number,
            checkpoint: live.checkpoint,
            head: 0,
            lag: 0,
            events_per_sec: 0.0,
            categories: plugin.info.subscription.categories.clone(),
            event_types: plugin.info.subscription.event_types.clone(),
            compiled: compiled_word(plugin.compiled).into(),
            compile_ms: compile_ms(plugin.compiled),
            last_error: None,
            rebuild: None,
            parked: 0,
            notifications: None,
        };
        let shared = Arc::new(Shared {
            name: name.clone(),
            status: RwLock::new(status),
            serving: RwLock::new(Serving {
                plugin: live.plugin.clone(),
                store: live.store.clone(),
                generation: live.number,
            }),
            mailbox: mailbox.clone(),
        });
        let dispatcher = mailbox.map(|mailbox| {
            let token = CancellationToken::new();
            let task = tokio::spawn(dispatcher::run(
                mailbox,
                self.inner.webhooks.clone(),
                token.clone(),
            ));
            (token, task)
        });
        let (control, receiver) = mpsc::unbounded_channel();
        let host = Host {
            log: self.inner.log.clone(),
            runtime: self.inner.runtime.clone(),
            limits: self.inner.config.limits,
        };
        let runner = Runner::new(shared.clone(), dir, host, receiver, live, rebuild);
        let handle = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name(format!("plugin-{name}"))
            .spawn(move || runner.run(handle));
        let thread = match thread {
            Ok(thread) => Some(thread),
            Err(error) => {
                tracing::error!(plugin = %name, %error, "cannot start the plugin's runner");
                None
            }
        };
        if let Ok(mut entries) = self.inner.entries.lock() {
            entries.insert(
                name,
                Entry {
                    shared,
                    control,
                    thread,
                    dispatcher,
                },
            );
        }
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
        let _guard = self.inner.lifecycle.lock().await;
        let existing = self.shared(&name).ok();
        if existing.is_none() {
            self.mark_compiling(&name, true);
        }
        let runtime = self.inner.runtime.clone();
        let limits = self.inner.config.limits;
        let loaded = {
            let wasm = wasm.clone();
            tokio::task::spawn_blocking(move || runtime.load(&wasm, limits))
                .await
                .map_err(|e| PluginError::Internal(format!("compile task: {e}")))
        };
        let loaded = match loaded {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(error)) => {
                self.mark_compiling(&name, false);
                return Err(error.into());
            }
            Err(error) => {
                self.mark_compiling(&name, false);
                return Err(error);
            }
        };
        let dir = self.inner.dir.join(name.as_str());
        let outcome = match existing {
            None => {
                // Files without a manifest are a deploy that never finished
                // (the process died): this one starts from nothing.
                if dir.exists() && !dir.join(Manifest::FILE).exists() {
                    std::fs::remove_dir_all(&dir)?;
                }
                std::fs::create_dir_all(&dir)?;
                let started = PluginStore::open(&dir.join("state-1.redb"))
                    .and_then(|store| Generation::new(1, loaded.clone(), store))
                    .and_then(|live| self.start(name.clone(), dir.clone(), live, None));
                self.mark_compiling(&name, false);
                started?;
                // The plugin is already at work; the deploy is acknowledged
                // once its code and then the manifest naming it are durable.
                let manifest = Manifest {
                    generation: 1,
                    hash: loaded.hash.clone(),
                    rebuild: None,
                };
                let (persist_dir, persist_wasm) = (dir.clone(), wasm.clone());
                let persisted = blocking(move || {
                    store_wasm(&persist_dir, &manifest.hash, &persist_wasm)?;
                    manifest.save(&persist_dir)
                })
                .await;
                if let Err(error) = persisted {
                    if let Some(entry) = self.take_entry(&name) {
                        stop(entry).await;
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(error);
                }
                DeployOutcome::Created
            }
            Some(shared) => {
                let serving_hash = shared
                    .serving
                    .read()
                    .map(|s| s.plugin.hash.clone())
                    .unwrap_or_default();
                let rebuilding_hash = shared
                    .status
                    .read()
                    .ok()
                    .and_then(|s| s.rebuild.as_ref().map(|r| r.hash.clone()));
                let serving_kind = if shared.mailbox.is_some() {
                    "notifier"
                } else {
                    "projection"
                };
                if serving_kind != loaded.kind() {
                    return Err(PluginError::Conflict(format!(
                        "plugin {name} is a {serving_kind} and this component is a {}: \
                         delete the plugin first, or deploy it under another name",
                        loaded.kind()
                    )));
                }
                if serving_hash == loaded.hash && rebuilding_hash.is_none() {
                    DeployOutcome::Unchanged
                } else {
                    let (hash, persist_dir) = (loaded.hash.clone(), dir.clone());
                    blocking(move || store_wasm(&persist_dir, &hash, &wasm)).await?;
                    let generation = self.begin_rebuild(&name, &shared, &dir, loaded)?;
                    DeployOutcome::Rebuilding(generation)
                }
            }
        };
        tracing::info!(plugin = %name, ?outcome, "deployed");
        Ok(outcome)
    }

    fn mark_compiling(&self, name: &PluginName, compiling: bool) {
        let Ok(mut map) = self.inner.compiling.lock() else {
            return;
        };
        if compiling {
            map.insert(
                name.clone(),
                PluginStatus {
                    name: name.to_string(),
                    kind: "unknown".into(),
                    state: RunState::Compiling,
                    version: String::new(),
                    wit: String::new(),
                    encoding: String::new(),
                    hash: String::new(),
                    generation: 0,
                    checkpoint: 0,
                    head: 0,
                    lag: 0,
                    events_per_sec: 0.0,
                    categories: Vec::new(),
                    event_types: Vec::new(),
                    compiled: String::new(),
                    compile_ms: 0,
                    last_error: None,
                    rebuild: None,
                    parked: 0,
                    notifications: None,
                },
            );
        } else {
            map.remove(name);
        }
    }

    fn begin_rebuild(
        &self,
        name: &PluginName,
        shared: &Shared,
        dir: &Path,
        plugin: LoadedPlugin,
    ) -> Result<u64, PluginError> {
        let serving = shared.serving.read().map(|s| s.generation).unwrap_or(0);
        let current = shared
            .status
            .read()
            .ok()
            .and_then(|s| s.rebuild.as_ref().map(|r| r.generation));
        let number = serving.max(current.unwrap_or(0)) + 1;
        let path = dir.join(format!("state-{number}.redb"));
        // A leftover from an abandoned rebuild must not seed this one.
        if path.exists() {
            std::fs::remove_file(&path)?;
        }
        let store = PluginStore::open(&path)?;
        let generation = Generation::new(number, plugin, store)?;
        self.send(name, Control::Rebuild(Box::new(generation)))?;
        // Shown at once, before the runner picks the rebuild up.
        if let Ok(mut status) = shared.status.write() {
            status.state = RunState::Replaying;
        }
        Ok(number)
    }

    /// Rebuilds the plugin from position 0 beside the serving version;
    /// answers the generation being built.
    pub async fn replay(&self, name: &PluginName) -> Result<u64, PluginError> {
        let _guard = self.inner.lifecycle.lock().await;
        let shared = self.shared(name)?;
        let plugin = shared
            .serving
            .read()
            .map(|s| s.plugin.clone())
            .map_err(|_| PluginError::Internal("poisoned lock".into()))?;
        let dir = self.inner.dir.join(name.as_str());
        self.begin_rebuild(name, &shared, &dir, plugin)
    }

    /// Stops the plugin and deletes its directory (state, code, checkpoint).
    pub async fn remove(&self, name: &PluginName) -> Result<(), PluginError> {
        let _guard = self.inner.lifecycle.lock().await;
        let entry = self
            .take_entry(name)
            .ok_or_else(|| PluginError::NotFound(name.to_string()))?;
        stop(entry).await;
        std::fs::remove_dir_all(self.inner.dir.join(name.as_str()))?;
        Ok(())
    }

    /// Unregisters the plugin's runner (the caller stops it).
    fn take_entry(&self, name: &PluginName) -> Option<Entry> {
        self.inner.entries.lock().ok()?.remove(name)
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

    fn send(&self, name: &PluginName, control: Control) -> Result<(), PluginError> {
        let entries = self
            .inner
            .entries
            .lock()
            .map_err(|_| PluginError::Internal("poisoned lock".into()))?;
        let entry = entries
            .get(name)
            .ok_or_else(|| PluginError::NotFound(name.to_string()))?;
        entry
            .control
            .send(control)
            .map_err(|_| PluginError::ShuttingDown)
    }

    fn shared(&self, name: &PluginName) -> Result<Arc<Shared>, PluginError> {
        let entries = self
            .inner
            .entries
            .lock()
            .map_err(|_| PluginError::Internal("poisoned lock".into()))?;
        if let Some(entry) = entries.get(name) {
            return Ok(entry.shared.clone());
        }
        let compiling = self
            .inner
            .compiling
            .lock()
            .is_ok_and(|c| c.contains_key(name));
        Err(if compiling {
            PluginError::Compiling(name.to_string())
        } else {
            PluginError::NotFound(name.to_string())
        })
    }

    fn serving(&self, name: &PluginName) -> Result<Serving, PluginError> {
        let shared = self.shared(name)?;
        let serving = shared
            .serving
            .read()
            .map_err(|_| PluginError::Internal("poisoned lock".into()))?;
        Ok(serving.clone())
    }

    /// The status of one plugin, with the log's head and the lag filled in.
    pub fn status(&self, name: &PluginName) -> Result<PluginStatus, PluginError> {
        if let Some(status) = self
            .inner
            .compiling
            .lock()
            .ok()
            .and_then(|m| m.get(name).cloned())
        {
            return Ok(status);
        }
        let shared = self.shared(name)?;
        let mut status = shared
            .status
            .read()
            .map_err(|_| PluginError::Internal("poisoned lock".into()))?
            .clone();
        let head = self.inner.log.head().0;
        status.head = head;
        status.lag = head.saturating_sub(status.checkpoint);
        if let Ok(serving) = shared.serving.read() {
            status.parked = serving.store.parked().map_or(0, |p| p.len() as u64);
        }
        if let Some(mailbox) = &shared.mailbox {
            status.notifications = Some(NotificationStatus {
                stats: mailbox.stats()?,
                webhook: mailbox.webhook()?.map(|w| w.view()),
            });
        }
        Ok(status)
    }

    /// A notifier's mailbox; a conflict for a projection.
    pub fn mailbox(&self, name: &PluginName) -> Result<Arc<Mailbox>, PluginError> {
        self.shared(name)?.mailbox.clone().ok_or_else(|| {
            PluginError::Conflict(format!(
                "plugin {name} is a projection: only notifiers have notifications and webhooks"
            ))
        })
    }

    /// The live feed of every notifier's notifications.
    pub fn feed(&self) -> &NotificationFeed {
        &self.inner.feed
    }

    /// Every plugin's status, by name.
    pub fn list(&self) -> Vec<PluginStatus> {
        let mut names: Vec<PluginName> = self
            .inner
            .entries
            .lock()
            .map(|e| e.keys().cloned().collect())
            .unwrap_or_default();
        names.extend(
            self.inner
                .compiling
                .lock()
                .map(|c| c.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default(),
        );
        names.sort();
        names.dedup();
        names.iter().filter_map(|n| self.status(n).ok()).collect()
    }

    /// The serving state's value under `key`.
    pub async fn state_get(
        &self,
        name: &PluginName,
        key: String,
    ) -> Result<Option<Vec<u8>>, PluginError> {
        let serving = self.serving(name)?;
        blocking(move || serving.store.get(&key)).await
    }

    /// Serving state entries with keys starting with `prefix`, after `after`.
    pub async fn state_scan(
        &self,
        name: &PluginName,
        prefix: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, PluginError> {
        let serving = self.serving(name)?;
        blocking(move || serving.store.scan(&prefix, after.as_deref(), limit)).await
    }

    /// The events the operator skipped, with their errors.
    pub async fn parked(&self, name: &PluginName) -> Result<Vec<(u64, String)>, PluginError> {
        let serving = self.serving(name)?;
        blocking(move || serving.store.parked()).await
    }

    /// Runs the plugin's `query` export on a fresh instance over the serving state.
    pub async fn query(
        &self,
        name: &PluginName,
        request: Vec<u8>,
    ) -> Result<Result<Vec<u8>, String>, PluginError> {
        let serving = self.serving(name)?;
        let runtime = self.inner.runtime.clone();
        let limits = self.inner.config.limits;
        let label: Arc<str> = Arc::from(name.as_str());
        blocking(move || {
            let mut instance = runtime
                .instantiate(&serving.plugin, label, limits)
                .map_err(|e| PluginError::Call(e.to_string()))?;
            let view = serving.store.view()?;
            instance
                .query(&request, view)
                .map_err(|e| PluginError::Call(e.to_string()))
        })
        .await
    }

    /// Stops every runner after it finishes its batch and makes its state durable.
    pub async fn shutdown(&self) {
        let entries: Vec<Entry> = match self.inner.entries.lock() {
            Ok(mut entries) => entries.drain().map(|(_, e)| e).collect(),
            Err(_) => Vec::new(),
        };
        for entry in entries {
            stop(entry).await;
        }
    }
}

/// Stores a component's code as `<hash>.wasm` in `dir`, durably (it must
/// outlive a crash before the manifest naming it does).
fn store_wasm(dir: &Path, hash: &str, wasm: &[u8]) -> Result<(), PluginError> {
    let path = dir.join(format!("{hash}.wasm"));
    if path.exists() {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut file, wasm)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

async fn stop(mut entry: Entry) {
    if let Some((token, task)) = entry.dispatcher.take() {
        token.cancel();
        let _ = task.await;
    }
    let _ = entry.control.send(Control::Stop);
    if let Some(thread) = entry.thread.take() {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PluginError> + Send + 'static,
) -> Result<T, PluginError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PluginError::Internal(format!("task failed: {e}")))?
}
