//! Repair: make a damaged repository consistent again, keeping everything that can be kept.
//!
//! - **Index**: rebuilt from the packs' own headers ([`crate::repo::pack::decode_tail`]),
//!   replacing every index file. Packs whose header is unreadable cannot be indexed and are
//!   reported. With `read_data`, every blob is verified; a pack with corrupt blobs has its
//!   good blobs copied into a new pack and is itself left out of the index (prune removes
//!   it), so the corrupt blobs count as lost and the next backup of that content stores it
//!   again.
//! - **Snapshots**: a snapshot that refers to lost data is rewritten without the lost files
//!   and directories, as a new snapshot marked `PartiallyFailed`, tagged `damaged`, with each
//!   lost path in its error list; then the old one is removed. A damaged snapshot is never
//!   kept as it was, and others, sharing the intact data, restore as before. A manifest that
//!   cannot be read names nothing that could be kept, and is removed.
//!
//! Repair holds the maintenance lock, so it never runs beside a prune.

use super::walk::{self, Damage};
use super::{BlobSink, list_packs, read_pack_header};
use crate::error::{Error, Result};
use crate::repo::index::INDEX_PREFIX;
use crate::repo::pack::{BlobDecoder, PackRecord, pack_key};
use crate::repo::snapshot::{FileError, MAX_RECORDED_ERRORS, SnapshotStatus, snapshot_key};
use crate::repo::tree::{NodeKind, Tree};
use crate::repo::{BlobKind, Id, Index, Repository};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub const DAMAGED_TAG: &str = "damaged";

#[derive(Debug, Clone, Default)]
pub struct RepairOptions {
    /// Report what would change, change nothing.
    pub dry_run: bool,
    /// Verify every blob while rebuilding the index; leave corrupt ones out.
    pub read_data: bool,
}

#[derive(Debug, Clone, Default)]
pub struct IndexRepair {
    pub packs_indexed: usize,
    pub blobs_indexed: usize,
    pub unreadable_packs: Vec<(Id, String)>,
    pub corrupt_blobs: Vec<(Id, Id)>,
    /// Packs with corrupt blobs: their good blobs were copied, and they are left out of the
    /// index for prune to remove.
    pub damaged_packs: Vec<Id>,
    pub index_files_replaced: usize,
}

#[derive(Debug, Clone)]
pub struct RewrittenSnapshot {
    pub old: Id,
    /// None in a dry run.
    pub new: Option<Id>,
    pub lost: Vec<Damage>,
}

#[derive(Debug, Clone, Default)]
pub struct SnapshotRepair {
    pub checked: usize,
    pub rewritten: Vec<RewrittenSnapshot>,
    /// Removed: the manifest is unreadable, or nothing of the snapshot is left.
    pub removed: Vec<(Id, String)>,
}

/// Rebuilds the index from the pack headers. The caller holds the maintenance lock.
pub fn repair_index(repo: &mut Repository, opts: &RepairOptions) -> Result<IndexRepair> {
    let mut out = IndexRepair::default();
    // Index files first, then packs: every pack an old file lists is in the pack listing.
    let old_files = repo
        .store()
        .list(INDEX_PREFIX)
        .map_err(|e| Error::from(e).context("cannot list index files"))?;
    let mut sizes: Vec<(Id, u64)> = list_packs(repo)?.into_iter().collect();
    sizes.sort();
    let mut records: Vec<PackRecord> = Vec::new();
    let mut decoder = BlobDecoder::new();
    let mut salvage = if opts.read_data && !opts.dry_run {
        Some(BlobSink::new(repo)?)
    } else {
        None
    };
    for (id, size) in sizes {
        let rec = match read_pack_header(repo, &id, size) {
            Ok(r) => r,
            Err(e) if e.kind() == crate::error::Kind::Corrupt => {
                out.unreadable_packs.push((id, e.to_string()));
                continue;
            }
            Err(e) => return Err(e),
        };
        let rec = if opts.read_data {
            match verified(
                repo,
                rec,
                &mut decoder,
                &mut out.corrupt_blobs,
                &mut salvage,
            )? {
                Some(r) => r,
                None => {
                    out.damaged_packs.push(id);
                    continue;
                }
            }
        } else {
            rec
        };
        out.packs_indexed += 1;
        out.blobs_indexed += rec.blobs.len();
        records.push(rec);
    }
    let copies = salvage.map(|s| s.finish()).transpose()?.unwrap_or_default();
    out.packs_indexed += copies.len();
    out.blobs_indexed += copies.iter().map(|p| p.blobs.len()).sum::<usize>();
    records.extend(copies);
    out.index_files_replaced = old_files.len();
    let mut idx = Index::new();
    for r in &records {
        idx.add_pack(r);
    }
    idx.finalize();
    if !opts.dry_run {
        let written = super::prune::write_consolidated(repo, &records)?;
        for f in &old_files {
            let keep =
                Id::from_hex(&f.key[INDEX_PREFIX.len()..]).is_ok_and(|id| written.contains(&id));
            if !keep {
                repo.store()
                    .delete(&f.key)
                    .map_err(|e| Error::from(e).context("cannot remove an old index file"))?;
            }
        }
    }
    repo.replace_index(idx);
    Ok(out)
}

/// Verifies every blob of a pack. A pack with corrupt blobs is not indexed: its good blobs
/// are copied into new packs, and the damaged pack, now in no index, goes with the next
/// prunes. Returns the record to index, if the pack is intact.
fn verified(
    repo: &Repository,
    rec: PackRecord,
    decoder: &mut BlobDecoder,
    corrupt: &mut Vec<(Id, Id)>,
    salvage: &mut Option<BlobSink<'_>>,
) -> Result<Option<PackRecord>> {
    let bytes = repo
        .store()
        .get(&pack_key(&rec.id))
        .map_err(|e| Error::from(e).context(format!("cannot read pack {}", rec.id.short())))?;
    let cipher = repo.keys().pack_cipher(&rec.salt);
    let mut good = Vec::new();
    let before = corrupt.len();
    for b in &rec.blobs {
        let range = b.offset as usize..b.offset as usize + b.stored_len as usize;
        let Some(slice) = bytes.get(range) else {
            corrupt.push((b.id, rec.id));
            continue;
        };
        let mut buf = slice.to_vec();
        let ok = cipher
            .decrypt(b.offset as u64, &b.id, rec.kind as u8, &mut buf)
            .and_then(|_| {
                let raw = (rec.kind == BlobKind::Data).then_some(b.raw_len as usize);
                decoder.decode(buf.clone(), raw)
            })
            .is_ok_and(|plain| repo.keys().blob_id(&plain) == b.id);
        if ok {
            good.push((*b, buf));
        } else {
            corrupt.push((b.id, rec.id));
        }
    }
    if corrupt.len() == before {
        return Ok(Some(rec));
    }
    if let Some(sink) = salvage.as_mut() {
        for (b, encoded) in good {
            sink.add_encoded(rec.kind, b.id, b.raw_len, encoded)?;
        }
    }
    Ok(None)
}

enum Outcome {
    Same,
    New(Id),
    Lost(String),
}

struct Rewriter<'r> {
    repo: &'r Repository,
    present: &'r HashSet<Id>,
    sink: Option<BlobSink<'r>>,
    written: HashSet<Id>,
    memo: HashMap<Id, (Arc<Outcome>, Arc<Vec<Damage>>)>,
}

impl<'r> Rewriter<'r> {
    fn blob_lost(&self, id: &Id) -> bool {
        match self.repo.index().locate(id) {
            None => true,
            Some(loc) => !self.present.contains(&loc.pack.id),
        }
    }

    fn tree(&mut self, id: &Id) -> Result<(Arc<Outcome>, Arc<Vec<Damage>>)> {
        if let Some(m) = self.memo.get(id) {
            return Ok(m.clone());
        }
        let result = match self.repo.read_tree(id) {
            Err(e) if e.kind() == crate::error::Kind::Unavailable => return Err(e),
            Err(e) => (
                Arc::new(Outcome::Lost(format!(
                    "directory listing (tree {}) is lost: {e}",
                    id.short()
                ))),
                Arc::new(Vec::new()),
            ),
            Ok(tree) => {
                let mut nodes = Vec::with_capacity(tree.nodes.len());
                let mut damage = Vec::new();
                let mut changed = false;
                for mut node in tree.nodes {
                    let name = node.name_lossy();
                    match &node.kind {
                        NodeKind::Dir { tree } => {
                            let (outcome, below) = self.tree(tree)?;
                            damage.extend(below.iter().map(|d| Damage {
                                path: format!("{name}/{}", d.path),
                                reason: d.reason.clone(),
                            }));
                            match outcome.as_ref() {
                                Outcome::Same => nodes.push(node),
                                Outcome::New(new) => {
                                    node.kind = NodeKind::Dir { tree: *new };
                                    nodes.push(node);
                                    changed = true;
                                }
                                Outcome::Lost(why) => {
                                    damage.push(Damage {
                                        path: name,
                                        reason: why.clone(),
                                    });
                                    changed = true;
                                }
                            }
                        }
                        NodeKind::File { extents } => {
                            let lost: Vec<Id> = extents
                                .iter()
                                .filter_map(|e| match e {
                                    crate::repo::tree::Extent::Data { id, .. }
                                        if self.blob_lost(id) =>
                                    {
                                        Some(*id)
                                    }
                                    _ => None,
                                })
                                .collect();
                            if lost.is_empty() {
                                nodes.push(node);
                            } else {
                                damage.push(Damage {
                                    path: name,
                                    reason: format!(
                                        "file content lost ({} of its data blobs, first {})",
                                        lost.len(),
                                        lost[0].short()
                                    ),
                                });
                                changed = true;
                            }
                        }
                        _ => nodes.push(node),
                    }
                }
                let outcome = if changed {
                    let bytes = Tree { nodes }.encode();
                    let new = self.repo.keys().blob_id(&bytes);
                    if let Some(sink) = self.sink.as_mut()
                        && self.written.insert(new)
                    {
                        sink.add_plain(BlobKind::Tree, new, &bytes)?;
                    }
                    Outcome::New(new)
                } else {
                    Outcome::Same
                };
                (Arc::new(outcome), Arc::new(damage))
            }
        };
        self.memo.insert(*id, result.clone());
        Ok(result)
    }
}

/// Rewrites every snapshot that refers to lost data. The caller holds the maintenance lock.
pub fn repair_snapshots(repo: &Repository, opts: &RepairOptions) -> Result<SnapshotRepair> {
    let mut out = SnapshotRepair::default();
    let present: HashSet<Id> = list_packs(repo)?.into_keys().collect();
    let (snaps, bad) = walk::read_snapshots(repo)?;
    out.checked = snaps.len() + bad.len();
    for (id, e) in bad {
        if !opts.dry_run {
            repo.store()
                .delete(&snapshot_key(&id))
                .map_err(|e| Error::from(e).context("cannot remove a damaged manifest"))?;
        }
        out.removed
            .push((id, format!("manifest cannot be read: {e}")));
    }
    let mut rw = Rewriter {
        repo,
        present: &present,
        sink: if opts.dry_run {
            None
        } else {
            Some(BlobSink::new(repo)?)
        },
        written: HashSet::new(),
        memo: HashMap::new(),
    };
    let mut plans = Vec::new();
    for s in &snaps {
        let (outcome, damage) = rw.tree(&s.snapshot.tree)?;
        match outcome.as_ref() {
            Outcome::Same => {}
            Outcome::Lost(why) => plans.push((
                s,
                None,
                vec![Damage {
                    path: "/".to_string(),
                    reason: why.clone(),
                }],
            )),
            Outcome::New(root) => plans.push((
                s,
                Some(*root),
                damage
                    .iter()
                    .map(|d| Damage {
                        path: walk::display_path(&d.path),
                        reason: d.reason.clone(),
                    })
                    .collect(),
            )),
        }
    }
    // New trees must be indexed before any snapshot refers to them.
    if let Some(sink) = rw.sink.take() {
        let packs = sink.finish()?;
        if !packs.is_empty() {
            repo.write_index(&packs)?;
        }
    }
    for (s, root, lost) in plans {
        let Some(root) = root else {
            if !opts.dry_run {
                super::retention::delete_snapshot(repo, &s.id)?;
            }
            out.removed.push((
                s.id,
                format!("{}; nothing of it can be restored", lost[0].reason),
            ));
            continue;
        };
        let new = if opts.dry_run {
            None
        } else {
            let mut snap = s.snapshot.clone();
            snap.tree = root;
            snap.status = SnapshotStatus::PartiallyFailed;
            if !snap.tags.iter().any(|t| t == DAMAGED_TAG) {
                snap.tags.push(DAMAGED_TAG.to_string());
            }
            snap.stats.errors += lost.len() as u64;
            for d in &lost {
                if snap.errors.len() < MAX_RECORDED_ERRORS {
                    snap.errors.push(FileError {
                        path: d.path.clone(),
                        error: format!(
                            "lost from the repository, removed by repair of snapshot {}: {}",
                            s.id.short(),
                            d.reason
                        ),
                    });
                }
            }
            let id = repo.write_snapshot(&snap)?;
            super::retention::delete_snapshot(repo, &s.id)?;
            Some(id)
        };
        out.rewritten.push(RewrittenSnapshot {
            old: s.id,
            new,
            lost,
        });
    }
    Ok(out)
}
