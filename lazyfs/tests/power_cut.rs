//! LazyFS mounted for real (needs root and /dev/fuse): what a power cut
//! keeps and what it drops, through ordinary file system calls.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use eventfold_lazyfs::{CutMode, LazyFs, PAGE_SIZE};
use tempfile::TempDir;

fn mounted() -> (TempDir, LazyFs) {
    let dir = tempfile::tempdir().expect("temp dir");
    let fs = LazyFs::mount(dir.path()).expect("mount (needs root and /dev/fuse)");
    (dir, fs)
}

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

/// Creates `name` with `contents`, fsyncs it and its directory.
fn durable_file(dir: &Path, name: &str, contents: &[u8]) {
    let mut file = File::create(dir.join(name)).unwrap();
    file.write_all(contents).unwrap();
    file.sync_all().unwrap();
    sync_dir(dir);
}

#[test]
fn an_unsynced_write_is_lost_and_a_synced_one_kept() {
    let (_dir, mut fs) = mounted();
    let root = fs.path().to_owned();
    durable_file(&root, "synced", b"one");
    durable_file(&root, "unsynced", b"one");
    let synced = OpenOptions::new()
        .write(true)
        .open(root.join("synced"))
        .unwrap();
    synced.write_all_at(b"two", 0).unwrap();
    synced.sync_data().unwrap();
    let unsynced = OpenOptions::new()
        .write(true)
        .open(root.join("unsynced"))
        .unwrap();
    unsynced.write_all_at(b"two, and longer", 0).unwrap();
    drop((synced, unsynced));
    assert_eq!(fs::read(root.join("unsynced")).unwrap(), b"two, and longer");

    let report = fs.power_cut(CutMode::Clean).unwrap();
    assert_eq!(fs::read(root.join("synced")).unwrap(), b"two");
    assert_eq!(fs::read(root.join("unsynced")).unwrap(), b"one");
    assert_eq!(report.files_with_unsynced_data, 1, "{report}");
}

#[test]
fn a_file_synced_in_a_directory_not_synced_is_gone() {
    let (_dir, mut fs) = mounted();
    let root = fs.path().to_owned();
    fs::create_dir(root.join("kept")).unwrap();
    fs::create_dir(root.join("lost")).unwrap();
    sync_dir(&root);
    for dir in ["kept", "lost"] {
        let mut file = File::create(root.join(dir).join("f")).unwrap();
        file.write_all(b"data").unwrap();
        file.sync_all().unwrap();
    }
    sync_dir(&root.join("kept"));
    // A directory made but its parent not synced: gone with all it holds.
    fs::create_dir(root.join("new")).unwrap();
    durable_file(&root.join("new"), "f", b"data");

    fs.power_cut(CutMode::Clean).unwrap();
    assert_eq!(fs::read(root.join("kept/f")).unwrap(), b"data");
    assert!(!root.join("lost/f").exists());
    assert!(root.join("lost").is_dir());
    assert!(!root.join("new").exists());
}

#[test]
fn a_rename_without_a_directory_sync_reverts() {
    let (_dir, mut fs) = mounted();
    let root = fs.path().to_owned();
    durable_file(&root, "manifest", b"old");
    // The atomic replace, but without the final fsync of the directory.
    durable_file(&root, "manifest.tmp", b"new");
    fs::rename(root.join("manifest.tmp"), root.join("manifest")).unwrap();
    assert_eq!(fs::read(root.join("manifest")).unwrap(), b"new");

    fs.power_cut(CutMode::Clean).unwrap();
    assert_eq!(fs::read(root.join("manifest")).unwrap(), b"old");
    assert_eq!(fs::read(root.join("manifest.tmp")).unwrap(), b"new");

    // With it, the new contents stay.
    fs::rename(root.join("manifest.tmp"), root.join("manifest")).unwrap();
    sync_dir(&root);
    fs.power_cut(CutMode::Clean).unwrap();
    assert_eq!(fs::read(root.join("manifest")).unwrap(), b"new");
    assert!(!root.join("manifest.tmp").exists());
}

/// The pages of `contents`, each as the byte it is filled with (`None`
/// for a page that mixes bytes).
fn page_bytes(contents: &[u8]) -> Vec<Option<u8>> {
    contents
        .chunks(PAGE_SIZE as usize)
        .map(|page| page.iter().all(|b| *b == page[0]).then_some(page[0]))
        .collect()
}

#[test]
fn a_torn_cut_keeps_some_pages_of_unsynced_writes() {
    let (_dir, mut fs) = mounted();
    let root = fs.path().to_owned();
    let pages = 32;
    let mut torn_seen = false;
    for seed in 0..16 {
        durable_file(&root, "data", &vec![1; pages * PAGE_SIZE as usize]);
        let file = OpenOptions::new()
            .write(true)
            .open(root.join("data"))
            .unwrap();
        // One write across every page, and one more page beyond the end.
        file.write_all_at(&vec![2; (pages + 1) * PAGE_SIZE as usize], 0)
            .unwrap();
        drop(file);

        fs.power_cut(CutMode::Torn { seed }).unwrap();
        let contents = fs::read(root.join("data")).unwrap();
        let bytes = page_bytes(&contents);
        assert!(
            bytes.iter().all(|b| matches!(b, Some(1 | 2))),
            "seed {seed}: pages are whole, old or new: {bytes:?}"
        );
        let new = bytes.iter().filter(|b| **b == Some(2)).count();
        torn_seen |= new > 0 && new < bytes.len();
        fs::remove_file(root.join("data")).unwrap();
        sync_dir(&root);
    }
    assert!(torn_seen, "no seed tore the write");
}

#[test]
fn files_work_as_a_database_and_a_compiler_cache_use_them() {
    let (_dir, mut fs) = mounted();
    let root = fs.path().to_owned();
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(root.join("a/db"))
        .unwrap();
    file.set_len(3 * PAGE_SIZE).unwrap();
    file.write_all_at(b"page two", PAGE_SIZE).unwrap();
    let mut read = [0u8; 8];
    file.read_exact_at(&mut read, PAGE_SIZE).unwrap();
    assert_eq!(&read, b"page two");
    assert_eq!(file.metadata().unwrap().len(), 3 * PAGE_SIZE);
    file.set_len(PAGE_SIZE + 4).unwrap();
    assert_eq!(
        fs::read(root.join("a/db")).unwrap().len() as u64,
        PAGE_SIZE + 4
    );
    assert_eq!(
        mapped(&file, PAGE_SIZE as usize + 4)[PAGE_SIZE as usize..],
        *b"page"
    );
    drop(file);

    let mut names: Vec<String> = fs::read_dir(root.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["b", "db"]);
    assert!(fs::remove_dir(root.join("a/b")).is_err(), "not empty");
    fs::remove_dir_all(root.join("a")).unwrap();
    assert!(!root.join("a").exists());
    let free = statvfs_free_bytes(&root);
    assert!(free > 1 << 30, "statfs reports space: {free}");
    fs.power_cut(CutMode::KeepAll).unwrap();
    assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
}

/// The first `len` bytes of `file`, read through a private read-only mmap
/// (as wasmtime loads a compiled component).
fn mapped(file: &File, len: usize) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh private read-only mapping of an open file, read and
    // unmapped before the file is touched again.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(ptr, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        let bytes = std::slice::from_raw_parts(ptr as *const u8, len).to_vec();
        libc::munmap(ptr, len);
        bytes
    }
}

fn statvfs_free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `stat` is written by statvfs before it is read.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(path.as_ptr(), &mut stat), 0);
        stat.f_bavail * stat.f_frsize
    }
}
