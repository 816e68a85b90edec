//! Deliberately damaged repositories: check finds exactly the damage, names the snapshots
//! and paths it touches, and repair brings back everything that can be brought back.

use crate::util::*;
use hostagent::maintenance::check::{CheckOptions, CheckReport, DataSubset, check};
use hostagent::maintenance::repair::{DAMAGED_TAG, RepairOptions, repair_index, repair_snapshots};
use hostagent::repo::tree::{Extent, NodeKind};
use hostagent::repo::{Id, Repository, SnapshotStatus};
use hostagent::store::{MemoryStore, ObjectStore};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Fixture {
    mem: MemoryStore,
    store: Arc<dyn ObjectStore>,
    _dirs: tempfile::TempDir,
    /// Snapshot, source directory, files.
    snaps: Vec<(Id, PathBuf, Files)>,
}

/// Three snapshots: two of one directory (the second changes one file), one of another.
fn fixture() -> Fixture {
    let mem = MemoryStore::new();
    let store: Arc<dyn ObjectStore> = Arc::new(mem.clone());
    let mut repo = init(store.clone());
    let dirs = tempfile::tempdir().unwrap();
    let (one, two) = (dirs.path().join("one"), dirs.path().join("two"));
    let f1: Files = [
        ("a".to_string(), bytes(1, 700 << 10)),
        ("b".to_string(), bytes(2, 700 << 10)),
        ("sub/c".to_string(), bytes(3, 700 << 10)),
    ]
    .into();
    let f2: Files = [
        ("d".to_string(), bytes(4, 1500 << 10)),
        ("e".to_string(), bytes(5, 1500 << 10)),
    ]
    .into();
    let mut f3 = f1.clone();
    f3.insert("sub/c".into(), bytes(6, 700 << 10));
    write_files(&one, &f1);
    let s1 = snapshot(&mut repo, &one, "node-a", &[]);
    write_files(&two, &f2);
    let s2 = snapshot(&mut repo, &two, "node-b", &[]);
    write_files(&one, &f3);
    let s3 = snapshot(&mut repo, &one, "node-a", &[]);
    Fixture {
        mem,
        store,
        _dirs: dirs,
        snaps: vec![(s1, one.clone(), f1), (s2, two, f2), (s3, one, f3)],
    }
}

fn check_all(repo: &mut Repository, read_data: bool) -> CheckReport {
    check(
        repo,
        &CheckOptions {
            read_data: read_data.then_some(DataSubset::Fraction(1.0)),
            state_dir: None,
        },
    )
    .unwrap()
}

/// The first data blob of a file in a snapshot.
fn first_blob(repo: &Repository, snap: &Id, src: &Path, rel: &str) -> Id {
    let mut tree = repo.read_snapshot(snap).unwrap().tree;
    let path = src.join(rel);
    let comps: Vec<_> = path.components().skip(1).collect();
    for (i, c) in comps.iter().enumerate() {
        let t = repo.read_tree(&tree).unwrap();
        let node = t.get(c.as_os_str().as_encoded_bytes()).unwrap().clone();
        match node.kind {
            NodeKind::Dir { tree: id } => tree = id,
            NodeKind::File { extents } if i + 1 == comps.len() => {
                return match extents[0] {
                    Extent::Data { id, .. } => id,
                    _ => panic!("hole"),
                };
            }
            _ => panic!("not found"),
        }
    }
    panic!("not a file")
}

/// Damage as check reports it: snapshot -> set of paths.
fn damage_map(r: &CheckReport) -> BTreeMap<Id, BTreeSet<String>> {
    r.damaged_snapshots
        .iter()
        .map(|d| (d.id, d.damage.iter().map(|x| x.path.clone()).collect()))
        .collect()
}

/// What the damage should be: every snapshot's files that use a blob of `blobs`.
fn expected_damage(
    repo: &Repository,
    snaps: &[(Id, PathBuf, Files)],
    blobs: &HashSet<Id>,
) -> BTreeMap<Id, BTreeSet<String>> {
    snaps
        .iter()
        .map(|(id, _, _)| {
            (
                *id,
                files_using(repo, id, blobs)
                    .into_iter()
                    .collect::<BTreeSet<_>>(),
            )
        })
        .filter(|(_, s)| !s.is_empty())
        .collect()
}

/// Repairs both index and snapshots, then checks the repository is clean and that every
/// snapshot restores: unharmed ones as they were, damaged ones without exactly the lost
/// files, tagged and marked.
fn repair_and_verify(fx: &Fixture, read_data: bool, lost: &BTreeMap<Id, BTreeSet<String>>) {
    let mut repo = open(fx.store.clone());
    let opts = RepairOptions {
        dry_run: false,
        read_data,
    };
    repair_index(&mut repo, &opts).unwrap();
    let r = repair_snapshots(&repo, &opts).unwrap();
    let rewritten: BTreeMap<Id, BTreeSet<String>> = r
        .rewritten
        .iter()
        .map(|s| (s.old, s.lost.iter().map(|d| d.path.clone()).collect()))
        .collect();
    assert_eq!(&rewritten, lost);
    assert!(r.removed.is_empty());
    let mut repo = open(fx.store.clone());
    let after = check_all(&mut repo, true);
    assert!(
        after.is_ok(),
        "{:?} {:?}",
        after.errors,
        after.damaged_snapshots
    );
    for (old, src, files) in &fx.snaps {
        match r.rewritten.iter().find(|s| s.old == *old) {
            None => assert_eq!(
                &restored(&repo, old, src),
                files,
                "unharmed snapshot {}",
                old.short()
            ),
            Some(s) => {
                let new = s.new.unwrap();
                assert!(
                    repo.read_snapshot(old).is_err(),
                    "the damaged original is gone"
                );
                let snap = repo.read_snapshot(&new).unwrap();
                assert_eq!(snap.status, SnapshotStatus::PartiallyFailed);
                assert!(snap.tags.iter().any(|t| t == DAMAGED_TAG));
                let lost_paths: BTreeSet<String> =
                    snap.errors.iter().map(|e| e.path.clone()).collect();
                assert_eq!(&lost_paths, &lost[old]);
                let mut want = files.clone();
                want.retain(|rel, _| !lost[old].contains(&src.join(rel).display().to_string()));
                assert_eq!(
                    restored(&repo, &new, src),
                    want,
                    "what is left of {}",
                    old.short()
                );
            }
        }
    }
}

#[test]
fn missing_pack() {
    let fx = fixture();
    let mut repo = open(fx.store.clone());
    let (s2, two, _) = &fx.snaps[1];
    let blob = first_blob(&repo, s2, two, "e");
    let pack = repo.index().locate(&blob).unwrap().pack.id;
    let blobs = blobs_in_pack(&repo, &pack);
    let expected = expected_damage(&repo, &fx.snaps, &blobs);
    assert!(expected.contains_key(s2));
    fx.store
        .delete(&hostagent::repo::pack::pack_key(&pack))
        .unwrap();

    let r = check_all(&mut repo, false);
    assert_eq!(
        r.errors,
        vec![format!(
            "pack {} is missing ({} blobs indexed in it)",
            pack.short(),
            blobs.len()
        )]
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(damage_map(&r), expected);
    for d in &r.damaged_snapshots {
        for x in &d.damage {
            assert!(
                x.reason
                    .contains(&format!("is in missing pack {}", pack.short())),
                "{}",
                x.reason
            );
        }
    }
    repair_and_verify(&fx, false, &expected);
}

#[test]
fn missing_index_file() {
    let fx = fixture();
    let mut repo = open(fx.store.clone());
    let (s2, two, _) = &fx.snaps[1];
    let blob = first_blob(&repo, s2, two, "d");
    let pack = repo.index().locate(&blob).unwrap().pack.id;
    let (files, _) = hostagent::maintenance::read_index_files(&repo).unwrap();
    let victim = files
        .iter()
        .find(|f| f.packs.iter().any(|p| p.id == pack))
        .unwrap();
    let orphaned: BTreeSet<String> = victim.packs.iter().map(|p| p.id.short()).collect();
    fx.store.delete(&victim.key).unwrap();

    let r = check_all(&mut repo, false);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let warned: BTreeSet<String> = r.warnings.iter().map(|w| w[5..13].to_string()).collect();
    assert_eq!(warned, orphaned, "{:?}", r.warnings);
    // Only the second snapshot's data and trees were in that file's packs.
    assert_eq!(r.damaged_snapshots.len(), 1);
    assert_eq!(r.damaged_snapshots[0].id, *s2);
    // Rebuilding the index from the packs loses nothing: no snapshot is rewritten.
    repair_and_verify(&fx, false, &BTreeMap::new());
}

#[test]
fn corrupt_blob() {
    let fx = fixture();
    let mut repo = open(fx.store.clone());
    let (s1, one, _) = &fx.snaps[0];
    let blob = first_blob(&repo, s1, one, "b");
    let index = repo.index();
    let loc = index.locate(&blob).unwrap();
    let (pack, offset) = (loc.pack.id, loc.offset);
    let one_blob: HashSet<Id> = [blob].into();
    // b is in both snapshots of directory one.
    let expected = expected_damage(&repo, &fx.snaps, &one_blob);
    assert_eq!(expected.len(), 2);
    fx.mem.tamper(&hostagent::repo::pack::pack_key(&pack), |b| {
        b[offset as usize + 100] ^= 0x40
    });

    // The structure is intact: only reading the data finds it.
    assert!(check_all(&mut repo, false).is_ok());
    let r = check_all(&mut repo, true);
    assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
    assert!(r.errors.iter().any(|e| e
        == &format!(
            "pack {} does not match its name: its bytes changed (damaged)",
            pack.short()
        )));
    assert!(r.errors.iter().any(|e| e.starts_with(&format!(
        "blob {} is corrupt in pack {}",
        blob.short(),
        pack.short()
    ))));
    assert_eq!(damage_map(&r), expected);
    repair_and_verify(&fx, true, &expected);
}

#[test]
fn truncated_snapshot_manifest() {
    let fx = fixture();
    let mut repo = open(fx.store.clone());
    let s3 = fx.snaps[2].0;
    let key = hostagent::repo::snapshot::snapshot_key(&s3);
    fx.mem.tamper(&key, |b| b.truncate(b.len() / 2));
    let r = check_all(&mut repo, true);
    assert!(r.errors.is_empty() && r.damaged_snapshots.is_empty());
    assert_eq!(r.unreadable_snapshots.len(), 1);
    assert_eq!(r.unreadable_snapshots[0].0, s3);
    assert!(
        r.unreadable_snapshots[0]
            .1
            .contains("does not match its name"),
        "{}",
        r.unreadable_snapshots[0].1
    );

    let r = repair_snapshots(&repo, &RepairOptions::default()).unwrap();
    assert_eq!(r.removed.len(), 1);
    assert_eq!(r.removed[0].0, s3);
    let mut repo = open(fx.store.clone());
    assert!(check_all(&mut repo, true).is_ok());
    for (id, src, files) in &fx.snaps[..2] {
        assert_eq!(&restored(&repo, id, src), files);
    }
}

#[test]
fn partial_data_checks_rotate_over_every_pack() {
    let fx = fixture();
    let mut repo = open(fx.store.clone());
    let state = tempfile::tempdir().unwrap();
    let packs = fx.store.list("packs/").unwrap().len();
    let opts = CheckOptions {
        read_data: Some(DataSubset::Fraction(0.25)),
        state_dir: Some(state.path().to_path_buf()),
    };
    let mut read = 0;
    let mut runs = 0;
    loop {
        let r = check(&mut repo, &opts).unwrap();
        assert!(r.is_ok());
        assert!(
            r.packs_read >= 1 && r.packs_read < packs,
            "{} of {packs}",
            r.packs_read
        );
        read += r.packs_read;
        runs += 1;
        if r.rotation_wrapped {
            break;
        }
        assert!(runs < 10, "never wrapped");
    }
    assert!(
        read >= packs,
        "a full rotation reads every pack: {read} of {packs}"
    );
    assert!(runs >= 3, "25% at a time takes several runs: {runs}");
}

#[test]
fn missing_tree_pack() {
    let fx = fixture();
    let mut repo = open(fx.store.clone());
    let s2 = fx.snaps[1].0;
    let root = repo.read_snapshot(&s2).unwrap().tree;
    let pack = repo.index().locate(&root).unwrap().pack.id;
    fx.store
        .delete(&hostagent::repo::pack::pack_key(&pack))
        .unwrap();

    let r = check_all(&mut repo, false);
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert_eq!(r.damaged_snapshots.len(), 1);
    assert_eq!(r.damaged_snapshots[0].id, s2);
    let d = &r.damaged_snapshots[0].damage;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].path, "/");
    assert!(d[0].reason.contains("directory listing"), "{}", d[0].reason);

    // Nothing of that snapshot can be found without its root: it is removed, loudly.
    repair_index(&mut repo, &RepairOptions::default()).unwrap();
    let r = repair_snapshots(&repo, &RepairOptions::default()).unwrap();
    assert!(r.rewritten.is_empty());
    assert_eq!(r.removed.len(), 1);
    assert_eq!(r.removed[0].0, s2);
    assert!(
        r.removed[0].1.contains("nothing of it can be restored"),
        "{}",
        r.removed[0].1
    );
    let mut repo = open(fx.store.clone());
    assert!(check_all(&mut repo, true).is_ok());
    for i in [0, 2] {
        let (id, src, files) = &fx.snaps[i];
        assert_eq!(&restored(&repo, id, src), files);
    }
}
