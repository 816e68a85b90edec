//! Writers: threads that fill files piece by piece. The first piece of a file to arrive
//! creates it unnamed (or under a temporary name); the last one to finish gives it its
//! metadata and its name, or removes it if any piece failed.

use super::Errors;
use super::fsops;
use crate::progress::Progress;
use crate::repo::tree::{Extent, Node};
use crate::repo::{BlobBuffers, Repository};
use crossbeam_channel::Receiver;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub(crate) struct Context<'r> {
    pub repo: &'r Repository,
    pub root: &'r File,
    pub target: &'r Path,
    pub progress: &'r Progress,
    pub errors: &'r Errors,
    pub replace_dirs: bool,
}

struct Open {
    file: File,
    /// Created with `O_TMPFILE`: it gets its name by a link, not a rename.
    unnamed: bool,
}

/// One file being restored, shared by its pieces.
pub(super) struct FileState {
    /// The directory it goes in, opened by the planner.
    dir: Arc<OwnedFd>,
    rel_dir: PathBuf,
    node: Node,
    shown: PathBuf,
    /// Made when first needed: most files never have a temporary name.
    tmp: OnceLock<Vec<u8>>,
    open: Mutex<Option<Result<Arc<Open>, String>>>,
    remaining: AtomicUsize,
    failure: Mutex<Option<String>>,
}

impl FileState {
    pub fn new(
        dir: Arc<OwnedFd>,
        rel_dir: PathBuf,
        node: Node,
        shown: PathBuf,
        pieces: usize,
    ) -> FileState {
        FileState {
            dir,
            rel_dir,
            node,
            shown,
            tmp: OnceLock::new(),
            open: Mutex::new(None),
            remaining: AtomicUsize::new(pieces),
            failure: Mutex::new(None),
        }
    }

    fn tmp(&self) -> &[u8] {
        self.tmp.get_or_init(fsops::temp_name)
    }

    /// Whether writing the extents alone gives the file its size: no holes to leave.
    fn dense(&self) -> bool {
        match &self.node.kind {
            crate::repo::tree::NodeKind::File { extents } => {
                extents.iter().all(|e| matches!(e, Extent::Data { .. }))
                    && extents.iter().map(Extent::len).sum::<u64>() == self.node.size
            }
            _ => false,
        }
    }

    fn fail(&self, msg: String) {
        let mut f = self.failure.lock().unwrap();
        if f.is_none() {
            *f = Some(msg);
        }
    }
}

pub(super) struct Piece {
    pub file: Arc<FileState>,
    /// (offset in the file, extent)
    pub extents: Vec<(u64, Extent)>,
}

/// Returns (files restored, bytes written).
pub(super) fn run(ctx: &Context<'_>, pieces: Receiver<Piece>) -> (u64, u64) {
    let mut bufs = BlobBuffers::default();
    let (mut files, mut bytes) = (0u64, 0u64);
    for piece in pieces {
        let state = &piece.file;
        if ctx.progress.is_cancelled() {
            state.fail("restore cancelled".into());
        } else {
            match open_file(state) {
                Ok(open) => {
                    if let Err(msg) =
                        write_piece(ctx, &open.file, &piece.extents, &mut bufs, &mut bytes)
                    {
                        state.fail(msg);
                    }
                }
                Err(msg) => state.fail(msg),
            }
        }
        if state.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if finalize(ctx, state) {
                files += 1;
            }
            Progress::add(&ctx.progress.files_done, 1);
        }
    }
    (files, bytes)
}

fn open_file(state: &FileState) -> Result<Arc<Open>, String> {
    let mut guard = state.open.lock().unwrap();
    if let Some(r) = guard.as_ref() {
        return r.clone();
    }
    let result = (|| {
        let dir = &state.dir;
        let cannot_create =
            |e: std::io::Error| crate::error::Error::io("cannot create the file", e).to_string();
        // An unnamed file first: one directory update (the link) instead of two (create under
        // a temporary name, rename), and nothing left behind if the restore dies.
        let (fd, unnamed) = match fsops::create_unnamed(dir.as_fd()).map_err(cannot_create)? {
            Some(fd) => (fd, true),
            None => {
                let flags = OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let fd = openat(
                    &**dir,
                    OsStr::from_bytes(state.tmp()),
                    flags,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| cannot_create(fsops::errno(e)))?;
                (fd, false)
            }
        };
        let file = File::from(fd);
        // Sizing first makes every hole a hole; data is then written in place. A file of
        // data alone gets its size from the writes.
        if !state.dense()
            && let Err(e) = file.set_len(state.node.size)
        {
            // Nothing will finish this file: remove it now, or it stays under its temp name.
            if !unnamed {
                fsops::unlink_quiet(dir.as_fd(), state.tmp());
            }
            return Err(crate::error::Error::io("cannot size the file", e).to_string());
        }
        Ok(Arc::new(Open { file, unnamed }))
    })();
    *guard = Some(result.clone());
    result
}

fn write_piece(
    ctx: &Context<'_>,
    file: &File,
    extents: &[(u64, Extent)],
    bufs: &mut BlobBuffers,
    bytes: &mut u64,
) -> Result<(), String> {
    for (offset, extent) in extents {
        if let Extent::Data { id, len } = extent {
            let data = ctx
                .repo
                .read_blob(id, Some(*len as usize), bufs)
                .map_err(|e| e.to_string())?;
            file.write_all_at(data, *offset)
                .map_err(|e| crate::error::Error::io("cannot write", e).to_string())?;
            *bytes += data.len() as u64;
            Progress::add(&ctx.progress.bytes_done, data.len() as u64);
        }
    }
    Ok(())
}

/// Metadata and rename for a complete file, or clean-up for a failed one.
fn finalize(ctx: &Context<'_>, state: &FileState) -> bool {
    let open = state.open.lock().unwrap().take();
    let failure = state.failure.lock().unwrap().take();
    let Some(Ok(open)) = open else {
        ctx.errors.record(
            &state.shown,
            failure.unwrap_or_else(|| "was not created".into()),
        );
        return false;
    };
    let result = match failure {
        Some(msg) => Err(msg),
        None => fsops::apply_meta_fd(open.file.as_fd(), &state.node)
            .and_then(|()| {
                if open.unnamed {
                    // The name is free: linking is the commit. Taken: link under the
                    // temporary name, then replace as a named temporary file would.
                    match fsops::link_unnamed(
                        open.file.as_fd(),
                        state.dir.as_fd(),
                        &state.node.name,
                    ) {
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                            fsops::link_unnamed(open.file.as_fd(), state.dir.as_fd(), state.tmp())?
                        }
                        other => return other,
                    }
                }
                let dir_path = ctx.target.join(&state.rel_dir);
                fsops::commit(
                    state.dir.as_fd(),
                    state.tmp(),
                    &state.node.name,
                    ctx.replace_dirs,
                    &dir_path,
                )
            })
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => true,
        Err(msg) => {
            if let Some(tmp) = state.tmp.get() {
                fsops::unlink_quiet(state.dir.as_fd(), tmp);
            }
            ctx.errors.record(&state.shown, msg);
            false
        }
    }
}
