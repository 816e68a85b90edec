//! Hand-made repository content: trees and snapshots written through the engine's public
//! pack, index and snapshot writers, but with whatever nodes a test wants, including ones a
//! backup would never produce (names like `..`, duplicates). This is what a hostile or
//! damaged repository looks like to a restore.

use super::HOST;
use hostagent::repo::pack::{BlobEncoder, PackWriter, pack_key};
use hostagent::repo::snapshot::SnapshotStats;
use hostagent::repo::tree::{Extent, Timestamp};
use hostagent::repo::{BlobKind, Id, Node, NodeKind, Repository, Snapshot, SnapshotStatus, Tree};

/// Stores blobs of one kind in a new pack, indexes it, and reloads the index.
pub fn write_blobs(repo: &Repository, kind: BlobKind, blobs: &[Vec<u8>]) -> Vec<Id> {
    let mut encoder = BlobEncoder::new(repo.config().compression.level).unwrap();
    let mut writer = PackWriter::create(repo.keys(), kind, repo.spool_dir()).unwrap();
    let mut scratch = Vec::new();
    let mut ids = Vec::new();
    for data in blobs {
        let id = repo.keys().blob_id(data);
        encoder.encode(data, &mut scratch);
        writer.add(id, data.len() as u32, &mut scratch).unwrap();
        ids.push(id);
    }
    let (record, path) = writer.finish(repo.keys()).unwrap();
    repo.store().put_file(&pack_key(&record.id), &path).unwrap();
    repo.write_index(&[record]).unwrap();
    repo.reload_index().unwrap();
    ids
}

/// Encodes a tree as it is, without the checks a decoder applies, and stores it.
pub fn write_tree(repo: &Repository, tree: &Tree) -> Id {
    write_blobs(repo, BlobKind::Tree, &[tree.encode()])[0]
}

pub fn write_snapshot(repo: &Repository, root: Id, paths: &[&str]) -> Snapshot {
    let snap = Snapshot {
        version: 1,
        time: "2026-01-02T03:04:05.000000006Z".into(),
        hostname: HOST.into(),
        paths: paths.iter().map(|p| p.to_string()).collect(),
        tags: Vec::new(),
        name: None,
        parent: None,
        tree: root,
        status: SnapshotStatus::Completed,
        stats: SnapshotStats::default(),
        errors: Vec::new(),
        expires: None,
        program_version: "test".into(),
    };
    repo.write_snapshot(&snap).unwrap();
    snap
}

/// A node with ordinary metadata.
pub fn node(name: &[u8], kind: NodeKind) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        size: 0,
        mtime: Timestamp {
            secs: 1_700_000_000,
            nanos: 5,
        },
        ctime: Timestamp { secs: 0, nanos: 0 },
        inode: 0,
        device: 0,
        links: 1,
        xattrs: Vec::new(),
    }
}

/// A regular file node whose content is stored as one data blob.
pub fn file_node(repo: &Repository, name: &[u8], content: &[u8]) -> Node {
    let id = write_blobs(repo, BlobKind::Data, &[content.to_vec()])[0];
    let mut n = node(
        name,
        NodeKind::File {
            extents: vec![Extent::Data {
                id,
                len: content.len() as u32,
            }],
        },
    );
    n.size = content.len() as u64;
    n
}

pub fn dir_node(repo: &Repository, name: &[u8], nodes: Vec<Node>) -> Node {
    let tree = write_tree(repo, &Tree { nodes });
    let mut n = node(name, NodeKind::Dir { tree });
    n.mode = 0o755;
    n
}

pub fn symlink_node(name: &[u8], target: &[u8]) -> Node {
    let mut n = node(
        name,
        NodeKind::Symlink {
            target: target.to_vec(),
        },
    );
    n.mode = 0o777;
    n
}
