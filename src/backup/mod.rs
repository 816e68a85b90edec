//! Backup: a directory tree into a snapshot.
//!
//! The pipeline, one stage per file here, joined by bounded channels so memory stays bounded
//! whatever the tree's size:
//!
//! ```text
//! walker ──events──▶ trees ──tree packs──────────────────────────────┐
//!    │                 ▲ (waits on file slots)                         ▼
//!    └──file jobs──▶ reader ×N ──new blobs──▶ packer ×N ──data packs──▶ uploader ──▶ store
//!                       └──────data packs of small chunks──────────────▲
//! ```
//! - [`walker`] lists directories in name order, compares entries with the parent snapshot
//!   and emits nodes; files that changed become jobs.
//! - [`reader`] reads a file's data regions, cuts them with FastCDC, hashes each chunk with
//!   the keyed BLAKE3 and sends chunks the repository lacks to the packers, but packs small
//!   ones (most files of a configuration tree) itself: a hand-off costs more than they do.
//!   The walker's lead over the readers is bounded by a [`reader::Backlog`].
//! - [`packer`] compresses and encrypts blobs into its own pack (one per thread, so blob
//!   order never serialises the cores) and hands full packs to the uploader, which writes
//!   them and, every few packs, an index file (so an interrupted backup is not lost work).
//! - [`trees`] assembles directory trees bottom-up in walk order and stores them as blobs.
//!
//! Write order: packs, then the index listing them, then the snapshot. Any failure before
//! the snapshot is written leaves the repository as valid as it was.

mod exclude;
mod packer;
mod reader;
mod scan;
mod trees;
mod walker;

pub use exclude::{CACHEDIR_TAG, Excludes};

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::snapshot::{FileError, MAX_RECORDED_ERRORS, SnapshotStats};
use crate::repo::{Id, PackRecord, Repository, Snapshot, SnapshotStatus};
use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Directories known to have changed since a parent snapshot (from a file-system watch).
///
/// With hints, a directory that holds no hinted path, and whose own metadata equals its node
/// in `parent`, keeps the parent's subtree without being listed. Whoever gives hints
/// vouches that every change below the backed-up paths since `parent` was taken touched a
/// hinted directory (a created, removed, written or re-attributed entry hints the directory
/// holding it); when in doubt, give none: the backup then compares every entry.
#[derive(Debug, Clone)]
pub struct ChangeHints {
    /// The snapshot the hints are relative to; it becomes the parent.
    pub parent: Id,
    /// Absolute paths of changed directories (and entries).
    pub changed: std::collections::BTreeSet<PathBuf>,
}

impl ChangeHints {
    /// Whether `dir` or anything below it is hinted. Descendants of a path sort right
    /// after it (paths compare by components), so one range lookup answers.
    pub fn touches(&self, dir: &Path) -> bool {
        self.changed
            .range(dir.to_path_buf()..)
            .next()
            .is_some_and(|p| p.starts_with(dir))
    }
}

/// How to choose the snapshot an incremental backup compares against.
#[derive(Debug, Clone, Default)]
pub enum ParentChoice {
    /// The latest snapshot of the same host and paths.
    #[default]
    Auto,
    /// Read every file again.
    None,
    Id(Id),
}

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub tags: Vec<String>,
    pub hostname: String,
    pub name: Option<String>,
    pub excludes: Excludes,
    pub parent: ParentChoice,
    pub expires: Option<chrono::DateTime<chrono::Utc>>,
    /// Change hints; they override `parent` with their own.
    pub hints: Option<ChangeHints>,
    /// Reader and packer threads each; 0 means one per core.
    pub threads: usize,
    pub progress: Arc<Progress>,
    /// Directory listing begun before the repository was opened ([`Prescan::start`] with
    /// these same options).
    pub prescan: Option<Arc<Prescan>>,
}

/// Listing the directories to back up while the repository is being opened.
///
/// Opening a repository is mostly Argon2id (about 0.1 s, one core, by design); listing and
/// lstat-ing the tree needs no key at all. Started first, the scanners have listed the
/// start of the tree by the time the backup begins: an unchanged re-backup then costs about
/// what the walk alone costs. Dropping it stops its threads.
pub struct Prescan {
    scanner: Arc<scan::Scanner>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Prescan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prescan")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Prescan {
    pub fn start(opts: &BackupOptions) -> Prescan {
        let scanner = Arc::new(scan::Scanner::new(
            opts.excludes.clone(),
            opts.hints.clone(),
        ));
        let mut dirs: Vec<PathBuf> = opts.paths.iter().filter_map(|p| absolute(p).ok()).collect();
        dirs.sort();
        dirs.dedup();
        scanner.seed(&dirs);
        let threads = (0..thread_count(opts.threads))
            .filter_map(|_| {
                let s = scanner.clone();
                std::thread::Builder::new()
                    .name("hostagent-scan".into())
                    .spawn(move || s.run())
                    .ok()
            })
            .collect();
        Prescan { scanner, threads }
    }
}

impl Drop for Prescan {
    fn drop(&mut self) {
        self.scanner.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn thread_count(requested: usize) -> usize {
    if requested == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        requested
    }
}

impl BackupOptions {
    pub fn new(paths: Vec<PathBuf>) -> BackupOptions {
        BackupOptions {
            paths,
            tags: Vec::new(),
            hostname: hostname(),
            name: None,
            excludes: Excludes::none(),
            parent: ParentChoice::Auto,
            expires: None,
            hints: None,
            threads: 0,
            progress: Arc::new(Progress::new()),
            prescan: None,
        }
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

#[derive(Debug, Clone)]
pub struct BackupReport {
    pub id: Id,
    pub snapshot: Snapshot,
    /// Directories kept from the parent without listing them (change hints).
    pub dirs_reused: u64,
}

/// State every stage shares: dedup set, counters, per-file errors, the first fatal error.
pub(crate) struct Shared<'a> {
    pub repo: &'a Repository,
    /// The index as it was when the backup started: what is already stored.
    pub index: Arc<crate::repo::Index>,
    pub progress: &'a Progress,
    /// Blob IDs sent to a packer during this backup, so a chunk seen twice is stored once.
    pub seen: Mutex<HashSet<Id>>,
    pub stats: Stats,
    errors: Mutex<Vec<FileError>>,
    failure: Mutex<Option<Error>>,
    abort: AtomicBool,
    buffers: packer::Recycler,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub files: AtomicU64,
    pub dirs: AtomicU64,
    pub symlinks: AtomicU64,
    pub others: AtomicU64,
    pub files_new: AtomicU64,
    pub files_changed: AtomicU64,
    pub files_unmodified: AtomicU64,
    pub sockets_skipped: AtomicU64,
    pub excluded: AtomicU64,
    pub total_bytes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_new: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub data_blobs_new: AtomicU64,
    pub tree_blobs_new: AtomicU64,
    pub packs_written: AtomicU64,
    /// Directories kept from the parent snapshot on the strength of change hints.
    pub dirs_reused: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl<'a> Shared<'a> {
    /// Whether a blob must be stored: not in the repository and not yet sent by this backup.
    pub fn claim(&self, id: &Id) -> bool {
        !self.index.contains(id) && self.seen.lock().unwrap().insert(*id)
    }

    /// Records a per-file problem: the snapshot still completes, as PartiallyFailed.
    pub fn file_error(&self, path: &Path, message: impl Into<String>) {
        let message = message.into();
        Progress::add(&self.progress.errors, 1);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < MAX_RECORDED_ERRORS {
            errors.push(FileError {
                path: path.display().to_string(),
                error: message,
            });
        }
    }

    /// Records a fatal error (the first one wins) and tells every stage to wind down.
    pub fn fail(&self, err: Error) {
        let mut f = self.failure.lock().unwrap();
        if f.is_none() {
            *f = Some(err);
        }
        self.abort.store(true, Ordering::SeqCst);
    }

    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
}

/// Makes a path absolute and removes `.` and `..` without touching the file system (a
/// symlink given as a path is stored as a symlink, not followed).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("cannot read the current directory", e))?
            .join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Takes a snapshot of `opts.paths` into `repo`. What it stored is added to `repo`'s
/// in-memory index, so the same handle can restore it at once.
pub fn backup(repo: &Repository, opts: &BackupOptions) -> Result<BackupReport> {
    crate::stack::with_deep_stack(|| backup_on_this_thread(repo, opts))
}

fn backup_on_this_thread(repo: &Repository, opts: &BackupOptions) -> Result<BackupReport> {
    let started = std::time::Instant::now();
    let time = chrono::Utc::now();
    if opts.paths.is_empty() {
        return Err(Error::invalid("no paths to back up were given"));
    }
    let mut paths = Vec::new();
    for p in &opts.paths {
        let abs = absolute(p)?;
        if let Err(e) = std::fs::symlink_metadata(&abs) {
            return Err(Error::new(
                crate::error::Kind::NotFound,
                format!("cannot back up {}: {e}", abs.display()),
            ));
        }
        paths.push(abs);
    }
    paths.sort();
    paths.dedup();
    let path_strings: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();

    let parent_choice = match &opts.hints {
        Some(h) => ParentChoice::Id(h.parent),
        None => opts.parent.clone(),
    };
    let parent = match &parent_choice {
        ParentChoice::None => None,
        ParentChoice::Id(id) => Some((*id, repo.read_snapshot(id)?)),
        ParentChoice::Auto => repo
            .list_snapshots()?
            .into_iter()
            .rev()
            .find(|s| s.snapshot.hostname == opts.hostname && s.snapshot.paths == path_strings)
            .map(|s| (s.id, s.snapshot)),
    };
    let parent_tree = match &parent {
        Some((_, snap)) => Some(repo.read_tree(&snap.tree)?),
        None => None,
    };

    let threads = thread_count(opts.threads);
    let shared = Shared {
        repo,
        index: repo.index(),
        progress: &opts.progress,
        seen: Mutex::new(HashSet::new()),
        stats: Stats::default(),
        errors: Mutex::new(Vec::new()),
        failure: Mutex::new(None),
        abort: AtomicBool::new(false),
        // One spare buffer per reader: enough that a reader rarely finds none.
        buffers: packer::Recycler::new(threads, 2 * repo.config().chunker.avg_size as usize),
    };
    let (root, (mut indexed, unindexed)) =
        run_pipeline(&shared, &paths, parent_tree.as_ref(), opts, threads);

    if let Some(err) = shared.failure.lock().unwrap().take() {
        // Packs already uploaded but not yet indexed: list them so the next backup reuses them.
        if !unindexed.is_empty() && repo.write_index(&unindexed).is_ok() {
            indexed.extend(unindexed);
        }
        repo.add_to_index(&indexed);
        return Err(err);
    }
    let root = root.expect("pipeline returns a root tree unless it failed");
    if !unindexed.is_empty() {
        repo.write_index(&unindexed)?;
        indexed.extend(unindexed);
    }
    repo.add_to_index(&indexed);

    let errors = std::mem::take(&mut *shared.errors.lock().unwrap());
    let s = &shared.stats;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let error_count = opts.progress.errors.load(Ordering::Relaxed);
    let stats = SnapshotStats {
        files: get(&s.files),
        dirs: get(&s.dirs),
        symlinks: get(&s.symlinks),
        others: get(&s.others),
        files_new: get(&s.files_new),
        files_changed: get(&s.files_changed),
        files_unmodified: get(&s.files_unmodified),
        sockets_skipped: get(&s.sockets_skipped),
        excluded: get(&s.excluded),
        errors: error_count,
        total_bytes: get(&s.total_bytes),
        bytes_read: get(&s.bytes_read),
        bytes_new: get(&s.bytes_new),
        bytes_stored: get(&s.bytes_stored),
        data_blobs_new: get(&s.data_blobs_new),
        tree_blobs_new: get(&s.tree_blobs_new),
        packs_written: get(&s.packs_written),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    let snapshot = Snapshot {
        version: 1,
        time: time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        hostname: opts.hostname.clone(),
        paths: path_strings,
        tags: opts.tags.clone(),
        name: opts.name.clone(),
        parent: parent.map(|(id, _)| id),
        tree: root,
        status: if error_count == 0 {
            SnapshotStatus::Completed
        } else {
            SnapshotStatus::PartiallyFailed
        },
        stats,
        errors,
        expires: opts
            .expires
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        program_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let id = repo.write_snapshot(&snapshot)?;
    Ok(BackupReport {
        id,
        snapshot,
        dirs_reused: get(&s.dirs_reused),
    })
}

/// Runs every stage on scoped threads; returns the root tree (None on failure) and the packs
/// uploaded but not yet listed in an index file.
fn run_pipeline(
    shared: &Shared<'_>,
    paths: &[PathBuf],
    parent: Option<&crate::repo::Tree>,
    opts: &BackupOptions,
    threads: usize,
) -> (Option<Id>, (Vec<PackRecord>, Vec<PackRecord>)) {
    let hints = opts.hints.as_ref();
    use crossbeam_channel::bounded;
    let (event_tx, event_rx) = bounded(4096);
    // Unbounded, held to 256 files by the backlog.
    let (job_tx, job_rx) = crossbeam_channel::unbounded::<reader::FileJob>();
    let backlog = reader::Backlog::new(256, threads);
    let (blob_tx, blob_rx) = bounded::<packer::NewBlob>(threads);
    let (pack_tx, pack_rx) = bounded::<packer::FinishedPack>(threads + 1);

    // The prescan's scanners, already running; or scanners of this backup's own.
    let (scanner, own) = match &opts.prescan {
        Some(p) => (p.scanner.clone(), false),
        None => (
            Arc::new(scan::Scanner::new(
                opts.excludes.clone(),
                opts.hints.clone(),
            )),
            true,
        ),
    };
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (rx, tx, packs) = (job_rx.clone(), blob_tx.clone(), pack_tx.clone());
            let backlog = &backlog;
            scope.spawn(move || reader::run(shared, rx, backlog, tx, packs));
        }
        for _ in 0..threads {
            let (rx, tx) = (blob_rx.clone(), pack_tx.clone());
            scope.spawn(move || packer::run(shared, rx, tx));
        }
        let trees = {
            let (tx, backlog) = (pack_tx.clone(), &backlog);
            scope.spawn(move || trees::run(shared, event_rx, backlog, tx))
        };
        let uploader = scope.spawn(move || packer::upload(shared, pack_rx));
        drop((job_rx, blob_tx, blob_rx, pack_tx));

        let scanners: Vec<_> = (0..if own { threads } else { 0 })
            .map(|_| scope.spawn(|| scanner.run()))
            .collect();
        walker::Walker::new(shared, hints, &scanner, event_tx, job_tx, &backlog).run(paths, parent);
        scanner.close();
        for s in scanners {
            s.join().expect("scanner panicked");
        }

        let root = trees.join().expect("tree builder panicked");
        let unindexed = uploader.join().expect("uploader panicked");
        (root, unindexed)
    })
}
