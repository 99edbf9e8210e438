//! The one rule for files in the data directory: a change to a directory's
//! entries (a create, a rename, an unlink) is durable only once the
//! directory itself is fsynced, and a file's contents only once the file
//! is. Every module that creates, renames or removes something under the
//! data directory does it through these functions, so that an acknowledged
//! deploy, remove or swap survives a power cut and not only `kill -9`
//! (`docs/design.md#crash-consistency`).
//!
//! Writes that replace a file go through a temporary file beside it (ending
//! in [`TMP_SUFFIX`]), synced, then renamed over the old one: after a cut
//! the name holds either the old contents or the new, never a torn mix.
//! A temporary file left by a cut is garbage; [`remove_leftovers`] clears
//! a directory of them.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};

/// How temporary files end; nothing else in the data directory does.
pub const TMP_SUFFIX: &str = ".tmp";

/// Fsyncs the directory `dir`: the creates, renames and unlinks in it so far
/// survive a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Fsyncs the directory that holds `path` (after something created it, for
/// example a database library opening a new file).
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// Creates `dir` and any missing ancestor, each made durable in its parent.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => sync_parent(dir),
        // Created meanwhile by someone else: theirs to sync, but syncing
        // again costs little and leaves no doubt.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {
            sync_parent(dir)
        }
        Err(error) => Err(error),
    }
}

/// Replaces `path` with `contents`, atomically and durably: a temporary file
/// beside it is written and synced, renamed over it, and the directory
/// synced. After a cut, `path` holds the old contents or the new.
pub fn write_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sync_parent(path)
}

/// Renames `from` to `to`, durably: both directories are synced (the new
/// name first, so that a cut leaves the file under one name at least).
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    sync_parent(to)?;
    sync_parent(from)
}

/// Removes the file at `path`, durably. A file already gone is not an error.
pub fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Removes the directory `dir` and everything in it, durably. A directory
/// already gone is not an error.
pub fn remove_dir_all(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => sync_parent(dir),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Removes the temporary files a cut left in `dir` (see [`write_file`]).
pub fn remove_leftovers(dir: &Path) -> io::Result<()> {
    let mut removed = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let is_tmp = entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX);
        if is_tmp && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Opens (or creates) a redb database at `path`, its directory entry durable.
pub fn create_database(path: &Path) -> Result<redb::Database, redb::DatabaseError> {
    let db = redb::Database::create(path)?;
    sync_parent(path).map_err(redb::StorageError::from)?;
    Ok(db)
}

/// A redb database that can be closed and opened again: after an I/O error
/// (a full disk) redb refuses every later write until then. Plugin state
/// files and notifier mailboxes are these; the log has its own reopen, as
/// its writer replays the WAL (`log/storage.rs`).
pub struct ReopenableDb {
    /// `None` after a reopen that failed, until one succeeds.
    db: RwLock<Option<redb::Database>>,
    path: PathBuf,
}

impl ReopenableDb {
    /// Opens (or creates) the database at `path` ([`create_database`]).
    pub fn open(path: &Path) -> Result<Self, redb::DatabaseError> {
        Ok(Self {
            db: RwLock::new(Some(create_database(path)?)),
            path: path.to_path_buf(),
        })
    }

    /// The open database; `None` while a reopen has not succeeded.
    pub fn get(&self) -> Option<MappedRwLockReadGuard<'_, redb::Database>> {
        RwLockReadGuard::try_map(self.db.read(), Option::as_ref).ok()
    }

    /// Closes the file and opens it again. It then holds its last durable
    /// commit (redb rolls back commits made without durability).
    pub fn reopen(&self) -> Result<(), redb::DatabaseError> {
        let mut db = self.db.write();
        // Closed first: redb refuses a second handle on an open file.
        drop(db.take());
        *db = Some(create_database(&self.path)?);
        Ok(())
    }

    /// Closes the database until the next [`ReopenableDb::reopen`]: for a
    /// reopen that opened the file but could not read it back.
    pub fn close(&self) {
        drop(self.db.write().take());
    }

    /// Whether the database is open (not after a failed reopen).
    pub fn is_open(&self) -> bool {
        self.db.read().is_some()
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A temporary name beside `path`, unique to this call: two writers of the
/// same file never share one.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{:016x}{TMP_SUFFIX}", fastrand::u64(..)));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_file_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_file(&path, b"one").unwrap();
        write_file(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn create_dir_all_makes_every_missing_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep).unwrap();
    }

    #[test]
    fn removes_are_idempotent_and_leftovers_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("x.1234.tmp"), b"torn").unwrap();
        std::fs::write(sub.join("keep.json"), b"{}").unwrap();
        remove_leftovers(&sub).unwrap();
        let names: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["keep.json"]);
        remove_file(&sub.join("keep.json")).unwrap();
        remove_file(&sub.join("keep.json")).unwrap();
        remove_dir_all(&sub).unwrap();
        remove_dir_all(&sub).unwrap();
        assert!(!sub.exists());
    }
}
