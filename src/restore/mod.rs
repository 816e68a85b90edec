//! Restore: a snapshot (or chosen paths of it) back into a directory.
//!
//! Guarantees:
//! - **Verified.** Every blob is decrypted, authenticated and re-hashed against its ID before
//!   a byte of it is written.
//! - **No half-written file under a real name.** Files are written unnamed (`O_TMPFILE`) in
//!   their directory and linked to their name once complete, with their metadata; where the
//!   file system cannot, or the name is taken, under a temporary name renamed into place.
//! - **Never outside the target.** Names are single components (checked when trees decode);
//!   directories are entered with `O_NOFOLLOW` one component at a time, so neither the
//!   snapshot's symlinks nor symlinks already in the target redirect a write.
//! - **Non-destructive by default.** Entries in the target that the snapshot lacks are kept;
//!   entries the snapshot has are replaced. A directory in the way of a file is an error
//!   unless `delete` is set, which also removes entries the snapshot does not have.
//!
//! Work is spread over threads by file; a large file is cut into pieces that several threads
//! write at once, and the last piece to finish renames it into place.

mod fsops;
mod planner;
mod writer;

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::snapshot::{FileError, MAX_RECORDED_ERRORS};
use crate::repo::{Repository, Snapshot};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Snapshot paths to restore (absolute, as `agentctl ls` shows them); empty means all.
    pub includes: Vec<PathBuf>,
    /// Remove target entries that the snapshot does not have, and replace directories that
    /// stand where the snapshot has a file.
    pub delete: bool,
    /// Restore only this directory of the snapshot (an absolute snapshot path), its contents
    /// placed directly in the target, which takes the directory's metadata.
    pub subtree: Option<PathBuf>,
    /// Writer threads; 0 means one per core.
    pub threads: usize,
    pub progress: Arc<Progress>,
}

impl RestoreOptions {
    pub fn new(target: impl Into<PathBuf>) -> RestoreOptions {
        RestoreOptions {
            target: target.into(),
            includes: Vec::new(),
            delete: false,
            subtree: None,
            threads: 0,
            progress: Arc::new(Progress::new()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
    pub bytes: u64,
    pub deleted: u64,
    pub error_count: u64,
    pub errors: Vec<FileError>,
}

/// Per-entry problems, collected while the restore goes on.
#[derive(Default)]
pub(crate) struct Errors {
    list: Mutex<Vec<FileError>>,
    count: std::sync::atomic::AtomicU64,
}

impl Errors {
    pub fn record(&self, path: &Path, msg: impl std::fmt::Display) {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut l = self.list.lock().unwrap();
        if l.len() < MAX_RECORDED_ERRORS {
            l.push(FileError {
                path: path.display().to_string(),
                error: msg.to_string(),
            });
        }
    }
}

/// Parses include paths into component lists, refusing `..`.
fn include_components(includes: &[PathBuf]) -> Result<Vec<Vec<Vec<u8>>>> {
    use std::os::unix::ffi::OsStrExt;
    includes
        .iter()
        .map(|p| {
            let mut out = Vec::new();
            for c in p.components() {
                match c {
                    Component::Normal(n) => out.push(n.as_bytes().to_vec()),
                    Component::RootDir | Component::CurDir => {}
                    _ => {
                        return Err(Error::invalid(format!(
                            "include path {} must not contain '..'",
                            p.display()
                        )));
                    }
                }
            }
            Ok(out)
        })
        .collect()
}

/// Refuses include paths the snapshot does not have: a mistyped one would otherwise
/// restore nothing and report success.
fn check_includes(
    repo: &Repository,
    root: &crate::repo::Id,
    includes: &[Vec<Vec<u8>>],
    shown: &[PathBuf],
) -> Result<()> {
    for (comps, path) in includes.iter().zip(shown) {
        let missing = || {
            Error::not_found(format!(
                "include path {} is not in the snapshot; see its paths with `agentctl ls`",
                path.display()
            ))
        };
        let mut tree = repo.read_tree(root)?;
        for (i, name) in comps.iter().enumerate() {
            let node = tree.get(name).ok_or_else(missing)?;
            if i + 1 < comps.len() {
                let sub = node.subtree().ok_or_else(missing)?;
                tree = repo.read_tree(&sub)?;
            }
        }
    }
    Ok(())
}

pub fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    crate::stack::with_deep_stack(|| restore_on_this_thread(repo, snapshot, opts))
}

fn restore_on_this_thread(
    repo: &Repository,
    snapshot: &Snapshot,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let includes = include_components(&opts.includes)?;
    check_includes(repo, &snapshot.tree, &includes, &opts.includes)?;
    let snapshot_paths =
        include_components(&snapshot.paths.iter().map(PathBuf::from).collect::<Vec<_>>())?;
    std::fs::create_dir_all(&opts.target).map_err(|e| {
        Error::io(
            format!("cannot create the target {}", opts.target.display()),
            e,
        )
    })?;
    let root = std::fs::File::open(&opts.target).map_err(|e| {
        Error::io(
            format!("cannot open the target {}", opts.target.display()),
            e,
        )
    })?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.threads
    };
    let errors = Errors::default();
    let (root_tree, start, root_node) = match &opts.subtree {
        None => (repo.read_tree(&snapshot.tree)?, Vec::new(), None),
        Some(sub) => {
            let comps = include_components(std::slice::from_ref(sub))?.remove(0);
            let (tree, node) = find_dir(repo, &snapshot.tree, &comps, sub)?;
            (tree, comps, Some(node))
        }
    };
    let (tx, rx) = crossbeam_channel::bounded::<writer::Piece>(256);
    let ctx = writer::Context {
        repo,
        root: &root,
        target: &opts.target,
        progress: &opts.progress,
        errors: &errors,
        replace_dirs: opts.delete,
    };
    let (mut report, plan) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                let ctx = &ctx;
                scope.spawn(move || writer::run(ctx, rx))
            })
            .collect();
        drop(rx);
        let mut planner = planner::Planner::new(&ctx, &includes, &snapshot_paths, opts.delete, tx);
        planner.run(&root_tree, start, root_node);
        let plan = planner.finish();
        let mut report = RestoreReport::default();
        for w in workers {
            let (files, bytes) = w.join().expect("restore worker panicked");
            report.files += files;
            report.bytes += bytes;
        }
        (report, plan)
    });
    // After every file is in place: hard links, then directory metadata deepest first.
    plan.finish(&ctx, &mut report);
    opts.progress.check_cancelled()?;
    report.error_count = errors.count.load(std::sync::atomic::Ordering::Relaxed);
    report.errors = errors.list.into_inner().unwrap();
    Ok(report)
}

/// The tree and node of the directory at `comps` in a snapshot.
pub(crate) fn find_dir(
    repo: &Repository,
    root: &crate::repo::Id,
    comps: &[Vec<u8>],
    shown: &Path,
) -> Result<(crate::repo::Tree, crate::repo::Node)> {
    let mut tree = repo.read_tree(root)?;
    let mut node = None;
    for c in comps {
        let n = tree.get(c).cloned().ok_or_else(|| {
            Error::not_found(format!("{} is not in the snapshot", shown.display()))
        })?;
        let id = n.subtree().ok_or_else(|| {
            Error::invalid(format!(
                "{} is not a directory in the snapshot",
                shown.display()
            ))
        })?;
        tree = repo.read_tree(&id)?;
        node = Some(n);
    }
    let node = node.ok_or_else(|| Error::invalid("the subtree to restore must not be the root"))?;
    Ok((tree, node))
}
