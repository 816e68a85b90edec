//! Node restore: the operation the orchestrator runs on each node before phase 1 of a
//! cluster restore. In order:
//!
//! 1. validate: the snapshot exists, is Completed, and opens with the key;
//! 2. take a safety snapshot of the current tree, tagged `pre-restore`, inside a writer
//!    session like any other snapshot (a concurrent prune keeps what it reuses); a safety
//!    snapshot that could not read everything stops the node restore before any change;
//! 3. stop the configured units that are active, recording them first (see [`state`]);
//! 4. restore into a staging directory beside the target and swap it in atomically
//!    (`renameat2(RENAME_EXCHANGE)`): a failed or cancelled restore leaves the old tree;
//! 5. run the post-restore steps (`exportfs -ra` by default);
//! 6. start the stopped units again, in reverse order.
//!
//! Whatever fails, the units stopped are started again, and the failure carries a reason a
//! program can branch on ("autofs.service stop failed", "file-system restore failed",
//! "nfs exports recreation failed").

mod dry_run;
pub mod post;
pub mod state;

pub use dry_run::{DryRun, plan as dry_run_plan};
pub use post::{PostStep, StepOutput};

use crate::backup::{self, BackupOptions};
use crate::error::{Error, Kind, Result};
use crate::maintenance;
use crate::progress::Progress;
use crate::repo::{Id, Repository, SnapshotEntry, SnapshotStatus};
use crate::restore::{self, RestoreOptions, RestoreReport};
use crate::service::UnitControl;
use serde::Serialize;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_UNITS: [&str; 2] = ["autofs.service", "nfs-server.service"];

#[derive(Debug, Clone)]
pub struct NodeRestoreOptions {
    /// Snapshot ID (or unique prefix), name, or "latest".
    pub snapshot: String,
    /// With "latest": the host whose snapshots to choose from (cross-node restore); default
    /// `hostname`, this node.
    pub source_host: Option<String>,
    /// The tree to bring back, e.g. /var/onprem.
    pub target: PathBuf,
    /// The snapshot path to restore from; default the same as `target`. Restoring to another
    /// target (a drill) leaves production untouched.
    pub source_path: Option<PathBuf>,
    /// Directories below `target` to restore instead of all of it.
    pub includes: Vec<PathBuf>,
    pub units: Vec<String>,
    pub post_steps: Vec<PostStep>,
    pub unit_timeout: Duration,
    pub safety_snapshot: bool,
    pub hostname: String,
    /// Where the stopped-units record lives.
    pub state_dir: PathBuf,
    pub progress: Arc<Progress>,
}

impl NodeRestoreOptions {
    pub fn new(snapshot: &str, target: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        NodeRestoreOptions {
            snapshot: snapshot.to_string(),
            source_host: None,
            target: target.into(),
            source_path: None,
            includes: Vec::new(),
            units: DEFAULT_UNITS.iter().map(|s| s.to_string()).collect(),
            post_steps: vec![PostStep::exportfs()],
            unit_timeout: Duration::from_secs(90),
            safety_snapshot: true,
            hostname: backup::hostname(),
            state_dir: state_dir.into(),
            progress: Arc::new(Progress::new()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeRestoreReport {
    pub snapshot: Option<Id>,
    pub safety_snapshot: Option<Id>,
    pub stopped_units: Vec<String>,
    pub started_units: Vec<String>,
    #[serde(skip)]
    pub restore: Option<RestoreReport>,
    pub post_steps: Vec<StepOutput>,
}

/// The step of a node restore, as a program branches on it: unit control and post-restore
/// failures are the node's, the others the repository's or the file system's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Step {
    Validate,
    SafetySnapshot,
    StopUnits,
    Restore,
    PostRestore,
    StartUnits,
}

/// A node restore that did not complete: why (a stable, machine-readable reason naming the
/// step), the underlying error, and what was done.
#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    pub reason: String,
    pub error: Error,
    pub report: Box<NodeRestoreReport>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Unit errors already start with the reason ("autofs.service stop failed: ...").
        if self.error.message().starts_with(&self.reason) {
            write!(f, "{}", self.error)
        } else {
            write!(f, "{}: {}", self.reason, self.error)
        }
    }
}

/// The tag of the safety snapshot taken before a node restore.
pub use crate::repo::snapshot::SAFETY_TAG;

/// Picks and checks the snapshot: it must exist, be Completed, and open with the key.
/// "latest" is the latest Completed snapshot of the source host (default: this node), not
/// counting safety snapshots: after a restore, "latest" still names what was restored.
pub fn validate(repo: &Repository, opts: &NodeRestoreOptions) -> Result<SnapshotEntry> {
    let entry = match opts.snapshot.as_str() {
        "latest" => {
            let host = opts.source_host.as_deref().unwrap_or(&opts.hostname);
            repo.latest_of_host(host, true)?
        }
        _ => repo.resolve_snapshot(&opts.snapshot)?,
    };
    if entry.snapshot.status != SnapshotStatus::Completed {
        return Err(Error::new(
            Kind::InvalidInput,
            format!(
                "snapshot {} is {:?}: only a Completed snapshot may be restored",
                entry.id.short(),
                entry.snapshot.status
            ),
        ));
    }
    let source = opts.source_path.as_ref().unwrap_or(&opts.target);
    let comps = components(source);
    restore::find_dir(repo, &entry.snapshot.tree, &comps, source)?;
    Ok(entry)
}

/// Checks that every directory the restore swaps in (the target, or each include) can be
/// swapped: a mount point cannot be renamed, so its staged replacement could never take its
/// place; and a file system mounted below it would move with the old tree, which is then
/// removed, its contents with it. Refused before anything changes, saying what to do.
pub fn check_swap_points(opts: &NodeRestoreOptions) -> Result<()> {
    let mounts = mount_points()?;
    for live in swap_points(opts) {
        if let Some(m) = mounts.iter().find(|m| m.starts_with(&live) && **m != live) {
            return Err(Error::invalid(format!(
                "{} is mounted below {}: the swap would move that mount with the old tree, \
                 which is removed afterwards. Unmount it (stop what mounts it, or add that \
                 unit to the units the node restore stops), or restore the directories beside \
                 it with --include",
                m.display(),
                live.display()
            )));
        }
        let mounted = match is_mount_point(&live) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("cannot examine {}", live.display()), e)),
        };
        if mounted {
            return Err(Error::invalid(format!(
                "{live} is a mount point: a node restore builds the new tree beside it and \
                 swaps the two with a rename, and a mount point cannot be renamed. Restore the \
                 directories below it instead (each --include {live}/DIR is swapped on its \
                 own, inside the mount), or restore in place without the atomic swap \
                 (`agentctl restore SNAPSHOT --target / --include {live} --delete`, with the \
                 units stopped by hand)",
                live = live.display()
            )));
        }
    }
    Ok(())
}

/// Every mount point this process sees (`/proc/self/mountinfo`, field 5, with its octal
/// escapes undone).
fn mount_points() -> Result<Vec<PathBuf>> {
    let text = std::fs::read("/proc/self/mountinfo")
        .map_err(|e| Error::io("cannot read /proc/self/mountinfo", e))?;
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let Some(field) = line.split(|&b| b == b' ').nth(4) else {
            continue;
        };
        let mut path = Vec::with_capacity(field.len());
        let mut i = 0;
        while i < field.len() {
            let octal = field.get(i + 1..i + 4).and_then(|d| {
                std::str::from_utf8(d)
                    .ok()
                    .and_then(|d| u8::from_str_radix(d, 8).ok())
            });
            match (field[i], octal) {
                (b'\\', Some(b)) => {
                    path.push(b);
                    i += 4;
                }
                (b, _) => {
                    path.push(b);
                    i += 1;
                }
            }
        }
        out.push(PathBuf::from(OsString::from_vec(path)));
    }
    Ok(out)
}

/// Whether `path` is the root of a mount (a bind mount on the same file system included).
fn is_mount_point(path: &Path) -> std::io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statx is a plain C struct, for which all zeroes is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx writes only into `stx`; the path is NUL-terminated.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            0,
            &mut stx,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flag = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if stx.stx_attributes_mask & flag != 0 {
        return Ok(stx.stx_attributes & flag != 0);
    }
    // Kernels before 5.8 do not report it: another device than the parent's is a mount.
    use std::os::unix::fs::MetadataExt;
    let parent = path.parent().unwrap_or(Path::new("/"));
    Ok(std::fs::symlink_metadata(path)?.dev() != std::fs::metadata(parent)?.dev())
}

fn components(p: &Path) -> Vec<Vec<u8>> {
    p.components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.as_bytes().to_vec()),
            _ => None,
        })
        .collect()
}

/// Runs a node restore. Units stopped are always started again. The repository is taken
/// mutably because the safety snapshot runs in a writer session, which replaces its index.
pub fn run(
    repo: &mut Repository,
    units: &dyn UnitControl,
    opts: &NodeRestoreOptions,
) -> std::result::Result<NodeRestoreReport, Failure> {
    let mut report = NodeRestoreReport::default();
    let progress = &opts.progress;
    macro_rules! fail {
        ($step:expr, $reason:expr, $err:expr) => {
            return Err(Failure {
                step: $step,
                reason: $reason,
                error: $err,
                report: Box::new(report),
            })
        };
    }

    progress.set_step("validate");
    let entry = match validate(repo, opts) {
        Ok(e) => e,
        Err(e) => fail!(Step::Validate, "snapshot validation failed".into(), e),
    };
    report.snapshot = Some(entry.id);
    let source = opts
        .source_path
        .clone()
        .unwrap_or_else(|| opts.target.clone());
    for inc in &opts.includes {
        if !inc.starts_with(&opts.target) || components(inc).len() <= components(&opts.target).len()
        {
            fail!(
                Step::Validate,
                "snapshot validation failed".into(),
                Error::invalid(format!(
                    "{} is not below {}",
                    inc.display(),
                    opts.target.display()
                ))
            );
        }
    }
    if let Err(e) = check_swap_points(opts) {
        fail!(Step::Validate, "target validation failed".into(), e);
    }

    progress.set_step("safety snapshot");
    if opts.safety_snapshot && opts.target.exists() {
        match safety_snapshot(repo, opts) {
            Ok(id) => report.safety_snapshot = Some(id),
            Err(e) => fail!(Step::SafetySnapshot, SAFETY_FAILED.into(), e),
        }
    }
    // Nothing has changed yet: a cancel now needs no undoing.
    if let Err(e) = progress.check_cancelled() {
        fail!(Step::Validate, "canceled before any change".into(), e);
    }

    progress.set_step("stop units");
    let mut active = Vec::new();
    for unit in &opts.units {
        match units.is_active(unit) {
            Ok(true) => active.push(unit.clone()),
            Ok(false) => {}
            Err(e) => fail!(Step::StopUnits, format!("{unit} stop failed"), e),
        }
    }
    let mut record = state::StoppedUnits {
        units: active.clone(),
        staging: Vec::new(),
    };
    if let Err(e) = state::save(&opts.state_dir, &record) {
        fail!(Step::StopUnits, "recording stopped units failed".into(), e);
    }
    let mut failure: Option<(Step, String, Error)> = None;
    for unit in &active {
        match units.stop(unit, opts.unit_timeout) {
            Ok(()) => report.stopped_units.push(unit.clone()),
            Err(e) => {
                failure = Some((Step::StopUnits, format!("{unit} stop failed"), e));
                break;
            }
        }
    }

    if failure.is_none() {
        progress.set_step("restore");
        let swaps = swap_points(opts);
        let staging: Vec<PathBuf> = swaps
            .iter()
            .map(|l| staging_path(l))
            .collect::<Result<_>>()
            .unwrap_or_default();
        record.staging = staging.clone();
        let r = state::save(&opts.state_dir, &record)
            .and_then(|()| restore_swapped(repo, &entry, &source, &swaps, &staging, opts));
        if let Err(e) = r {
            failure = Some((Step::Restore, "file-system restore failed".into(), e));
        }
    }

    if failure.is_none() {
        for step in &opts.post_steps {
            progress.set_step(&format!("post-restore: {}", step.name));
            let out = post::run(step);
            let ok = out.success;
            let status = out.status.clone();
            report.post_steps.push(out);
            if !ok {
                failure = Some((
                    Step::PostRestore,
                    format!("{} failed", step.name),
                    Error::new(
                        Kind::Unit,
                        format!("{} ({}): {status}", step.name, step.argv.join(" ")),
                    ),
                ));
                break;
            }
        }
    }

    progress.set_step("start units");
    for unit in report.stopped_units.clone().iter().rev() {
        match units.start(unit, opts.unit_timeout) {
            Ok(()) => report.started_units.push(unit.clone()),
            Err(e) => {
                if failure.is_none() {
                    failure = Some((Step::StartUnits, format!("{unit} start failed"), e));
                }
            }
        }
    }
    if report.started_units.len() == report.stopped_units.len() {
        let _ = state::clear(&opts.state_dir);
    }
    match failure {
        Some((step, reason, error)) => Err(Failure {
            step,
            reason,
            error,
            report: Box::new(report),
        }),
        None => Ok(report),
    }
}

/// The reason of a node restore stopped at its safety snapshot.
pub const SAFETY_FAILED: &str = "safety snapshot failed";

/// Takes the safety snapshot of the target as every writer does, in a writer session (so a
/// prune on another node cannot delete data it reuses), and insists that it holds the whole
/// tree: one that could not read some entries could not undo the restore, so the restore
/// does not start (the caller can skip the safety snapshot to go ahead anyway).
fn safety_snapshot(repo: &mut Repository, opts: &NodeRestoreOptions) -> Result<Id> {
    let mut b = BackupOptions::new(vec![opts.target.clone()]);
    b.tags = vec![SAFETY_TAG.into()];
    b.hostname = opts.hostname.clone();
    let result = maintenance::backup(repo, &b);
    // The session's index leaves out packs pending deletion, which the snapshot being
    // restored may still need (a prune gives such packs back): read the full index again.
    repo.reload_index()?;
    let r = result?;
    if r.snapshot.status == SnapshotStatus::Completed {
        return Ok(r.id);
    }
    const LISTED: usize = 5;
    let mut listed: Vec<String> = r
        .snapshot
        .errors
        .iter()
        .take(LISTED)
        .map(|e| format!("{}: {}", e.path, e.error))
        .collect();
    if r.snapshot.errors.len() > LISTED {
        listed.push(format!("and {} more", r.snapshot.errors.len() - LISTED));
    }
    Err(Error::new(
        Kind::Io,
        format!(
            "{} entries of {} could not be read ({}): the safety snapshot {} is \
             PartiallyFailed and could not undo this restore, so nothing was changed. Run the \
             node restore again once they can be read, or skip the safety snapshot to restore \
             anyway (`agentctl node-restore --no-safety-snapshot`, skip_safety_snapshot in the \
             API); snapshot {} keeps what could be read",
            r.snapshot.stats.errors,
            opts.target.display(),
            listed.join("; "),
            r.id.short(),
            r.id.short()
        ),
    ))
}

/// Restores into staging directories and swaps them with the live ones; on any failure the
/// staging directories are removed and the live tree is untouched.
fn swap_points(opts: &NodeRestoreOptions) -> Vec<PathBuf> {
    if opts.includes.is_empty() {
        vec![opts.target.clone()]
    } else {
        opts.includes.clone()
    }
}

fn restore_swapped(
    repo: &Repository,
    entry: &SnapshotEntry,
    source: &Path,
    swaps: &[PathBuf],
    staging_dirs: &[PathBuf],
    opts: &NodeRestoreOptions,
) -> Result<()> {
    if staging_dirs.len() != swaps.len() {
        return Err(Error::invalid(format!(
            "cannot place a staging directory beside {}",
            opts.target.display()
        )));
    }
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let cleanup = |staged: &[(PathBuf, PathBuf)]| {
        for (_, s) in staged {
            let _ = std::fs::remove_dir_all(s);
        }
    };
    for (live, staging) in swaps.iter().zip(staging_dirs) {
        let rel = live.strip_prefix(&opts.target).unwrap_or(Path::new(""));
        let from = source.join(rel);
        let staging = staging.clone();
        staged.push((live.clone(), staging.clone()));
        let mut ro = RestoreOptions::new(&staging);
        ro.subtree = Some(from);
        ro.progress = opts.progress.clone();
        let result = restore::restore(repo, &entry.snapshot, &ro);
        match result {
            Ok(r) if r.error_count == 0 => {}
            Ok(r) => {
                cleanup(&staged);
                let first = r
                    .errors
                    .first()
                    .map(|e| format!("{}: {}", e.path, e.error))
                    .unwrap_or_default();
                return Err(Error::new(
                    Kind::Io,
                    format!(
                        "{} entries could not be restored (first: {first})",
                        r.error_count
                    ),
                ));
            }
            Err(e) => {
                cleanup(&staged);
                return Err(e);
            }
        }
    }
    opts.progress
        .check_cancelled()
        .inspect_err(|_| cleanup(&staged))?;
    // Every subtree is staged: swap them in. An exchange is atomic; a failure part-way swaps
    // back what was already swapped.
    let mut swapped: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (live, staging) in &staged {
        let r = if live.exists() {
            exchange(live, staging)
        } else {
            rename(staging, live)
        };
        if let Err(e) = r {
            for (l, s) in swapped.iter().rev() {
                let _ = exchange(l, s);
            }
            cleanup(&staged);
            return Err(e);
        }
        swapped.push((live.clone(), staging.clone()));
    }
    // The old trees now sit at the staging names.
    cleanup(&staged);
    Ok(())
}

fn staging_path(live: &Path) -> Result<PathBuf> {
    let parent = live
        .parent()
        .ok_or_else(|| Error::invalid(format!("cannot restore {} in place", live.display())))?;
    std::fs::create_dir_all(parent)
        .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
    let mut name = OsString::from(".");
    name.push(live.file_name().unwrap_or_default());
    name.push(format!(
        ".hostagent-staging-{}",
        hex::encode(crate::repo::crypto::random_bytes::<6>())
    ));
    Ok(parent.join(name))
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::invalid("path contains NUL"))
}

fn exchange(a: &Path, b: &Path) -> Result<()> {
    let (ca, cb) = (cpath(a)?, cpath(b)?);
    // SAFETY: both are valid NUL-terminated paths; renameat2 does not retain them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if matches!(err.raw_os_error(), Some(libc::EBUSY) | Some(libc::EXDEV)) {
        // Checked before the restore began; a mount made since lands here.
        return Err(Error::io(
            format!(
                "cannot swap {} with the restored tree: it is a mount point, or the restored \
                 tree is on another file system; restore the directories below it instead \
                 (--include)",
                a.display()
            ),
            err,
        ));
    }
    if err.raw_os_error() != Some(libc::EINVAL) {
        return Err(Error::io(
            format!("cannot swap {} with the restored tree", a.display()),
            err,
        ));
    }
    // No RENAME_EXCHANGE on this file system: two renames, undone if the second fails. The
    // window in which `a` is missing is two system calls long.
    let aside = b.with_extension("hostagent-swap");
    rename(a, &aside)?;
    if let Err(e) = rename(b, a) {
        let _ = std::fs::rename(&aside, a);
        return Err(e);
    }
    rename(&aside, b)
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| {
        Error::io(
            format!("cannot move the restored tree to {}", to.display()),
            e,
        )
    })
}
