//! A plugin's directory, `data-dir/plugins/<name>/`, and every file in it:
//!
//! - `plugin.json`, the [`Manifest`]: the serving generation and its
//!   component, and a rebuild in progress;
//! - `<sha256>.wasm`: the components the manifest names;
//! - `state-<n>.redb`: the state and checkpoint of generation `n`;
//! - `mailbox.redb`: a notifier's mailbox.
//!
//! What may be on disk is decided here; the registry and the runner name
//! files only through [`PluginDir`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PluginError;
use crate::durable;

/// What `plugin.json` records. A plugin directory without one is a first
/// deploy that never finished.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Manifest {
    /// The serving generation.
    pub generation: u64,
    /// SHA-256 of its component.
    pub hash: String,
    /// A rebuild in progress: its generation and component hash.
    pub rebuild: Option<(u64, String)>,
}

/// One plugin's directory.
#[derive(Debug, Clone)]
pub(super) struct PluginDir {
    path: PathBuf,
}

impl PluginDir {
    const MANIFEST: &'static str = "plugin.json";

    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Whether a deploy of this plugin finished (its manifest exists).
    pub fn is_deployed(&self) -> bool {
        self.path.join(Self::MANIFEST).exists()
    }

    /// Creates the directory for a first deploy. Files without a manifest
    /// are a deploy that never finished, or a remove that did not (the
    /// process died, or the power): this one starts from nothing, but for a
    /// notifier's mailbox, which is kept aside ([`PluginDir::remove`]).
    pub fn create(&self) -> Result<(), PluginError> {
        if self.path.exists() && !self.is_deployed() {
            self.delete_undeployed()?;
        }
        durable::create_dir_all(&self.path)?;
        Ok(())
    }

    /// Deletes the plugin. The manifest goes first and durably: that is the
    /// moment the plugin is gone, and a cut after it leaves only files that
    /// [`PluginDir::create`] or [`PluginDir::clear_unfinished`] clears. A
    /// notifier's mailbox (the keys it accepted, what it delivered, its
    /// webhook settings) is kept aside, so that a notifier deployed again
    /// under the name sends nothing twice; with `purge` it is deleted too.
    pub fn remove(&self, purge: bool) -> Result<(), PluginError> {
        durable::remove_file(&self.path.join(Self::MANIFEST))?;
        if purge {
            durable::remove_dir_all(&self.path)?;
            durable::remove_file(&self.kept_mailbox_path())?;
            return Ok(());
        }
        self.delete_undeployed()
    }

    /// Deletes a directory without a manifest, keeping its mailbox aside.
    fn delete_undeployed(&self) -> Result<(), PluginError> {
        let mailbox = self.mailbox_path();
        if mailbox.exists() {
            let kept = self.kept_mailbox_path();
            if let Some(dir) = kept.parent() {
                durable::create_dir_all(dir)?;
            }
            durable::rename(&mailbox, &kept)?;
        }
        durable::remove_dir_all(&self.path)?;
        Ok(())
    }

    /// Takes back the mailbox a removed notifier of this name left aside,
    /// unless the plugin has one. Before the mailbox is opened.
    pub fn take_kept_mailbox(&self) -> Result<(), PluginError> {
        let kept = self.kept_mailbox_path();
        if kept.exists() && !self.mailbox_path().exists() {
            durable::rename(&kept, &self.mailbox_path())?;
        }
        Ok(())
    }

    /// At start, finishes or rolls back what a cut interrupted: a directory
    /// without a manifest (a first deploy or a remove cut short) is
    /// deleted; in a deployed one, every component and state file that the
    /// manifest does not name (a swap or a rebuild cut short) and every
    /// temporary file goes. Answers whether the plugin is deployed.
    pub fn clear_unfinished(&self) -> Result<bool, PluginError> {
        if !self.is_deployed() {
            self.delete_undeployed()?;
            return Ok(false);
        }
        durable::remove_leftovers(&self.path)?;
        let manifest = self.load_manifest()?;
        let mut keep = vec![
            self.wasm_path(&manifest.hash),
            self.state_path(manifest.generation),
        ];
        if let Some((number, hash)) = &manifest.rebuild {
            keep.extend([self.wasm_path(hash), self.state_path(*number)]);
        }
        for entry in std::fs::read_dir(&self.path)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let generational =
                name.ends_with(".wasm") || (name.starts_with("state-") && name.ends_with(".redb"));
            if generational && !keep.contains(&path) {
                durable::remove_file(&path)?;
            }
        }
        Ok(true)
    }

    /// The size of the serving component (0 if it cannot be read): small
    /// plugins are restored first.
    pub fn component_size(&self) -> u64 {
        self.load_manifest()
            .ok()
            .and_then(|m| std::fs::metadata(self.wasm_path(&m.hash)).ok())
            .map_or(0, |meta| meta.len())
    }

    pub fn load_manifest(&self) -> Result<Manifest, PluginError> {
        let text = std::fs::read_to_string(self.path.join(Self::MANIFEST))?;
        serde_json::from_str(&text)
            .map_err(|e| PluginError::Internal(format!("{}: {e}", self.path.display())))
    }

    /// Writes the manifest atomically and durably (`durable::write_file`).
    pub fn save_manifest(&self, manifest: &Manifest) -> Result<(), PluginError> {
        let text = serde_json::to_vec_pretty(manifest)
            .map_err(|e| PluginError::Internal(e.to_string()))?;
        durable::write_file(&self.path.join(Self::MANIFEST), &text)?;
        Ok(())
    }

    /// The component with SHA-256 `hash`.
    pub fn read_wasm(&self, hash: &str) -> Result<Vec<u8>, PluginError> {
        Ok(std::fs::read(self.wasm_path(hash))?)
    }

    /// Stores a component's code as `<hash>.wasm`, durably: it must outlive
    /// a crash before the manifest naming it does.
    pub fn store_wasm(&self, hash: &str, wasm: &[u8]) -> Result<(), PluginError> {
        let path = self.wasm_path(hash);
        if path.exists() {
            return Ok(());
        }
        durable::write_file(&path, wasm)?;
        Ok(())
    }

    /// Removes a component no manifest names any more.
    pub fn remove_wasm(&self, hash: &str) {
        if let Err(error) = durable::remove_file(&self.wasm_path(hash)) {
            tracing::warn!(%error, dir = %self.path.display(), "cannot remove an old component");
        }
    }

    /// The state file of generation `number`.
    pub fn state_path(&self, number: u64) -> PathBuf {
        self.path.join(format!("state-{number}.redb"))
    }

    /// A fresh state file for generation `number`: a leftover from an
    /// abandoned rebuild must not seed it.
    pub fn fresh_state_path(&self, number: u64) -> Result<PathBuf, PluginError> {
        let path = self.state_path(number);
        durable::remove_file(&path)?;
        Ok(path)
    }

    /// A notifier's mailbox.
    pub fn mailbox_path(&self) -> PathBuf {
        self.path.join("mailbox.redb")
    }

    /// Where a removed notifier's mailbox waits for a notifier of the same
    /// name: `plugins/.removed/<name>.mailbox.redb` (no plugin name starts
    /// with a dot).
    fn kept_mailbox_path(&self) -> PathBuf {
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let plugins = self.path.parent().unwrap_or(&self.path);
        plugins
            .join(".removed")
            .join(format!("{name}.mailbox.redb"))
    }

    fn wasm_path(&self, hash: &str) -> PathBuf {
        self.path.join(format!("{hash}.wasm"))
    }
}

/// Removes a generation's state file once it is no longer served. Readers
/// may still hold the store for a moment; on Unix the file goes away when
/// the last of them closes it.
pub(super) fn remove_state_file(path: &Path) {
    if let Err(error) = durable::remove_file(path) {
        tracing::warn!(%error, path = %path.display(), "cannot remove an old state file");
    }
}
