//! The work of each operation kind, and the task that runs it under its timeout.
//!
//! Jobs are blocking code (the engine is synchronous) and run on tokio's blocking pool, so
//! the runtime's workers — which answer the API, feed the watchdog and catch signals — are
//! never held up by file or storage I/O. A job watches its `Progress` cancel flag through
//! the engine; the task around it turns "stopped because canceled" into Canceled or, for a
//! timeout, Failed.

use super::Agent;
use super::operations::Outcome;
use super::record::{FailureReason, OpRecord, Phase, Request, Trigger};
use super::status_map::failure_reason;
use crate::backup::{self, BackupOptions, Excludes, ParentChoice};
use crate::error::{Error, Kind, Result};
use crate::progress::Progress;
use crate::restore::{self, RestoreOptions};
use std::sync::Arc;
use std::time::Duration;

/// Starts the task that runs an admitted operation to its end.
pub fn spawn(agent: Arc<Agent>, rec: OpRecord, progress: Arc<Progress>) {
    tokio::spawn(async move {
        let id = rec.id.clone();
        agent.ops.mark_started(&id);
        let timeout = agent.config.timeout(rec.kind);
        let grace = agent.config.timeouts.stop_grace.0;
        let mut job = {
            let (agent, rec, progress) = (agent.clone(), rec.clone(), progress.clone());
            tokio::task::spawn_blocking(move || run(&agent, &rec, &progress))
        };
        // Progress is saved now and then, so GetOperation after a crash tells how far it got.
        let mut save = tokio::time::interval(Duration::from_secs(30));
        save.tick().await;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let result = loop {
            tokio::select! {
                r = &mut job => break r,
                _ = save.tick() => agent.ops.update(&id, |_| {}),
                () = &mut deadline => {
                    tracing::warn!(operation_id = %id, timeout_s = timeout.as_secs_f64(), "operation timed out; stopping it");
                    let _ = agent.ops.cancel(&id, FailureReason::Timeout);
                    match tokio::time::timeout(grace, &mut job).await {
                        Ok(r) => break r,
                        Err(_) => {
                            agent.ops.finish_record(&id, Outcome {
                                phase: Some(Phase::Failed),
                                reason: Some(FailureReason::Timeout),
                                message: format!(
                                    "timed out after {}; the work did not stop within {} and \
                                     new operations wait until it has",
                                    humantime::format_duration(timeout),
                                    humantime::format_duration(grace)
                                ),
                                ..Default::default()
                            });
                            let _ = job.await;
                            agent.ops.release(&id);
                            return;
                        }
                    }
                }
            }
        };
        let cancel = agent.ops.cancel_reason(&id);
        let outcome = match result {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) if e.kind() == Kind::Cancelled || cancel.is_some() => {
                cancelled_outcome(cancel, timeout)
            }
            Ok(Err(e)) => Outcome {
                phase: Some(Phase::Failed),
                reason: Some(failure_reason(&e)),
                message: e.to_string(),
                ..Default::default()
            },
            Err(join) => Outcome {
                phase: Some(Phase::Failed),
                reason: Some(FailureReason::Internal),
                message: format!("the operation stopped unexpectedly: {join}"),
                ..Default::default()
            },
        };
        agent.ops.finish_record(&id, outcome);
        agent.ops.release(&id);
    });
}

fn cancelled_outcome(cause: Option<FailureReason>, timeout: std::time::Duration) -> Outcome {
    let (phase, reason, message) = match cause {
        Some(FailureReason::Timeout) => (
            Phase::Failed,
            FailureReason::Timeout,
            format!(
                "timed out after {} and was stopped",
                humantime::format_duration(timeout)
            ),
        ),
        Some(FailureReason::AgentStopping) => (
            Phase::Canceled,
            FailureReason::AgentStopping,
            "canceled: agentd was asked to stop (SIGTERM)".to_string(),
        ),
        _ => (
            Phase::Canceled,
            FailureReason::CanceledByUser,
            "canceled on request".to_string(),
        ),
    };
    Outcome {
        phase: Some(phase),
        reason: Some(reason),
        message,
        ..Default::default()
    }
}

fn run(agent: &Agent, rec: &OpRecord, progress: &Arc<Progress>) -> Result<Outcome> {
    match &rec.request {
        Request::Snapshot { tags, ttl, full } => snapshot(agent, rec, progress, tags, *ttl, *full),
        Request::Restore {
            snapshot,
            target,
            include,
            delete,
            source_host,
        } => {
            agent.ops.set_step(&rec.id, "opening repository");
            let repo = agent.open_repository()?;
            let host = source_host.as_deref().unwrap_or(&agent.node);
            let snap = repo.resolve_for_host(snapshot, host)?;
            agent.ops.update(&rec.id, |r| {
                r.snapshot_id = Some(snap.id.to_hex());
                r.snapshot_name = snap.snapshot.name.clone();
            });
            agent.ops.set_step(&rec.id, "restoring");
            let mut opts = RestoreOptions::new(target);
            opts.includes = include.clone();
            opts.delete = *delete;
            opts.threads = agent.config.backup.threads;
            opts.progress = progress.clone();
            let report = restore::restore(&repo, &snap.snapshot, &opts)?;
            let partial = report.error_count > 0;
            Ok(Outcome {
                phase: Some(if partial {
                    Phase::PartiallyFailed
                } else {
                    Phase::Completed
                }),
                reason: None,
                message: format!(
                    "restored snapshot {} into {}: {} files, {} dirs, {} bytes{}",
                    snap.id.short(),
                    target.display(),
                    report.files,
                    report.dirs,
                    report.bytes,
                    if partial {
                        format!("; {} entries could not be restored", report.error_count)
                    } else {
                        String::new()
                    }
                ),
                snapshot_id: Some(snap.id.to_hex()),
                errors: report.errors,
            })
        }
        Request::Maintenance { .. } => super::maintenance::run(agent, rec, progress),
        Request::NodeRestore { .. } => super::node_restore::run(agent, rec, progress),
    }
}

fn snapshot(
    agent: &Agent,
    rec: &OpRecord,
    progress: &Arc<Progress>,
    tags: &[String],
    ttl: Option<u64>,
    full: bool,
) -> Result<Outcome> {
    let id = &rec.id;
    let hooks = &agent.config.hooks;
    if !hooks.pre_snapshot.is_empty() {
        agent.ops.set_step(id, "pre-snapshot hooks");
    }
    for hook in &hooks.pre_snapshot {
        let run = super::hooks::run("pre-snapshot", hook, id, &[], progress);
        let (ok, continued) = (run.ok, run.record.continued);
        let argv0 = run.record.argv[0].clone();
        agent.ops.add_hook(id, run.record);
        if run.cancelled {
            return Err(Error::cancelled());
        }
        progress.check_cancelled()?;
        if !ok && !continued {
            return Ok(hook_failed(format!(
                "pre-snapshot hook {argv0} failed; no snapshot was taken (see the hook's output \
                 in the operation record)"
            )));
        }
    }

    let result = take_snapshot(agent, rec, progress, tags, ttl, full);

    // Post hooks run whenever the pre hooks did, so a freeze is always thawed.
    let mut post_failure = None;
    if !hooks.post_snapshot.is_empty() {
        agent.ops.set_step(id, "post-snapshot hooks");
    }
    let snapshot_env = match &result {
        Ok((sid, _)) => vec![("HOSTAGENT_SNAPSHOT_ID", sid.clone())],
        Err(_) => Vec::new(),
    };
    // Thawing must happen even when canceled, so post hooks get a fresh cancel flag.
    let post_progress = Progress::new();
    for hook in &hooks.post_snapshot {
        let run = super::hooks::run("post-snapshot", hook, id, &snapshot_env, &post_progress);
        if !run.ok && !run.record.continued && post_failure.is_none() {
            post_failure = Some(run.record.argv[0].clone());
        }
        agent.ops.add_hook(id, run.record);
    }

    let (sid, report) = result?;
    let snap = &report.snapshot;
    let mut phase = match snap.status {
        crate::repo::SnapshotStatus::Completed => Phase::Completed,
        crate::repo::SnapshotStatus::PartiallyFailed => Phase::PartiallyFailed,
    };
    let mut message = format!(
        "snapshot {} ({}) saved: {} files, {} bytes read, {} bytes new",
        &sid[..12],
        snap.name.as_deref().unwrap_or(""),
        snap.stats.files,
        snap.stats.bytes_read,
        snap.stats.bytes_new
    );
    if report.dirs_reused > 0 {
        message.push_str(&format!(
            "; {} unchanged directories kept from the previous snapshot (change hints)",
            report.dirs_reused
        ));
    }
    if snap.stats.errors > 0 {
        message.push_str(&format!(
            "; {} entries could not be stored",
            snap.stats.errors
        ));
    }
    let mut reason = None;
    if let Some(hook) = post_failure {
        phase = Phase::PartiallyFailed;
        reason = Some(FailureReason::HookFailed);
        message.push_str(&format!("; post-snapshot hook {hook} failed"));
    }
    agent.metrics.snapshot_saved(&snap.stats);
    tracing::info!(
        operation_id = %id, snapshot_id = %sid, snapshot_name = snap.name.as_deref().unwrap_or(""),
        bytes = snap.stats.bytes_read, bytes_new = snap.stats.bytes_new,
        files = snap.stats.files, "snapshot saved"
    );
    Ok(Outcome {
        phase: Some(phase),
        reason,
        message,
        snapshot_id: Some(sid),
        errors: snap.errors.clone(),
    })
}

fn hook_failed(message: String) -> Outcome {
    Outcome {
        phase: Some(Phase::Failed),
        reason: Some(FailureReason::HookFailed),
        message,
        ..Default::default()
    }
}

fn take_snapshot(
    agent: &Agent,
    rec: &OpRecord,
    progress: &Arc<Progress>,
    tags: &[String],
    ttl: Option<u64>,
    full: bool,
) -> Result<(String, backup::BackupReport)> {
    let id = &rec.id;
    agent.ops.set_step(id, "opening repository");
    let mut repo = agent.open_repository_unindexed()?;
    progress.check_cancelled()?;
    let cfg = &agent.config.backup;
    let name = snapshot_name(&agent.node, rec.trigger, &repo)?;
    agent
        .ops
        .update(id, |r| r.snapshot_name = Some(name.clone()));
    let mut opts = BackupOptions::new(cfg.paths.clone());
    opts.tags = cfg.tags.clone();
    for t in tags {
        if !opts.tags.contains(t) {
            opts.tags.push(t.clone());
        }
    }
    opts.hostname = agent.node.clone();
    opts.name = Some(name);
    opts.excludes = Excludes::new(&cfg.excludes, cfg.exclude_caches)?;
    if full {
        opts.parent = ParentChoice::None;
    }
    let ttl = ttl.or(match rec.trigger {
        Trigger::Manual => cfg.default_ttl.map(|d| d.0.as_secs()),
        Trigger::Scheduled => None,
    });
    opts.expires = ttl.map(|s| chrono::Utc::now() + chrono::Duration::seconds(s as i64));
    opts.threads = cfg.threads;
    opts.progress = progress.clone();
    if let Some(watcher) = &agent.hints {
        match watcher.begin(full) {
            // The parent may have been deleted since: then compare everything.
            Ok(h) if repo.read_snapshot(&h.parent).is_ok() => {
                tracing::info!(
                    operation_id = %id, parent = %h.parent.to_hex(), changed = h.changed.len(),
                    "using change hints"
                );
                opts.hints = Some(h);
            }
            Ok(_) => tracing::info!(
                operation_id = %id,
                "comparing every entry: the snapshot the change hints are relative to is gone"
            ),
            Err(why) => tracing::info!(operation_id = %id, "comparing every entry: {why}"),
        }
    }
    agent.ops.set_step(id, "backing up");
    // Inside a writer session, so a prune running on another node keeps what this reuses.
    let result = crate::maintenance::backup(&mut repo, &opts);
    if let Some(watcher) = &agent.hints {
        watcher.complete(result.as_ref().ok().map(|r| r.id));
    }
    let report = result?;
    let sid = report.id.to_hex();
    agent.ops.update(id, |r| r.snapshot_id = Some(sid.clone()));
    Ok((sid, report))
}

/// `{node}-{YYYYMMDD-HHMM}-{manual|scheduled}` in UTC, with `-2`, `-3`... when a snapshot
/// of the same minute already has the name.
fn snapshot_name(node: &str, trigger: Trigger, repo: &crate::repo::Repository) -> Result<String> {
    let base = format!(
        "{node}-{}-{}",
        chrono::Utc::now().format("%Y%m%d-%H%M"),
        trigger.as_str()
    );
    let taken: std::collections::HashSet<String> = repo
        .list_snapshots()?
        .into_iter()
        .filter_map(|s| s.snapshot.name)
        .collect();
    if !taken.contains(&base) {
        return Ok(base);
    }
    Ok((2..)
        .map(|n| format!("{base}-{n}"))
        .find(|n| !taken.contains(n))
        .expect("an unused suffix exists"))
}
