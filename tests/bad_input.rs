//! Bad input the engine must refuse clearly, without damage: a wrong password, damaged or
//! missing repository objects (each kind), a newer repository format, a full file system
//! during restore, and paths that cannot be used.

mod util;

use hostagent::Kind;
use hostagent::repo::pack::{self, pack_key};
use hostagent::repo::{InitOptions, KdfParams, Repository, Snapshot, SnapshotStatus};
use hostagent::restore::{self, RestoreReport};
use hostagent::store::LocalStore;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use util::fixture;

/// A repository with small packs (so there are several) holding a tree of a few files.
struct Damaged {
    tmp: tempfile::TempDir,
    src: PathBuf,
    repo_dir: PathBuf,
    repo: Repository,
    snap: Snapshot,
}

impl Damaged {
    fn new() -> Damaged {
        let tmp = util::tempdir();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        for i in 0..6u64 {
            let data = fixture::pseudo_random(100 + i, 400_000 + i as usize * 1000);
            fs::write(src.join(format!("file{i}")), data).unwrap();
        }
        fs::write(src.join("sub/small"), b"small file in a subdirectory\n").unwrap();
        fs::write(src.join("sub/text"), fixture::compressible(200_000)).unwrap();
        let repo_dir = tmp.path().join("repo");
        let opts = InitOptions {
            kdf: KdfParams::insecure_fast(),
            pack_target_size: Some(1 << 20),
            ..Default::default()
        };
        let store = Arc::new(LocalStore::new(&repo_dir));
        let repo = Repository::init(store, util::PASSWORD, opts).unwrap();
        let snap = util::snapshot(&repo, &[&src]).snapshot;
        assert_eq!(snap.status, SnapshotStatus::Completed);
        Damaged {
            tmp,
            src,
            repo_dir,
            repo,
            snap,
        }
    }

    /// The repository file holding a pack.
    fn pack_file(&self, id: &hostagent::repo::Id) -> PathBuf {
        self.repo_dir.join(pack_key(id))
    }

    /// Files of the snapshot with a blob matching `hit` (given pack ID, offset, length).
    fn files_using(
        &self,
        hit: impl Fn(&hostagent::repo::Id, u32, u32) -> bool,
    ) -> BTreeSet<PathBuf> {
        use hostagent::repo::NodeKind;
        use hostagent::repo::tree::Extent;
        let mut out = BTreeSet::new();
        for (path, node) in util::snapshot_nodes(&self.repo, &self.snap.tree) {
            if let NodeKind::File { extents } = &node.kind {
                for e in extents {
                    if let Extent::Data { id, .. } = e {
                        let index = self.repo.index();
                        let loc = index.locate(id).unwrap();
                        if hit(&loc.pack.id, loc.offset, loc.stored_len) {
                            out.insert(path.clone());
                        }
                    }
                }
            }
        }
        out
    }

    fn restore(&self, name: &str) -> (PathBuf, RestoreReport) {
        let out = self.tmp.path().join(name);
        let report = restore::restore(
            &self.repo,
            &self.snap,
            &util::restore_options(&out, &[], false),
        )
        .unwrap();
        (out, report)
    }

    /// Restores and checks that exactly `affected` failed, each named with `why`, that none
    /// of them exists under its real name, and that every other file is exact.
    fn restore_expecting(&self, affected: &BTreeSet<PathBuf>, why: &str) {
        assert!(!affected.is_empty());
        let (out, report) = self.restore(&format!("out-{}", why.replace(' ', "-")));
        let failed: BTreeSet<PathBuf> = report
            .errors
            .iter()
            .map(|e| PathBuf::from(&e.path))
            .collect();
        assert_eq!(&failed, affected, "{:#?}", report.errors);
        assert_eq!(report.error_count, affected.len() as u64);
        for e in &report.errors {
            assert!(e.error.contains(why), "{e:?} does not say {why:?}");
        }
        for (path, node) in util::snapshot_nodes(&self.repo, &self.snap.tree) {
            if !path.starts_with(&self.src) || node.is_dir() {
                continue;
            }
            let restored = util::restored(&out, &path);
            if affected.contains(&path) {
                assert!(
                    !restored.exists(),
                    "{} restored after failing",
                    path.display()
                );
            } else {
                assert_eq!(fs::read(&path).unwrap(), fs::read(&restored).unwrap());
            }
        }
        assert!(util::names_starting_with(&out, ".hostagent-restore-").is_empty());
    }
}

fn flip_bit(file: &Path, offset: u64) {
    let mut bytes = fs::read(file).unwrap();
    bytes[offset as usize] ^= 0x10;
    fs::write(file, bytes).unwrap();
}

#[test]
fn wrong_password_is_refused_and_changes_nothing() {
    let d = Damaged::new();
    let before = util::repo_files(&d.repo_dir);
    let err =
        Repository::open(Arc::new(LocalStore::new(&d.repo_dir)), b"not the password").unwrap_err();
    assert_eq!(err.kind(), Kind::WrongPassword);
    assert!(err.message().contains("wrong repository password"), "{err}");
    assert_eq!(util::repo_files(&d.repo_dir), before);
}

#[test]
fn missing_pack_fails_exactly_the_files_it_holds() {
    let d = Damaged::new();
    let packs = d.repo.index().packs().to_vec();
    let data_packs: Vec<_> = packs
        .iter()
        .filter(|p| p.kind == hostagent::repo::BlobKind::Data)
        .collect();
    assert!(data_packs.len() >= 2, "{} data packs", data_packs.len());
    let gone = data_packs[0].id;
    fs::remove_file(d.pack_file(&gone)).unwrap();
    let affected = d.files_using(|p, _, _| *p == gone);
    assert!(
        affected.len() < 8,
        "every file was in one pack: {affected:?}"
    );
    d.restore_expecting(&affected, "is missing");
}

#[test]
fn truncated_pack_fails_exactly_the_files_cut_off() {
    let d = Damaged::new();
    // The largest data pack: its second half holds blobs (a small pack's may be all header).
    let pack = d
        .repo
        .index()
        .packs()
        .iter()
        .filter(|p| p.kind == hostagent::repo::BlobKind::Data)
        .max_by_key(|p| fs::metadata(d.pack_file(&p.id)).unwrap().len())
        .unwrap()
        .id;
    let file = d.pack_file(&pack);
    let len = fs::metadata(&file).unwrap().len();
    let keep = len / 2;
    fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(keep)
        .unwrap();
    let affected = d.files_using(|p, off, n| *p == pack && off as u64 + n as u64 > keep);
    d.restore_expecting(&affected, "truncated");
}

#[test]
fn flipped_bit_in_a_data_blob_is_never_restored() {
    let d = Damaged::new();
    let victim = d.src.join("file3");
    let node = util::snapshot_nodes(&d.repo, &d.snap.tree)
        .into_iter()
        .find(|(p, _)| *p == victim)
        .unwrap()
        .1;
    let hostagent::repo::NodeKind::File { extents } = &node.kind else {
        panic!("not a file")
    };
    let hostagent::repo::tree::Extent::Data { id, .. } = &extents[0] else {
        panic!("a hole")
    };
    let index = d.repo.index();
    let loc = index.locate(id).unwrap();
    let (pack, at) = (loc.pack.id, loc.offset as u64 + loc.stored_len as u64 / 2);
    flip_bit(&d.pack_file(&pack), at);
    let affected =
        d.files_using(|p, off, n| *p == pack && (off as u64..off as u64 + n as u64).contains(&at));
    assert!(affected.contains(&victim));
    d.restore_expecting(&affected, "failed authentication");
}

#[test]
fn flipped_bit_in_a_pack_header_or_trailer_is_detected() {
    let d = Damaged::new();
    let info = d.repo.index().packs()[0].clone();
    let bytes = fs::read(d.pack_file(&info.id)).unwrap();
    let size = bytes.len() as u64;
    let good = pack::decode_tail(d.repo.keys(), info.id, &bytes, size).unwrap();
    assert!(!good.blobs.is_empty());
    let header_len =
        u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
    let header_start = bytes.len() - pack::TRAILER_LEN - header_len as usize;
    for at in [
        header_start,                        // the header's salt
        header_start + 40,                   // its ciphertext
        bytes.len() - pack::TRAILER_LEN - 1, // its tag
        bytes.len() - 8,                     // the trailer's length field
        bytes.len() - 1,                     // the trailer's magic
    ] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x01;
        let err = pack::decode_tail(d.repo.keys(), info.id, &damaged, size).unwrap_err();
        assert_eq!(err.kind(), Kind::Corrupt, "flip at {at}: {err}");
        assert!(err.message().contains(&info.id.short()), "{err}");
    }
}

#[test]
fn flipped_bit_in_an_index_file_is_detected() {
    let d = Damaged::new();
    let index = util::objects_under(&d.repo_dir, "index");
    assert_eq!(index.len(), 1);
    let file = d.repo_dir.join(&index[0]);
    for at in [0, 20, fs::metadata(&file).unwrap().len() - 1] {
        let original = fs::read(&file).unwrap();
        flip_bit(&file, at);
        let err =
            Repository::open(Arc::new(LocalStore::new(&d.repo_dir)), util::PASSWORD).unwrap_err();
        assert_eq!(err.kind(), Kind::Corrupt, "{err}");
        let name = index[0].file_name().unwrap().to_str().unwrap();
        assert!(err.message().contains(&name[..8]), "{err}");
        fs::write(&file, original).unwrap();
    }
    util::open_repo(&d.repo_dir);
}

#[test]
fn flipped_bit_in_a_snapshot_manifest_is_detected() {
    let d = Damaged::new();
    let snaps = util::objects_under(&d.repo_dir, "snapshots");
    assert_eq!(snaps.len(), 1);
    let file = d.repo_dir.join(&snaps[0]);
    flip_bit(&file, 30);
    let repo = util::open_repo(&d.repo_dir);
    let id =
        hostagent::repo::Id::from_hex(snaps[0].file_name().unwrap().to_str().unwrap()).unwrap();
    let err = repo.read_snapshot(&id).unwrap_err();
    assert_eq!(err.kind(), Kind::Corrupt);
    assert!(err.message().contains("damaged"), "{err}");
    assert!(err.message().contains(&id.short()), "{err}");
    let err = repo.resolve_snapshot("latest").unwrap_err();
    assert_eq!(err.kind(), Kind::Corrupt, "{err}");
}

#[test]
fn flipped_bit_in_a_tree_is_never_restored() {
    let d = Damaged::new();
    let sub = d.src.join("sub");
    let nodes = util::snapshot_nodes(&d.repo, &d.snap.tree);
    let tree = nodes
        .iter()
        .find(|(p, _)| *p == sub)
        .unwrap()
        .1
        .subtree()
        .unwrap();
    let index = d.repo.index();
    let loc = index.locate(&tree).unwrap();
    flip_bit(&d.pack_file(&loc.pack.id), loc.offset as u64 + 3);

    let (out, report) = d.restore("out");
    assert_eq!(report.error_count, 1, "{:?}", report.errors);
    assert_eq!(PathBuf::from(&report.errors[0].path), sub);
    assert!(
        report.errors[0].error.contains("failed authentication"),
        "{:?}",
        report.errors
    );
    assert!(util::compare::relative_paths(&util::restored(&out, &sub)).is_empty());
    assert_eq!(
        fs::read(d.src.join("file0")).unwrap(),
        fs::read(util::restored(&out, &d.src.join("file0"))).unwrap()
    );

    // Damage to the root tree stops the restore before anything is written.
    let loc = index.locate(&d.snap.tree).unwrap();
    flip_bit(&d.pack_file(&loc.pack.id), loc.offset as u64 + 3);
    let out = d.tmp.path().join("out-root");
    let err =
        restore::restore(&d.repo, &d.snap, &util::restore_options(&out, &[], false)).unwrap_err();
    assert_eq!(err.kind(), Kind::Corrupt, "{err}");
    assert!(util::compare::relative_paths(&out).is_empty());
}

#[test]
fn newer_repository_format_is_refused_naming_both_versions() {
    let d = Damaged::new();
    let config = d.repo_dir.join("config");
    let text = fs::read_to_string(&config).unwrap();
    assert!(text.contains("\"version\": 1,"), "{text}");
    fs::write(&config, text.replace("\"version\": 1,", "\"version\": 2,")).unwrap();
    let err = Repository::open(Arc::new(LocalStore::new(&d.repo_dir)), util::PASSWORD).unwrap_err();
    assert_eq!(err.kind(), Kind::Unsupported);
    let msg = err.message();
    assert!(
        msg.contains("version 2") && msg.contains("version 1"),
        "{msg}"
    );
    assert!(msg.contains("upgrade"), "{msg}");
}

#[test]
fn full_file_system_during_restore_leaves_no_partial_file() {
    if util::skip_unless_root("full_file_system_during_restore_leaves_no_partial_file") {
        return;
    }
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("big"), fixture::pseudo_random(1, 4 << 20)).unwrap();
    fs::write(src.join("small"), b"fits\n").unwrap();
    let repo = util::init_repo(&tmp.path().join("repo"));
    let snap = util::snapshot(&repo, &[&src]).snapshot;

    let full = util::Tmpfs::mount(&tmp.path().join("full"), "2m");
    let mut opts = util::restore_options(&full.path, &[], false);
    // One writer: the big file fails and frees its space before the small one is written.
    opts.threads = 1;
    let report = restore::restore(&repo, &snap, &opts).unwrap();
    assert_eq!(report.error_count, 1, "{:?}", report.errors);
    let e = &report.errors[0];
    assert_eq!(PathBuf::from(&e.path), src.join("big"));
    assert!(e.error.contains("the file system is full"), "{e:?}");
    assert!(!util::restored(&full.path, &src.join("big")).exists());
    assert_eq!(
        fs::read(util::restored(&full.path, &src.join("small"))).unwrap(),
        b"fits\n"
    );
    assert!(util::names_starting_with(&full.path, ".hostagent-restore-").is_empty());
}

#[test]
fn include_with_dot_dot_is_refused() {
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let repo = util::init_repo(&tmp.path().join("repo"));
    let snap = util::snapshot(&repo, &[&src]).snapshot;
    let out = tmp.path().join("out");
    let include = format!("{}/../src", src.display());
    let err = restore::restore(
        &repo,
        &snap,
        &util::restore_options(&out, &[&include], false),
    )
    .unwrap_err();
    assert_eq!(err.kind(), Kind::InvalidInput);
    assert!(
        err.message().contains("'..'") && err.message().contains(&include),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn include_of_a_path_the_snapshot_lacks_is_refused() {
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let repo = util::init_repo(&tmp.path().join("repo"));
    let snap = util::snapshot(&repo, &[&src]).snapshot;
    let out = tmp.path().join("out");
    let typo = src.join("no-such-file");
    let err = restore::restore(
        &repo,
        &snap,
        &util::restore_options(&out, &[typo.to_str().unwrap()], false),
    )
    .unwrap_err();
    assert_eq!(err.kind(), Kind::NotFound, "{err}");
    assert!(err.message().contains(typo.to_str().unwrap()), "{err}");
}

#[test]
fn snapshot_of_a_missing_path_is_refused() {
    let tmp = util::tempdir();
    let repo = util::init_repo(&tmp.path().join("repo"));
    let missing = tmp.path().join("does-not-exist");
    let err = hostagent::backup::backup(&repo, &util::backup_options(&[&missing])).unwrap_err();
    assert_eq!(err.kind(), Kind::NotFound);
    assert!(err.message().contains(missing.to_str().unwrap()), "{err}");
    assert!(err.message().contains("No such file or directory"), "{err}");
    assert!(util::objects_under(&tmp.path().join("repo"), "snapshots").is_empty());
}
