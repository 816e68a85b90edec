//! Readers: one file at a time, its data regions cut into chunks with FastCDC and hashed; new
//! chunks go to the packers. Holes in sparse files are recorded, never read.

use super::packer::NewBlob;
use super::{Shared, bump};
use crate::fsmeta;
use crate::progress::Progress;
use crate::repo::tree::{Extent, Timestamp};
use crossbeam_channel::{Receiver, Sender};
use fastcdc::v2020::{FastCDC, Normalization};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

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
        self.slot.set_if_empty(FileOutcome::Failed(
            "the backup stopped before this file was read".into(),
        ));
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

/// A one-time cell the tree builder waits on until a reader fills it.
#[derive(Default)]
pub(super) struct Slot {
    value: Mutex<Option<FileOutcome>>,
    ready: Condvar,
}

impl Slot {
    pub fn set(&self, v: FileOutcome) {
        *self.value.lock().unwrap() = Some(v);
        self.ready.notify_all();
    }

    fn set_if_empty(&self, v: FileOutcome) {
        let mut g = self.value.lock().unwrap();
        if g.is_none() {
            *g = Some(v);
            self.ready.notify_all();
        }
    }

    pub fn wait(&self) -> FileOutcome {
        let mut g = self.value.lock().unwrap();
        loop {
            if let Some(v) = g.as_ref() {
                return v.clone();
            }
            g = self.ready.wait(g).unwrap();
        }
    }
}

pub(super) fn run(shared: &Shared<'_>, jobs: Receiver<FileJob>, blobs: Sender<NewBlob>) {
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
        // The walk may be long over when a cancel comes: readers must notice it too.
        if shared.progress.is_cancelled() {
            shared.fail(crate::error::Error::cancelled());
        }
        if shared.aborted() {
            job.slot.set(FileOutcome::Failed("backup aborted".into()));
            continue;
        }
        let outcome = match read_file(shared, &job, &params, &mut buf, &blobs) {
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
    blobs: &Sender<NewBlob>,
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
        let got = chunk_region(shared, &mut file, len, params, buf, blobs, &mut extents)
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
    blobs: &Sender<NewBlob>,
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
            emit_chunk(shared, &buf[chunk.offset..end], blobs, extents);
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
    blobs: &Sender<NewBlob>,
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
        let _ = blobs.send(NewBlob {
            id,
            data: shared.buffers.copy(data),
        });
    }
}
