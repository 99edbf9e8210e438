//! `serve --plugins-dir DIR`: deploys every `.wasm` in DIR at start, and each
//! one that appears or changes afterwards (checked every second; the name is
//! the file's stem, `_` turned into `-`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{PluginName, Plugins};

/// Whatever deploys the files of the plugins directory: this node's
/// registry, or the cluster's records (`crate::cluster::Deployments`).
pub trait DeployFiles: Send + Sync + 'static {
    /// Deploys each file's plugin, in turn; answers each one's outcome
    /// (or error) as text for the log.
    fn deploy_files(
        &self,
        files: Vec<(PathBuf, PluginName, bytes::Bytes)>,
    ) -> impl std::future::Future<Output = Vec<(PathBuf, PluginName, Result<String, String>)>> + Send;
}

impl DeployFiles for Plugins {
    async fn deploy_files(
        &self,
        files: Vec<(PathBuf, PluginName, bytes::Bytes)>,
    ) -> Vec<(PathBuf, PluginName, Result<String, String>)> {
        self.deploy_in_turn(files)
            .await
            .into_iter()
            .map(|(path, name, outcome)| {
                let outcome = outcome.map(|o| format!("{o:?}")).map_err(|e| e.to_string());
                (path, name, outcome)
            })
            .collect()
    }
}

/// Watches `dir` until `shutdown`. Files present at start are deployed at
/// once; a file that appears or changes later is deployed once it has stayed
/// the same for one check (so a file still being copied is not half-read).
/// The files of one check are all shown as `compiling` at once, then
/// deployed one at a time, smallest first: compiles share the machine's
/// cores, so the small plugins are ready in moments instead of when the
/// large ones are.
pub async fn watch_dir(dir: PathBuf, plugins: impl DeployFiles, shutdown: CancellationToken) {
    let mut deployed: HashMap<PathBuf, Stamp> = HashMap::new();
    let mut settling: HashMap<PathBuf, Stamp> = HashMap::new();
    let mut first = true;
    loop {
        let mut ready: Vec<(PathBuf, u64)> = Vec::new();
        for (path, stamp) in wasm_files(&dir) {
            if deployed.get(&path) == Some(&stamp) {
                continue;
            }
            if first || settling.get(&path) == Some(&stamp) {
                settling.remove(&path);
                deployed.insert(path.clone(), stamp);
                ready.push((path, stamp.1));
            } else {
                settling.insert(path, stamp);
            }
        }
        ready.sort_by_key(|(path, size)| (*size, path.clone()));
        let mut files = Vec::with_capacity(ready.len());
        for (path, _) in ready {
            if let Some(file) = read_file(&path).await {
                files.push(file);
            }
        }
        for (path, name, result) in plugins.deploy_files(files).await {
            match result {
                Ok(outcome) => {
                    tracing::info!(plugin = %name, file = %path.display(), %outcome, "deployed from the plugins directory")
                }
                Err(error) => {
                    tracing::error!(plugin = %name, file = %path.display(), %error, "cannot deploy from the plugins directory")
                }
            }
        }
        first = false;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A file's modification time and length.
type Stamp = (SystemTime, u64);

fn wasm_files(dir: &std::path::Path) -> Vec<(PathBuf, Stamp)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot read the plugins directory");
            return Vec::new();
        }
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("wasm"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((
                e.path(),
                (
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    meta.len(),
                ),
            ))
        })
        .collect()
}

/// The plugin a file holds: its name (the file's stem, `_` turned into
/// `-`) and its bytes; `None` (logged) if either is unusable.
async fn read_file(path: &Path) -> Option<(PathBuf, PluginName, bytes::Bytes)> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .replace('_', "-");
    let name = match PluginName::new(stem.to_ascii_lowercase()) {
        Ok(name) => name,
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "not deploying");
            return None;
        }
    };
    match tokio::fs::read(path).await {
        Ok(bytes) => Some((path.to_path_buf(), name, bytes.into())),
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "cannot read plugin file");
            None
        }
    }
}
