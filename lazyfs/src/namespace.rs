//! Directory entries: lookup, create, mkdir, unlink, rmdir, rename and
//! readdir, and the rule that makes a change to them durable.
//!
//! Every change to a directory's entries is recorded as a [`NameChange`],
//! in the order it was made. An fsync of a directory makes the changes it
//! *owns* durable: the creates, unlinks and renames inside it, and the
//! renames into it (the old name goes with the new one, as one journal
//! transaction would take both). A rename from another directory also
//! makes every change made before it durable, so that the name it moves is
//! never durable in two places or in none.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};

use crate::model::{Attr, Body, DirData, FileData, FsError, Ino, Kind, Meta, Model, Node};

/// One change to directory entries that is not durable yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NameChange {
    /// `name` in `dir` now names `ino` (a create or mkdir).
    Link { dir: Ino, name: OsString, ino: Ino },
    /// `name` in `dir`, which named `ino`, is gone (unlink, rmdir).
    Unlink { dir: Ino, name: OsString, ino: Ino },
    /// A rename: `from` in `from_dir` is now `to` in `to_dir`, replacing
    /// whatever `to` named.
    Move {
        from_dir: Ino,
        from: OsString,
        to_dir: Ino,
        to: OsString,
        ino: Ino,
    },
}

impl NameChange {
    /// The directory whose fsync makes this change durable.
    fn owner(&self) -> Ino {
        match self {
            NameChange::Link { dir, .. } | NameChange::Unlink { dir, .. } => *dir,
            NameChange::Move { to_dir, .. } => *to_dir,
        }
    }

    /// A rename from one directory into another.
    fn crosses(&self) -> bool {
        matches!(self, NameChange::Move { from_dir, to_dir, .. } if from_dir != to_dir)
    }

    /// Applies the change to the durable entries of the directories it
    /// touches. A name is only removed if it still names the same inode.
    pub(crate) fn apply_durably(&self, nodes: &mut HashMap<Ino, Node>) {
        match self {
            NameChange::Link { dir, name, ino } => {
                if let Some(entries) = durable_entries(nodes, *dir) {
                    entries.insert(name.clone(), *ino);
                }
            }
            NameChange::Unlink { dir, name, ino } => remove_durably(nodes, *dir, name, *ino),
            NameChange::Move {
                from_dir,
                from,
                to_dir,
                to,
                ino,
            } => {
                remove_durably(nodes, *from_dir, from, *ino);
                if let Some(entries) = durable_entries(nodes, *to_dir) {
                    entries.insert(to.clone(), *ino);
                }
            }
        }
    }
}

fn durable_entries(
    nodes: &mut HashMap<Ino, Node>,
    dir: Ino,
) -> Option<&mut BTreeMap<OsString, Ino>> {
    match nodes.get_mut(&dir) {
        Some(Node {
            body: Body::Dir(dir),
            ..
        }) => Some(&mut dir.durable),
        _ => None,
    }
}

fn remove_durably(nodes: &mut HashMap<Ino, Node>, dir: Ino, name: &OsStr, ino: Ino) {
    if let Some(entries) = durable_entries(nodes, dir)
        && entries.get(name) == Some(&ino)
    {
        entries.remove(name);
    }
}

impl Model {
    /// The inode `name` in `parent` names.
    pub(crate) fn child(&self, parent: Ino, name: &OsStr) -> Result<Ino, FsError> {
        self.dir(parent)?
            .current
            .get(name)
            .copied()
            .ok_or(FsError::NotFound)
    }

    /// The attributes of `name` in `parent`.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Attr, FsError> {
        self.attr(self.child(parent, name)?)
    }

    /// Creates an empty file or directory `name` in `parent`.
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        meta: (u16, u32, u32),
    ) -> Result<Attr, FsError> {
        if self.dir(parent)?.current.contains_key(name) {
            return Err(FsError::Exists);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let body = match kind {
            Kind::File => Body::File(FileData::default()),
            Kind::Dir => Body::Dir(DirData::new(parent)),
        };
        let (perm, uid, gid) = meta;
        let meta = Meta::new(perm, uid, gid);
        self.nodes.insert(ino, Node { meta, body });
        self.dir_mut(parent)?.current.insert(name.to_owned(), ino);
        self.touch(parent);
        self.pending_names.push(NameChange::Link {
            dir: parent,
            name: name.to_owned(),
            ino,
        });
        self.attr(ino)
    }

    /// Removes the file `name` from `parent`.
    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> Result<(), FsError> {
        let ino = self.child(parent, name)?;
        if self.kind(ino)? == Kind::Dir {
            return Err(FsError::IsDir);
        }
        self.remove_entry(parent, name, ino)
    }

    /// Removes the empty directory `name` from `parent`.
    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Result<(), FsError> {
        let ino = self.child(parent, name)?;
        if !self.dir(ino)?.current.is_empty() {
            return Err(FsError::NotEmpty);
        }
        self.remove_entry(parent, name, ino)
    }

    fn remove_entry(&mut self, parent: Ino, name: &OsStr, ino: Ino) -> Result<(), FsError> {
        self.dir_mut(parent)?.current.remove(name);
        self.touch(parent);
        self.pending_names.push(NameChange::Unlink {
            dir: parent,
            name: name.to_owned(),
            ino,
        });
        Ok(())
    }

    /// Renames `name` in `parent` to `new_name` in `new_parent`, replacing
    /// what that names unless `no_replace` (`RENAME_NOREPLACE`).
    pub fn rename(
        &mut self,
        (parent, name): (Ino, &OsStr),
        (new_parent, new_name): (Ino, &OsStr),
        no_replace: bool,
    ) -> Result<(), FsError> {
        let ino = self.child(parent, name)?;
        if let Some(&target) = self.dir(new_parent)?.current.get(new_name) {
            if target == ino {
                return Ok(());
            }
            if no_replace {
                return Err(FsError::Exists);
            }
            self.check_replace(ino, target)?;
        }
        self.dir_mut(parent)?.current.remove(name);
        self.dir_mut(new_parent)?
            .current
            .insert(new_name.to_owned(), ino);
        if let Ok(dir) = self.dir_mut(ino) {
            dir.parent = new_parent;
        }
        self.touch(parent);
        self.touch(new_parent);
        self.pending_names.push(NameChange::Move {
            from_dir: parent,
            from: name.to_owned(),
            to_dir: new_parent,
            to: new_name.to_owned(),
            ino,
        });
        Ok(())
    }

    /// A rename may replace a file with a file, or a directory with an
    /// empty directory.
    fn check_replace(&self, ino: Ino, target: Ino) -> Result<(), FsError> {
        match (self.kind(ino)?, self.kind(target)?) {
            (Kind::Dir, Kind::File) => Err(FsError::NotDir),
            (Kind::File, Kind::Dir) => Err(FsError::IsDir),
            (Kind::Dir, Kind::Dir) if !self.dir(target)?.current.is_empty() => {
                Err(FsError::NotEmpty)
            }
            _ => Ok(()),
        }
    }

    /// The entries of directory `ino`, `.` and `..` first.
    pub fn entries(&self, ino: Ino) -> Result<Vec<(Ino, Kind, OsString)>, FsError> {
        let dir = self.dir(ino)?;
        let mut entries = vec![
            (ino, Kind::Dir, OsString::from(".")),
            (dir.parent, Kind::Dir, OsString::from("..")),
        ];
        for (name, child) in &dir.current {
            entries.push((*child, self.kind(*child)?, name.clone()));
        }
        Ok(entries)
    }

    /// fsync of directory `dir`: the changes it owns become durable, and
    /// with a rename into it from elsewhere, every change made before that.
    pub(crate) fn sync_dir(&mut self, dir: Ino) {
        let last_crossing = self
            .pending_names
            .iter()
            .rposition(|change| change.owner() == dir && change.crosses());
        for (i, change) in std::mem::take(&mut self.pending_names)
            .into_iter()
            .enumerate()
        {
            if change.owner() == dir || last_crossing.is_some_and(|last| i <= last) {
                change.apply_durably(&mut self.nodes);
            } else {
                self.pending_names.push(change);
            }
        }
    }

    fn touch(&mut self, ino: Ino) {
        if let Ok(node) = self.node_mut(ino) {
            node.meta.touch();
        }
    }
}
