//! What this node has applied of the cluster's records, in
//! `data-dir/cluster.json`: for each plugin, which incarnation (the
//! record's id) and how many of its replays and resumes. A replay asked for
//! while the node was down is then applied when it comes back, once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::records::Record;
use crate::durable;

/// What this node applied of one plugin's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub id: String,
    pub replays: u64,
    pub resumes: u64,
}

impl Applied {
    /// Everything `record` asks for, applied.
    pub fn all_of(record: &Record) -> Self {
        Self {
            id: record.id.clone(),
            replays: record.replays,
            resumes: record.resumes,
        }
    }
}

/// The file and what it holds.
pub struct AppliedFile {
    path: PathBuf,
    plugins: BTreeMap<String, Applied>,
}

impl AppliedFile {
    /// Reads `data_dir/cluster.json` (empty when missing).
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join("cluster.json");
        let plugins = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(error),
        };
        Ok(Self { path, plugins })
    }

    pub fn get(&self, name: &str) -> Option<&Applied> {
        self.plugins.get(name)
    }

    /// Records what was applied of `name`'s record (`None`: it is gone
    /// from this node), durably.
    pub fn set(&mut self, name: &str, applied: Option<Applied>) -> std::io::Result<()> {
        let changed = match applied {
            Some(applied) => self.plugins.insert(name.to_owned(), applied.clone()) != Some(applied),
            None => self.plugins.remove(name).is_some(),
        };
        if !changed {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(&self.plugins).map_err(std::io::Error::other)?;
        durable::write_file(&self.path, &bytes)
    }
}
