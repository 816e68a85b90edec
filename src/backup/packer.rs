//! Packers and the uploader.
//!
//! Each packer thread compresses and encrypts blobs into a pack of its own and hands it to
//! the uploader when it reaches the target size. The uploader stores packs and writes an
//! index file every [`CHECKPOINT_PACKS`] packs, so that if the backup dies, what was uploaded
//! is indexed and the next backup does not send it again.

use super::{Shared, bump};
use crate::repo::Id;
use crate::repo::pack::{BlobEncoder, BlobKind, PackRecord, PackWriter};
use crossbeam_channel::{Receiver, Sender};
use std::path::PathBuf;

pub const CHECKPOINT_PACKS: usize = 16;

/// Chunk buffers on their way back from the packers to the readers.
///
/// A new chunk is copied out of its reader's window so the window can move on; a fresh
/// buffer for each megabyte-sized chunk would be a fresh mapping (the allocator maps blocks
/// this large on their own, `src/memory.rs`), every page of it faulted in and zeroed by the
/// kernel, then unmapped. Recycled, a few buffers serve the whole backup.
///
/// Kept buffers are memory held while idle, so the pool is small and keeps no buffer above
/// `max_kept` bytes (chunks above twice the average are rare): a buffer given back to a full
/// pool, or a large one, is freed.
pub(super) struct Recycler {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
    max_kept: usize,
}

impl Recycler {
    pub fn new(capacity: usize, max_kept: usize) -> Recycler {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        Recycler { tx, rx, max_kept }
    }

    /// A copy of `data` in a recycled buffer when one is free.
    pub fn copy(&self, data: &[u8]) -> Vec<u8> {
        let mut buf = self.rx.try_recv().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        buf
    }

    pub fn give_back(&self, buf: Vec<u8>) {
        if buf.capacity() <= self.max_kept {
            let _ = self.tx.try_send(buf);
        }
    }
}

pub(super) struct NewBlob {
    pub id: Id,
    pub data: Vec<u8>,
}

pub(super) struct FinishedPack {
    pub record: PackRecord,
    pub path: PathBuf,
}

/// Adds encoded blobs to a pack of one kind, sending it on when full.
pub(super) struct Packer<'s, 'r> {
    shared: &'s Shared<'r>,
    kind: BlobKind,
    encoder: BlobEncoder,
    scratch: Vec<u8>,
    writer: Option<PackWriter>,
    out: Sender<FinishedPack>,
}

impl<'s, 'r> Packer<'s, 'r> {
    pub fn new(shared: &'s Shared<'r>, kind: BlobKind, out: Sender<FinishedPack>) -> Option<Self> {
        let encoder = match BlobEncoder::new(shared.repo.config().compression.level) {
            Ok(e) => e,
            Err(e) => {
                shared.fail(e);
                return None;
            }
        };
        Some(Packer {
            shared,
            kind,
            encoder,
            scratch: Vec::new(),
            writer: None,
            out,
        })
    }

    pub fn add(&mut self, id: Id, data: &[u8]) {
        if self.shared.aborted() {
            return;
        }
        if let Err(e) = self.try_add(id, data) {
            self.shared.fail(e);
        }
    }

    fn try_add(&mut self, id: Id, data: &[u8]) -> crate::error::Result<()> {
        let repo = self.shared.repo;
        self.encoder.encode(data, &mut self.scratch);
        if self.writer.is_none() {
            self.writer = Some(PackWriter::create(
                repo.keys(),
                self.kind,
                repo.spool_dir(),
            )?);
        }
        let w = self.writer.as_mut().unwrap();
        w.add(id, data.len() as u32, &mut self.scratch)?;
        if w.size() >= repo.config().pack_target_size as u64 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> crate::error::Result<()> {
        if let Some(w) = self.writer.take() {
            let (record, path) = w.finish(self.shared.repo.keys())?;
            if let Err(e) = self.out.send(FinishedPack { record, path }) {
                let _ = std::fs::remove_file(&e.0.path);
            }
        }
        Ok(())
    }

    /// Sends the last, partly filled pack (or discards it after a failure).
    pub fn finish(mut self) {
        if self.shared.aborted() {
            if let Some(w) = self.writer.take() {
                w.discard();
            }
            return;
        }
        if let Err(e) = self.flush() {
            self.shared.fail(e);
        }
    }
}

pub(super) fn run(shared: &Shared<'_>, blobs: Receiver<NewBlob>, out: Sender<FinishedPack>) {
    let Some(mut packer) = Packer::new(shared, BlobKind::Data, out) else {
        for _ in blobs {}
        return;
    };
    for blob in blobs {
        packer.add(blob.id, &blob.data);
        shared.buffers.give_back(blob.data);
    }
    packer.finish();
}

/// Stores packs as they come, with as many uploads in flight as the store wants; returns
/// every pack stored and those of them not yet listed in an index file.
pub(super) fn upload(
    shared: &Shared<'_>,
    packs: Receiver<FinishedPack>,
) -> (Vec<PackRecord>, Vec<PackRecord>) {
    let lists = std::sync::Mutex::new((Vec::new(), Vec::new()));
    let uploads = shared.repo.store().parallelism().clamp(1, 32);
    std::thread::scope(|scope| {
        for _ in 0..uploads {
            let (packs, lists) = (packs.clone(), &lists);
            scope.spawn(move || upload_each(shared, packs, lists));
        }
    });
    lists.into_inner().unwrap()
}

/// (indexed, pending): packs listed by a checkpoint index file, and packs not yet listed.
type PackLists = std::sync::Mutex<(Vec<PackRecord>, Vec<PackRecord>)>;

fn upload_each(shared: &Shared<'_>, packs: Receiver<FinishedPack>, lists: &PackLists) {
    let repo = shared.repo;
    for pack in packs {
        if shared.aborted() {
            let _ = std::fs::remove_file(&pack.path);
            continue;
        }
        let size = pack.record.size;
        if let Err(e) = repo.put_pack(&pack.record, &pack.path) {
            let _ = std::fs::remove_file(&pack.path);
            shared.fail(e);
            continue;
        }
        bump(&shared.stats.bytes_stored, size);
        bump(&shared.stats.packs_written, 1);
        let checkpoint = {
            let mut l = lists.lock().unwrap();
            l.1.push(pack.record);
            if l.1.len() >= CHECKPOINT_PACKS {
                std::mem::take(&mut l.1)
            } else {
                Vec::new()
            }
        };
        if checkpoint.is_empty() {
            continue;
        }
        match repo.write_index(&checkpoint) {
            Ok(_) => lists.lock().unwrap().0.extend(checkpoint),
            Err(e) => {
                // Keep them for the final index, which the failure path still tries to write.
                lists.lock().unwrap().1.extend(checkpoint);
                shared.fail(e);
            }
        }
    }
}
