//! Node restores as agentd operations: the request and the `[node_restore]` configuration
//! turned into the engine's options, each step of the engine reported as the operation's
//! step, and what each step did kept in the operation record. At start, [`recover_at_start`]
//! starts the units a node restore cut short by agentd's death left stopped.

use super::Agent;
use super::config::Config;
use super::operations::Outcome;
use super::record::{DryRunRecord, FailureReason, NodeRestoreRecord, OpRecord, Phase, Request};
use super::status_map::failure_reason;
use crate::error::{Error, Kind, Result};
use crate::node_restore::{self, NodeRestoreOptions, NodeRestoreReport, Step, state};
use crate::progress::Progress;
use crate::service::Systemd;
use std::sync::Arc;

/// Runs a node restore (or its dry run) for an admitted operation.
pub fn run(agent: &Agent, rec: &OpRecord, progress: &Arc<Progress>) -> Result<Outcome> {
    let Request::NodeRestore {
        snapshot,
        target,
        source_host,
        source_path,
        include,
        dry_run,
        safety_snapshot,
    } = &rec.request
    else {
        return Err(Error::invalid("not a node restore request"));
    };
    let id = rec.id.clone();
    {
        // The engine names its steps; each one is recorded (the record keeps them all, so a
        // watcher that wakes late misses none) and wakes the watchers.
        let (ops, id) = (agent.ops.clone(), id.clone());
        progress.observe_steps(move |step| {
            tracing::info!(operation_id = %id, step, "operation step");
            ops.update(&id, |r| {
                r.progress.step = step.to_string();
                r.node_restore
                    .get_or_insert_with(Default::default)
                    .steps
                    .push(step.to_string());
            });
        });
    }
    progress.set_step("opening repository");
    let mut repo = agent.open_repository()?;
    let systemd = Systemd::system().map_err(|e| e.context("a node restore controls units"))?;
    progress.check_cancelled()?;

    let cfg = &agent.config.node_restore;
    let mut opts = NodeRestoreOptions::new(snapshot, target, &agent.config.daemon.state_dir);
    opts.source_host = source_host.clone();
    opts.source_path = source_path.clone();
    opts.includes = include.clone();
    opts.units = cfg.units.clone();
    opts.post_steps = cfg.post_steps();
    opts.unit_timeout = cfg.unit_timeout.0;
    opts.safety_snapshot = *safety_snapshot;
    opts.hostname = agent.node.clone();
    opts.progress = progress.clone();

    if *dry_run {
        progress.set_step("dry run");
        let plan = node_restore::dry_run_plan(&repo, &systemd, &opts)?;
        let listed = |v: &[std::path::PathBuf]| {
            v.iter()
                .take(DryRunRecord::LISTED)
                .map(|p| p.display().to_string())
                .collect()
        };
        let record = DryRunRecord {
            units_to_stop: plan.units_to_stop.clone(),
            added: listed(&plan.added),
            changed: listed(&plan.changed),
            removed: listed(&plan.removed),
            added_count: plan.added.len() as u64,
            changed_count: plan.changed.len() as u64,
            removed_count: plan.removed.len() as u64,
        };
        agent.ops.update(&id, |r| {
            r.snapshot_id = Some(plan.snapshot.clone());
            r.node_restore.get_or_insert_with(Default::default).dry_run = Some(record);
        });
        return Ok(Outcome {
            phase: Some(Phase::Completed),
            message: format!(
                "dry run of snapshot {} into {}: {} to add, {} to change, {} to remove; units \
                 to stop: {}; nothing was changed",
                &plan.snapshot[..12],
                target.display(),
                plan.added.len(),
                plan.changed.len(),
                plan.removed.len(),
                list_or_none(&plan.units_to_stop)
            ),
            snapshot_id: Some(plan.snapshot),
            ..Default::default()
        });
    }

    match node_restore::run(&mut repo, &systemd, &opts) {
        Ok(report) => {
            keep_report(agent, &id, &report, "");
            let snapshot_id = report.snapshot.map(|s| s.to_hex());
            Ok(Outcome {
                phase: Some(Phase::Completed),
                message: format!(
                    "node restore of {} from snapshot {} completed; units stopped and started \
                     again: {}{}",
                    target.display(),
                    report.snapshot.map(|s| s.short()).unwrap_or_default(),
                    list_or_none(&report.stopped_units),
                    safety_note(&report)
                ),
                snapshot_id,
                ..Default::default()
            })
        }
        Err(f) => {
            keep_report(agent, &id, &f.report, &f.reason);
            if f.error.kind() == Kind::Cancelled {
                // Canceled (or timed out): the task around the job says which.
                return Err(f.error);
            }
            let reason = match f.step {
                Step::StopUnits | Step::StartUnits | Step::PostRestore => {
                    FailureReason::UnitControl
                }
                Step::Validate | Step::SafetySnapshot | Step::Restore => failure_reason(&f.error),
            };
            let tree = match f.step {
                Step::PostRestore | Step::StartUnits => "the restored tree is in place",
                _ => "the live tree was not changed",
            };
            let units = if f.report.stopped_units.is_empty() {
                String::new()
            } else {
                format!(
                    "; units stopped: {}, started again: {}",
                    f.report.stopped_units.join(", "),
                    list_or_none(&f.report.started_units)
                )
            };
            Ok(Outcome {
                phase: Some(Phase::Failed),
                reason: Some(reason),
                message: format!("{f}; {tree}{units}{}", safety_note(&f.report)),
                snapshot_id: f.report.snapshot.map(|s| s.to_hex()),
                ..Default::default()
            })
        }
    }
}

fn keep_report(agent: &Agent, id: &str, report: &NodeRestoreReport, failed_step: &str) {
    agent.ops.update(id, |r| {
        if let Some(s) = report.snapshot {
            r.snapshot_id = Some(s.to_hex());
        }
        let steps = r.node_restore.take().unwrap_or_default().steps;
        r.node_restore = Some(NodeRestoreRecord {
            steps,
            failed_step: failed_step.to_string(),
            safety_snapshot_id: report.safety_snapshot.map(|s| s.to_hex()),
            stopped_units: report.stopped_units.clone(),
            started_units: report.started_units.clone(),
            post_steps: report.post_steps.clone(),
            dry_run: None,
        });
    });
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn safety_note(report: &NodeRestoreReport) -> String {
    report
        .safety_snapshot
        .map(|s| {
            format!(
                "; safety snapshot {} (tag pre-restore) holds the tree as it was",
                s.short()
            )
        })
        .unwrap_or_default()
}

/// At start, before serving: a node restore that agentd's death cut short left units
/// stopped (and maybe a staging directory); start them again and clean up. Returns the
/// units started. A failure is logged and the record kept, so the next start tries again.
pub fn recover_at_start(config: &Config) -> Vec<String> {
    let state_dir = &config.daemon.state_dir;
    if !state::path(state_dir).exists() {
        return Vec::new();
    }
    tracing::warn!("a node restore was cut short: starting the units it stopped");
    let systemd = match Systemd::system() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(
                "cannot start the units an interrupted node restore stopped ({e}); they are \
                 listed in {}",
                state::path(state_dir).display()
            );
            return Vec::new();
        }
    };
    match state::recover(state_dir, &systemd, config.node_restore.unit_timeout.0) {
        Ok(started) => {
            tracing::info!(
                units = %started.join(", "),
                "started the units an interrupted node restore had stopped"
            );
            started
        }
        Err(e) => {
            tracing::error!(
                "cannot start the units an interrupted node restore stopped: {e}; they are \
                 listed in {} (the next start tries again)",
                state::path(state_dir).display()
            );
            Vec::new()
        }
    }
}

/// The note added to the record of the node restore that was interrupted.
pub fn restarted_note(started: &[String]) -> String {
    if started.is_empty() {
        String::new()
    } else {
        format!(
            "; units it had stopped were started again: {}",
            started.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_note_names_the_units() {
        assert_eq!(restarted_note(&[]), "");
        assert_eq!(
            restarted_note(&["autofs.service".into()]),
            "; units it had stopped were started again: autofs.service"
        );
    }

    #[test]
    fn lists_say_none_when_empty() {
        assert_eq!(list_or_none(&[]), "none");
        assert_eq!(list_or_none(&["a".into(), "b".into()]), "a, b");
    }
}
