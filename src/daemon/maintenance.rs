//! Maintenance as an agentd operation: the configured retention (each snapshot's expiry and
//! the keep policy), then prune, then check, each task reported as a step and what it did
//! kept in the operation record, whether the operation is asked for (StartMaintenance) or
//! fired by `[maintenance] cron`.
//!
//! The engine does the work (`maintenance::retention`, `prune`, `check`); this module only
//! chooses the options from the configuration and the request and turns the reports into
//! the record and the outcome. Prune is safe beside other nodes' backups (two phases, writer
//! markers; docs/FORMAT.md), so nothing here waits for them. A prune is not interrupted
//! midway: cancel and timeouts take effect between tasks, between prune passes and between
//! snapshot deletions. Damage found (by the check, or referenced data the prune finds in no
//! pack) makes the operation Failed with reason RepositoryCorrupt: the repository no longer
//! restores everything it holds, which is what an alert must say.

use super::Agent;
use super::config::{MaintenanceConfig, parse_read_data_subset};
use super::operations::Outcome;
use super::record::{
    DamagedSnapshot, FailureReason, MaintenanceRecord, MaintenanceTask, OpRecord, Phase,
    RemovedSnapshot, Request,
};
use super::status_map::maintenance_failure_reason;
use crate::error::{Error, Kind, Result};
use crate::maintenance::check::{self, CheckOptions};
use crate::maintenance::prune::{self, PruneOptions};
use crate::maintenance::retention;
use crate::progress::Progress;
use crate::repo::Repository;
use indicatif::HumanBytes;
use std::sync::Arc;

/// Damage lines kept per damaged snapshot in the record.
const DAMAGE_LISTED: usize = 100;

/// The request of a maintenance run with the configured tasks (scheduled runs).
pub fn configured_request(cfg: &MaintenanceConfig) -> Request {
    let mut tasks = cfg.tasks.clone();
    tasks.sort();
    let read_data = if tasks.contains(&MaintenanceTask::Check) {
        normalized_subset(cfg.check_read_data_subset.as_deref())
    } else {
        None
    };
    Request::Maintenance {
        tasks,
        dry_run: false,
        read_data,
    }
}

/// A data share as recorded: None for "structure only" (absent or "none").
pub fn normalized_subset(s: Option<&str>) -> Option<String> {
    let s = s?;
    match parse_read_data_subset(s) {
        Ok(Some(_)) => Some(s.trim().to_string()),
        _ => None,
    }
}

/// Changes the maintenance part of the record (and saves it).
fn record(agent: &Agent, id: &str, f: impl FnOnce(&mut MaintenanceRecord)) {
    agent.ops.update(id, |r| {
        f(r.maintenance.get_or_insert_with(Default::default))
    });
}

/// Runs a maintenance for an admitted operation.
pub fn run(agent: &Agent, rec: &OpRecord, progress: &Arc<Progress>) -> Result<Outcome> {
    let Request::Maintenance {
        tasks,
        dry_run,
        read_data,
    } = &rec.request
    else {
        return Err(Error::invalid("not a maintenance request"));
    };
    let dry_run = *dry_run;
    let id = rec.id.clone();
    record(agent, &id, |m| {
        m.tasks = tasks.iter().map(|t| t.as_str().to_string()).collect();
        m.dry_run = dry_run;
    });
    {
        // Every step is kept in the record, so a watcher that wakes late misses none.
        let (ops, id) = (agent.ops.clone(), id.clone());
        progress.observe_steps(move |step| {
            tracing::info!(operation_id = %id, step, "operation step");
            ops.update(&id, |r| {
                r.progress.step = step.to_string();
                r.maintenance
                    .get_or_insert_with(Default::default)
                    .steps
                    .push(step.to_string());
            });
        });
    }
    progress.set_step("opening repository");
    let mut repo = agent.open_repository()?;
    progress.check_cancelled()?;

    let mut summary = Vec::new();
    let mut damage: Option<String> = None;
    for task in tasks {
        progress.check_cancelled()?;
        let result = match task {
            MaintenanceTask::Forget => forget(agent, &id, &repo, progress, dry_run),
            MaintenanceTask::Prune => prune(agent, &id, &mut repo, progress, dry_run),
            MaintenanceTask::Check => check(agent, &id, &mut repo, progress, read_data),
        };
        match result {
            Ok(done) => {
                summary.extend(done.summary);
                if damage.is_none() {
                    damage = done.damage;
                }
            }
            Err(e) if e.kind() == Kind::Cancelled => return Err(e),
            Err(e) => {
                let mut message = format!("{} failed: {e}", task.as_str());
                if !summary.is_empty() {
                    message.push_str(&format!("; before it: {}", summary.join("; ")));
                }
                return Ok(Outcome {
                    phase: Some(Phase::Failed),
                    reason: Some(maintenance_failure_reason(&e)),
                    message,
                    ..Default::default()
                });
            }
        }
    }
    let done = summary.join("; ");
    if let Some(what) = damage {
        let mut message = format!(
            "the repository is damaged: {what}; `agentctl --repo ... repair` rebuilds the \
             index and rewrites damaged snapshots without what is lost"
        );
        if !done.is_empty() {
            message.push_str(&format!(" (besides: {done})"));
        }
        return Ok(Outcome {
            phase: Some(Phase::Failed),
            reason: Some(FailureReason::RepositoryCorrupt),
            message,
            ..Default::default()
        });
    }
    Ok(Outcome {
        phase: Some(Phase::Completed),
        message: if dry_run {
            format!("dry run: {done}; nothing was changed")
        } else {
            done
        },
        ..Default::default()
    })
}

/// What a task did, for the operation's message, and any damage it found (said instead).
struct TaskDone {
    summary: Option<String>,
    damage: Option<String>,
}

/// "1 snapshot", "2 snapshots".
fn count(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn forget(
    agent: &Agent,
    id: &str,
    repo: &Repository,
    progress: &Progress,
    dry_run: bool,
) -> Result<TaskDone> {
    progress.set_step("forget");
    let cfg = &agent.config.maintenance;
    let policy = cfg.keep_policy();
    let now = chrono::Utc::now();
    let snapshots: Vec<_> = repo
        .list_snapshots()?
        .into_iter()
        .filter(|s| cfg.all_hosts || s.snapshot.hostname == agent.node)
        .collect();
    let groups = retention::apply(&snapshots, &policy, cfg.group_by(), now);
    let kept = groups.iter().map(|g| g.kept().count()).sum::<usize>() as u64;
    record(agent, id, |m| {
        m.policy = policy.describe();
        m.snapshots_kept = kept;
    });
    let (mut expired, mut forgotten) = (0u64, 0u64);
    for d in groups.iter().flat_map(|g| g.removed()) {
        progress.check_cancelled()?;
        let s = &d.entry.snapshot;
        // The expiry, not the keep rules, removed it (retention forgets expired snapshots
        // whatever the rules say).
        let by_expiry = s
            .expires
            .as_deref()
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
            .is_some_and(|e| e <= now);
        if !dry_run {
            retention::delete_snapshot(repo, &d.entry.id)?;
            agent.metrics.snapshot_forgotten();
        }
        let reason = d.reasons.join(", ");
        tracing::info!(
            operation_id = %id, snapshot_id = %d.entry.id.to_hex(), reason = %reason, dry_run,
            "snapshot forgotten"
        );
        if by_expiry {
            expired += 1;
        } else {
            forgotten += 1;
        }
        let removed = RemovedSnapshot {
            id: d.entry.id.to_hex(),
            name: s.name.clone().unwrap_or_default(),
            time: s.time.clone(),
            hostname: s.hostname.clone(),
            reason,
        };
        record(agent, id, |m| {
            m.snapshots_expired = expired;
            m.snapshots_forgotten = forgotten;
            if m.removed.len() < MaintenanceRecord::LISTED {
                m.removed.push(removed);
            }
        });
    }
    let verb = if dry_run { "would forget" } else { "forgot" };
    Ok(TaskDone {
        summary: Some(format!(
            "{verb} {} ({expired} expired, {forgotten} kept by no rule), kept {kept}",
            count(expired + forgotten, "snapshot")
        )),
        damage: None,
    })
}

fn prune(
    agent: &Agent,
    id: &str,
    repo: &mut Repository,
    progress: &Progress,
    dry_run: bool,
) -> Result<TaskDone> {
    let opts = PruneOptions {
        dry_run,
        ..Default::default()
    };
    progress.set_step("prune pass 1");
    let mut reports = vec![prune::prune(repo, &opts)?];
    // Nobody was writing when the batch was announced: a second, complete pass (fresh
    // listings, fresh mark) may delete it now, as `agentctl prune` does.
    if !dry_run && reports[0].announced_ripe {
        progress.check_cancelled()?;
        progress.set_step("prune pass 2");
        reports.push(prune::prune(repo, &opts)?);
    }
    let last = reports.last().expect("one pass at least");
    let packs_deleted: u64 = reports.iter().map(|r| r.deleted_packs as u64).sum();
    let bytes_freed: u64 = reports.iter().map(|r| r.deleted_bytes).sum();
    let packs_announced =
        (last.announced_unused + last.announced_repacked + last.announced_unindexed) as u64;
    let bytes_announced = last.announced_bytes;
    let missing_blobs = reports.iter().map(|r| r.missing_blobs).max().unwrap_or(0) as u64;
    let mut problems = Vec::new();
    if missing_blobs > 0 {
        problems.push(format!(
            "{missing_blobs} blobs that snapshots refer to are in no pack"
        ));
    }
    let mut damaged: Vec<_> = reports.iter().flat_map(|r| &r.damaged_packs).collect();
    damaged.sort();
    damaged.dedup();
    for p in &damaged {
        problems.push(format!(
            "pack {} holds a damaged blob that a snapshot needs; it was not repacked",
            p.short()
        ));
    }
    if !dry_run {
        agent.metrics.bytes_freed(bytes_freed);
    }
    tracing::info!(
        operation_id = %id, packs_deleted, bytes_freed, packs_announced, bytes_announced,
        dry_run, "prune done"
    );
    let damage = (!problems.is_empty()).then(|| format!("prune found {}", problems.join("; ")));
    record(agent, id, |m| {
        m.packs_deleted = packs_deleted;
        m.bytes_freed = bytes_freed;
        m.packs_announced = packs_announced;
        m.bytes_announced = bytes_announced;
        m.missing_blobs = missing_blobs;
        m.prune_problems = problems;
    });
    let (free, announce) = if dry_run {
        ("would free", "would announce")
    } else {
        ("freed", "announced")
    };
    let mut summary = format!(
        "prune {free} {} ({})",
        HumanBytes(bytes_freed),
        count(packs_deleted, "pack")
    );
    if packs_announced > 0 {
        summary.push_str(&format!(
            ", {announce} {} ({}) for deletion by the next prune",
            HumanBytes(bytes_announced),
            count(packs_announced, "pack")
        ));
    }
    Ok(TaskDone {
        summary: Some(summary),
        damage,
    })
}

fn check(
    agent: &Agent,
    id: &str,
    repo: &mut Repository,
    progress: &Progress,
    read_data: &Option<String>,
) -> Result<TaskDone> {
    progress.set_step("check");
    let subset = match read_data {
        Some(s) => parse_read_data_subset(s).map_err(Error::invalid)?,
        None => None,
    };
    let opts = CheckOptions {
        read_data: subset,
        // The rotation cursor, so repeated partial checks cover every pack.
        state_dir: Some(agent.config.daemon.state_dir.join("check")),
    };
    let r = check::check(repo, &opts)?;
    let listed = |v: &[String]| -> Vec<String> {
        v.iter().take(MaintenanceRecord::LISTED).cloned().collect()
    };
    let mut errors = listed(&r.errors);
    for (sid, e) in &r.unreadable_snapshots {
        if errors.len() < MaintenanceRecord::LISTED {
            errors.push(format!("snapshot {} cannot be read: {e}", sid.short()));
        }
    }
    let damaged: Vec<DamagedSnapshot> = r
        .damaged_snapshots
        .iter()
        .take(MaintenanceRecord::LISTED)
        .map(|d| DamagedSnapshot {
            id: d.id.to_hex(),
            time: d.time.clone(),
            hostname: d.hostname.clone(),
            damage: d
                .damage
                .iter()
                .take(DAMAGE_LISTED)
                .map(|x| format!("{}: {}", x.path, x.reason))
                .collect(),
        })
        .collect();
    let problems = r.errors.len() + r.unreadable_snapshots.len();
    agent
        .metrics
        .check_done(problems as u64, r.damaged_snapshots.len() as u64);
    tracing::info!(
        operation_id = %id, ok = r.is_ok(), problems, damaged_snapshots = r.damaged_snapshots.len(),
        packs_read = r.packs_read, bytes_read = r.bytes_read, "check done"
    );
    let ok = r.is_ok();
    let damage = (!ok).then(|| {
        let mut what = format!(
            "check found {} in the repository and {}",
            count(problems as u64, "problem"),
            count(r.damaged_snapshots.len() as u64, "damaged snapshot")
        );
        if let Some(first) = errors.first() {
            what.push_str(&format!(" (first: {first})"));
        } else if let Some(d) = damaged.first() {
            what.push_str(&format!(
                " (first: snapshot {}: {})",
                &d.id[..8],
                d.damage.first().map(String::as_str).unwrap_or("")
            ));
        }
        what
    });
    record(agent, id, |m| {
        m.checked = true;
        m.check_ok = ok;
        m.check_packs_read = r.packs_read as u64;
        m.check_bytes_read = r.bytes_read;
        m.check_errors = errors;
        m.check_warnings = listed(&r.warnings);
        m.damaged_snapshots = damaged;
    });
    let summary = ok.then(|| {
        format!(
            "check: no errors in {}, {} ({} read)",
            count(r.snapshots as u64, "snapshot"),
            count(r.packs as u64, "pack"),
            HumanBytes(r.bytes_read)
        )
    });
    Ok(TaskDone { summary, damage })
}
