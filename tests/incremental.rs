//! Incremental snapshots: an unchanged tree costs one small manifest (no pack, no index, no
//! file read), and a change costs reading only the files that changed.
//!
//! The tree lives in a directory directly under `/`: a snapshot also records the metadata
//! of the directories above its paths, and a shared directory such as /tmp changes all the
//! time (other tests, other programs), which would rightly make the next snapshot store a
//! new root tree.

mod util;

use hostagent::repo::SnapshotStatus;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use util::fixture;

/// A directory under `/`, removed on drop.
struct TopLevelDir(PathBuf);

impl TopLevelDir {
    fn new() -> TopLevelDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        TopLevelDir(PathBuf::from(format!(
            "/.hostagent-test-{}-{nanos}",
            std::process::id()
        )))
    }
}

impl Drop for TopLevelDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn unchanged_files_are_not_read_and_cost_no_pack() {
    if util::skip_unless_root("unchanged_files_are_not_read_and_cost_no_pack") {
        return;
    }
    let top = TopLevelDir::new();
    let src: &Path = &top.0;
    fixture::build(src, false);
    fs::write(src.join("two-mib.bin"), fixture::pseudo_random(9, 2 << 20)).unwrap();
    let tmp = util::tempdir();
    let repo_dir = tmp.path().join("repo");
    util::init_repo(&repo_dir);
    let (repo, counting) = util::open_counting(&repo_dir);

    let first = util::snapshot(&repo, &[src]);
    let s1 = &first.snapshot.stats;
    assert_eq!(first.snapshot.status, SnapshotStatus::Completed);
    assert_eq!(s1.files_new, s1.files);
    // Holes (about 20 MiB of the sparse files) are never read.
    assert!(s1.bytes_read < s1.total_bytes - (19 << 20), "{s1:?}");
    assert!(counting.counters().puts_under("packs") >= 2);

    counting.reset();
    let second = util::snapshot(&repo, &[src]);
    let s2 = &second.snapshot.stats;
    let c = counting.counters();
    assert_eq!(c.puts_under("packs"), 0, "{c:?}");
    assert_eq!(c.puts_under("index"), 0, "{c:?}");
    assert_eq!(c.puts_under("snapshots"), 1, "{c:?}");
    assert_eq!(s2.bytes_read, 0, "{s2:?}");
    assert_eq!(s2.files_unmodified, s2.files, "{s2:?}");
    assert_eq!((s2.files_new, s2.files_changed), (0, 0));
    assert_eq!(
        (s2.data_blobs_new, s2.tree_blobs_new, s2.bytes_stored),
        (0, 0, 0)
    );
    assert_eq!(s2.files, s1.files);
    assert_eq!(second.snapshot.tree, first.snapshot.tree);
    assert_eq!(second.snapshot.parent, Some(first.id));

    // One file grows; another is rewritten with the same size and its old mtime put back,
    // which only its ctime gives away.
    let grown = src.join("sub/notes.txt");
    let mut data = fs::read(&grown).unwrap();
    data.extend_from_slice(b"one more line\n");
    fs::write(&grown, &data).unwrap();
    let same_size = src.join("small.txt");
    let before = fs::metadata(&same_size).unwrap();
    fs::write(&same_size, b"A SMALL TEXT FILE\n").unwrap();
    fixture::set_mtime(&same_size, before.mtime(), before.mtime_nsec());
    assert_eq!(fs::metadata(&same_size).unwrap().len(), before.len());

    counting.reset();
    let third = util::snapshot(&repo, &[src]);
    let s3 = &third.snapshot.stats;
    assert_eq!(s3.files_changed, 2, "{s3:?}");
    assert_eq!(s3.files_unmodified, s3.files - 2, "{s3:?}");
    assert_eq!(s3.bytes_read, data.len() as u64 + before.len(), "{s3:?}");
    // The changed directory, the snapshot directory and the root.
    assert_eq!(s3.tree_blobs_new, 3, "{s3:?}");
    let c = counting.counters();
    assert_eq!(c.puts_under("index"), 1, "{c:?}");
    // One tree pack, and a data pack from each of the two packer threads that got one of
    // the two new chunks.
    assert_eq!(s3.data_blobs_new, 2, "{s3:?}");
    assert!((2..=3).contains(&c.puts_under("packs")), "{c:?}");
    assert_eq!(c.puts_under("packs"), s3.packs_written, "{c:?}");

    let out = tmp.path().join("out");
    let report = util::restore_to(&repo, &third.snapshot, &out);
    assert_eq!(report.error_count, 0, "{:?}", report.errors);
    util::compare::assert_same_tree(src, &util::restored(&out, src));
}

/// The incremental test compares size, mtime, ctime, inode and mode. A file replaced by a
/// copy with the same size and mtime (a new inode), and a file whose mode changed, are read
/// again, and the snapshot records their new inode and mode; untouched files are not read.
#[test]
fn a_file_replaced_by_a_copy_and_a_mode_change_are_read_again() {
    if util::skip_unless_root("a_file_replaced_by_a_copy_and_a_mode_change_are_read_again") {
        return;
    }
    let top = TopLevelDir::new();
    let src: &Path = &top.0;
    fs::create_dir(src).unwrap();
    let replaced = src.join("replaced.bin");
    let chmodded = src.join("chmodded.bin");
    fs::write(&replaced, fixture::pseudo_random(21, 1 << 20)).unwrap();
    fs::write(&chmodded, fixture::pseudo_random(22, 512 << 10)).unwrap();
    fs::write(
        src.join("untouched.bin"),
        fixture::pseudo_random(23, 256 << 10),
    )
    .unwrap();
    fixture::chmod(&chmodded, 0o644);
    let tmp = util::tempdir();
    let repo = util::init_repo(&tmp.path().join("repo"));
    let first = util::snapshot(&repo, &[src]);
    assert_eq!(first.snapshot.stats.files_new, 3);

    // Replaced by a copy: same bytes, size and mtime; only the inode (and ctime) tell.
    let before = fs::metadata(&replaced).unwrap();
    let copy = src.join(".replaced.tmp");
    fs::copy(&replaced, &copy).unwrap();
    fixture::set_mtime(&copy, before.mtime(), before.mtime_nsec());
    fs::rename(&copy, &replaced).unwrap();
    let after = fs::metadata(&replaced).unwrap();
    assert_ne!(after.ino(), before.ino());
    assert_eq!(
        (after.len(), after.mtime(), after.mtime_nsec()),
        (before.len(), before.mtime(), before.mtime_nsec())
    );
    fixture::chmod(&chmodded, 0o600);

    let second = util::snapshot(&repo, &[src]);

    let s = &second.snapshot.stats;
    assert_eq!((s.files_changed, s.files_unmodified), (2, 1), "{s:?}");
    assert_eq!(s.bytes_read, (1 << 20) + (512 << 10), "{s:?}");
    assert_eq!(s.data_blobs_new, 0, "same content, no new data: {s:?}");
    let nodes = util::snapshot_nodes(&repo, &second.snapshot.tree);
    let node = |p: &Path| {
        nodes
            .iter()
            .find(|(path, _)| path == p)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| panic!("{} not in the snapshot", p.display()))
    };
    assert_eq!(node(&replaced).inode, after.ino());
    assert_eq!(node(&chmodded).mode, 0o600);

    let out = tmp.path().join("out");
    let report = util::restore_to(&repo, &second.snapshot, &out);
    assert_eq!(report.error_count, 0, "{:?}", report.errors);
    util::compare::assert_same_tree(src, &util::restored(&out, src));
}
