//! Change hints: a backup that skips listing unchanged directories (on the word of a
//! file-system watch) must store exactly the snapshot a full comparison stores.

use hostagent::backup::{self, BackupOptions, ChangeHints, ParentChoice};
use hostagent::repo::{Id, InitOptions, KdfParams, Repository};
use hostagent::store::MemoryStore;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn repo() -> Repository {
    Repository::init(
        Arc::new(MemoryStore::new()),
        b"pw",
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            ..Default::default()
        },
    )
    .unwrap()
}

/// The stored tree of `dir` in a snapshot. (The root tree also holds the directories leading
/// to `dir`, whose metadata changes as other programs use /tmp.)
fn subtree(repo: &Repository, report: &backup::BackupReport, dir: &Path) -> Id {
    let mut id = report.snapshot.tree;
    for c in dir.components().skip(1) {
        let tree = repo.read_tree(&id).unwrap();
        id = tree
            .get(c.as_os_str().as_encoded_bytes())
            .and_then(|n| n.subtree())
            .unwrap();
    }
    id
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

fn run(
    repo: &mut Repository,
    root: &Path,
    parent: ParentChoice,
    hints: Option<ChangeHints>,
) -> backup::BackupReport {
    // Each backup sees what the previous ones stored, as a freshly opened repository would.
    repo.reload_index().unwrap();
    let mut opts = BackupOptions::new(vec![root.to_path_buf()]);
    opts.threads = 2;
    opts.parent = parent;
    opts.hints = hints;
    backup::backup(repo, &opts).unwrap()
}

#[test]
fn hinted_and_full_backups_store_identical_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    write(&root.join("a/b/c/file1"), b"first version");
    write(&root.join("x/file2"), &[5u8; 100_000]);
    write(&root.join("y/z/file3"), b"three");
    std::os::unix::fs::symlink("file3", root.join("y/z/link")).unwrap();
    let mut repo = repo();
    let first = run(&mut repo, &root, ParentChoice::None, None);

    // Changes: a file rewritten deep down, a file added; x/ and y/z/ untouched.
    write(&root.join("a/b/c/file1"), b"second version, longer");
    write(&root.join("y/new"), b"new file");
    let changed: BTreeSet<PathBuf> = [
        root.join("a/b/c"),
        root.join("a/b/c/file1"),
        root.join("y"),
        root.join("y/new"),
    ]
    .into();
    let hinted = run(
        &mut repo,
        &root,
        ParentChoice::None,
        Some(ChangeHints {
            parent: first.id,
            changed,
        }),
    );
    let full = run(&mut repo, &root, ParentChoice::None, None);
    repo.reload_index().unwrap();
    assert_eq!(subtree(&repo, &hinted, &root), subtree(&repo, &full, &root));
    assert_ne!(
        subtree(&repo, &hinted, &root),
        subtree(&repo, &first, &root)
    );
    assert_eq!(hinted.snapshot.parent, Some(first.id));
    // x/ and y/z/ were kept without being listed; the full run listed everything.
    assert_eq!(hinted.dirs_reused, 2);
    assert_eq!(full.dirs_reused, 0);
    let (h, f) = (&hinted.snapshot.stats, &full.snapshot.stats);
    assert_eq!(
        (h.files, h.dirs, h.symlinks, h.total_bytes),
        (f.files, f.dirs, f.symlinks, f.total_bytes)
    );
    assert_eq!(h.files_changed + h.files_new, 2);
}

#[test]
fn hints_are_trusted_so_a_missed_change_is_missed() {
    // The reuse is real: a change the hints do not mention is not seen. This is why the
    // daemon gives no hints after a watch overflow, an error or a restart.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    write(&root.join("x/file"), b"before");
    let mut repo = repo();
    let first = run(&mut repo, &root, ParentChoice::None, None);
    write(&root.join("x/file"), b"after, and longer");
    let lied = run(
        &mut repo,
        &root,
        ParentChoice::None,
        Some(ChangeHints {
            parent: first.id,
            changed: BTreeSet::new(),
        }),
    );
    let full = run(&mut repo, &root, ParentChoice::None, None);
    repo.reload_index().unwrap();
    assert_eq!(subtree(&repo, &lied, &root), subtree(&repo, &first, &root));
    assert_ne!(subtree(&repo, &full, &root), subtree(&repo, &first, &root));
}

#[test]
fn touches_matches_the_directory_and_below_only() {
    let h = ChangeHints {
        parent: Id([0; 32]),
        changed: [PathBuf::from("/d/a/b/c")].into(),
    };
    assert!(h.touches(Path::new("/d/a")));
    assert!(h.touches(Path::new("/d/a/b/c")));
    assert!(!h.touches(Path::new("/d/a/b/c/e")));
    assert!(!h.touches(Path::new("/d/a0")));
    assert!(!h.touches(Path::new("/d/b")));
}
