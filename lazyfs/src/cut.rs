//! The power cut: what becomes of the changes that were never made durable.
//!
//! After a cut every inode's durable state is what it has: the filesystem
//! is as a machine would find it on reboot. Inodes that no directory entry
//! reaches any more are gone.

use std::collections::HashSet;
use std::fmt;

use fastrand::Rng;

use crate::model::{Body, DataChange, FileData, Ino, Model, Node, ROOT};

/// The granularity at which [`CutMode::Torn`] keeps or drops writes.
pub const PAGE_SIZE: u64 = 4096;

/// How a power cut treats what was not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// Every unsynced change is lost: files go back to what their last
    /// fsync made durable, directories to the entries their last fsync
    /// made durable.
    Clean,
    /// Torn and reordered writes, as a disk with a volatile cache might
    /// leave them. For each file with unsynced writes, one of: all of them
    /// lost, all of them kept, or each 4 KiB page of each write (and each
    /// size change) kept or lost at random, independently of the others,
    /// so a later write may survive where an earlier one did not. Unsynced
    /// directory changes are kept up to a random point in the order they
    /// were made, as a metadata journal commits them. The same seed on the
    /// same history gives the same result.
    Torn {
        /// Seeds the random choices.
        seed: u64,
    },
    /// Nothing is lost: a process crash (`kill -9`) rather than a power
    /// cut, where the kernel still writes its page cache out. A control.
    KeepAll,
}

/// What a cut kept and lost, for a test's log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CutReport {
    /// Files that had unsynced changes to their data.
    pub files_with_unsynced_data: usize,
    /// Pages of unsynced writes (and unsynced size changes) kept.
    pub pages_kept: usize,
    /// Pages of unsynced writes (and unsynced size changes) lost.
    pub pages_lost: usize,
    /// Unsynced directory changes kept.
    pub names_kept: usize,
    /// Unsynced directory changes lost.
    pub names_lost: usize,
    /// Files and directories that no entry reaches any more, now gone.
    pub inodes_lost: usize,
}

impl fmt::Display for CutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} files with unsynced data ({} pages kept, {} lost), \
             directory changes {} kept and {} lost, {} inodes gone",
            self.files_with_unsynced_data,
            self.pages_kept,
            self.pages_lost,
            self.names_kept,
            self.names_lost,
            self.inodes_lost
        )
    }
}

/// What a torn cut keeps of one file's unsynced changes.
enum Keep {
    Nothing,
    Everything,
    SomePages,
}

impl Model {
    /// Cuts the power: every change not made durable is lost, or kept in
    /// part as `mode` says, and the result is what is durable now.
    pub fn cut(&mut self, mode: CutMode) -> CutReport {
        let mut rng = Rng::with_seed(match mode {
            CutMode::Torn { seed } => seed,
            CutMode::Clean | CutMode::KeepAll => 0,
        });
        let mut report = CutReport::default();
        self.cut_names(mode, &mut rng, &mut report);
        report.inodes_lost = self.drop_unreachable();
        let mut inos: Vec<Ino> = self.nodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            if let Some(Node {
                body: Body::File(file),
                ..
            }) = self.nodes.get_mut(&ino)
            {
                cut_file(file, mode, &mut rng, &mut report);
            }
        }
        report
    }

    fn cut_names(&mut self, mode: CutMode, rng: &mut Rng, report: &mut CutReport) {
        let changes = std::mem::take(&mut self.pending_names);
        let kept = match mode {
            CutMode::Clean => 0,
            CutMode::KeepAll => changes.len(),
            CutMode::Torn { .. } => rng.usize(0..=changes.len()),
        };
        report.names_kept = kept;
        report.names_lost = changes.len() - kept;
        for change in &changes[..kept] {
            change.apply_durably(&mut self.nodes);
        }
        for node in self.nodes.values_mut() {
            if let Body::Dir(dir) = &mut node.body {
                dir.current = dir.durable.clone();
            }
        }
    }

    /// Removes the inodes no entry reaches from the root, and sets each
    /// directory's parent to the one that reaches it; how many went.
    fn drop_unreachable(&mut self) -> usize {
        let mut reachable = HashSet::from([ROOT]);
        let mut stack = vec![ROOT];
        let mut parents = Vec::new();
        while let Some(ino) = stack.pop() {
            let Ok(dir) = self.dir(ino) else { continue };
            for &child in dir.current.values() {
                if reachable.insert(child) && self.dir(child).is_ok() {
                    stack.push(child);
                    parents.push((child, ino));
                }
            }
        }
        let before = self.nodes.len();
        self.nodes.retain(|ino, _| reachable.contains(ino));
        for (child, parent) in parents {
            if let Ok(dir) = self.dir_mut(child) {
                dir.parent = parent;
            }
        }
        before - self.nodes.len()
    }
}

fn cut_file(file: &mut FileData, mode: CutMode, rng: &mut Rng, report: &mut CutReport) {
    if file.pending.is_empty() {
        return;
    }
    report.files_with_unsynced_data += 1;
    let keep = match mode {
        CutMode::Clean => Keep::Nothing,
        CutMode::KeepAll => Keep::Everything,
        CutMode::Torn { .. } => match rng.u8(0..4) {
            0 => Keep::Nothing,
            1 => Keep::Everything,
            _ => Keep::SomePages,
        },
    };
    for change in std::mem::take(&mut file.pending) {
        for piece in pages(change) {
            let kept = match keep {
                Keep::Nothing => false,
                Keep::Everything => true,
                Keep::SomePages => rng.bool(),
            };
            if kept {
                piece.apply(&mut file.durable);
                report.pages_kept += 1;
            } else {
                report.pages_lost += 1;
            }
        }
    }
    file.current = file.durable.clone();
}

/// A change cut at page boundaries: a write becomes one piece per page it
/// touches; a size change stays whole.
fn pages(change: DataChange) -> Vec<DataChange> {
    let DataChange::Write { offset, data } = change else {
        return vec![change];
    };
    let mut pieces = Vec::new();
    let mut done = 0;
    while done < data.len() {
        let at = offset + done as u64;
        let room = (PAGE_SIZE - at % PAGE_SIZE) as usize;
        let end = data.len().min(done + room);
        pieces.push(DataChange::Write {
            offset: at,
            data: data[done..end].to_vec(),
        });
        done = end;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;
    use crate::model::Kind;

    #[test]
    fn writes_are_cut_at_page_boundaries() {
        let pieces = pages(DataChange::Write {
            offset: 4000,
            data: vec![1; 5000],
        });
        let spans: Vec<(u64, usize)> = pieces
            .iter()
            .map(|p| match p {
                DataChange::Write { offset, data } => (*offset, data.len()),
                DataChange::SetLen(_) => (0, 0),
            })
            .collect();
        assert_eq!(spans, [(4000, 96), (4096, 4096), (8192, 808)]);
    }

    fn file_with_unsynced_pages(model: &mut Model, name: &str) -> Ino {
        let ino = model
            .create(1, OsStr::new(name), Kind::File, (0o644, 0, 0))
            .unwrap()
            .ino;
        model.sync(1).unwrap();
        model.write(ino, 0, &[1; 4096]).unwrap();
        model.sync(ino).unwrap();
        for page in 0..64u64 {
            model.write(ino, page * 4096, &[2; 4096]).unwrap();
        }
        ino
    }

    #[test]
    fn a_torn_cut_is_reproducible_from_its_seed() {
        let contents = |seed| {
            let mut model = Model::new();
            let ino = file_with_unsynced_pages(&mut model, "f");
            model.cut(CutMode::Torn { seed });
            model.read(ino, 0, 1 << 20).unwrap()
        };
        assert_eq!(contents(7), contents(7));
        let distinct: HashSet<Vec<u8>> = (0..8).map(contents).collect();
        assert!(distinct.len() > 2, "seeds make different cuts");
    }

    #[test]
    fn keep_all_keeps_everything_and_clean_nothing() {
        let mut model = Model::new();
        let ino = file_with_unsynced_pages(&mut model, "f");
        let before = model.read(ino, 0, 1 << 20).unwrap();
        let report = model.cut(CutMode::KeepAll);
        assert_eq!(model.read(ino, 0, 1 << 20).unwrap(), before);
        assert_eq!(report.pages_lost, 0);
        let ino = file_with_unsynced_pages(&mut model, "g");
        model.cut(CutMode::Clean);
        assert_eq!(model.read(ino, 0, 1 << 20).unwrap(), vec![1; 4096]);
    }

    #[test]
    fn a_rename_into_another_directory_takes_earlier_changes_with_it() {
        let mut model = Model::new();
        let a = model.create(1, OsStr::new("a"), Kind::Dir, (0o755, 0, 0));
        let b = model.create(1, OsStr::new("b"), Kind::Dir, (0o755, 0, 0));
        let (a, b) = (a.unwrap().ino, b.unwrap().ino);
        model.sync(1).unwrap();
        model
            .create(a, OsStr::new("x"), Kind::File, (0o644, 0, 0))
            .unwrap();
        model
            .rename((a, OsStr::new("x")), (b, OsStr::new("y")), false)
            .unwrap();
        model.sync(b).unwrap();
        model.cut(CutMode::Clean);
        assert!(model.lookup(b, OsStr::new("y")).is_ok());
        assert_eq!(
            model.lookup(a, OsStr::new("x")).err(),
            Some(crate::model::FsError::NotFound)
        );
    }
}
