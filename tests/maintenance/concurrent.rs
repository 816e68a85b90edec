//! Writers keep snapshotting, each with its own repository handle, while prunes run; then
//! every snapshot that was not forgotten restores byte for byte.
//!
//! The scenario is generic over the store, so the same test runs on any `ObjectStore`: a
//! local directory, and a real S3 server (Garage, or the one named by HOSTAGENT_TEST_S3_*).

use crate::util::*;
use hostagent::maintenance::check::{CheckOptions, DataSubset, check};
use hostagent::maintenance::prune::{PruneOptions, prune};
use hostagent::maintenance::retention::delete_snapshot;
use hostagent::repo::Id;
use hostagent::store::{CacheStore, LocalStore, ObjectStore, RetryPolicy, RetryStore};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One recorded snapshot: who took it, of what directory, with which files.
struct Taken {
    id: Id,
    src: PathBuf,
    files: Files,
    forgotten: bool,
}

pub fn writers_and_prunes(store: Arc<dyn ObjectStore>, writers: usize, rounds: u64) {
    drop(init(store.clone()));
    let work = tempfile::tempdir().unwrap();
    let taken: Mutex<Vec<Taken>> = Mutex::new(Vec::new());
    let done = AtomicBool::new(false);
    // Writers go on past `rounds` (up to four times as many) until a prune has deleted
    // something while they run: on a loaded machine the prunes may lag behind the writers.
    let deleted_any = AtomicBool::new(false);
    let prune_reports = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for w in 0..writers {
            let (store, taken, work) = (store.clone(), &taken, work.path());
            let deleted_any = &deleted_any;
            handles.push(s.spawn(move || {
                let mut repo = open(store);
                let src = work.join(format!("w{w}"));
                let mut mine: Vec<usize> = Vec::new();
                let more =
                    |i: u64| i < rounds || (i < 4 * rounds && !deleted_any.load(Ordering::SeqCst));
                for i in (0..).take_while(|&i| more(i)) {
                    // Content that comes back after it became garbage (i % 3), content of
                    // its own, and content every writer shares.
                    let files: Files = [
                        ("cycle".to_string(), bytes(i % 3, 400 << 10)),
                        (
                            "own".to_string(),
                            bytes(1000 * (w as u64 + 1) + i, 300 << 10),
                        ),
                        ("common".to_string(), bytes(7, 200 << 10)),
                    ]
                    .into();
                    write_files(&src, &files);
                    let id = snapshot(&mut repo, &src, &format!("w{w}"), &[]);
                    let mut t = taken.lock().unwrap();
                    t.push(Taken {
                        id,
                        src: src.clone(),
                        files,
                        forgotten: false,
                    });
                    mine.push(t.len() - 1);
                    // Forget the snapshot from two rounds ago: its data turns to garbage
                    // while newer snapshots may still share some of it.
                    if mine.len() > 2 {
                        let old = mine[mine.len() - 3];
                        delete_snapshot(&repo, &t[old].id).unwrap();
                        t[old].forgotten = true;
                    }
                }
            }));
        }
        let pruner = {
            let (store, done, reports) = (store.clone(), &done, &prune_reports);
            let deleted_any = &deleted_any;
            s.spawn(move || {
                let mut repo = open(store);
                while !done.load(Ordering::SeqCst) {
                    let r = prune(
                        &mut repo,
                        &PruneOptions {
                            repack_unused: 0.3,
                            ..Default::default()
                        },
                    )
                    .unwrap();
                    if r.deleted_packs > 0 {
                        deleted_any.store(true, Ordering::SeqCst);
                    }
                    reports.lock().unwrap().push(r);
                }
            })
        };
        // The pruner stops once the writers end, also when one of them failed: a panic
        // is reported here, after the pruner, instead of leaving it pruning forever.
        let writers: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        done.store(true, Ordering::SeqCst);
        pruner.join().unwrap();
        for w in writers {
            if let Err(panic) = w {
                std::panic::resume_unwind(panic);
            }
        }
    });

    let reports = prune_reports.into_inner().unwrap();
    let deleted: usize = reports.iter().map(|r| r.deleted_packs).sum();
    assert!(
        reports.len() >= 2 && deleted > 0,
        "prunes ran and deleted beside the writers: {} runs, {deleted} packs",
        reports.len()
    );

    let mut repo = open(store.clone());
    let verify = |repo: &mut hostagent::repo::Repository, when: &str| {
        let taken = taken.lock().unwrap();
        let live: Vec<&Taken> = taken.iter().filter(|t| !t.forgotten).collect();
        assert_eq!(snapshot_ids(repo).len(), live.len(), "{when}");
        for t in live {
            assert_eq!(
                restored(repo, &t.id, &t.src),
                t.files,
                "{when}: snapshot {}",
                t.id.short()
            );
        }
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
            "{when}: {:?} {:?}",
            r.errors,
            r.damaged_snapshots
        );
    };
    verify(&mut repo, "after concurrent prunes");
    // Quiet now: two more prunes complete everything announced, and nothing breaks.
    prune(&mut repo, &PruneOptions::default()).unwrap();
    prune(&mut repo, &PruneOptions::default()).unwrap();
    verify(&mut repo, "after final prunes");
    assert!(store.list("writers/").unwrap().is_empty());
}

#[test]
fn writers_keep_snapshotting_during_prunes_on_a_local_store() {
    let dir = tempfile::tempdir().unwrap();
    writers_and_prunes(Arc::new(LocalStore::new(dir.path().join("repo"))), 2, 8);
}

/// On S3 as agentctl opens it (retries, then the local cache), with three writers: prunes
/// list, read and delete across the network while the writers upload.
#[test]
fn writers_keep_snapshotting_during_prunes_on_s3() {
    let Some(server) = crate::garage::shared() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let s3 = RetryStore::new(
        server.store(&crate::garage::unique_prefix("prune-writers")),
        RetryPolicy::default(),
    );
    writers_and_prunes(Arc::new(CacheStore::new(s3, cache.path())), 3, 4);
}
