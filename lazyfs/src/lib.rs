//! An in-memory FUSE filesystem that loses what was not synced when the
//! power is cut, in the spirit of Jepsen's LazyFS: the crash tests put a
//! data directory on it, cut the power under a running server, and check
//! that everything the server acknowledged is still there.
//!
//! ```no_run
//! use eventfold_lazyfs::{CutMode, LazyFs};
//!
//! let dir = tempfile::tempdir()?;
//! let mut fs = LazyFs::mount(dir.path())?;
//! std::fs::write(fs.path().join("unsynced"), b"lost")?;
//! fs.power_cut(CutMode::Clean)?;
//! assert!(!fs.path().join("unsynced").exists());
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # The model
//!
//! Every file has its *current* contents, which reads see, and its
//! *durable* contents. Every directory has its current entries and its
//! durable entries. What makes something durable is what POSIX promises
//! and careful applications (SQLite, redb, PostgreSQL) rely on:
//!
//! - **A file's data** (its size included) is durable once the file is
//!   fsynced (`fsync` or `fdatasync`: `File::sync_all`, `sync_data`).
//! - **A name** is durable once its directory is fsynced
//!   (`File::open(dir)?.sync_all()`): a create, mkdir, unlink, rmdir or
//!   rename inside the directory, or a rename into it (its old name goes
//!   with it, as one journal transaction). A rename from another directory
//!   also makes the directory changes made before it durable, so that no
//!   name is durable in two places, or in none.
//! - Nothing else is: not `close`, not an fsync of a file for the name that
//!   leads to it (ext4 happens to commit that too; this is stricter), not
//!   time. A file created and fsynced in a directory that is not fsynced
//!   is gone after a cut; a file whose name is durable but whose data was
//!   never fsynced comes back empty.
//! - Modes, owners and times are not part of the model: a cut leaves them
//!   as they were. Inodes no durable entry reaches are gone after a cut.
//!
//! A cut ([`LazyFs::power_cut`]) unmounts the filesystem (every process
//! that had files open on it must be gone, as after a reboot), applies the
//! [`CutMode`] to the model, and mounts it again, so that the kernel's
//! caches start empty. Everything left is then durable.
//!
//! # Layout
//!
//! - `model`: inodes, file data with its unsynced changes, fsync.
//! - `namespace`: directory entries and which fsync makes a change durable.
//! - `cut`: the power cut and its modes.
//! - `fuse`: the FUSE adapter over the model (`fuser`, mounted without
//!   libfuse: as root, `mount(2)` on `/dev/fuse`).
//!
//! Mounting needs root and `/dev/fuse`.

mod cut;
mod fuse;
mod model;
mod namespace;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption};
use parking_lot::Mutex;

pub use cut::{CutMode, CutReport, PAGE_SIZE};
pub use model::MAX_FILE_SIZE;

use model::Model;

/// How long an unmount waits for the last files on the mount to close.
const UNMOUNT_PATIENCE: Duration = Duration::from_secs(10);

/// A mounted LazyFS. Dropping it unmounts it, and its contents are gone.
pub struct LazyFs {
    model: Arc<Mutex<Model>>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl LazyFs {
    /// Mounts an empty LazyFS on `mountpoint`, an existing directory.
    pub fn mount(mountpoint: impl AsRef<Path>) -> io::Result<LazyFs> {
        let mountpoint = mountpoint.as_ref().canonicalize()?;
        let model = Arc::new(Mutex::new(Model::new()));
        let session = spawn(&model, &mountpoint)?;
        Ok(LazyFs {
            model,
            mountpoint,
            session: Some(session),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Cuts the power: unmounts (waiting up to 10 s for the files still
    /// open on the mount to close), drops what was not synced as `mode`
    /// says, and mounts again.
    pub fn power_cut(&mut self, mode: CutMode) -> io::Result<CutReport> {
        self.unmount()?;
        let report = self.model.lock().cut(mode);
        self.session = Some(spawn(&self.model, &self.mountpoint)?);
        Ok(report)
    }

    fn unmount(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        if let Err(error) = unmount(&self.mountpoint) {
            self.session = Some(session);
            return Err(error);
        }
        // The session's threads end once the kernel lets go of the mount.
        // (fuser's own unmount at the end of `join` then finds nothing to do.)
        session.join()
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

fn spawn(model: &Arc<Mutex<Model>>, mountpoint: &Path) -> io::Result<BackgroundSession> {
    let adapter = fuse::Adapter {
        model: model.clone(),
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("lazyfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    // Two threads: a slow reply (a big read) does not hold up an fsync.
    config.n_threads = Some(2);
    fuser::spawn_mount(adapter, mountpoint, &config)
}

/// `umount(2)`, retried while the mount is busy (a process that was just
/// killed may take a moment to let go of its files).
fn unmount(mountpoint: &Path) -> io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let deadline = Instant::now() + UNMOUNT_PATIENCE;
    loop {
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EBUSY) || Instant::now() > deadline {
            return Err(error);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
