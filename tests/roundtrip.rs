//! Round trips: snapshot a tree of every kind of entry plus a copy of real package
//! documentation, restore it elsewhere, and check that the copy is exact (content, type,
//! mode, owner, mtime to the nanosecond, xattrs with ACLs and capabilities, symlink targets,
//! device numbers, hard links, holes). Also partial restores and restores into a target
//! that already has files.

mod util;

use hostagent::repo::SnapshotStatus;
use hostagent::restore;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use util::compare::{assert_same_tree, has_holes, relative_paths};
use util::fixture;

#[test]
fn every_kind_of_entry_survives_a_round_trip() {
    if util::skip_unless_root("every_kind_of_entry_survives_a_round_trip") {
        return;
    }
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    let docs = tmp.path().join("docs");
    let fx = fixture::build(&src, true);
    let copied = fixture::copy_real_docs(&docs, 6 << 20);
    assert!(copied > 5, "only {copied} documentation directories copied");

    let repo = util::init_repo(&tmp.path().join("repo"));
    let report = util::snapshot(&repo, &[&src, &docs]);
    let snap = &report.snapshot;
    assert_eq!(snap.status, SnapshotStatus::Completed, "{:?}", snap.errors);
    assert!(snap.errors.is_empty());
    assert_eq!(snap.stats.sockets_skipped, 1);
    assert!(snap.stats.data_blobs_new > 10, "{:?}", snap.stats);
    // The large file is half compressible, so less is stored than was read.
    assert!(
        snap.stats.bytes_stored < snap.stats.bytes_read,
        "{:?}",
        snap.stats
    );

    let out = tmp.path().join("out");
    let restored = util::restore_to(&repo, snap, &out);
    assert_eq!(restored.error_count, 0, "{:?}", restored.errors);

    let rsrc = util::restored(&out, &src);
    assert_same_tree(&src, &rsrc);
    assert_same_tree(&docs, &util::restored(&out, &docs));

    // The same facts once more through independent tools and direct checks.
    let inodes: Vec<u64> = fx
        .hardlinks
        .iter()
        .map(|p| fs::metadata(util::restored(&out, p)).unwrap().ino())
        .collect();
    assert!(inodes.iter().all(|&i| i == inodes[0]), "{inodes:?}");
    assert_eq!(
        fs::metadata(util::restored(&out, &fx.hardlinks[0]))
            .unwrap()
            .nlink(),
        3
    );

    let sparse = fs::metadata(util::restored(&out, &fx.sparse)).unwrap();
    assert_eq!(sparse.len(), fixture::SPARSE_LEN);
    assert!(has_holes(&sparse));
    assert!(
        sparse.blocks() * 512 <= 1 << 20,
        "sparse file restored with {} bytes allocated",
        sparse.blocks() * 512
    );
    let holes_only = fs::metadata(rsrc.join("holes-only.img")).unwrap();
    assert_eq!((holes_only.len(), holes_only.blocks()), (4 << 20, 0));

    // getcap prints "<path> <capabilities>"; its wording varies between libcap versions.
    let caps = |p: &Path| {
        let out = util::stdout_of("getcap", &[p.to_str().unwrap()]);
        out.trim()
            .strip_prefix(p.to_str().unwrap())
            .unwrap()
            .to_string()
    };
    let cap = caps(&util::restored(&out, &fx.capability));
    assert_eq!(cap, caps(&fx.capability));
    assert!(cap.contains("cap_net_raw"), "getcap says {cap:?}");
    for p in [&fx.acl_file, &fx.acl_dir] {
        let acl = |p: &Path| {
            // getfacl's first line names the file; the rest is the ACL.
            let s = util::stdout_of("getfacl", &["-p", p.to_str().unwrap()]);
            s.lines().skip(1).collect::<Vec<_>>().join("\n")
        };
        assert_eq!(acl(p), acl(&util::restored(&out, p)));
    }
    let acl = util::stdout_of(
        "getfacl",
        &[util::restored(&out, &fx.acl_file).to_str().unwrap()],
    );
    assert!(acl.contains("user:1234:rw-"), "{acl}");
    assert!(acl.contains("group:2345:r--"), "{acl}");

    assert_eq!(
        fs::read(util::restored(&out, &fx.non_utf8)).unwrap(),
        b"a name that is not UTF-8\n"
    );
    assert!(fs::symlink_metadata(util::restored(&out, &fx.socket)).is_err());
    assert_eq!(
        fs::read_link(rsrc.join("link-absolute")).unwrap(),
        Path::new("/etc/hostagent-test-absolute-target")
    );
    let dev = fs::symlink_metadata(rsrc.join("blockdev")).unwrap();
    assert_eq!((libc::major(dev.rdev()), libc::minor(dev.rdev())), (7, 200));
    assert_eq!(
        fs::metadata(rsrc.join("setuid")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert!(util::names_starting_with(&out, ".hostagent-restore-").is_empty());
}

#[test]
fn include_restores_only_the_chosen_paths() {
    if util::skip_unless_root("include_restores_only_the_chosen_paths") {
        return;
    }
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    fixture::build(&src, false);
    let repo = util::init_repo(&tmp.path().join("repo"));
    let snap = util::snapshot(&repo, &[&src]).snapshot;

    let out = tmp.path().join("out");
    let sub = src.join("sub/deeper");
    let one = src.join("xattrs.txt");
    let opts = util::restore_options(&out, &[sub.to_str().unwrap(), one.to_str().unwrap()], false);
    let report = restore::restore(&repo, &snap, &opts).unwrap();
    assert_eq!(report.error_count, 0, "{:?}", report.errors);

    let rsrc = util::restored(&out, &src);
    let got = relative_paths(&rsrc);
    let want: Vec<_> = [
        "sub",
        "sub/deeper",
        "sub/deeper/hardlink-c",
        "sub/deeper/random.bin",
        "xattrs.txt",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .collect();
    assert_eq!(got, want);
    // Hard links to names left out are not restored, so only link counts may differ.
    let diffs: Vec<_> = util::compare::diff_trees(&sub, &util::restored(&out, &sub))
        .into_iter()
        .filter(|d| d != "hardlink-c: link count 3 became 1")
        .collect();
    assert!(diffs.is_empty(), "{diffs:#?}");
    assert_eq!(
        fs::read(&one).unwrap(),
        fs::read(util::restored(&out, &one)).unwrap()
    );
    assert_eq!(
        xattr::get(util::restored(&out, &one), "user.plain").unwrap(),
        Some(b"a plain value".to_vec())
    );
}

/// Restoring over an older copy: unknown entries stay by default and go with `delete`;
/// entries the snapshot has are put back either way.
#[test]
fn restore_into_a_non_empty_target() {
    if util::skip_unless_root("restore_into_a_non_empty_target") {
        return;
    }
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    fixture::build(&src, false);
    let repo = util::init_repo(&tmp.path().join("repo"));
    let snap = util::snapshot(&repo, &[&src]).snapshot;

    let out = tmp.path().join("out");
    let rsrc = util::restored(&out, &src);
    fs::create_dir_all(rsrc.join("sub")).unwrap();
    fs::create_dir_all(rsrc.join("unknown-dir/inner")).unwrap();
    fs::write(rsrc.join("unknown-dir/inner/file"), b"x").unwrap();
    fs::write(rsrc.join("unknown-file"), b"not in the snapshot").unwrap();
    fs::write(rsrc.join("sub/unknown-in-sub"), b"not in the snapshot").unwrap();
    fs::write(
        rsrc.join("small.txt"),
        b"an older version, longer than the snapshot's",
    )
    .unwrap();
    // A symlink where the snapshot has a directory, pointing outside the target.
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, rsrc.join("sticky-dir")).unwrap();

    let report = util::restore_to(&repo, &snap, &out);
    assert_eq!(report.error_count, 0, "{:?}", report.errors);
    assert_eq!(
        fs::read(rsrc.join("small.txt")).unwrap(),
        b"a small text file\n"
    );
    assert!(rsrc.join("unknown-file").exists());
    assert!(rsrc.join("sub/unknown-in-sub").exists());
    assert!(rsrc.join("unknown-dir/inner/file").exists());
    assert!(
        fs::symlink_metadata(rsrc.join("sticky-dir"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote through a symlink"
    );

    let opts = util::restore_options(&out, &[], true);
    let report = restore::restore(&repo, &snap, &opts).unwrap();
    assert_eq!(report.error_count, 0, "{:?}", report.errors);
    assert_eq!(report.deleted, 3);
    assert_same_tree(&src, &rsrc);
}

/// `delete` mirrors the snapshot's paths, and only them: what sits beside them in the
/// target was never part of the snapshot. (Restoring a snapshot of /var/onprem to `/`
/// with `delete` must not empty `/`.)
#[test]
fn delete_leaves_entries_beside_the_snapshot_paths_alone() {
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("kept"), b"in the snapshot").unwrap();
    let repo = util::init_repo(&tmp.path().join("repo"));
    let snap = util::snapshot(&repo, &[&src]).snapshot;

    let out = tmp.path().join("out");
    let rsrc = util::restored(&out, &src);
    fs::create_dir_all(&rsrc).unwrap();
    fs::write(rsrc.join("extra"), b"inside the snapshot path: goes").unwrap();
    fs::write(
        out.join("beside-at-top"),
        b"not below a snapshot path: stays",
    )
    .unwrap();
    let sibling = rsrc.parent().unwrap().join("sibling");
    fs::write(&sibling, b"beside the snapshot path: stays").unwrap();

    let opts = util::restore_options(&out, &[], true);
    let report = restore::restore(&repo, &snap, &opts).unwrap();
    assert_eq!(report.error_count, 0, "{:?}", report.errors);
    assert!(!rsrc.join("extra").exists());
    assert_eq!(fs::read(rsrc.join("kept")).unwrap(), b"in the snapshot");
    assert!(
        out.join("beside-at-top").exists(),
        "deleted outside the snapshot's paths"
    );
    assert!(sibling.exists(), "deleted outside the snapshot's paths");
    assert_eq!(report.deleted, 1);
}

/// The comparison the round trips rely on notices each kind of difference (so a passing
/// round trip means something): checked on a `cp -a` copy, changed one way at a time.
#[test]
fn tree_comparison_notices_every_kind_of_difference() {
    if util::skip_unless_root("tree_comparison_notices_every_kind_of_difference") {
        return;
    }
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    fixture::build(&src, false);
    type Change = fn(&Path);
    let changes: [(&str, Change); 12] = [
        ("mode", |c| fixture::chmod(&c.join("small.txt"), 0o600)),
        ("owner", |c| fixture::lchown(&c.join("link-relative"), 1, 1)),
        ("mtime", |c| {
            fixture::set_mtime(&c.join("sub"), 1_600_000_000, 1)
        }),
        ("xattrs", |c| {
            fixture::set_xattr(&c.join("xattrs.txt"), "user.plain", b"other")
        }),
        ("content differs", |c| {
            fs::OpenOptions::new()
                .write(true)
                .open(c.join("sub/deeper/random.bin"))
                .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"x", 5))
                .unwrap()
        }),
        ("size", |c| {
            fs::write(c.join("empty"), b"no longer empty").unwrap()
        }),
        ("symlink target", |c| {
            fs::remove_file(c.join("link-dangling")).unwrap();
            std::os::unix::fs::symlink("elsewhere", c.join("link-dangling")).unwrap();
        }),
        ("hard-link identity", |c| {
            let p = c.join("sub/hardlink-b");
            let data = fs::read(&p).unwrap();
            fs::remove_file(&p).unwrap();
            fs::write(&p, data).unwrap();
        }),
        ("holes were filled", |c| {
            let p = c.join("sparse.img");
            fs::write(&p, fs::read(&p).unwrap()).unwrap();
        }),
        ("device", |c| {
            fs::remove_file(c.join("chardev")).unwrap();
            fixture::mknod(&c.join("chardev"), 'c', 1, 5, 0o666);
        }),
        ("extra entry", |c| {
            fs::write(c.join("sub/new"), b"").unwrap()
        }),
        ("missing in the restore", |c| {
            fs::remove_file(c.join("fifo")).unwrap()
        }),
    ];
    for (i, (what, change)) in changes.iter().enumerate() {
        let copy = tmp.path().join(format!("copy{i}"));
        util::run("cp", &["-a", src.to_str().unwrap(), copy.to_str().unwrap()]);
        // A restore skips sockets; cp -a copies them.
        fs::remove_file(copy.join("socket")).unwrap();
        let m = fs::metadata(&src).unwrap();
        fixture::set_mtime(&copy, m.mtime(), m.mtime_nsec());
        assert_same_tree(&src, &copy);
        change(&copy);
        let diffs = util::compare::diff_trees(&src, &copy);
        assert!(
            diffs.iter().any(|d| d.contains(what)),
            "changing the {what} went unnoticed: {diffs:?}"
        );
    }
}

/// Backup and restore recurse once per directory level; a deep tree must not overflow the
/// stack of the thread that calls them (a few hundred levels used to abort the process on
/// a 2 MiB thread in a debug build). Called here from threads with a tiny stack.
#[test]
fn deep_trees_do_not_depend_on_the_callers_stack() {
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    let mut deepest = src.clone();
    for _ in 0..400 {
        deepest.push("d");
    }
    fs::create_dir_all(&deepest).unwrap();
    fs::write(deepest.join("leaf"), b"at the bottom").unwrap();
    fixture::stamp_mtimes(&src, 1_650_000_000);
    let repo = util::init_repo(&tmp.path().join("repo"));
    let on_small_stack = |f: &(dyn Fn() + Sync)| {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(128 << 10)
                .spawn_scoped(s, f)
                .unwrap()
                .join()
                .unwrap()
        })
    };
    let report = std::sync::Mutex::new(None);
    on_small_stack(&|| {
        let opts = util::backup_options(&[&src]);
        *report.lock().unwrap() = Some(hostagent::backup::backup(&repo, &opts).unwrap());
    });
    let snap = report.into_inner().unwrap().unwrap().snapshot;
    // 400 levels, `src`, and the two directories above it.
    assert_eq!(snap.stats.dirs, 403);
    let out = tmp.path().join("out");
    on_small_stack(&|| {
        let r = restore::restore(&repo, &snap, &util::restore_options(&out, &[], false));
        assert_eq!(r.unwrap().error_count, 0);
    });
    assert_same_tree(&src, &util::restored(&out, &src));
}

/// Offsets past 4 GiB: a sparse file with data beyond the 32-bit range keeps its data in
/// place and its holes as holes.
#[test]
fn data_beyond_four_gib_keeps_its_offset() {
    use std::os::unix::fs::FileExt;
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let at = (4u64 << 30) + 12_345;
    let data = fixture::pseudo_random(77, 8192);
    let f = fs::File::create(src.join("far")).unwrap();
    f.set_len(at + 100_000).unwrap();
    f.write_all_at(&data, at).unwrap();
    drop(f);
    let repo = util::init_repo(&tmp.path().join("repo"));
    let snap = util::snapshot(&repo, &[&src]).snapshot;
    assert!(snap.stats.bytes_read < 1 << 20, "{:?}", snap.stats);
    let out = tmp.path().join("out");
    assert_eq!(util::restore_to(&repo, &snap, &out).error_count, 0);

    let restored = fs::File::open(util::restored(&out, &src.join("far"))).unwrap();
    let m = restored.metadata().unwrap();
    assert_eq!(m.len(), at + 100_000);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "{} bytes allocated",
        m.blocks() * 512
    );
    let mut back = vec![0u8; data.len() + 20];
    restored.read_exact_at(&mut back, at - 10).unwrap();
    assert_eq!(&back[..10], &[0; 10]);
    assert_eq!(&back[10..10 + data.len()], &data[..]);
    assert_eq!(&back[10 + data.len()..], &[0; 10]);
}

/// Nodes back up into one repository at the same time: both snapshots are complete and
/// restore exactly, and content they share is usable by both.
#[test]
fn two_backups_at_once_into_one_repository() {
    let tmp = util::tempdir();
    let repo_dir = tmp.path().join("repo");
    util::init_repo(&repo_dir);
    let shared = fixture::pseudo_random(8, 3 << 20);
    let trees: Vec<_> = (0..2u64)
        .map(|i| {
            let src = tmp.path().join(format!("src{i}"));
            fs::create_dir_all(src.join("d")).unwrap();
            fs::write(src.join("shared.bin"), &shared).unwrap();
            fs::write(
                src.join("d/own.bin"),
                fixture::pseudo_random(20 + i, 2 << 20),
            )
            .unwrap();
            src
        })
        .collect();
    let snaps: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = trees
            .iter()
            .map(|src| {
                let repo_dir = &repo_dir;
                s.spawn(move || util::snapshot(&util::open_repo(repo_dir), &[src]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let repo = util::open_repo(&repo_dir);
    assert_eq!(repo.list_snapshots().unwrap().len(), 2);
    for (src, report) in trees.iter().zip(&snaps) {
        assert_eq!(report.snapshot.status, SnapshotStatus::Completed);
        let out = tmp.path().join(format!("out-{}", report.id.short()));
        assert_eq!(
            util::restore_to(&repo, &report.snapshot, &out).error_count,
            0
        );
        assert_same_tree(src, &util::restored(&out, src));
    }
}
