//! The filesystem's state, in memory: every inode with its current and its
//! durable contents. Reads see the current contents; a power cut
//! (`cut.rs`) sets every inode back to its durable contents, give or take
//! what the cut's mode keeps.
//!
//! This module owns inodes, their attributes and file data; directory
//! entries and the changes to them are in `namespace.rs`. It knows nothing
//! of FUSE (`fuse.rs` translates).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::time::SystemTime;

use crate::namespace::NameChange;

/// An inode number; the root directory's is [`ROOT`].
pub type Ino = u64;

/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: Ino = 1;

/// The largest file this filesystem holds (it is all in memory).
pub const MAX_FILE_SIZE: u64 = 4 << 30;

/// Why an operation failed; `fuse.rs` turns each into an errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsError {
    /// No such inode or name (`ENOENT`).
    NotFound,
    /// The name is taken (`EEXIST`).
    Exists,
    /// A directory was expected (`ENOTDIR`).
    NotDir,
    /// A file was expected (`EISDIR`).
    IsDir,
    /// The directory has entries (`ENOTEMPTY`).
    NotEmpty,
    /// Beyond [`MAX_FILE_SIZE`] (`EFBIG`).
    TooBig,
}

/// The two kinds of inode this filesystem has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// What `stat` shows of an inode.
#[derive(Debug, Clone)]
pub struct Attr {
    /// Its inode number.
    pub ino: Ino,
    /// File or directory.
    pub kind: Kind,
    /// Bytes of a file's current contents; 4096 for a directory.
    pub size: u64,
    /// Permission bits (`0o7777` at most).
    pub perm: u16,
    /// 1 for a file, 2 plus its subdirectories for a directory.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access.
    pub atime: SystemTime,
    /// Last change of the contents.
    pub mtime: SystemTime,
    /// Last change of the contents or the attributes.
    pub ctime: SystemTime,
}

/// What `setattr` asks to change; `None` leaves it as it is.
#[derive(Debug, Default)]
pub struct SetAttr {
    /// Truncate or extend with zeros (files only).
    pub size: Option<u64>,
    /// New permission bits.
    pub perm: Option<u16>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New access time.
    pub atime: Option<SystemTime>,
    /// New modification time.
    pub mtime: Option<SystemTime>,
}

/// Figures for `statfs`.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Bytes held by files' current contents.
    pub bytes: u64,
    /// Inodes in use.
    pub inodes: u64,
}

/// An inode's attributes but its size. A cut leaves them as they are:
/// crash tests are about contents and names, not modes and times.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

impl Meta {
    pub fn new(perm: u16, uid: u32, gid: u32) -> Meta {
        let now = SystemTime::now();
        Meta {
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
        }
    }

    /// The contents changed.
    pub fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

/// One inode.
pub(crate) struct Node {
    pub meta: Meta,
    pub body: Body,
}

/// A file's data or a directory's entries.
pub(crate) enum Body {
    File(FileData),
    Dir(DirData),
}

/// A regular file: what reads see, what survives a cut, and the changes
/// in between. `durable` with every change of `pending` applied, in order,
/// is `current`.
#[derive(Default)]
pub(crate) struct FileData {
    pub current: Vec<u8>,
    pub durable: Vec<u8>,
    pub pending: Vec<DataChange>,
}

/// One change to a file's data since its last fsync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DataChange {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

impl DataChange {
    /// Applies the change to `contents`.
    pub fn apply(&self, contents: &mut Vec<u8>) {
        match self {
            DataChange::Write { offset, data } => write_at(contents, *offset, data),
            DataChange::SetLen(len) => contents.resize(to_usize(*len), 0),
        }
    }
}

/// Writes `data` at `offset`, filling any gap before it with zeros.
pub(crate) fn write_at(contents: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = to_usize(offset);
    let end = start + data.len();
    if contents.len() < end {
        contents.resize(end, 0);
    }
    contents[start..end].copy_from_slice(data);
}

/// Offsets are checked against [`MAX_FILE_SIZE`] before they get here.
fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A directory: its entries as they are, and as its last fsync left them.
pub(crate) struct DirData {
    pub current: BTreeMap<OsString, Ino>,
    pub durable: BTreeMap<OsString, Ino>,
    /// The directory that holds it (itself for the root).
    pub parent: Ino,
}

impl DirData {
    pub fn new(parent: Ino) -> DirData {
        DirData {
            current: BTreeMap::new(),
            durable: BTreeMap::new(),
            parent,
        }
    }
}

/// The whole filesystem.
pub struct Model {
    pub(crate) nodes: HashMap<Ino, Node>,
    pub(crate) next_ino: Ino,
    /// Changes to directory entries not yet durable, in the order they were
    /// made (the order a journal would commit them in).
    pub(crate) pending_names: Vec<NameChange>,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    /// An empty filesystem: the root directory, durable, and nothing in it.
    pub fn new() -> Model {
        let root = Node {
            meta: Meta::new(0o755, 0, 0),
            body: Body::Dir(DirData::new(ROOT)),
        };
        Model {
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            pending_names: Vec::new(),
        }
    }

    pub(crate) fn node(&self, ino: Ino) -> Result<&Node, FsError> {
        self.nodes.get(&ino).ok_or(FsError::NotFound)
    }

    pub(crate) fn node_mut(&mut self, ino: Ino) -> Result<&mut Node, FsError> {
        self.nodes.get_mut(&ino).ok_or(FsError::NotFound)
    }

    pub(crate) fn dir(&self, ino: Ino) -> Result<&DirData, FsError> {
        match &self.node(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            Body::File(_) => Err(FsError::NotDir),
        }
    }

    pub(crate) fn dir_mut(&mut self, ino: Ino) -> Result<&mut DirData, FsError> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            Body::File(_) => Err(FsError::NotDir),
        }
    }

    pub(crate) fn kind(&self, ino: Ino) -> Result<Kind, FsError> {
        Ok(match self.node(ino)?.body {
            Body::File(_) => Kind::File,
            Body::Dir(_) => Kind::Dir,
        })
    }

    /// The attributes of `ino`.
    pub fn attr(&self, ino: Ino) -> Result<Attr, FsError> {
        let node = self.node(ino)?;
        let (kind, size, nlink) = match &node.body {
            Body::File(file) => (Kind::File, file.current.len() as u64, 1),
            Body::Dir(dir) => {
                let subdirs = dir
                    .current
                    .values()
                    .filter(|child| self.kind(**child) == Ok(Kind::Dir))
                    .count();
                (
                    Kind::Dir,
                    4096,
                    2 + u32::try_from(subdirs).unwrap_or(u32::MAX),
                )
            }
        };
        let meta = &node.meta;
        Ok(Attr {
            ino,
            kind,
            size,
            perm: meta.perm,
            nlink,
            uid: meta.uid,
            gid: meta.gid,
            atime: meta.atime,
            mtime: meta.mtime,
            ctime: meta.ctime,
        })
    }

    /// Changes the attributes of `ino`; a new size is an unsynced change
    /// like a write.
    pub fn set_attr(&mut self, ino: Ino, set: SetAttr) -> Result<Attr, FsError> {
        let node = self.node_mut(ino)?;
        if let Some(size) = set.size {
            let Body::File(file) = &mut node.body else {
                return Err(FsError::IsDir);
            };
            if size > MAX_FILE_SIZE {
                return Err(FsError::TooBig);
            }
            let change = DataChange::SetLen(size);
            change.apply(&mut file.current);
            file.pending.push(change);
            node.meta.touch();
        }
        let meta = &mut node.meta;
        meta.perm = set.perm.unwrap_or(meta.perm);
        meta.uid = set.uid.unwrap_or(meta.uid);
        meta.gid = set.gid.unwrap_or(meta.gid);
        meta.atime = set.atime.unwrap_or(meta.atime);
        meta.mtime = set.mtime.unwrap_or(meta.mtime);
        meta.ctime = SystemTime::now();
        self.attr(ino)
    }

    /// Up to `size` bytes of the file's current contents from `offset`.
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let Body::File(file) = &self.node(ino)?.body else {
            return Err(FsError::IsDir);
        };
        let len = file.current.len();
        let start = to_usize(offset).min(len);
        let end = start.saturating_add(size as usize).min(len);
        Ok(file.current[start..end].to_vec())
    }

    /// Writes `data` at `offset`: current at once, durable at the next fsync.
    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<(), FsError> {
        if offset.saturating_add(data.len() as u64) > MAX_FILE_SIZE {
            return Err(FsError::TooBig);
        }
        let node = self.node_mut(ino)?;
        let Body::File(file) = &mut node.body else {
            return Err(FsError::IsDir);
        };
        write_at(&mut file.current, offset, data);
        file.pending.push(DataChange::Write {
            offset,
            data: data.to_vec(),
        });
        node.meta.touch();
        Ok(())
    }

    /// `fallocate` without flags: the file is at least `len` bytes long.
    pub fn allocate(&mut self, ino: Ino, len: u64) -> Result<(), FsError> {
        let Body::File(file) = &self.node(ino)?.body else {
            return Err(FsError::IsDir);
        };
        if (file.current.len() as u64) < len {
            self.set_attr(
                ino,
                SetAttr {
                    size: Some(len),
                    ..SetAttr::default()
                },
            )?;
        }
        Ok(())
    }

    /// fsync or fdatasync: a file's contents become durable (its size
    /// included); for a directory, see [`Model::sync_dir`].
    pub fn sync(&mut self, ino: Ino) -> Result<(), FsError> {
        if let Body::File(file) = &mut self.node_mut(ino)?.body {
            for change in std::mem::take(&mut file.pending) {
                change.apply(&mut file.durable);
            }
        } else {
            self.sync_dir(ino);
        }
        Ok(())
    }

    /// Space used, for `statfs`.
    pub fn usage(&self) -> Usage {
        let bytes = self
            .nodes
            .values()
            .map(|node| match &node.body {
                Body::File(file) => file.current.len() as u64,
                Body::Dir(_) => 4096,
            })
            .sum();
        Usage {
            bytes,
            inodes: self.nodes.len() as u64,
        }
    }
}
