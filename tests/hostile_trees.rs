//! Hostile repositories: trees no backup would write (entries named `..`, `a/b`, absolute
//! or empty names, duplicate names hiding a symlink), files with impossible sizes, and
//! symlinks left in the target by an earlier restore. Each is refused with a clear error,
//! and nothing is written outside the target.

mod util;

use hostagent::Kind;
use hostagent::repo::{NodeKind, Repository, Snapshot, Tree};
use hostagent::restore::{self, RestoreReport};
use std::fs;
use std::path::{Path, PathBuf};
use util::craft;

/// A repository, an empty target and an empty directory beside it that must stay empty.
struct Setup {
    _tmp: tempfile::TempDir,
    repo: Repository,
    target: PathBuf,
    outside: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = util::tempdir();
        let repo = util::init_repo(&tmp.path().join("repo"));
        let target = tmp.path().join("box/target");
        let outside = tmp.path().join("box/outside");
        fs::create_dir_all(&target).unwrap();
        fs::create_dir_all(&outside).unwrap();
        Setup {
            _tmp: tmp,
            repo,
            target,
            outside,
        }
    }

    fn snapshot_of(&mut self, nodes: Vec<hostagent::repo::Node>) -> Snapshot {
        let root = craft::write_tree(&self.repo, &Tree { nodes });
        craft::write_snapshot(&self.repo, root, &["/"])
    }

    fn restore(&self, snap: &Snapshot) -> hostagent::Result<RestoreReport> {
        restore::restore(
            &self.repo,
            snap,
            &util::restore_options(&self.target, &[], false),
        )
    }

    /// Nothing appeared beside the target or in the directory a symlink pointed to.
    fn assert_nothing_outside(&self) {
        let beside: Vec<_> = fs::read_dir(self.target.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(beside.len(), 2, "{beside:?}");
        assert!(
            util::compare::relative_paths(&self.outside).is_empty(),
            "written outside the target: {:?}",
            util::compare::relative_paths(&self.outside)
        );
        assert!(!Path::new("/hostagent-test-absolute").exists());
    }
}

fn bad_names() -> Vec<&'static [u8]> {
    vec![
        b"..",
        b".",
        b"",
        b"a/b",
        b"../outside/escaped",
        b"/hostagent-test-absolute",
        b"nul\0byte",
    ]
}

#[test]
fn entries_that_are_not_single_names_are_refused_at_the_root() {
    for name in bad_names() {
        let mut s = Setup::new();
        let file = craft::file_node(&s.repo, name, b"escaped!");
        let snap = s.snapshot_of(vec![file]);
        let err = s.restore(&snap).unwrap_err();
        assert_eq!(err.kind(), Kind::Hostile, "{name:?}: {err}");
        assert!(
            err.message()
                .contains("names must be single path components"),
            "{err}"
        );
        assert!(util::compare::relative_paths(&s.target).is_empty());
        s.assert_nothing_outside();
    }
}

#[test]
fn entries_that_are_not_single_names_are_refused_below_the_root() {
    for name in bad_names() {
        let mut s = Setup::new();
        let bad = craft::file_node(&s.repo, name, b"escaped!");
        let dir = craft::dir_node(&s.repo, b"dir", vec![bad]);
        let good = craft::file_node(&s.repo, b"good", b"kept");
        let snap = s.snapshot_of(vec![dir, good]);
        let report = s.restore(&snap).unwrap();
        assert_eq!(report.error_count, 1, "{:?}", report.errors);
        assert_eq!(report.errors[0].path, "/dir");
        assert!(
            report.errors[0].error.contains("refusing an entry named"),
            "{:?}",
            report.errors
        );
        assert_eq!(fs::read(s.target.join("good")).unwrap(), b"kept");
        assert!(util::compare::relative_paths(&s.target.join("dir")).is_empty());
        s.assert_nothing_outside();
    }
}

/// A symlink `x` to a directory outside, then a directory `x` whose file would be written
/// through the symlink if the second entry were trusted.
#[test]
fn duplicate_names_are_refused() {
    let mut s = Setup::new();
    let link = craft::symlink_node(b"x", s.outside.as_os_str().as_encoded_bytes());
    let f = craft::file_node(&s.repo, b"f", b"through the symlink");
    let dir = craft::dir_node(&s.repo, b"x", vec![f]);
    let snap = s.snapshot_of(vec![link, dir]);
    let err = s.restore(&snap).unwrap_err();
    assert_eq!(err.kind(), Kind::Hostile, "{err}");
    assert!(
        err.message().contains("duplicated or out of order"),
        "{err}"
    );
    s.assert_nothing_outside();

    // Out of order is refused the same way: lookups by binary search would miss entries.
    let mut s = Setup::new();
    let a = craft::file_node(&s.repo, b"b", b"1");
    let b = craft::file_node(&s.repo, b"a", b"2");
    let snap = s.snapshot_of(vec![a, b]);
    let err = s.restore(&snap).unwrap_err();
    assert!(
        err.message().contains("duplicated or out of order"),
        "{err}"
    );
}

/// A symlink restored earlier stands where a later snapshot has a directory: the directory
/// replaces it, and the file goes into the target, not through the link.
#[test]
fn symlink_left_in_the_target_is_not_followed() {
    let mut s = Setup::new();
    let link = craft::symlink_node(b"x", s.outside.as_os_str().as_encoded_bytes());
    let first = s.snapshot_of(vec![link]);
    assert_eq!(s.restore(&first).unwrap().error_count, 0);
    assert_eq!(fs::read_link(s.target.join("x")).unwrap(), s.outside);

    let f = craft::file_node(&s.repo, b"f", b"inside the target");
    let dir = craft::dir_node(&s.repo, b"x", vec![f]);
    let second = s.snapshot_of(vec![dir]);
    let report = s.restore(&second).unwrap();
    assert_eq!(report.error_count, 0, "{:?}", report.errors);
    assert!(fs::symlink_metadata(s.target.join("x")).unwrap().is_dir());
    assert_eq!(
        fs::read(s.target.join("x/f")).unwrap(),
        b"inside the target"
    );
    s.assert_nothing_outside();
}

/// A file whose recorded size no file system can hold: an error for that file, and no
/// temporary file left behind.
#[test]
fn impossible_file_size_leaves_nothing_behind() {
    let mut s = Setup::new();
    let mut huge = craft::file_node(&s.repo, b"huge", b"data");
    huge.size = 1 << 62;
    let good = craft::file_node(&s.repo, b"ok", b"fine");
    let snap = s.snapshot_of(vec![huge, good]);
    let report = s.restore(&snap).unwrap();
    assert_eq!(report.error_count, 1, "{:?}", report.errors);
    assert_eq!(report.errors[0].path, "/huge");
    assert!(
        report.errors[0].error.contains("cannot size the file"),
        "{:?}",
        report.errors
    );
    assert_eq!(
        util::compare::relative_paths(&s.target),
        [PathBuf::from("ok")]
    );
    s.assert_nothing_outside();
}

/// Symlink targets are data, never followed while restoring: an absolute target pointing
/// at a real file stays a symlink, and the file it names is untouched.
#[test]
fn symlink_targets_are_restored_verbatim() {
    let mut s = Setup::new();
    let victim = s.outside.join("victim");
    fs::write(&victim, b"untouched").unwrap();
    let link = craft::symlink_node(b"link", victim.as_os_str().as_encoded_bytes());
    let snap = s.snapshot_of(vec![link]);
    assert_eq!(s.restore(&snap).unwrap().error_count, 0);
    assert_eq!(fs::read_link(s.target.join("link")).unwrap(), victim);
    assert_eq!(fs::read(&victim).unwrap(), b"untouched");
    let node = &util::snapshot_nodes(&s.repo, &snap.tree)[0].1;
    assert!(matches!(node.kind, NodeKind::Symlink { .. }));
}
