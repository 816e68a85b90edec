//! Repository maintenance: retention, garbage collection, checking, repair and key slots.
//!
//! - [`retention`]: which snapshots to forget (expiry and keep policies).
//! - [`prune`]: removes data no snapshot refers to, in two phases, while other nodes keep
//!   writing; [`session`] and [`pending`] hold the protocol writers and prune share.
//! - [`check`]: structure and data verification, naming the affected snapshots and paths.
//! - [`repair`]: rebuilds the index from pack headers and rewrites damaged snapshots.
//! - [`keys`]: lists, adds and removes key slots.
//!
//! The shared pieces here: reading every index file on its own (so one bad file is reported,
//! not fatal), listing packs, and a sink that writes blobs into new packs.

pub mod check;
pub mod keys;
pub mod pending;
pub mod prune;
pub mod repair;
pub mod retention;
pub mod session;
mod walk;

pub use session::WriteSession;

use crate::backup::{BackupOptions, BackupReport, ParentChoice};
use crate::error::{Error, Result};
use crate::repo::index::INDEX_PREFIX;
use crate::repo::pack::{BlobEncoder, PackRecord, PackWriter, pack_key};
use crate::repo::{BlobKind, Id, Repository, index};
use crate::store::StoreErrorKind;
use std::collections::HashMap;

/// Takes a snapshot inside a [`WriteSession`], as every writer must while prunes may run.
///
/// The session's index hides packs pending deletion; a parent snapshot whose root tree is
/// only there cannot serve as the base of an incremental backup, so the backup then reads
/// every file instead of failing. The repository keeps that index afterwards: a caller that
/// goes on to read snapshots written by others (a restore) reloads it first.
pub fn backup(repo: &mut Repository, opts: &BackupOptions) -> Result<BackupReport> {
    let session = WriteSession::begin(repo, "backup")?;
    let mut opts = opts.clone();
    if matches!(opts.parent, ParentChoice::Auto) {
        opts.parent = usable_parent(repo, &opts)?;
    }
    let report = crate::backup::backup(repo, &opts);
    session.finish()?;
    report
}

/// The latest snapshot of the same host and paths, as the backup's own choice would be, if
/// its root tree is in the writer's index.
fn usable_parent(repo: &Repository, opts: &BackupOptions) -> Result<ParentChoice> {
    let mut paths = Vec::new();
    for p in &opts.paths {
        paths.push(crate::backup::absolute(p)?.display().to_string());
    }
    paths.sort();
    paths.dedup();
    let parent = repo
        .list_snapshots()?
        .into_iter()
        .rev()
        .find(|s| s.snapshot.hostname == opts.hostname && s.snapshot.paths == paths);
    Ok(match parent {
        Some(s) if repo.index().contains(&s.snapshot.tree) => ParentChoice::Id(s.id),
        _ => ParentChoice::None,
    })
}

/// One index file as read from the store.
#[derive(Debug)]
pub struct IndexFile {
    pub key: String,
    pub id: Id,
    pub packs: Vec<PackRecord>,
}

/// Every index file; the ones that cannot be read or decoded are returned apart.
/// Index files that decoded, and the keys of those that did not with the reason.
pub type IndexFilesRead = (Vec<IndexFile>, Vec<(String, Error)>);

pub fn read_index_files(repo: &Repository) -> Result<IndexFilesRead> {
    let store = repo.store();
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for f in store
        .list(INDEX_PREFIX)
        .map_err(|e| Error::from(e).context("cannot list index files"))?
    {
        let Ok(id) = Id::from_hex(&f.key[INDEX_PREFIX.len()..]) else {
            bad.push((f.key.clone(), Error::corrupt("not an index file name")));
            continue;
        };
        let bytes = match store.get(&f.key) {
            Ok(b) => b,
            Err(e) if e.kind == StoreErrorKind::NotFound => continue,
            Err(e) => return Err(Error::from(e).context("cannot read an index file")),
        };
        match index::decode_file(repo.keys(), &id, &bytes) {
            Ok(packs) => good.push(IndexFile {
                key: f.key,
                id,
                packs,
            }),
            Err(e) => bad.push((f.key, e)),
        }
    }
    Ok((good, bad))
}

/// Every object under `packs/`: pack ID to stored size.
pub fn list_packs(repo: &Repository) -> Result<HashMap<Id, u64>> {
    let mut out = HashMap::new();
    for o in repo
        .store()
        .list("packs/")
        .map_err(|e| Error::from(e).context("cannot list packs"))?
    {
        let name = o.key.rsplit('/').next().unwrap_or("");
        match Id::from_hex(name) {
            Ok(id) if o.key == pack_key(&id) => {
                out.insert(id, o.size);
            }
            _ => {
                return Err(Error::corrupt(format!(
                    "unexpected object {} under packs/",
                    o.key
                )));
            }
        }
    }
    Ok(out)
}

/// The size a pack must have given its header entries: blobs, sealed header, trailer.
pub fn expected_pack_size(rec: &PackRecord) -> u64 {
    let data_end = rec
        .blobs
        .iter()
        .map(|b| b.offset as u64 + b.stored_len as u64)
        .max()
        .unwrap_or(0);
    // Sealed header: salt 16 + fixed 26 + 44 per blob + tag 16; trailer 8.
    data_end + 16 + 26 + 44 * rec.blobs.len() as u64 + 16 + crate::repo::pack::TRAILER_LEN as u64
}

/// Reads a pack's header from its tail: two ranged reads (trailer, then header).
pub fn read_pack_header(repo: &Repository, id: &Id, size: u64) -> Result<PackRecord> {
    use crate::repo::pack::{TRAILER_LEN, decode_tail};
    let key = pack_key(id);
    let store = repo.store();
    let short = |n: u64| {
        Error::corrupt(format!(
            "pack {} is {n} bytes, too short to be a pack",
            id.short()
        ))
    };
    if size < TRAILER_LEN as u64 {
        return Err(short(size));
    }
    let trailer = store
        .get_range(&key, size - TRAILER_LEN as u64, TRAILER_LEN as u64)
        .map_err(|e| Error::from(e).context(format!("cannot read pack {}", id.short())))?;
    if trailer.len() != TRAILER_LEN || &trailer[4..] != crate::repo::pack::PACK_MAGIC {
        return Err(Error::corrupt(format!(
            "pack {} has no pack trailer (truncated or not a pack)",
            id.short()
        )));
    }
    let hlen = u32::from_le_bytes(trailer[..4].try_into().unwrap()) as u64;
    let tail_len = hlen + TRAILER_LEN as u64;
    if tail_len > size {
        return Err(short(size));
    }
    let tail = store
        .get_range(&key, size - tail_len, tail_len)
        .map_err(|e| Error::from(e).context(format!("cannot read pack {}", id.short())))?;
    decode_tail(repo.keys(), *id, &tail, size)
}

/// Writes blobs into new packs (one open pack per kind), uploading full packs; the caller
/// writes the index for [`BlobSink::finish`]'s records.
pub struct BlobSink<'r> {
    repo: &'r Repository,
    encoder: BlobEncoder,
    open: HashMap<u8, PackWriter>,
    done: Vec<PackRecord>,
}

impl<'r> BlobSink<'r> {
    pub fn new(repo: &'r Repository) -> Result<Self> {
        Ok(BlobSink {
            repo,
            encoder: BlobEncoder::new(repo.config().compression.level)?,
            open: HashMap::new(),
            done: Vec::new(),
        })
    }

    /// Adds a plaintext blob (compressing it).
    pub fn add_plain(&mut self, kind: BlobKind, id: Id, plain: &[u8]) -> Result<()> {
        let mut enc = Vec::new();
        self.encoder.encode(plain, &mut enc);
        self.add_encoded(kind, id, plain.len() as u32, enc)
    }

    /// Adds a blob already in stored form before encryption (`payload || encoding`).
    pub fn add_encoded(
        &mut self,
        kind: BlobKind,
        id: Id,
        raw_len: u32,
        mut encoded: Vec<u8>,
    ) -> Result<()> {
        let w = match self.open.entry(kind as u8) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(PackWriter::create(
                self.repo.keys(),
                kind,
                self.repo.spool_dir(),
            )?),
        };
        w.add(id, raw_len, &mut encoded)?;
        if w.size() >= self.repo.config().pack_target_size as u64 {
            let w = self.open.remove(&(kind as u8)).expect("just used");
            self.upload(w)?;
        }
        Ok(())
    }

    fn upload(&mut self, w: PackWriter) -> Result<()> {
        let (rec, path) = w.finish(self.repo.keys())?;
        self.repo.put_pack(&rec, &path)?;
        self.done.push(rec);
        Ok(())
    }

    /// Uploads the open packs; returns every pack written.
    pub fn finish(mut self) -> Result<Vec<PackRecord>> {
        let open: Vec<_> = self.open.drain().map(|(_, w)| w).collect();
        for w in open {
            if w.is_empty() {
                w.discard();
            } else {
                self.upload(w)?;
            }
        }
        Ok(std::mem::take(&mut self.done))
    }
}

impl Drop for BlobSink<'_> {
    fn drop(&mut self) {
        for (_, w) in self.open.drain() {
            w.discard();
        }
    }
}

/// Reads a snapshot manifest by ID without failing the whole listing.
pub fn list_snapshot_ids(repo: &Repository) -> Result<Vec<Id>> {
    use crate::repo::snapshot::SNAPSHOTS_PREFIX;
    let mut out = Vec::new();
    for o in repo
        .store()
        .list(SNAPSHOTS_PREFIX)
        .map_err(|e| Error::from(e).context("cannot list snapshots"))?
    {
        let id = Id::from_hex(&o.key[SNAPSHOTS_PREFIX.len()..])
            .map_err(|_| Error::corrupt(format!("unexpected object {} in snapshots/", o.key)))?;
        out.push(id);
    }
    out.sort();
    Ok(out)
}
