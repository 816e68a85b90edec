//! Readers: one file at a time, its data regions cut into chunks with FastCDC and hashed; new
//! chunks go to the packers. Holes in sparse files are recorded, never read.

use super::packer::{FinishedPack, NewBlob, Packer};
use super::{Shared, bump};
use crate::fsmeta;
use crate::progress::Progress;
use crate::repo::BlobKind;
use crate::repo::tree::{Extent, Timestamp};
use crossbeam_channel::{Receiver, Sender};
use fastcdc::v2020::{FastCDC, Normalization};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

pub(super) struct FileJob {
    pub path: PathBuf,
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub inode: u64,
    pub slot: Arc<Slot>,
}

/// A job never read (left in the queue when the readers stopped, or dropped by a reader that
/// panicked) fails its file: the tree builder waits on every slot, and an empty one would
/// hang the backup instead of letting the failure surface.
impl Drop for FileJob {
    fn drop(&mut self) {
        self.abandon();
    }
}

impl FileJob {
    /// Fails the file unless its slot is filled already (checked first: this runs for every
    /// file, twice, and the message need not be built for a filled slot).
    fn abandon(&self) {
        if self.slot.get().is_some() {
            return;
        }
        self.slot.set(FileOutcome::Failed(
            "the backup stopped before this file was read".into(),
        ));
    }
}

/// A job a reader took: counted as finished however the reader leaves it (read, failed, or
/// dropped in a panic), and only once its slot is filled, which the tree builder relies on.
struct Taken<'a> {
    job: FileJob,
    backlog: &'a Backlog,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.job.abandon();
        self.backlog.finished();
    }
}

/// What reading a file produced.
#[derive(Debug, Clone)]
pub(super) enum FileOutcome {
    Read {
        extents: Vec<Extent>,
    },
    /// The file could not be stored; the message says why.
    Failed(String),
}

/// A file's outcome, filled once by the reader that read it (or by the job's drop).
#[derive(Default)]
pub(super) struct Slot(OnceLock<FileOutcome>);

impl Slot {
    pub fn set(&self, v: FileOutcome) {
        let _ = self.0.set(v);
    }

    pub fn get(&self) -> Option<&FileOutcome> {
        self.0.get()
    }
}

/// What the walker and the tree builder know of the readers' progress.
///
/// The walker's lead is bounded: once `high` files are queued it sleeps until the readers
/// are down to `high / 2` (a bounded channel would wake it each time a reader takes a file
/// off a full queue, a thread switch per file). The tree builder, waiting for a file still
/// being read, sleeps until the readers have finished a batch of files, not just that one:
/// it would otherwise be woken once per file, right behind the readers.
pub(super) struct Backlog {
    state: Mutex<BacklogState>,
    walker_room: Condvar,
    builder_progress: Condvar,
    high: usize,
}

#[derive(Default)]
struct BacklogState {
    /// Files queued and not yet taken by a reader.
    queued: usize,
    /// Files ever queued, and files finished.
    admitted: u64,
    done: u64,
    walker_waits: bool,
    /// The tree builder sleeps until `done` reaches this.
    builder_target: Option<u64>,
    readers: usize,
}

/// How many finished files wake a waiting tree builder.
const BUILDER_BATCH: u64 = 64;

impl Backlog {
    pub fn new(high: usize, readers: usize) -> Backlog {
        Backlog {
            state: Mutex::new(BacklogState {
                readers,
                ..Default::default()
            }),
            walker_room: Condvar::new(),
            builder_progress: Condvar::new(),
            high,
        }
    }

    /// Counts a file about to be queued, first waiting for room (none needed once every
    /// reader has stopped: the queue's send then fails).
    pub fn admit(&self) {
        let mut g = self.state.lock().unwrap();
        while g.queued >= self.high && g.readers > 0 {
            g.walker_waits = true;
            g = self.walker_room.wait(g).unwrap();
        }
        g.queued += 1;
        g.admitted += 1;
    }

    fn taken(&self) {
        let mut g = self.state.lock().unwrap();
        g.queued = g.queued.saturating_sub(1);
        if g.walker_waits && g.queued <= self.high / 2 {
            g.walker_waits = false;
            self.walker_room.notify_one();
        }
    }

    fn finished(&self) {
        let mut g = self.state.lock().unwrap();
        g.done += 1;
        if g.builder_target.is_some_and(|t| g.done >= t) {
            g.builder_target = None;
            self.builder_progress.notify_one();
        }
    }

    /// The outcome of a queued file, once a reader has filled its slot.
    pub fn outcome<'a>(&self, slot: &'a Slot) -> &'a FileOutcome {
        loop {
            if let Some(v) = slot.get() {
                return v;
            }
            let mut g = self.state.lock().unwrap();
            // A slot is filled before its file counts as finished: if every queued file is
            // finished (or no reader is left to finish one), the slot is filled by now.
            let target = (g.done + BUILDER_BATCH).min(g.admitted);
            if slot.get().is_none() && g.done < target && g.readers > 0 {
                g.builder_target = Some(target);
                while g.builder_target.is_some() && g.readers > 0 {
                    g = self.builder_progress.wait(g).unwrap();
                }
            }
        }
    }

    fn reader_stopped(&self) {
        let mut g = self.state.lock().unwrap();
        g.readers -= 1;
        if g.readers == 0 {
            self.walker_room.notify_one();
            self.builder_progress.notify_one();
        }
    }
}

/// Tells the backlog a reader stopped, however it stops (a panic included), so the walker
/// never waits for readers that are gone.
struct ReaderAlive<'a>(&'a Backlog);

impl Drop for ReaderAlive<'_> {
    fn drop(&mut self) {
        self.0.reader_stopped();
    }
}

/// Chunks up to this size a reader packs itself: most files of a configuration tree are
/// this small, and handing each one to a packer thread would cost a copy and a thread
/// wake-up, more than compressing it.
const READER_PACKS_UP_TO: usize = 64 << 10;

/// Where a reader's new chunks go: small ones into its own pack, the others to the packers.
struct Outlet<'s, 'r> {
    blobs: Sender<NewBlob>,
    own: Option<Packer<'s, 'r>>,
}

pub(super) fn run(
    shared: &Shared<'_>,
    jobs: Receiver<FileJob>,
    backlog: &Backlog,
    blobs: Sender<NewBlob>,
    packs: Sender<FinishedPack>,
) {
    let _alive = ReaderAlive(backlog);
    let mut out = Outlet {
        blobs,
        own: Packer::new(shared, BlobKind::Data, packs),
    };
    let cfg = &shared.repo.config().chunker;
    let params = ChunkParams {
        min: cfg.min_size as usize,
        avg: cfg.avg_size as usize,
        max: cfg.max_size as usize,
        level: match cfg.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        },
        seed: shared.repo.keys().chunker_seed(),
    };
    let mut buf = Vec::new();
    for job in jobs {
        backlog.taken();
        let taken = Taken { job, backlog };
        let job = &taken.job;
        // The walk may be long over when a cancel comes: readers must notice it too.
        if shared.progress.is_cancelled() {
            shared.fail(crate::error::Error::cancelled());
        }
        if shared.aborted() {
            job.slot.set(FileOutcome::Failed("backup aborted".into()));
            continue;
        }
        let outcome = match read_file(shared, job, &params, &mut buf, &mut out) {
            Ok(o) => o,
            // Stopped by a cancel or another stage's failure: not a problem of this file.
            Err(msg) if shared.aborted() => FileOutcome::Failed(msg),
            Err(msg) => {
                shared.file_error(&job.path, &msg);
                FileOutcome::Failed(msg)
            }
        };
        job.slot.set(outcome);
        Progress::add(&shared.progress.files_done, 1);
        if buf.capacity() > 16 << 20 {
            buf = Vec::new();
        }
    }
    if let Some(p) = out.own {
        p.finish();
    }
}

pub(super) struct ChunkParams {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
    pub level: Normalization,
    pub seed: u64,
}

fn open_noatime(path: &std::path::Path) -> std::io::Result<File> {
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_NOFOLLOW)
        .open(path)
    {
        // O_NOATIME is only allowed to the file's owner (or CAP_FOWNER).
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path),
        other => other,
    }
}

fn read_file(
    shared: &Shared<'_>,
    job: &FileJob,
    params: &ChunkParams,
    buf: &mut Vec<u8>,
    out: &mut Outlet<'_, '_>,
) -> Result<FileOutcome, String> {
    let mut file = open_noatime(&job.path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "vanished before it could be read".to_string(),
        _ => format!("cannot open: {e}"),
    })?;
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if meta.ino() != job.inode || !meta.is_file() {
        return Err("was replaced while the backup ran; not stored".into());
    }
    let regions =
        fsmeta::data_regions(&file, &meta).map_err(|e| format!("cannot map holes: {e}"))?;
    let mut extents = Vec::new();
    let mut pos = 0u64;
    for (start, len) in regions {
        if start > pos {
            extents.push(Extent::Hole { len: start - pos });
        }
        file.seek(SeekFrom::Start(start))
            .map_err(|e| format!("cannot seek: {e}"))?;
        let got = chunk_region(shared, &mut file, len, params, buf, out, &mut extents)
            .map_err(|e| format!("read failed: {e}"))?;
        pos = start + got;
        if got < len {
            break; // shrank while being read; detected below
        }
    }
    // Trailing hole, and the size the node recorded.
    if pos < job.size && meta.size() == job.size {
        extents.push(Extent::Hole {
            len: job.size - pos,
        });
    }
    let after = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    let now_mtime = Timestamp {
        secs: after.mtime(),
        nanos: after.mtime_nsec() as u32,
    };
    let now_ctime = Timestamp {
        secs: after.ctime(),
        nanos: after.ctime_nsec() as u32,
    };
    let stored: u64 = extents.iter().map(Extent::len).sum();
    if after.size() != job.size
        || now_mtime != job.mtime
        || now_ctime != job.ctime
        || stored != job.size
    {
        return Err("changed while being read; the snapshot keeps no copy of it".into());
    }
    Ok(FileOutcome::Read { extents })
}

/// Chunks `len` bytes from the file's current position; returns how many were read.
fn chunk_region(
    shared: &Shared<'_>,
    file: &mut File,
    len: u64,
    p: &ChunkParams,
    buf: &mut Vec<u8>,
    out: &mut Outlet<'_, '_>,
    extents: &mut Vec<Extent>,
) -> std::io::Result<u64> {
    // The largest chunk plus an average one: every refill brings at least an average chunk
    // of new data, and what a reader holds stays near the chunk size limit.
    let window = p.max + p.avg;
    let mut remaining = len;
    let mut total = 0u64;
    buf.clear();
    loop {
        if shared.progress.is_cancelled() {
            shared.fail(crate::error::Error::cancelled());
            return Err(std::io::Error::other("backup cancelled"));
        }
        // Fill the buffer up to the window (or the end of the region).
        let want = (window - buf.len()).min(remaining as usize);
        if want > 0 {
            let start = buf.len();
            buf.resize(start + want, 0);
            let mut filled = 0;
            while filled < want {
                let n = file.read(&mut buf[start + filled..start + want])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            buf.truncate(start + filled);
            remaining -= filled as u64;
            bump(&shared.stats.bytes_read, filled as u64);
            Progress::add(&shared.progress.bytes_done, filled as u64);
            if filled < want {
                remaining = 0; // EOF before the region's end: the file shrank
            }
        }
        if buf.is_empty() {
            return Ok(total);
        }
        let last = remaining == 0;
        let mut consumed = 0;
        let cdc = FastCDC::with_level_and_seed(buf, p.min, p.avg, p.max, p.level, p.seed);
        for chunk in cdc {
            let end = chunk.offset + chunk.length;
            // A cut at the buffer's end is not a real boundary unless the data ends there.
            if end == buf.len() && !last {
                break;
            }
            emit_chunk(shared, &buf[chunk.offset..end], out, extents);
            consumed = end;
        }
        total += consumed as u64;
        buf.drain(..consumed);
        if last && buf.is_empty() {
            return Ok(total);
        }
    }
}

fn emit_chunk(
    shared: &Shared<'_>,
    data: &[u8],
    out: &mut Outlet<'_, '_>,
    extents: &mut Vec<Extent>,
) {
    let id = shared.repo.keys().blob_id(data);
    extents.push(Extent::Data {
        id,
        len: data.len() as u32,
    });
    if shared.claim(&id) {
        bump(&shared.stats.bytes_new, data.len() as u64);
        bump(&shared.stats.data_blobs_new, 1);
        match &mut out.own {
            Some(p) if data.len() <= READER_PACKS_UP_TO => p.add(id, data),
            _ => {
                let _ = out.blobs.send(NewBlob {
                    id,
                    data: shared.buffers.copy(data),
                });
            }
        }
    }
}
