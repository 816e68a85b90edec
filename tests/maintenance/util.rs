//! Helpers for the maintenance tests: small repositories, deterministic source trees,
//! snapshots taken the way writers must take them, and byte-for-byte restore checks.

use hostagent::backup::{BackupOptions, ParentChoice};
use hostagent::maintenance;
use hostagent::repo::config::ChunkerParams;
use hostagent::repo::tree::{Extent, NodeKind};
use hostagent::repo::{Id, InitOptions, KdfParams, Repository};
use hostagent::restore::{RestoreOptions, restore};
use hostagent::store::{MemoryStore, ObjectStore};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

pub const PASSWORD: &[u8] = b"correct horse";

/// Expected content of a source tree: relative path to bytes.
pub type Files = BTreeMap<String, Vec<u8>>;

pub fn init(store: Arc<dyn ObjectStore>) -> Repository {
    Repository::init(
        store,
        PASSWORD,
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            // Small chunks and the smallest packs, so that a few MiB make many of each.
            chunker: Some(ChunkerParams {
                algorithm: "fastcdc-v2020".into(),
                min_size: 16 << 10,
                avg_size: 64 << 10,
                max_size: 256 << 10,
                normalization: 1,
            }),
            pack_target_size: Some(1 << 20),
            compression_level: None,
        },
    )
    .unwrap()
}

pub fn open(store: Arc<dyn ObjectStore>) -> Repository {
    Repository::open(store, PASSWORD).unwrap()
}

pub fn memory() -> Arc<dyn ObjectStore> {
    Arc::new(MemoryStore::new())
}

/// Incompressible bytes from a seed (xorshift), so each seed is its own content.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Replaces the contents of `dir` with `files`.
pub fn write_files(dir: &Path, files: &Files) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (rel, data) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

/// Takes a snapshot of `dir` inside a writer session, as agentctl does.
pub fn snapshot(repo: &mut Repository, dir: &Path, host: &str, tags: &[&str]) -> Id {
    let mut opts = BackupOptions::new(vec![dir.to_path_buf()]);
    opts.hostname = host.to_string();
    opts.tags = tags.iter().map(|t| t.to_string()).collect();
    opts.threads = 1;
    opts.parent = ParentChoice::None;
    maintenance::backup(repo, &opts).unwrap().id
}

/// Reads every regular file under `dir` (relative paths).
pub fn read_files(dir: &Path) -> Files {
    let mut out = Files::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// Restores a snapshot and returns its files relative to the backed-up directory `src`.
pub fn restored(repo: &Repository, id: &Id, src: &Path) -> Files {
    let snap = repo.read_snapshot(id).unwrap();
    let target = tempfile::tempdir().unwrap();
    let mut opts = RestoreOptions::new(target.path());
    opts.threads = 2;
    let report = restore(repo, &snap, &opts)
        .unwrap_or_else(|e| panic!("snapshot {} does not restore: {e}", id.short()));
    assert_eq!(report.error_count, 0, "{:?}", report.errors);
    read_files(&target.path().join(src.strip_prefix("/").unwrap()))
}

/// Copies every object into a new memory store: a fresh copy of a repository to damage.
pub fn copy_store(from: &dyn ObjectStore) -> Arc<dyn ObjectStore> {
    let to = MemoryStore::new();
    for o in from.list("").unwrap() {
        to.put(&o.key, &from.get(&o.key).unwrap()).unwrap();
    }
    Arc::new(to)
}

/// The data blob IDs a pack holds, according to the repository's index.
pub fn blobs_in_pack(repo: &Repository, pack: &Id) -> HashSet<Id> {
    let (files, _) = maintenance::read_index_files(repo).unwrap();
    files
        .iter()
        .flat_map(|f| f.packs.iter())
        .filter(|p| p.id == *pack)
        .flat_map(|p| p.blobs.iter().map(|b| b.id))
        .collect()
}

/// Absolute snapshot paths of the files that use any of `blobs`, walking the trees here
/// (independently of the code under test).
pub fn files_using(repo: &Repository, snap: &Id, blobs: &HashSet<Id>) -> Vec<String> {
    fn walk(
        repo: &Repository,
        tree: &Id,
        prefix: &str,
        blobs: &HashSet<Id>,
        out: &mut Vec<String>,
    ) {
        for n in repo.read_tree(tree).unwrap().nodes {
            let path = format!("{prefix}/{}", n.name_lossy());
            match &n.kind {
                NodeKind::Dir { tree } => walk(repo, tree, &path, blobs, out),
                NodeKind::File { extents }
                    if extents
                        .iter()
                        .any(|e| matches!(e, Extent::Data { id, .. } if blobs.contains(id))) =>
                {
                    out.push(path)
                }
                _ => {}
            }
        }
    }
    let s = repo.read_snapshot(snap).unwrap();
    let mut out = Vec::new();
    walk(repo, &s.tree, "", blobs, &mut out);
    out.sort();
    out
}

/// Sum of the sizes of all packs.
pub fn pack_bytes(store: &dyn ObjectStore) -> u64 {
    store.list("packs/").unwrap().iter().map(|o| o.size).sum()
}

pub fn snapshot_ids(repo: &Repository) -> Vec<Id> {
    repo.list_snapshots()
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}
