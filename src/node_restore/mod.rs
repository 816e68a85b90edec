//! Node restore: the operation the orchestrator runs on each node before phase 1 of a
//! cluster restore. In order:
//!
//! 1. validate: the snapshot exists, is Completed, and opens with the key;
//! 2. take a safety snapshot of the current tree, tagged `pre-restore`;
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
use crate::progress::Progress;
use crate::repo::{Id, Repository, SnapshotEntry, SnapshotStatus};
use crate::restore::{self, RestoreOptions, RestoreReport};
use crate::service::UnitControl;
use serde::Serialize;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_UNITS: [&str; 2] = ["autofs.service", "nfs-server.service"];

#[derive(Debug, Clone)]
pub struct NodeRestoreOptions {
    /// Snapshot ID (or unique prefix), name, or "latest".
    pub snapshot: String,
    /// With "latest": the host whose snapshots to choose from (cross-node restore); default
    /// this node.
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

/// A node restore that did not complete: why (a stable, machine-readable reason naming the
/// step), the underlying error, and what was done.
#[derive(Debug)]
pub struct Failure {
    pub reason: String,
    pub error: Error,
    pub report: Box<NodeRestoreReport>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.error)
    }
}

/// Picks and checks the snapshot: it must exist, be Completed, and open with the key.
pub fn validate(repo: &Repository, opts: &NodeRestoreOptions) -> Result<SnapshotEntry> {
    let entry = match (&opts.source_host, opts.snapshot.as_str()) {
        (Some(host), "latest") => repo
            .list_snapshots()?
            .into_iter()
            .rev()
            .find(|s| {
                &s.snapshot.hostname == host && s.snapshot.status == SnapshotStatus::Completed
            })
            .ok_or_else(|| Error::not_found(format!("no Completed snapshot of host {host:?}")))?,
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

fn components(p: &Path) -> Vec<Vec<u8>> {
    p.components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.as_bytes().to_vec()),
            _ => None,
        })
        .collect()
}

/// Runs a node restore. Units stopped are always started again.
pub fn run(
    repo: &Repository,
    units: &dyn UnitControl,
    opts: &NodeRestoreOptions,
) -> std::result::Result<NodeRestoreReport, Failure> {
    let mut report = NodeRestoreReport::default();
    let progress = &opts.progress;
    macro_rules! fail {
        ($reason:expr, $err:expr) => {
            return Err(Failure {
                reason: $reason,
                error: $err,
                report: Box::new(report),
            })
        };
    }

    progress.set_step("validate");
    let entry = match validate(repo, opts) {
        Ok(e) => e,
        Err(e) => fail!("snapshot validation failed".into(), e),
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
                "snapshot validation failed".into(),
                Error::invalid(format!(
                    "{} is not below {}",
                    inc.display(),
                    opts.target.display()
                ))
            );
        }
    }

    progress.set_step("safety snapshot");
    if opts.safety_snapshot && opts.target.exists() {
        let mut b = BackupOptions::new(vec![opts.target.clone()]);
        b.tags = vec!["pre-restore".into()];
        b.hostname = opts.hostname.clone();
        match backup::backup(repo, &b) {
            Ok(r) => report.safety_snapshot = Some(r.id),
            Err(e) => fail!("safety snapshot failed".into(), e),
        }
    }

    progress.set_step("stop units");
    let mut active = Vec::new();
    for unit in &opts.units {
        match units.is_active(unit) {
            Ok(true) => active.push(unit.clone()),
            Ok(false) => {}
            Err(e) => fail!(format!("{unit} stop failed"), e),
        }
    }
    let mut record = state::StoppedUnits {
        units: active.clone(),
        staging: Vec::new(),
    };
    if let Err(e) = state::save(&opts.state_dir, &record) {
        fail!("recording stopped units failed".into(), e);
    }
    let mut failure: Option<(String, Error)> = None;
    for unit in &active {
        match units.stop(unit, opts.unit_timeout) {
            Ok(()) => report.stopped_units.push(unit.clone()),
            Err(e) => {
                failure = Some((format!("{unit} stop failed"), e));
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
            failure = Some(("file-system restore failed".into(), e));
        }
    }

    if failure.is_none() {
        progress.set_step("post-restore");
        for step in &opts.post_steps {
            let out = post::run(step);
            let ok = out.success;
            let status = out.status.clone();
            report.post_steps.push(out);
            if !ok {
                failure = Some((
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
                    failure = Some((format!("{unit} start failed"), e));
                }
            }
        }
    }
    if report.started_units.len() == report.stopped_units.len() {
        let _ = state::clear(&opts.state_dir);
    }
    match failure {
        Some((reason, error)) => Err(Failure {
            reason,
            error,
            report: Box::new(report),
        }),
        None => Ok(report),
    }
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
