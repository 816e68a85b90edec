//! Prune: frees what no snapshot needs, repacks, and is safe against writers that run
//! beside it and against being killed at any step.

use crate::util::*;
use hostagent::maintenance::check::{CheckOptions, DataSubset, check};
use hostagent::maintenance::prune::{PruneOptions, PruneReport, prune};
use hostagent::maintenance::retention::delete_snapshot;
use hostagent::maintenance::{WriteSession, session};
use hostagent::repo::Repository;
use hostagent::store::{FaultyStore, LocalStore, ObjectStore};
use std::sync::Arc;

fn run(repo: &mut Repository) -> PruneReport {
    prune(repo, &PruneOptions::default()).unwrap()
}

fn forget(repo: &Repository, id: &hostagent::repo::Id) {
    delete_snapshot(repo, id).unwrap();
}

fn assert_checks_clean(repo: &mut Repository) {
    let r = check(
        repo,
        &CheckOptions {
            read_data: Some(DataSubset::Fraction(1.0)),
            state_dir: None,
        },
    )
    .unwrap();
    assert!(
        r.is_ok(),
        "check: {:?} {:?} {:?}",
        r.errors,
        r.unreadable_snapshots,
        r.damaged_snapshots
    );
}

/// Two snapshots sharing a file; each has one file of its own.
fn two_snapshots(
    store: Arc<dyn ObjectStore>,
    src: &std::path::Path,
) -> (
    Repository,
    Files,
    Files,
    hostagent::repo::Id,
    hostagent::repo::Id,
) {
    let mut repo = init(store);
    let a: Files = [
        ("shared".to_string(), bytes(1, 3 << 20)),
        ("only-a".to_string(), bytes(2, 3 << 20)),
    ]
    .into();
    let b: Files = [
        ("shared".to_string(), bytes(1, 3 << 20)),
        ("only-b".to_string(), bytes(3, 3 << 20)),
    ]
    .into();
    write_files(src, &a);
    let ida = snapshot(&mut repo, src, "node-a", &[]);
    write_files(src, &b);
    let idb = snapshot(&mut repo, src, "node-a", &[]);
    (repo, a, b, ida, idb)
}

#[test]
fn deletes_only_after_a_second_run_and_keeps_what_snapshots_use() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("repo")));
    let (mut repo, _a, b, ida, idb) = two_snapshots(store.clone(), &src);
    forget(&repo, &ida);
    let before = pack_bytes(store.as_ref());

    let first = run(&mut repo);
    assert_eq!(first.deleted_packs, 0, "the first run only announces");
    assert!(first.announced_bytes > 2 << 20, "{first:?}");
    assert!(first.announced_ripe);
    assert_eq!(
        pack_bytes(store.as_ref()),
        before + first.repack_bytes_written
    );

    let second = run(&mut repo);
    assert_eq!(second.deleted_bytes, first.announced_bytes);
    let after = pack_bytes(store.as_ref());
    // only-a (3 MiB of incompressible data) is gone; shared and only-b stay.
    assert!(
        before - after + first.repack_bytes_written >= 2 << 20,
        "{before} -> {after}"
    );
    assert!(after >= 6 << 20);
    assert_eq!(restored(&repo, &idb, &src), b);
    assert_checks_clean(&mut repo);
    assert!(store.list("pending/").unwrap().is_empty());
    assert!(store.list("locks/").unwrap().is_empty());
}

#[test]
fn repacks_mostly_garbage_packs_and_consolidates_the_index() {
    let store = memory();
    let src = tempfile::tempdir().unwrap();
    let mut repo = init(store.clone());
    // Many small files, so that each pack holds blobs of several files.
    let all: Files = (0..40)
        .map(|i| (format!("f{i:02}"), bytes(100 + i, 100 << 10)))
        .collect();
    write_files(src.path(), &all);
    let first = snapshot(&mut repo, src.path(), "n", &[]);
    let kept: Files = all
        .iter()
        .filter(|(k, _)| k.ends_with('0'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    write_files(src.path(), &kept);
    let second = snapshot(&mut repo, src.path(), "n", &[]);
    forget(&repo, &first);
    let before = pack_bytes(store.as_ref());
    let r1 = prune(
        &mut repo,
        &PruneOptions {
            repack_unused: 0.3,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r1.announced_repacked > 0, "{r1:?}");
    assert!(
        r1.repacked_blobs > 0 && r1.repacked_blobs < r1.referenced_blobs,
        "{r1:?}"
    );
    assert!(r1.repack_bytes_written >= 100 << 10, "{r1:?}");
    let r2 = run(&mut repo);
    assert!(r2.deleted_packs >= r1.announced_repacked);
    let after = pack_bytes(store.as_ref());
    assert!(after < before / 4, "{before} -> {after}");
    assert_eq!(restored(&repo, &second, src.path()), kept);
    assert_eq!(store.list("index/").unwrap().len(), 1);
    assert_checks_clean(&mut repo);
}

#[test]
fn a_writer_running_at_announcement_holds_up_deletion_and_its_snapshot_survives() {
    let store = memory();
    let src = tempfile::tempdir().unwrap();
    let (mut repo, a, _b, ida, _idb) = two_snapshots(store.clone(), src.path());
    // A writer starts and loads the index while only-a's packs are live.
    let mut writer = open(store.clone());
    let session = WriteSession::begin(&mut writer, "backup").unwrap();
    assert_eq!(session.hidden_packs, 0);
    forget(&repo, &ida);
    let r1 = run(&mut repo);
    assert!(!r1.announced_ripe);
    let r2 = run(&mut repo);
    assert_eq!(
        r2.deleted_packs, 0,
        "a witnessed writer is still running: {r2:?}"
    );
    assert_eq!(r2.waiting.len(), 1);
    assert!(
        r2.waiting[0].blocked_by[0].contains("backup"),
        "{:?}",
        r2.waiting
    );
    // The writer now backs up only-a again: it reuses the announced blobs (it cannot know).
    write_files(src.path(), &a);
    let mut opts = hostagent::backup::BackupOptions::new(vec![src.path().to_path_buf()]);
    opts.parent = hostagent::backup::ParentChoice::None;
    let report = hostagent::backup::backup(&writer, &opts).unwrap();
    assert_eq!(
        report.snapshot.stats.data_blobs_new, 0,
        "deduplicated against the announced packs"
    );
    session.finish().unwrap();
    let r3 = run(&mut repo);
    assert!(r3.kept_for_new_snapshots > 0, "{r3:?}");
    assert_eq!(restored(&repo, &report.id, src.path()), a);
    assert_checks_clean(&mut repo);
}

#[test]
fn a_writer_starting_after_announcement_stores_the_blobs_again() {
    let store = memory();
    let src = tempfile::tempdir().unwrap();
    let (mut repo, a, _b, ida, _idb) = two_snapshots(store.clone(), src.path());
    forget(&repo, &ida);
    let mut writer = open(store.clone());
    let r1 = prune(&mut repo, &PruneOptions::default()).unwrap();
    assert!(r1.announced_unused + r1.announced_repacked > 0);
    write_files(src.path(), &a);
    let id = snapshot(&mut writer, src.path(), "node-a", &[]);
    let snap = writer.read_snapshot(&id).unwrap();
    // only-a is stored again, but for blobs left in a pack that also holds live data.
    assert!(
        snap.stats.bytes_new >= 2 << 20,
        "only-a stored again: {:?}",
        snap.stats
    );
    let r2 = run(&mut repo);
    assert!(
        r2.deleted_packs > 0 && r2.kept_for_new_snapshots == 0,
        "{r2:?}"
    );
    assert_eq!(restored(&repo, &id, src.path()), a);
    assert_checks_clean(&mut repo);
}

#[test]
fn dead_writer_markers_of_this_host_do_not_block_forever() {
    let store = memory();
    let src = tempfile::tempdir().unwrap();
    let (mut repo, _a, _b, ida, _idb) = two_snapshots(store.clone(), src.path());
    let mut writer = open(store.clone());
    let session = WriteSession::begin(&mut writer, "backup").unwrap();
    forget(&repo, &ida);
    run(&mut repo);
    // The writer dies without removing its marker: forget the session, keep the object.
    let key = store.list("writers/").unwrap()[0].key.clone();
    let bytes = store.get(&key).unwrap();
    drop(session);
    store.put(&key, &bytes).unwrap();
    let r = run(&mut repo);
    assert_eq!(r.stale_holders_removed, 1);
    assert!(r.deleted_packs > 0, "{r:?}");
    assert!(store.list("writers/").unwrap().is_empty());
    let _ = session::WRITERS_PREFIX;
}

#[test]
fn a_killed_prune_leaves_a_valid_repository_and_the_next_one_finishes() {
    // Small files: every store operation of two prunes is a kill point, so keep them few.
    let src = tempfile::tempdir().unwrap();
    let base = memory();
    let mut repo = init(base.clone());
    let a: Files = [
        ("shared".to_string(), bytes(1, 700 << 10)),
        ("only-a".to_string(), bytes(2, 1200 << 10)),
    ]
    .into();
    let b: Files = [
        ("shared".to_string(), bytes(1, 700 << 10)),
        ("only-b".to_string(), bytes(3, 700 << 10)),
    ]
    .into();
    write_files(src.path(), &a);
    let ida = snapshot(&mut repo, src.path(), "node-a", &[]);
    write_files(src.path(), &b);
    let idb = snapshot(&mut repo, src.path(), "node-a", &[]);
    let extra: Files = [("x".to_string(), bytes(9, 300 << 10))].into();
    let srcx = tempfile::tempdir().unwrap();
    write_files(srcx.path(), &extra);
    let idx = snapshot(&mut repo, srcx.path(), "node-b", &[]);
    forget(&repo, &ida);
    // Leave an announced batch, so that the killed prune runs both phases.
    run(&mut repo);
    forget(&repo, &idx);
    drop(repo);

    // How many writes and deletes two full prune runs take.
    let total = {
        let f = FaultyStore::unlimited(copy_store(base.as_ref()));
        let mut r = open(Arc::new(f.clone()));
        run(&mut r);
        run(&mut r);
        f.mutations()
    };
    assert!(
        total >= 8,
        "two prunes make at least a handful of writes: {total}"
    );

    for budget in 0..total {
        let copy = copy_store(base.as_ref());
        let faulty = FaultyStore::new(copy.clone(), budget);
        let mut r = open(Arc::new(faulty.clone()));
        let outcome = prune(&mut r, &PruneOptions::default())
            .and_then(|_| prune(&mut r, &PruneOptions::default()));
        assert!(
            outcome.is_err(),
            "budget {budget} of {total} should have killed it"
        );
        assert!(faulty.has_failed());
        // The repository as the dead prune left it: the snapshot restores, check is clean.
        let mut after = open(copy.clone());
        assert_eq!(snapshot_ids(&after), vec![idb], "budget {budget}");
        assert_eq!(restored(&after, &idb, src.path()), b, "budget {budget}");
        assert_structure_clean(&mut after, budget);
        // The next prunes finish, free everything, and leave no lock or batch behind.
        run(&mut after);
        run(&mut after);
        let r3 = run(&mut after);
        assert_eq!(
            (r3.announced_bytes, r3.deleted_bytes),
            (0, 0),
            "budget {budget}: {r3:?}"
        );
        assert!(copy.list("pending/").unwrap().is_empty(), "budget {budget}");
        assert!(copy.list("locks/").unwrap().is_empty(), "budget {budget}");
        assert_eq!(restored(&after, &idb, src.path()), b, "budget {budget}");
        assert_structure_clean(&mut after, budget);
    }
}

fn assert_structure_clean(repo: &mut Repository, budget: u64) {
    let r = check(repo, &CheckOptions::default()).unwrap();
    assert!(
        r.is_ok(),
        "budget {budget}: {:?} {:?} {:?}",
        r.errors,
        r.unreadable_snapshots,
        r.damaged_snapshots
    );
}

#[test]
fn liveness_is_judged_only_where_it_can_be_observed() {
    use hostagent::maintenance::session::{Holder, Liveness};
    let store = memory();
    let mut repo = init(store.clone());
    let session = WriteSession::begin(&mut repo, "backup").unwrap();
    let (_, token, holder) = session::list_holders(&repo, session::WRITERS_PREFIX)
        .unwrap()
        .remove(0);
    let me = holder.unwrap();
    assert_eq!(me.liveness(&token), Liveness::Alive);
    // Another host: never judged from here.
    let other_host = Holder {
        hostname: "elsewhere".into(),
        ..me.clone()
    };
    assert_eq!(other_host.liveness(&token), Liveness::Unknown);
    // Another boot of this host: the process cannot have survived.
    let rebooted = Holder {
        boot_id: "00000000-0000-0000-0000-000000000000".into(),
        ..me.clone()
    };
    assert_eq!(rebooted.liveness(&token), Liveness::Dead);
    // A process that exited (its PID, if reused, has another start time).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let exited = Holder { pid, ..me.clone() };
    assert_eq!(exited.liveness("x"), Liveness::Dead);
    // Another PID namespace: PIDs there mean nothing here.
    let contained = Holder {
        pid_ns: "pid:[1]".into(),
        pid,
        ..me.clone()
    };
    assert_eq!(contained.liveness("x"), Liveness::Unknown);
    session.finish().unwrap();
    assert_eq!(
        me.liveness(&token),
        Liveness::Dead,
        "this process no longer holds the token"
    );
}
