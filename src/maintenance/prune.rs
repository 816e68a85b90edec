//! Garbage collection: deletes packs no snapshot needs, repacks packs that are mostly
//! garbage, and consolidates index files, while other nodes keep writing.
//!
//! Deletion takes two prune runs. A run first completes the batches announced by earlier
//! runs whose witnessed writers have all finished ("ripe"), keeping any pack a snapshot
//! written since then still needs; then it announces a new batch (a sealed pending object)
//! and records which writers were running (the witness). Writers hide announced packs from
//! their index, so they store those blobs again rather than reuse them. The argument that
//! this never deletes live data, without locks and without clocks, is in docs/FORMAT.md.
//!
//! Memory: the index records twice (the pack records and the lookup index, 44 B per blob
//! each), one map entry per referenced blob (about 48 B) and one pack being repacked at a
//! time: about 140 B per blob, 1.4 GB for ten million blobs (ten TB of 1 MiB chunks).

use super::pending::{self, Candidate, Pending, Reason};
use super::session::{self, MaintenanceLock, WRITERS_PREFIX};
use super::{BlobSink, list_packs, read_index_files, walk};
use crate::error::{Error, Result};
use crate::repo::pack::{BlobDecoder, PackRecord, pack_key};
use crate::repo::{Id, Index, Repository};
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Compute and report, change nothing.
    pub dry_run: bool,
    /// Repack a pack when at least this share of its bytes is garbage (0.0..=1.0).
    pub repack_unused: f64,
    /// Consolidate the index when there are more files than this, even with nothing to delete.
    pub max_index_files: usize,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            repack_unused: 0.5,
            max_index_files: 32,
        }
    }
}

/// A batch still waiting for writers that were running when it was announced.
#[derive(Debug, Clone)]
pub struct WaitingBatch {
    pub pending: Id,
    pub packs: usize,
    pub bytes: u64,
    pub blocked_by: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    pub dry_run: bool,
    pub snapshots: usize,
    pub referenced_blobs: usize,
    pub packs_before: usize,
    pub pack_bytes_before: u64,
    /// Phase 2: packs deleted now and their bytes (the space freed).
    pub deleted_packs: usize,
    pub deleted_bytes: u64,
    /// Announced packs kept because a snapshot written since then needs them.
    pub kept_for_new_snapshots: usize,
    pub waiting: Vec<WaitingBatch>,
    /// Phase 1: packs announced for deletion by the next run, by reason.
    pub announced_unused: usize,
    pub announced_repacked: usize,
    pub announced_unindexed: usize,
    pub announced_bytes: u64,
    pub announced_pending: Option<Id>,
    /// Whether nobody was writing when this run announced its batch (a next run can
    /// complete it at once).
    pub announced_ripe: bool,
    /// Writers running at the announcement: the batch waits for them.
    pub announced_waiting_for: usize,
    pub repacked_blobs: usize,
    pub repack_bytes_written: u64,
    /// Referenced blobs found in no pack: data loss that check and repair deal with.
    pub missing_blobs: usize,
    /// Packs left alone because a live blob in them failed verification while repacking.
    pub damaged_packs: Vec<Id>,
    pub index_files_before: usize,
    pub index_files_after: usize,
    pub stale_holders_removed: usize,
}

struct PackState {
    rec: PackRecord,
    /// Stored size; None when listed in the index but missing from the store.
    size: Option<u64>,
}

/// Runs one prune cycle (see the module doc).
pub fn prune(repo: &mut Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let lock = if opts.dry_run {
        None
    } else {
        Some(MaintenanceLock::acquire(repo, "prune")?)
    };
    if !opts.dry_run {
        report.stale_holders_removed = session::remove_stale(repo, WRITERS_PREFIX)?;
    }

    // Batches announced earlier, and whether their writers are gone. The marker listing
    // must come before the snapshot listing: a writer whose marker is gone has written its
    // snapshot, and the mark below then sees it.
    let mut batches = pending::read_all(repo)?;
    if !opts.dry_run {
        for (id, (_, witness)) in batches.iter_mut() {
            if witness.is_none() {
                *witness = Some(pending::write_witness(repo, id)?);
            }
        }
    }
    let holders = session::list_holders(repo, WRITERS_PREFIX)?;
    let running: HashMap<&str, String> = holders
        .iter()
        .map(|(_, token, h)| {
            let who = h
                .as_ref()
                .map(|h| h.describe())
                .unwrap_or_else(|| format!("unreadable marker {token}"));
            (token.as_str(), who)
        })
        .collect();
    let mut ripe: Vec<Id> = Vec::new();
    for (id, (p, witness)) in &batches {
        let blocked_by: Vec<String> = match witness {
            Some(w) => w
                .writers
                .iter()
                .filter_map(|t| running.get(t.as_str()).cloned())
                .collect(),
            None => vec!["not yet witnessed (dry run)".to_string()],
        };
        if blocked_by.is_empty() {
            ripe.push(*id);
        } else {
            report.waiting.push(WaitingBatch {
                pending: *id,
                packs: p.candidates.len(),
                bytes: p.candidates.iter().map(|c| c.size).sum(),
                blocked_by,
            });
        }
    }

    // Snapshots, then packs, then index files: each listing sees what the previous one
    // depends on (writers store packs, then their index, then the snapshot).
    let (snaps, bad) = walk::read_snapshots(repo)?;
    if let Some((id, e)) = bad.first() {
        return Err(Error::corrupt(format!(
            "snapshot {} cannot be read ({e}), so what it refers to is unknown and nothing \
             can be deleted safely; run `agentctl check`, then `agentctl repair`",
            id.short()
        )));
    }
    report.snapshots = snaps.len();
    let sizes = list_packs(repo)?;
    let (files, bad_files) = read_index_files(repo)?;
    if let Some((key, e)) = bad_files.first() {
        return Err(Error::corrupt(format!(
            "index file {key} cannot be read ({e}); run `agentctl repair index` first"
        )));
    }
    report.index_files_before = files.len();
    let mut packs: BTreeMap<Id, PackState> = BTreeMap::new();
    let mut full = Index::new();
    for f in &files {
        for rec in &f.packs {
            if let std::collections::btree_map::Entry::Vacant(v) = packs.entry(rec.id) {
                full.add_pack(rec);
                v.insert(PackState {
                    rec: rec.clone(),
                    size: sizes.get(&rec.id).copied(),
                });
            }
        }
    }
    full.finalize();
    repo.replace_index(full);
    report.packs_before = sizes.len();
    report.pack_bytes_before = sizes.values().sum();
    // Per referenced blob: COVERED (a copy in a live pack), CHOSEN (the copy phase 1 keeps).
    let mut referenced = walk::referenced_blobs(repo, snaps.iter().map(|s| &s.snapshot))?;
    report.referenced_blobs = referenced.len();

    // Phase 2: complete ripe batches.
    let mut pending_packs: HashMap<Id, Id> = HashMap::new();
    for (bid, (p, _)) in &batches {
        for c in &p.candidates {
            pending_packs.insert(c.pack, *bid);
        }
    }
    let ripe_set: HashSet<Id> = ripe.iter().copied().collect();
    let is_normal = |id: &Id, st: &PackState, pending: &HashMap<Id, Id>| {
        st.size.is_some() && !pending.contains_key(id)
    };
    for (id, st) in &packs {
        if is_normal(id, st, &pending_packs) {
            mark(&mut referenced, &st.rec, COVERED);
        }
    }
    let mut to_delete: Vec<(Id, u64)> = Vec::new();
    let mut ripe_packs: Vec<Id> = pending_packs
        .iter()
        .filter(|(_, b)| ripe_set.contains(b))
        .map(|(p, _)| *p)
        .collect();
    ripe_packs.sort();
    for pid in ripe_packs {
        let needed = packs
            .get(&pid)
            .filter(|st| st.size.is_some())
            .is_some_and(|st| {
                st.rec
                    .blobs
                    .iter()
                    .any(|b| referenced.get(&b.id).is_some_and(|f| f & COVERED == 0))
            });
        if needed {
            // A snapshot written since the announcement uses it: back to the live packs.
            mark(&mut referenced, &packs[&pid].rec, COVERED);
            pending_packs.remove(&pid);
            report.kept_for_new_snapshots += 1;
        } else {
            // Stays in `pending_packs`, so phase 1 below does not count it again.
            let size = sizes.get(&pid).copied().unwrap_or(0);
            if sizes.contains_key(&pid) {
                to_delete.push((pid, size));
            }
        }
    }

    // Phase 1: choose one copy of every referenced blob among the live packs, preferring
    // packs that hold more of them, and measure each pack's garbage.
    let mut refcount: Vec<(usize, Id)> = packs
        .iter()
        .filter(|(id, st)| is_normal(id, st, &pending_packs))
        .map(|(id, st)| {
            let n = st
                .rec
                .blobs
                .iter()
                .filter(|b| referenced.contains_key(&b.id))
                .count();
            (n, *id)
        })
        .collect();
    refcount.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut live_blobs: HashMap<Id, Vec<usize>> = HashMap::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut repack: Vec<Id> = Vec::new();
    for (_, pid) in &refcount {
        let st = &packs[pid];
        let mut live = Vec::new();
        let (mut live_bytes, mut all_bytes) = (0u64, 0u64);
        for (i, b) in st.rec.blobs.iter().enumerate() {
            all_bytes += b.stored_len as u64;
            if let Some(f) = referenced.get_mut(&b.id)
                && *f & CHOSEN == 0
            {
                *f |= CHOSEN;
                live.push(i);
                live_bytes += b.stored_len as u64;
            }
        }
        let size = st.size.unwrap_or(0);
        if live.is_empty() {
            candidates.push(Candidate {
                pack: *pid,
                size,
                reason: Reason::Unused,
            });
        } else if all_bytes > 0
            && (all_bytes - live_bytes) as f64 >= opts.repack_unused * all_bytes as f64
            && live_bytes < all_bytes
        {
            repack.push(*pid);
            live_blobs.insert(*pid, live);
        }
    }
    report.missing_blobs = referenced
        .iter()
        .filter(|(b, f)| *f & CHOSEN == 0 && !repo.index().contains(b))
        .count();
    let mut unindexed: Vec<(Id, u64)> = sizes
        .iter()
        .filter(|(id, _)| !packs.contains_key(id) && !pending_packs.contains_key(id))
        .filter(|(id, _)| !to_delete.iter().any(|(d, _)| d == *id))
        .map(|(id, s)| (*id, *s))
        .collect();
    unindexed.sort();
    for (id, size) in unindexed {
        candidates.push(Candidate {
            pack: id,
            size,
            reason: Reason::Unindexed,
        });
    }

    // Repack: copy the chosen blobs of mostly-garbage packs into new packs, verifying each.
    let mut new_packs: Vec<PackRecord> = Vec::new();
    if !repack.is_empty() {
        if opts.dry_run {
            for pid in &repack {
                report.repacked_blobs += live_blobs[pid].len();
                candidates.push(Candidate {
                    pack: *pid,
                    size: packs[pid].size.unwrap_or(0),
                    reason: Reason::Repacked,
                });
            }
        } else {
            let mut sink = BlobSink::new(repo)?;
            let mut decoder = BlobDecoder::new();
            for pid in &repack {
                let st = &packs[pid];
                match copy_live(repo, st, &live_blobs[pid], &mut sink, &mut decoder) {
                    Ok(n) => {
                        report.repacked_blobs += n;
                        candidates.push(Candidate {
                            pack: *pid,
                            size: st.size.unwrap_or(0),
                            reason: Reason::Repacked,
                        });
                    }
                    Err(e) if e.kind() == crate::error::Kind::Corrupt => {
                        report.damaged_packs.push(*pid);
                    }
                    Err(e) => return Err(e),
                }
            }
            new_packs = sink.finish()?;
            report.repack_bytes_written = new_packs.iter().map(|p| p.size).sum();
        }
    }
    for c in &candidates {
        match c.reason {
            Reason::Unused => report.announced_unused += 1,
            Reason::Repacked => report.announced_repacked += 1,
            Reason::Unindexed => report.announced_unindexed += 1,
        }
        report.announced_bytes += c.size;
    }
    report.deleted_packs = to_delete.len();
    report.deleted_bytes = to_delete.iter().map(|(_, s)| s).sum();

    if opts.dry_run {
        report.index_files_after = report.index_files_before;
        return Ok(report);
    }

    // The index: one consolidated set of files without the deleted packs, written before the
    // old files go, so a reader always finds every live pack in some file.
    let deleted: HashSet<Id> = to_delete.iter().map(|(id, _)| *id).collect();
    let rewrite =
        !deleted.is_empty() || !new_packs.is_empty() || files.len() > opts.max_index_files;
    if rewrite {
        let mut keep: Vec<PackRecord> = packs
            .into_values()
            .filter(|st| !deleted.contains(&st.rec.id))
            .map(|st| st.rec)
            .collect();
        keep.extend(new_packs);
        let written = write_consolidated(repo, &keep)?;
        for f in &files {
            if !written.contains(&f.id) {
                repo.store().delete(&f.key).map_err(|e| {
                    Error::from(e).context("cannot remove a consolidated index file")
                })?;
            }
        }
        report.index_files_after = written.len();
    } else {
        report.index_files_after = files.len();
    }
    for (id, _) in &to_delete {
        repo.store()
            .delete(&pack_key(id))
            .map_err(|e| Error::from(e).context("cannot delete a pack"))?;
    }
    for id in &ripe {
        pending::remove(repo, id)?;
    }
    batches.retain(|id, _| !ripe_set.contains(id));

    // Announce the new batch, then witness the writers present now.
    if !candidates.is_empty() {
        let p = Pending {
            version: 1,
            candidates,
            observed_snapshots: snaps.iter().map(|s| s.id).collect(),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let id = pending::write_pending(repo, &p)?;
        let w = pending::write_witness(repo, &id)?;
        report.announced_pending = Some(id);
        report.announced_ripe = w.writers.is_empty() && report.damaged_packs.is_empty();
        report.announced_waiting_for = w.writers.len();
    }
    // This handle's index still lists the deleted packs: load the new one.
    repo.reload_index()?;
    if let Some(lock) = lock {
        lock.release()?;
    }
    Ok(report)
}

const COVERED: u8 = 1;
const CHOSEN: u8 = 2;

/// Sets `flag` on the referenced blobs of a pack.
fn mark(referenced: &mut HashMap<Id, u8>, rec: &PackRecord, flag: u8) {
    for b in &rec.blobs {
        if let Some(f) = referenced.get_mut(&b.id) {
            *f |= flag;
        }
    }
}

/// Copies the blobs at `live` positions of a pack into the sink, checking each against its
/// ID on the way. Returns how many were copied.
fn copy_live(
    repo: &Repository,
    st: &PackState,
    live: &[usize],
    sink: &mut BlobSink<'_>,
    decoder: &mut BlobDecoder,
) -> Result<usize> {
    let rec = &st.rec;
    let bytes = repo
        .store()
        .get(&pack_key(&rec.id))
        .map_err(|e| Error::from(e).context(format!("cannot read pack {}", rec.id.short())))?;
    let cipher = repo.keys().pack_cipher(&rec.salt);
    for &i in live {
        let b = &rec.blobs[i];
        let range = b.offset as usize..b.offset as usize + b.stored_len as usize;
        let Some(slice) = bytes.get(range) else {
            return Err(Error::corrupt(format!(
                "pack {} is truncated",
                rec.id.short()
            )));
        };
        let mut buf = slice.to_vec();
        cipher.decrypt(b.offset as u64, &b.id, rec.kind as u8, &mut buf)?;
        let plain = decoder.decode(
            buf.clone(),
            Some(b.raw_len as usize).filter(|_| rec.kind == crate::repo::BlobKind::Data),
        )?;
        if repo.keys().blob_id(&plain) != b.id {
            return Err(Error::corrupt(format!(
                "blob {} in pack {} does not match its ID",
                b.id.short(),
                rec.id.short()
            )));
        }
        sink.add_encoded(rec.kind, b.id, b.raw_len, buf)?;
    }
    Ok(live.len())
}

/// Blobs per consolidated index file: keeps each file to a few MiB.
const BLOBS_PER_INDEX_FILE: usize = 100_000;

/// Writes `packs` as index files of bounded size; returns their IDs.
pub(crate) fn write_consolidated(repo: &Repository, packs: &[PackRecord]) -> Result<HashSet<Id>> {
    let mut written = HashSet::new();
    let mut batch: Vec<PackRecord> = Vec::new();
    let mut blobs = 0;
    for p in packs {
        if blobs + p.blobs.len() > BLOBS_PER_INDEX_FILE && !batch.is_empty() {
            written.insert(repo.write_index(&batch)?);
            batch.clear();
            blobs = 0;
        }
        blobs += p.blobs.len();
        batch.push(p.clone());
    }
    if !batch.is_empty() {
        written.insert(repo.write_index(&batch)?);
    }
    Ok(written)
}
