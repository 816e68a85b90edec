//! The whole engine on a generated tree: first backup, unchanged re-backup and restore, with
//! the repository in a `MemoryStore` so that what is measured is the engine (walk, read,
//! chunk, hash, compress, encrypt, pack; or the reverse), not a disk or a network.
//!
//! The tree (~64 MiB: small, medium and large files, text and random) is written once per run
//! into a temporary directory and read from the page cache thereafter. Key slots use the test
//! KDF parameters: Argon2id's deliberate cost is not part of the pipeline.

mod common;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hostagent::backup::{BackupOptions, ParentChoice, backup};
use hostagent::repo::{InitOptions, KdfParams, Repository};
use hostagent::restore::{RestoreOptions, restore};
use hostagent::store::{MemoryStore, ObjectStore};
use std::sync::Arc;
use std::time::Duration;

const TREE_BYTES: usize = 64 << 20;

/// CPU seconds (user + system) this process has used so far, all threads.
fn cpu_seconds() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr());
        u.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// One first backup timed by wall clock and by CPU time: CPU milliseconds per MiB is what the
/// pipeline costs whatever else runs on the machine, comparable with the sum of the stages'
/// single-core costs; CPU over wall is how many cores it kept busy.
fn cpu_report(tree: &std::path::Path, bytes: u64) {
    let repo = new_repo();
    let mut opts = BackupOptions::new(vec![tree.to_path_buf()]);
    opts.parent = ParentChoice::None;
    let (c0, t0) = (cpu_seconds(), std::time::Instant::now());
    backup(&repo, &opts).unwrap();
    let (cpu, wall) = (cpu_seconds() - c0, t0.elapsed().as_secs_f64());
    let mib = bytes as f64 / (1 << 20) as f64;
    eprintln!(
        "pipeline/backup-first once: {:.0} MiB in {wall:.3} s wall, {cpu:.3} s CPU: \
         {:.2} CPU ms per MiB, {:.2} cores busy",
        mib,
        cpu * 1000.0 / mib,
        cpu / wall
    );
}

fn new_repo() -> Repository {
    let store: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
    Repository::init(
        store,
        b"bench",
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            ..Default::default()
        },
    )
    .unwrap()
}

fn pipeline(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let bytes = common::write_tree(&tree, TREE_BYTES, 42);
    let opts = |parent| {
        let mut o = BackupOptions::new(vec![tree.clone()]);
        o.parent = parent;
        o
    };

    cpu_report(&tree, bytes);
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("backup-first", |b| {
        b.iter_batched(
            new_repo,
            |repo| {
                let r = backup(&repo, &opts(ParentChoice::None)).unwrap();
                assert_eq!(r.snapshot.stats.errors, 0);
                repo
            },
            BatchSize::PerIteration,
        )
    });

    let repo = new_repo();
    let first = backup(&repo, &opts(ParentChoice::None)).unwrap();
    g.bench_function("backup-unchanged", |b| {
        b.iter(|| {
            // What a new run does after its key slot opened: load the index (which now lists
            // the previous run's packs), then walk.
            repo.reload_index().unwrap();
            let r = backup(&repo, &opts(ParentChoice::Auto)).unwrap();
            assert_eq!(r.snapshot.stats.bytes_read, 0, "nothing should be re-read");
        })
    });

    g.bench_function("restore", |b| {
        b.iter_batched(
            || tempfile::tempdir_in(dir.path()).unwrap(),
            |target| {
                let r =
                    restore(&repo, &first.snapshot, &RestoreOptions::new(target.path())).unwrap();
                assert_eq!(r.bytes, bytes);
                target
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = pipeline
}
criterion_main!(benches);
