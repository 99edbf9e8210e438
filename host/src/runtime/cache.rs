//! Compiled components cached on disk, keyed by the wasm's SHA-256 and the
//! engine's settings, so a restart or a redeploy of a known plugin does not
//! compile again (deserialising is orders of magnitude cheaper than
//! compiling, above all for Python and JavaScript components:
//! `docs/design.md#notes`).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::RuntimeError;
use crate::durable;

/// The cache directory and the engine whose compiled code it holds.
pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compiled {
    /// Compiled now, in this long.
    Fresh(Duration),
    /// Loaded from the cache.
    Cached,
}

impl Compiled {
    /// Where the compiled code came from.
    pub fn origin(self) -> CompileOrigin {
        match self {
            Compiled::Fresh(_) => CompileOrigin::Compiled,
            Compiled::Cached => CompileOrigin::Cache,
        }
    }

    /// Milliseconds the compile took (0 when cached).
    pub fn millis(self) -> u64 {
        match self {
            Compiled::Fresh(took) => u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            Compiled::Cached => 0,
        }
    }
}

/// Where a plugin's compiled code came from, as its status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CompileOrigin {
    /// The on-disk cache of compiled components.
    Cache,
    /// A compile of the component, at load.
    Compiled,
}

/// The SHA-256 of a wasm file, hex-encoded.
pub fn wasm_hash(wasm: &[u8]) -> String {
    hex(&Sha256::digest(wasm))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ComponentCache {
    /// A cache in `dir` for components compiled by `engine`.
    pub fn new(dir: PathBuf, engine: &Engine) -> Result<Self, RuntimeError> {
        let prepared = durable::create_dir_all(&dir).and_then(|()| durable::remove_leftovers(&dir));
        prepared.map_err(|e| RuntimeError::Cache(e.to_string()))?;
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    /// The compiled component for `wasm`: from the cache, or compiled and stored.
    pub fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
        hash: &str,
    ) -> Result<(Component, Compiled), RuntimeError> {
        let path = self.dir.join(format!("{hash}-{}.cwasm", self.engine_key));
        match read_checked(&path) {
            // SAFETY: the bytes are what `Component::serialize` of this
            // engine configuration (the file name says so) gave this cache,
            // whole: their checksum matches.
            Ok(Some(code)) => match unsafe { Component::deserialize(engine, &code) } {
                Ok(component) => return Ok((component, Compiled::Cached)),
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "cached component unusable; compiling again")
                }
            },
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "cached component torn or unreadable; compiling again")
            }
        }
        let started = Instant::now();
        let component =
            Component::new(engine, wasm).map_err(|e| RuntimeError::Invalid(format!("{e:#}")))?;
        let elapsed = started.elapsed();
        match component.serialize() {
            Ok(mut code) => {
                code.extend_from_slice(&crc32fast::hash(&code).to_le_bytes());
                if let Err(error) = durable::write_file(&path, &code) {
                    tracing::warn!(%error, "cannot cache the compiled component");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot serialise the compiled component"),
        }
        Ok((component, Compiled::Fresh(elapsed)))
    }
}

/// The compiled code in a cache file, without its trailing CRC-32; `None`
/// when there is no such file. A file whose checksum does not match (torn
/// by a power cut, or damaged) is an error: it is never deserialised.
fn read_checked(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let Some(split) = bytes.len().checked_sub(4) else {
        return Err(std::io::Error::other("shorter than its checksum"));
    };
    let stored = u32::from_le_bytes(bytes[split..].try_into().unwrap_or_default());
    bytes.truncate(split);
    if crc32fast::hash(&bytes) != stored {
        return Err(std::io::Error::other("checksum mismatch"));
    }
    Ok(Some(bytes))
}
