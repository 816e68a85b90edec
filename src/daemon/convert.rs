//! Conversions from the agent's records and the repository's manifests to API messages.

use super::record::{FailureReason, MaintenanceRecord, NodeRestoreRecord, OpKind, OpRecord, Phase};
use crate::api;
use crate::repo::SnapshotEntry;

pub fn kind(k: OpKind) -> api::OperationKind {
    match k {
        OpKind::Snapshot => api::OperationKind::Snapshot,
        OpKind::Restore => api::OperationKind::Restore,
        OpKind::Maintenance => api::OperationKind::Maintenance,
        OpKind::NodeRestore => api::OperationKind::NodeRestore,
    }
}

pub fn phase(p: Phase) -> api::Phase {
    match p {
        Phase::New => api::Phase::New,
        Phase::InProgress => api::Phase::InProgress,
        Phase::Canceling => api::Phase::Canceling,
        Phase::Canceled => api::Phase::Canceled,
        Phase::Completed => api::Phase::Completed,
        Phase::PartiallyFailed => api::Phase::PartiallyFailed,
        Phase::Failed => api::Phase::Failed,
    }
}

pub fn reason(r: FailureReason) -> api::FailureReason {
    use api::FailureReason as A;
    match r {
        FailureReason::AgentRestarted => A::AgentRestarted,
        FailureReason::Timeout => A::Timeout,
        FailureReason::CanceledByUser => A::CanceledByUser,
        FailureReason::AgentStopping => A::AgentStopping,
        FailureReason::StorageUnavailable => A::StorageUnavailable,
        FailureReason::RepositoryUnusable => A::RepositoryUnusable,
        FailureReason::RepositoryCorrupt => A::RepositoryCorrupt,
        FailureReason::HookFailed => A::HookFailed,
        FailureReason::NotFound => A::NotFound,
        FailureReason::InvalidInput => A::InvalidInput,
        FailureReason::LocalIo => A::LocalIo,
        FailureReason::Unsupported => A::Unsupported,
        FailureReason::UnitControl => A::UnitControl,
        FailureReason::Internal => A::Internal,
        FailureReason::RepositoryBusy => A::RepositoryBusy,
    }
}

pub fn operation(r: &OpRecord) -> api::Operation {
    let p = &r.progress;
    api::Operation {
        id: r.id.clone(),
        kind: kind(r.kind) as i32,
        phase: phase(r.phase) as i32,
        failure_reason: r
            .failure_reason
            .map_or(api::FailureReason::Unspecified, reason) as i32,
        message: r.message.clone(),
        progress: Some(api::Progress {
            step: p.step.clone(),
            files_done: p.files_done,
            files_total: p.files_total,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            errors: p.errors,
        }),
        created: r.created.clone(),
        started: r.started.clone().unwrap_or_default(),
        finished: r.finished.clone().unwrap_or_default(),
        request_id: r.request_id.clone().unwrap_or_default(),
        trigger: r.trigger.as_str().to_string(),
        schedule: r.schedule.clone().unwrap_or_default(),
        snapshot_id: r.snapshot_id.clone().unwrap_or_default(),
        snapshot_name: r.snapshot_name.clone().unwrap_or_default(),
        target: r
            .request
            .target()
            .map(|t| t.display().to_string())
            .unwrap_or_default(),
        hooks: r
            .hooks
            .iter()
            .map(|h| api::HookResult {
                stage: h.stage.clone(),
                argv: h.argv.clone(),
                exit_code: h.exit_code,
                timed_out: h.timed_out,
                output: h.output.clone(),
                duration_ms: h.duration_ms,
                continued: h.continued,
            })
            .collect(),
        errors: r
            .errors
            .iter()
            .map(|e| api::FileError {
                path: e.path.clone(),
                error: e.error.clone(),
            })
            .collect(),
        node_restore: r.node_restore.as_ref().map(node_restore),
        maintenance: r.maintenance.as_ref().map(maintenance),
    }
}

fn maintenance(m: &MaintenanceRecord) -> api::MaintenanceResult {
    api::MaintenanceResult {
        tasks: m.tasks.clone(),
        dry_run: m.dry_run,
        steps: m.steps.clone(),
        policy: m.policy.clone(),
        snapshots_kept: m.snapshots_kept,
        snapshots_expired: m.snapshots_expired,
        snapshots_forgotten: m.snapshots_forgotten,
        removed: m
            .removed
            .iter()
            .map(|s| api::RemovedSnapshot {
                id: s.id.clone(),
                name: s.name.clone(),
                time: s.time.clone(),
                hostname: s.hostname.clone(),
                reason: s.reason.clone(),
            })
            .collect(),
        packs_deleted: m.packs_deleted,
        bytes_freed: m.bytes_freed,
        packs_announced: m.packs_announced,
        bytes_announced: m.bytes_announced,
        missing_blobs: m.missing_blobs,
        prune_problems: m.prune_problems.clone(),
        checked: m.checked,
        check_ok: m.check_ok,
        check_packs_read: m.check_packs_read,
        check_bytes_read: m.check_bytes_read,
        check_errors: m.check_errors.clone(),
        check_warnings: m.check_warnings.clone(),
        damaged_snapshots: m
            .damaged_snapshots
            .iter()
            .map(|d| api::DamagedSnapshot {
                id: d.id.clone(),
                time: d.time.clone(),
                hostname: d.hostname.clone(),
                damage: d.damage.clone(),
            })
            .collect(),
    }
}

fn node_restore(n: &NodeRestoreRecord) -> api::NodeRestoreResult {
    let dry = n.dry_run.clone().unwrap_or_default();
    api::NodeRestoreResult {
        steps: n.steps.clone(),
        failed_step: n.failed_step.clone(),
        safety_snapshot_id: n.safety_snapshot_id.clone().unwrap_or_default(),
        stopped_units: n.stopped_units.clone(),
        started_units: n.started_units.clone(),
        post_steps: n
            .post_steps
            .iter()
            .map(|s| api::PostRestoreStep {
                name: s.name.clone(),
                argv: s.argv.clone(),
                success: s.success,
                status: s.status.clone(),
                output: s.output.clone(),
            })
            .collect(),
        dry_run: n.dry_run.is_some(),
        units_to_stop: dry.units_to_stop,
        added: dry.added,
        changed: dry.changed,
        removed: dry.removed,
        added_count: dry.added_count,
        changed_count: dry.changed_count,
        removed_count: dry.removed_count,
    }
}

pub fn snapshot(s: &SnapshotEntry) -> api::Snapshot {
    let m = &s.snapshot;
    let st = &m.stats;
    api::Snapshot {
        id: s.id.to_hex(),
        name: m.name.clone().unwrap_or_default(),
        time: m.time.clone(),
        hostname: m.hostname.clone(),
        paths: m.paths.clone(),
        tags: m.tags.clone(),
        status: format!("{:?}", m.status),
        expires: m.expires.clone().unwrap_or_default(),
        parent: m.parent.map(|p| p.to_hex()).unwrap_or_default(),
        stats: Some(api::SnapshotStats {
            files: st.files,
            dirs: st.dirs,
            files_new: st.files_new,
            files_changed: st.files_changed,
            files_unmodified: st.files_unmodified,
            errors: st.errors,
            total_bytes: st.total_bytes,
            bytes_read: st.bytes_read,
            bytes_new: st.bytes_new,
            bytes_stored: st.bytes_stored,
            duration_ms: st.duration_ms,
        }),
        errors: m
            .errors
            .iter()
            .map(|e| api::FileError {
                path: e.path.clone(),
                error: e.error.clone(),
            })
            .collect(),
        program_version: m.program_version.clone(),
    }
}
