//! `serve --plugins-dir DIR`: deploys every `.wasm` in DIR at start, and each
//! one that appears or changes afterwards (checked every second; the name is
//! the file's stem).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{PluginName, Plugins};

/// Watches `dir` until `shutdown`.
pub async fn watch_dir(dir: PathBuf, plugins: Plugins, shutdown: CancellationToken) {
    let mut seen: HashMap<PathBuf, (SystemTime, u64)> = HashMap::new();
    loop {
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
                        continue;
                    }
                    let Ok(meta) = entry.metadata() else { continue };
                    let stamp = (
                        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        meta.len(),
                    );
                    if seen.get(&path) == Some(&stamp) {
                        continue;
                    }
                    seen.insert(path.clone(), stamp);
                    deploy_file(&plugins, path).await;
                }
            }
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot read the plugins directory")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn deploy_file(plugins: &Plugins, path: PathBuf) {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .replace('_', "-");
    let name = match PluginName::new(stem.to_ascii_lowercase()) {
        Ok(name) => name,
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "not deploying");
            return;
        }
    };
    let wasm = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "cannot read plugin file");
            return;
        }
    };
    match plugins.deploy(name.clone(), wasm.into()).await {
        Ok(outcome) => {
            tracing::info!(plugin = %name, file = %path.display(), ?outcome, "deployed from the plugins directory")
        }
        Err(error) => {
            tracing::error!(plugin = %name, file = %path.display(), %error, "cannot deploy from the plugins directory")
        }
    }
}
