//! The S3 store against a real server (Garage, started by tests/garage/setup.sh, or the
//! server named by HOSTAGENT_TEST_S3_*): the store conformance suite, backup and restore
//! through it (and the cache that spares incremental backups their downloads), concurrent
//! writers into one repository, a server killed in the middle of a snapshot, a multipart
//! upload cut short, each followed by the structural check, and the errors an operator meets
//! (bad credentials, missing bucket, server down, an object deleted behind the repository's
//! back), through the library and through agentctl.

mod garage;

use hostagent::backup::{self, BackupOptions};
use hostagent::maintenance::check::{CheckOptions, CheckReport, DataSubset, check};
use hostagent::repo::{InitOptions, KdfParams, Repository};
use hostagent::restore::{self, RestoreOptions};
use hostagent::store::{
    CacheStore, CountingStore, ObjectInfo, ObjectStore, RetryPolicy, RetryStore, S3Config,
    S3Credentials, S3Location, S3Store, StoreErrorKind, StoreResult, conformance,
};
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const PASSWORD: &[u8] = b"s3 test password";

fn init_opts() -> InitOptions {
    InitOptions {
        kdf: KdfParams::insecure_fast(),
        // Small packs: many packs (and index checkpoints) from little data.
        pack_target_size: Some(1 << 20),
        ..Default::default()
    }
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        first_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(1),
    }
}

/// Incompressible bytes from a seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A small tree: nested directories, an empty file, an executable, a symlink, and
/// `big_mib` MiB of incompressible data in one file.
fn make_tree(root: &Path, seed: u64, big_mib: usize) {
    std::fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    std::fs::create_dir_all(root.join("var/data")).unwrap();
    std::fs::write(root.join("etc/hostname"), format!("node-{seed}\n")).unwrap();
    std::fs::write(root.join("etc/conf.d/empty"), b"").unwrap();
    std::fs::write(root.join("etc/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        root.join("etc/run.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("../etc/hostname", root.join("var/link")).unwrap();
    for i in 0..20u64 {
        std::fs::write(
            root.join(format!("var/data/small-{i}")),
            noise(seed * 100 + i, 1000 + i as usize * 517),
        )
        .unwrap();
    }
    std::fs::write(root.join("var/data/big"), noise(seed, big_mib << 20)).unwrap();
}

/// Asserts that `restored` holds the same entries, bytes, modes and link targets as `orig`.
fn assert_same_tree(orig: &Path, restored: &Path) {
    let mut count = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(orig.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let (a, b) = (orig.join(&r), restored.join(&r));
            let ma = std::fs::symlink_metadata(&a).unwrap();
            let mb = std::fs::symlink_metadata(&b)
                .unwrap_or_else(|e| panic!("{} not restored: {e}", b.display()));
            assert_eq!(ma.permissions().mode(), mb.permissions().mode(), "{r:?}");
            count += 1;
            if ma.is_dir() {
                stack.push(r);
            } else if ma.file_type().is_symlink() {
                assert_eq!(
                    std::fs::read_link(&a).unwrap(),
                    std::fs::read_link(&b).unwrap()
                );
            } else {
                assert!(
                    std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
                    "{r:?} differs"
                );
            }
        }
    }
    assert!(count > 20, "compared only {count} entries");
}

/// Where a restore of snapshot path `src` into `target` puts it.
fn restored_at(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").unwrap())
}

/// Every pack the index names exists in the store.
fn assert_index_packs_exist(repo: &Repository) {
    let stored: HashSet<String> = repo
        .store()
        .list("packs/")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    let index = repo.index();
    let packs = index.packs();
    assert!(!packs.is_empty());
    for p in packs {
        let key = hostagent::repo::pack::pack_key(&p.id);
        assert!(
            stored.contains(&key),
            "index names {key}, which is not stored"
        );
    }
}

/// The structural check and a read of every pack.
fn check_all(repo: &mut Repository) -> CheckReport {
    check(
        repo,
        &CheckOptions {
            read_data: Some(DataSubset::Fraction(1.0)),
            state_dir: None,
        },
    )
    .unwrap()
}

/// Asserts that the check finds nothing wrong, and returns its report.
fn assert_check_clean(repo: &mut Repository) -> CheckReport {
    let r = check_all(repo);
    assert!(
        r.is_ok(),
        "check: errors {:?}, unreadable {:?}, damaged {:?}",
        r.errors,
        r.unreadable_snapshots,
        r.damaged_snapshots
    );
    // Every indexed pack was read; the others are only in no index (garbage, not damage).
    let unindexed = r
        .warnings
        .iter()
        .filter(|w| w.contains("is in no index"))
        .count();
    assert!(r.packs > 0 && r.packs_read + unindexed == r.packs, "{r:?}");
    r
}

fn backup_of(repo: &Repository, src: &Path, host: &str) -> hostagent::Result<backup::BackupReport> {
    let mut opts = BackupOptions::new(vec![src.to_path_buf()]);
    opts.hostname = host.to_string();
    opts.threads = 2;
    backup::backup(repo, &opts)
}

fn restore_latest_of(repo: &Repository, host: &str, target: &Path) -> restore::RestoreReport {
    let snap = repo
        .list_snapshots()
        .unwrap()
        .into_iter()
        .rev()
        .find(|s| s.snapshot.hostname == host)
        .unwrap_or_else(|| panic!("no snapshot of {host}"));
    let mut opts = RestoreOptions::new(target);
    opts.threads = 2;
    restore::restore(repo, &snap.snapshot, &opts).unwrap()
}

#[test]
fn s3_store_conforms() {
    let Some(server) = garage::shared() else {
        return;
    };
    let store = server.store(&garage::unique_prefix("conformance"));
    conformance::run_all(&store);
    // The suite's 20 MiB object went up in parts; nothing is left of the upload.
    assert_eq!(store.stat("conf/large").unwrap(), 20 << 20);
    store.probe().unwrap();
}

#[test]
fn repositories_under_different_prefixes_do_not_see_each_other() {
    let Some(server) = garage::shared() else {
        return;
    };
    let base = garage::unique_prefix("prefixes");
    let a = server.store(&format!("{base}/a"));
    let b = server.store(&format!("{base}/ab"));
    a.put("index/1", b"a").unwrap();
    b.put("index/2", b"b").unwrap();
    let keys =
        |s: &S3Store| -> Vec<String> { s.list("").unwrap().into_iter().map(|o| o.key).collect() };
    assert_eq!(keys(&a), ["index/1"]);
    assert_eq!(keys(&b), ["index/2"]);
}

#[test]
fn snapshot_and_restore_are_byte_identical_and_the_cache_saves_downloads() {
    let Some(server) = garage::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src, 1, 24);
    let cache = tmp.path().join("cache");
    let prefix = garage::unique_prefix("roundtrip");
    let counting = CountingStore::new(Arc::new(RetryStore::new(
        server.store(&prefix),
        RetryPolicy::default(),
    )));
    let store: Arc<dyn ObjectStore> = Arc::new(CacheStore::new(counting.clone(), &cache));

    let repo = Repository::init(store.clone(), PASSWORD, init_opts()).unwrap();
    let first = backup_of(&repo, &src, "node-a").unwrap();
    assert!(
        first.snapshot.stats.packs_written > 10,
        "{:?}",
        first.snapshot.stats
    );
    assert_index_packs_exist(&Repository::open(store.clone(), PASSWORD).unwrap());

    // A later run: another handle, same cache. Index, snapshot and the parent's trees come
    // from the cache, filled as the first run wrote them: not one pack is downloaded. An
    // unchanged tree uploads nothing but a manifest.
    counting.reset();
    let repo = Repository::open(store.clone(), PASSWORD).unwrap();
    std::fs::write(src.join("etc/hostname"), b"renamed\n").unwrap();
    let second = backup_of(&repo, &src, "node-a").unwrap();
    let c = counting.counters();
    assert_eq!(c.gets.get("index"), None, "{c:?}");
    assert_eq!(c.gets.get("snapshots"), None, "{c:?}");
    assert_eq!(c.gets.get("packs"), None, "{c:?}");
    assert_eq!(
        second.snapshot.stats.files_unmodified, 23,
        "{:?}",
        second.snapshot.stats
    );
    assert!(c.put_bytes_under("packs") < 100_000, "{c:?}");

    // Without the cache, the same run downloads the parent's trees and finds the same.
    std::fs::remove_dir_all(&cache).unwrap();
    counting.reset();
    let repo = Repository::open(store.clone(), PASSWORD).unwrap();
    let third = backup_of(&repo, &src, "node-a").unwrap();
    let c = counting.counters();
    assert!(c.gets.get("packs").is_some_and(|&n| n >= 4), "{c:?}");
    let stats = &third.snapshot.stats;
    assert_eq!(stats.files_unmodified, 24, "{stats:?}");
    assert_eq!(stats.data_blobs_new, 0, "{stats:?}");

    // Restoring from a fresh handle without the cache gives back the same bytes.
    let plain: Arc<dyn ObjectStore> = Arc::new(server.store(&prefix));
    let repo = Repository::open(plain, PASSWORD).unwrap();
    let target = tmp.path().join("restored");
    let report = restore_latest_of(&repo, "node-a", &target);
    assert_eq!(report.error_count, 0, "{:?}", report.errors);
    assert_same_tree(&src, &restored_at(&target, &src));
}

#[test]
fn four_concurrent_writers_share_one_repository() {
    let Some(server) = garage::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let prefix = garage::unique_prefix("writers");
    Repository::init(Arc::new(server.store(&prefix)), PASSWORD, init_opts()).unwrap();
    let shared_data = noise(4242, 6 << 20);

    let sources: Vec<PathBuf> = (0..4u64)
        .map(|i| {
            let src = tmp.path().join(format!("node-{i}"));
            make_tree(&src, 10 + i, 3);
            std::fs::write(src.join("var/data/shared"), &shared_data).unwrap();
            src
        })
        .collect();
    std::thread::scope(|scope| {
        for (i, src) in sources.iter().enumerate() {
            let prefix = &prefix;
            scope.spawn(move || {
                // Each writer has its own store, client and repository handle, as a node would.
                let store: Arc<dyn ObjectStore> = Arc::new(server.store(prefix));
                let repo = Repository::open(store, PASSWORD).unwrap();
                backup_of(&repo, src, &format!("node-{i}")).unwrap();
            });
        }
    });

    let mut repo = Repository::open(Arc::new(server.store(&prefix)), PASSWORD).unwrap();
    let snaps = repo.list_snapshots().unwrap();
    assert_eq!(snaps.len(), 4);
    assert_index_packs_exist(&repo);
    let report = assert_check_clean(&mut repo);
    assert_eq!(report.snapshots, 4, "{report:?}");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    for (i, src) in sources.iter().enumerate() {
        let target = tmp.path().join(format!("restored-{i}"));
        let report = restore_latest_of(&repo, &format!("node-{i}"), &target);
        assert_eq!(report.error_count, 0, "{:?}", report.errors);
        assert_same_tree(src, &restored_at(&target, src));
    }

    // Dedup across writers: a fifth node with the shared file stores no data for it.
    let fifth = tmp.path().join("node-4");
    std::fs::create_dir_all(&fifth).unwrap();
    std::fs::write(fifth.join("shared"), &shared_data).unwrap();
    let report = backup_of(&repo, &fifth, "node-4").unwrap();
    assert_eq!(
        report.snapshot.stats.data_blobs_new, 0,
        "{:?}",
        report.snapshot.stats
    );
    let target = tmp.path().join("restored-4");
    let report = restore_latest_of(&repo, "node-4", &target);
    assert_eq!(report.error_count, 0, "{:?}", report.errors);
    assert!(
        std::fs::read(restored_at(&target, &fifth).join("shared")).unwrap() == shared_data,
        "the fifth node's file differs"
    );
    assert_eq!(assert_check_clean(&mut repo).snapshots, 5);
}

/// Passes requests through until the `after`-th pack upload, which kills the server first.
struct KillServerAfter {
    inner: Arc<dyn ObjectStore>,
    server: Arc<garage::Server>,
    after: usize,
    packs: AtomicUsize,
}

impl std::fmt::Debug for KillServerAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KillServerAfter")
    }
}

impl ObjectStore for KillServerAfter {
    fn get(&self, key: &str) -> StoreResult<Vec<u8>> {
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Vec<u8>> {
        self.inner.get_range(key, offset, len)
    }
    fn put(&self, key: &str, data: &[u8]) -> StoreResult<()> {
        self.inner.put(key, data)
    }
    fn put_file(&self, key: &str, path: &Path) -> StoreResult<()> {
        if key.starts_with("packs/") && self.packs.fetch_add(1, Ordering::SeqCst) + 1 == self.after
        {
            self.server.kill();
        }
        self.inner.put_file(key, path)
    }
    fn stat(&self, key: &str) -> StoreResult<u64> {
        self.inner.stat(key)
    }
    fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key)
    }
    fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn parallelism(&self) -> usize {
        self.inner.parallelism()
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}

#[test]
fn server_killed_mid_snapshot_leaves_a_valid_repository_and_work_is_reused() {
    let Some(server) = garage::private() else {
        return;
    };
    let server = Arc::new(server);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src, 7, 48);
    let mut config = server.config("killed");
    config.sdk_attempts = 2;
    let s3: Arc<dyn ObjectStore> = Arc::new(RetryStore::new(
        S3Store::new(config).unwrap(),
        quick_retries(),
    ));
    Repository::init(s3.clone(), PASSWORD, init_opts()).unwrap();
    let dying: Arc<dyn ObjectStore> = Arc::new(KillServerAfter {
        inner: s3.clone(),
        server: server.clone(),
        after: 20,
        packs: AtomicUsize::new(0),
    });
    let repo = Repository::open(dying, PASSWORD).unwrap();
    let err = backup_of(&repo, &src, "node-k").unwrap_err();
    assert!(err.is_transient(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("cannot upload a pack"), "{msg}");
    assert!(
        msg.contains("connection refused by http://127.0.0.1:"),
        "{msg}"
    );
    assert!(msg.contains("gave up after 3 attempts"), "{msg}");

    server.restart();
    let counting = CountingStore::new(Arc::new(RetryStore::new(
        server.store("killed"),
        RetryPolicy::default(),
    )));
    let mut repo = Repository::open(Arc::new(counting.clone()), PASSWORD).unwrap();
    assert!(repo.list_snapshots().unwrap().is_empty());
    assert_index_packs_exist(&repo);
    let indexed = repo.index().packs().len();
    assert!(
        indexed >= 16,
        "checkpointed index files list {indexed} packs"
    );
    // The check finds the repository valid: every indexed pack is present and intact. Packs
    // uploaded after the last checkpoint are in no index, which is garbage, not damage.
    let report = assert_check_clean(&mut repo);
    assert_eq!(report.packs_read, indexed, "{report:?}");
    for w in &report.warnings {
        assert!(w.contains("is in no index"), "{w}");
    }
    assert_eq!(report.packs, indexed + report.warnings.len(), "{report:?}");

    let report = backup_of(&repo, &src, "node-k").unwrap();
    let stats = &report.snapshot.stats;
    let total_packs = indexed as u64 + stats.packs_written;
    assert!(
        stats.packs_written + 16 <= total_packs,
        "the second run re-uploaded what the first had indexed: {stats:?}"
    );
    assert!(stats.bytes_stored < 40 << 20, "{stats:?}");

    let mut repo = Repository::open(Arc::new(server.store("killed")), PASSWORD).unwrap();
    assert_index_packs_exist(&repo);
    let target = tmp.path().join("restored");
    let report = restore_latest_of(&repo, "node-k", &target);
    assert_eq!(report.error_count, 0, "{:?}", report.errors);
    assert_same_tree(&src, &restored_at(&target, &src));
    assert_eq!(assert_check_clean(&mut repo).snapshots, 1);
}

#[test]
fn an_object_deleted_behind_our_back_is_named_by_check_and_restore() {
    let Some(server) = garage::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src, 3, 2);
    let prefix = garage::unique_prefix("deleted");
    let store: Arc<dyn ObjectStore> = Arc::new(server.store(&prefix));
    let repo = Repository::init(store.clone(), PASSWORD, init_opts()).unwrap();
    backup_of(&repo, &src, "node-d").unwrap();
    let repo = Repository::open(store.clone(), PASSWORD).unwrap();

    // Delete the pack holding the big file's first chunk.
    let snap = repo.list_snapshots().unwrap().pop().unwrap();
    let mut tree = repo.read_tree(&snap.snapshot.tree).unwrap();
    for name in src.strip_prefix("/").unwrap().join("var/data").iter() {
        let node = tree.get(name.as_encoded_bytes()).unwrap().clone();
        tree = repo.read_tree(&node.subtree().unwrap()).unwrap();
    }
    let big = tree.get(b"big").unwrap().clone();
    let hostagent::repo::NodeKind::File { ref extents } = big.kind else {
        panic!("big is not a file: {big:?}")
    };
    let Some(hostagent::repo::tree::Extent::Data { id, .. }) = extents.first() else {
        panic!("big has no data extent")
    };
    let pack = repo.index().locate(id).unwrap().pack.id;
    let key = hostagent::repo::pack::pack_key(&pack);
    store.delete(&key).unwrap();
    assert_eq!(store.stat(&key).unwrap_err().kind, StoreErrorKind::NotFound);

    let report = restore_latest_of(&repo, "node-d", &tmp.path().join("restored"));
    assert!(report.error_count >= 1);
    let all = format!("{:?}", report.errors);
    assert!(
        all.contains(&key),
        "restore errors do not name {key}: {all}"
    );
    assert!(all.contains("is missing"), "{all}");

    // The check names the pack, the snapshot and the file that needs it.
    let mut repo = Repository::open(store.clone(), PASSWORD).unwrap();
    let report = check_all(&mut repo);
    assert!(!report.is_ok());
    let missing = format!("pack {} is missing", pack.short());
    assert!(
        report.errors.iter().any(|e| e.contains(&missing)),
        "{:?}",
        report.errors
    );
    assert_eq!(report.damaged_snapshots.len(), 1, "{report:?}");
    let damaged = &report.damaged_snapshots[0];
    assert_eq!(damaged.id, snap.id);
    assert_eq!(damaged.hostname, "node-d");
    let big_path = src.join("var/data/big").display().to_string();
    assert!(
        damaged
            .damage
            .iter()
            .any(|d| d.path == big_path
                && d.reason.contains(&format!("missing pack {}", pack.short()))),
        "{:?}",
        damaged.damage
    );
}

#[test]
fn a_multipart_upload_cut_short_is_aborted_and_the_next_one_succeeds() {
    let Some(server) = garage::shared() else {
        return;
    };
    let proxy = garage::cut::CuttingProxy::start(server.addr());
    let prefix = garage::unique_prefix("multipart");
    let mut config = server.config(&prefix);
    config.endpoint = if server.endpoint.starts_with("https://") {
        // The proxy forwards bytes, so the certificate names the server, not 127.0.0.1.
        config.insecure = true;
        format!("https://127.0.0.1:{}", proxy.port)
    } else {
        format!("http://127.0.0.1:{}", proxy.port)
    };
    // No SDK retry: a retried part would go through, and the upload would not fail.
    config.sdk_attempts = 1;
    config.multipart_threshold = 5 << 20;
    config.part_size = 5 << 20;
    let store = S3Store::new(config).unwrap();
    let direct = server.store(&prefix);
    let tmp = tempfile::tempdir().unwrap();
    let data = noise(99, 12 << 20);
    let file = tmp.path().join("spooled-pack");

    // Control: the link dies in the second part and stays dead, so the abort cannot reach
    // the server either, and the started upload lingers (what a lifecycle rule cleans up).
    std::fs::write(&file, &data).unwrap();
    proxy.cut_after_and_stay_down(7 << 20);
    let err = store.put_file("packs/aa/aa11", &file).unwrap_err();
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(err.kind, StoreErrorKind::Transient, "{err}");
    proxy.up();
    assert_eq!(direct.multipart_uploads().unwrap(), ["packs/aa/aa11"]);

    // The link fails in the second part, the server stays reachable: the upload is aborted.
    proxy.cut_after(7 << 20);
    let err = store.put_file("packs/bb/bb22", &file).unwrap_err();
    assert_eq!(proxy.cuts(), 2);
    assert_eq!(err.kind, StoreErrorKind::Transient, "{err}");
    assert!(
        file.exists(),
        "a failed upload keeps its file for the retry"
    );
    assert_eq!(
        direct.stat("packs/bb/bb22").unwrap_err().kind,
        StoreErrorKind::NotFound
    );
    assert!(direct.list("packs/").unwrap().is_empty());
    assert_eq!(
        direct.multipart_uploads().unwrap(),
        ["packs/aa/aa11"],
        "no upload left of packs/bb/bb22"
    );

    // The next upload, through the same client, stores the whole object.
    store.put_file("packs/bb/bb22", &file).unwrap();
    assert!(!file.exists(), "a stored file is consumed");
    assert!(direct.get("packs/bb/bb22").unwrap() == data);
    assert_eq!(direct.stat("packs/bb/bb22").unwrap(), 12 << 20);
    assert_eq!(direct.multipart_uploads().unwrap(), ["packs/aa/aa11"]);
}

fn probe_error(config: S3Config) -> String {
    let mut config = config;
    config.sdk_attempts = 1;
    let err = S3Store::new(config).unwrap().probe().unwrap_err();
    assert!(!err.is_transient() || err.kind() == hostagent::Kind::Unavailable);
    err.to_string()
}

#[test]
fn wrong_credentials_are_named() {
    let Some(server) = garage::shared() else {
        return;
    };
    let mut config = server.config("creds");
    config.credentials = S3Credentials::new(&server.access_key, "not-the-secret", "the test file");
    let msg = probe_error(config);
    assert!(msg.contains("bad credentials"), "{msg}");
    assert!(msg.contains("secret key from the test file"), "{msg}");

    let mut config = server.config("creds");
    config.credentials = S3Credentials::new("GK0000000000000000deadbeef", "x", "the test file");
    let msg = probe_error(config);
    assert!(msg.contains("bad credentials"), "{msg}");
    assert!(msg.contains("GK0000000000000000deadbeef"), "{msg}");
}

#[test]
fn a_missing_bucket_is_named() {
    let Some(server) = garage::shared() else {
        return;
    };
    let mut config = server.config("x");
    config.location = S3Location::parse("s3://no-such-bucket-here/x").unwrap();
    let msg = probe_error(config);
    assert!(
        msg.contains("bucket \"no-such-bucket-here\" does not exist"),
        "{msg}"
    );
}

#[test]
fn a_wrong_region_is_named() {
    let Some(server) = garage::shared() else {
        return;
    };
    let mut config = server.config("region");
    config.region = "eu-west-9".into();
    let msg = probe_error(config);
    assert!(msg.contains("wrong region"), "{msg}");
    assert!(msg.contains("--s3-region"), "{msg}");
}

/// These need no server: the point is that there is none.
#[test]
fn no_server_and_no_name_are_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let location = S3Location::parse("s3://bucket/p").unwrap();
    let creds = S3Credentials::new("GK1", "secret", "test");
    let config = S3Config::new(
        &format!("http://127.0.0.1:{port}"),
        location.clone(),
        creds.clone(),
    );
    let msg = probe_error(config);
    assert!(msg.contains("cannot list the bucket"), "{msg}");
    assert!(
        msg.contains("connection refused by http://127.0.0.1:"),
        "{msg}"
    );

    let config = S3Config::new("http://no-such-host.invalid:9000", location, creds);
    let msg = probe_error(config);
    assert!(msg.contains("cannot resolve the host name"), "{msg}");
}

fn agentctl(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(args)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SHARED_CREDENTIALS_FILE")
        .env_remove("HOSTAGENT_REPO")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn agentctl_works_against_s3() {
    let Some(server) = garage::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src, 5, 4);
    let creds = server.credentials_file(tmp.path());
    let repo = format!("s3://{}/{}", server.bucket, garage::unique_prefix("cli"));
    let cache = tmp.path().join("cache");
    let env = [
        ("HOSTAGENT_PASSWORD", "cli password"),
        ("HOSTAGENT_S3_ENDPOINT", server.endpoint.as_str()),
        ("HOSTAGENT_S3_REGION", server.region.as_str()),
        ("HOSTAGENT_CACHE_DIR", cache.to_str().unwrap()),
    ];
    let creds = creds.to_str().unwrap();
    let s3 = [
        "--repo",
        &repo,
        "--s3-path-style",
        "--s3-credentials-file",
        creds,
    ];

    let (code, out, err) = agentctl(&[&s3[..], &["repo", "init"]].concat(), &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("test object written, read back and deleted"),
        "{out}"
    );
    assert!(out.contains("created repository"), "{out}");
    assert!(!out.contains(&server.secret_key) && !err.contains(&server.secret_key));

    let (code, out, err) = agentctl(
        &[
            &s3[..],
            &[
                "-q",
                "snapshot",
                src.to_str().unwrap(),
                "--host",
                "cli-node",
            ],
        ]
        .concat(),
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("saved"), "{out}");

    let (code, out, err) = agentctl(&[&s3[..], &["snapshots"]].concat(), &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cli-node"), "{out}");

    let target = tmp.path().join("restored");
    let (code, out, err) = agentctl(
        &[
            &s3[..],
            &[
                "-q",
                "restore",
                "latest",
                "--host",
                "cli-node",
                "--target",
                target.to_str().unwrap(),
            ],
        ]
        .concat(),
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_same_tree(&src, &restored_at(&target, &src));

    // Init again at the same place: refused, nothing overwritten.
    let (code, _, err) = agentctl(&[&s3[..], &["repo", "init"]].concat(), &env);
    assert_eq!(code, 1);
    assert!(err.contains("a repository already exists"), "{err}");

    // Bad secret: init says so, and which file the key came from.
    let bad = tmp.path().join("bad-creds");
    std::fs::write(
        &bad,
        format!(
            "[default]\naws_access_key_id={}\naws_secret_access_key=wrong\n",
            server.access_key
        ),
    )
    .unwrap();
    let (code, _, err) = agentctl(
        &[
            "--repo",
            &repo,
            "--s3-path-style",
            "--s3-credentials-file",
            bad.to_str().unwrap(),
            "repo",
            "init",
        ],
        &env,
    );
    assert_eq!(code, 1);
    assert!(err.contains("bad credentials"), "{err}");
    assert!(err.contains(bad.to_str().unwrap()), "{err}");

    // No endpoint: a usage error naming the option.
    let (code, _, err) = agentctl(
        &["--repo", &repo, "--s3-credentials-file", creds, "snapshots"],
        &[("HOSTAGENT_PASSWORD", "x")],
    );
    assert_eq!(code, 1);
    assert!(err.contains("--s3-endpoint"), "{err}");
}

#[test]
fn agentctl_takes_credentials_from_the_aws_variables() {
    let Some(server) = garage::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src, 6, 1);
    let repo = format!(
        "s3://{}/{}",
        server.bucket,
        garage::unique_prefix("envcreds")
    );
    let cache = tmp.path().join("cache");
    // HOME without ~/.aws: the variables are the only source of keys.
    let base = [
        ("HOME", tmp.path().to_str().unwrap()),
        ("HOSTAGENT_PASSWORD", "env password"),
        ("HOSTAGENT_REPO", repo.as_str()),
        ("HOSTAGENT_S3_ENDPOINT", server.endpoint.as_str()),
        ("HOSTAGENT_S3_REGION", server.region.as_str()),
        ("HOSTAGENT_S3_PATH_STYLE", "true"),
        ("HOSTAGENT_CACHE_DIR", cache.to_str().unwrap()),
    ];
    let with_keys = |id: &str, secret: &str| -> Vec<(String, String)> {
        base.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([
                ("AWS_ACCESS_KEY_ID".to_string(), id.to_string()),
                ("AWS_SECRET_ACCESS_KEY".to_string(), secret.to_string()),
            ])
            .collect()
    };
    let run = |args: &[&str], env: &[(String, String)]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        agentctl(args, &env)
    };
    let good = with_keys(&server.access_key, &server.secret_key);

    let (code, out, err) = run(&["repo", "init"], &good);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("credentials accepted"), "{out}");
    assert!(out.contains("created repository"), "{out}");
    let (code, out, err) = run(
        &[
            "-q",
            "snapshot",
            src.to_str().unwrap(),
            "--host",
            "env-node",
        ],
        &good,
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&["snapshots"], &good);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("env-node"), "{out}");
    let target = tmp.path().join("restored");
    let (code, out, err) = run(
        &[
            "-q",
            "restore",
            "latest",
            "--host",
            "env-node",
            "--target",
            target.to_str().unwrap(),
        ],
        &good,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_same_tree(&src, &restored_at(&target, &src));

    // A wrong secret in the variables: named as their fault, the secret never shown.
    let (code, out, err) = run(
        &["--no-cache", "snapshots"],
        &with_keys(&server.access_key, "wrong-secret"),
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("bad credentials"), "{err}");
    assert!(
        err.contains("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );
    assert!(
        !err.contains("wrong-secret") && !err.contains(&server.secret_key),
        "{err}"
    );

    // No variables, no file, no ~/.aws/credentials: says where keys may come from.
    let none: Vec<(String, String)> = base
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (code, out, err) = run(&["snapshots"], &none);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("no S3 credentials"), "{err}");
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
}

/// Needs no server: the point is that there is none.
#[test]
fn agentctl_repo_init_with_the_server_down_names_the_refused_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let (code, out, err) = agentctl(
        &[
            "--repo",
            "s3://hostagent-test/down",
            "--s3-endpoint",
            &endpoint,
            "--s3-path-style",
            "repo",
            "init",
        ],
        &[
            ("HOME", tmp.path().to_str().unwrap()),
            ("HOSTAGENT_PASSWORD", "x"),
            ("AWS_ACCESS_KEY_ID", "GK0000000000000000000000"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("connection refused by {endpoint}")),
        "{err}"
    );
    assert!(err.contains("is the S3 server running"), "{err}");
    assert!(err.contains("cannot list the bucket"), "{err}");
    assert!(!out.contains("created repository"), "{out}");
}

#[test]
fn tls_needs_the_ca_file_or_the_insecure_option() {
    let Some(server) = garage::shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = garage::tls::make_certificates(tmp.path());
    let port = garage::tls::proxy(&cert, &key, server.addr());
    let https = |prefix: &str| {
        let mut c = server.config(prefix);
        c.endpoint = format!("https://127.0.0.1:{port}");
        c
    };
    let prefix = garage::unique_prefix("tls");

    let msg = probe_error(https(&prefix));
    assert!(
        msg.contains("TLS handshake with https://127.0.0.1:"),
        "{msg}"
    );
    assert!(msg.contains("--s3-ca-file"), "{msg}");

    let mut trusted = https(&prefix);
    trusted.ca_file = Some(ca.clone());
    let store = S3Store::new(trusted).unwrap();
    store.probe().unwrap();
    conformance::put_then_get(&store);
    conformance::large_object(&store);

    let mut insecure = https(&prefix);
    insecure.insecure = true;
    let store = S3Store::new(insecure).unwrap();
    store.probe().unwrap();
    assert_eq!(store.get("conf/a/one").unwrap(), b"hello");
    assert_eq!(store.stat("conf/large").unwrap(), 20 << 20);

    // https:// to the plain-HTTP port.
    let mut wrong = server.config(&prefix);
    wrong.endpoint = server.endpoint.replace("http://", "https://");
    wrong.ca_file = Some(ca.clone());
    let msg = probe_error(wrong);
    assert!(msg.contains("does not speak TLS on this port"), "{msg}");

    // A file that is not a certificate is refused before any request.
    let mut bad = https(&prefix);
    bad.ca_file = Some(key.clone());
    let err = S3Store::new(bad).unwrap_err();
    assert!(
        err.to_string().contains("holds no PEM certificate"),
        "{err}"
    );
}

#[test]
fn a_key_without_write_permission_is_named() {
    let Some(server) = garage::shared() else {
        return;
    };
    if server.garage_dir.is_none() {
        eprintln!("not run: needs a Garage started by the tests to create a read-only key");
        return;
    }
    let (id, secret) = server.read_only_key("read-only");
    let mut config = server.config(&garage::unique_prefix("ro"));
    config.credentials = S3Credentials::new(&id, &secret, "the read-only key");
    let msg = probe_error(config);
    assert!(msg.contains("cannot write a test object"), "{msg}");
    assert!(msg.contains("access denied"), "{msg}");
    assert!(msg.contains(&id), "{msg}");
}
