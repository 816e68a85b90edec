//! The gRPC service: checks each request's fields, then hands the work to the operations
//! manager (mutating, long-running) or to the repository on the blocking pool (queries).
//! Failures leave through [`ApiError`], turned into a status in one place.

use super::Agent;
use super::convert;
use super::record::{FailureReason, MaintenanceTask, Request, Trigger, is_valid_id};
use super::status_map::{ApiError, invalid};
use crate::api;
use crate::api::agent_server::Agent as AgentApi;
use crate::error::{Error, Kind};
use std::path::{Component, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request as Req, Response, Status};

pub struct Service {
    pub agent: Arc<Agent>,
}

type ApiResult<T> = Result<Response<T>, Status>;

fn check_request_id(id: &str) -> Result<Option<String>, ApiError> {
    if id.is_empty() {
        return Ok(None);
    }
    if id.len() > 128 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            "request_id",
            "must be 1 to 128 characters without spaces or control characters",
        ));
    }
    Ok(Some(id.to_string()))
}

fn check_operation_id(id: &str) -> Result<&str, ApiError> {
    if id.is_empty() {
        return Err(invalid("operation_id", "must not be empty"));
    }
    if !is_valid_id(id) {
        return Err(invalid(
            "operation_id",
            format!(
                "{:?} is not an operation ID (they look like snapshot-20250101-020000-1a2b3c)",
                id.chars().take(80).collect::<String>()
            ),
        ));
    }
    Ok(id)
}

/// Restore includes: snapshot paths without `..`.
fn check_includes(include: &[String]) -> Result<Vec<PathBuf>, ApiError> {
    include
        .iter()
        .map(|p| {
            let path = PathBuf::from(p);
            if p.is_empty() || path.components().any(|c| c == Component::ParentDir) {
                Err(invalid(
                    "include",
                    format!("{p:?} must be a snapshot path without '..' (as `agentctl ls` shows)"),
                ))
            } else {
                Ok(path)
            }
        })
        .collect()
}

/// An absolute path without `..`, as a field of a request.
fn check_absolute(field: &'static str, p: &str) -> Result<PathBuf, ApiError> {
    let path = PathBuf::from(p);
    if p.is_empty() || !path.is_absolute() {
        return Err(invalid(
            field,
            format!("{p:?} must be an absolute directory"),
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(field, format!("{p:?} must not contain '..'")));
    }
    Ok(path)
}

/// The host whose latest snapshot a restore takes: only with snapshot "latest".
fn check_source_host(snapshot: &str, host: &str) -> Result<Option<String>, ApiError> {
    match host {
        "" => Ok(None),
        h if snapshot != "latest" => Err(invalid(
            "source_host",
            format!(
                "{h:?} needs snapshot \"latest\": a snapshot ID or name already says whose \
                 snapshot it is"
            ),
        )),
        h if h.len() > 255 || h.chars().any(|c| c.is_control() || c.is_whitespace()) => {
            Err(invalid("source_host", format!("{h:?} is not a host name")))
        }
        h => Ok(Some(h.to_string())),
    }
}

/// A node restore's fields, checked before anything starts.
fn node_restore_request(r: api::StartNodeRestoreRequest) -> Result<Request, ApiError> {
    if r.snapshot.is_empty() {
        return Err(invalid(
            "snapshot",
            "must name a snapshot: an ID, a unique ID prefix, a name, or \"latest\"",
        ));
    }
    let target = check_absolute("target", &r.target)?;
    if target.parent().is_none() {
        return Err(invalid(
            "target",
            "cannot be /: a node restore swaps a directory in, so name the tree (/var/onprem)",
        ));
    }
    let source_host = check_source_host(&r.snapshot, &r.source_host)?;
    let source_path = match r.source_path.as_str() {
        "" => None,
        p => Some(check_absolute("source_path", p)?),
    };
    let mut include = Vec::new();
    for p in &r.include {
        let path = check_absolute("include", p)?;
        if !path.starts_with(&target) || path == target {
            return Err(invalid(
                "include",
                format!(
                    "{p:?} must be a directory below the target {}",
                    target.display()
                ),
            ));
        }
        include.push(path);
    }
    Ok(Request::NodeRestore {
        snapshot: r.snapshot,
        target,
        source_host,
        source_path,
        include,
        dry_run: r.dry_run,
        safety_snapshot: !r.skip_safety_snapshot,
    })
}

/// A maintenance's fields, checked and completed from `[maintenance]`: no tasks means the
/// configured ones, no data share the configured one.
fn maintenance_request(
    cfg: &super::config::MaintenanceConfig,
    r: api::StartMaintenanceRequest,
) -> Result<Request, ApiError> {
    let mut tasks = Vec::new();
    for t in &r.tasks {
        let task = match api::MaintenanceTask::try_from(*t) {
            Ok(api::MaintenanceTask::Forget) => MaintenanceTask::Forget,
            Ok(api::MaintenanceTask::Prune) => MaintenanceTask::Prune,
            Ok(api::MaintenanceTask::Check) => MaintenanceTask::Check,
            _ => {
                return Err(invalid(
                    "tasks",
                    format!(
                        "{t} is not a maintenance task: use MAINTENANCE_TASK_FORGET (1), \
                         MAINTENANCE_TASK_PRUNE (2) or MAINTENANCE_TASK_CHECK (3)"
                    ),
                ));
            }
        };
        if !tasks.contains(&task) {
            tasks.push(task);
        }
    }
    if tasks.is_empty() {
        tasks = cfg.tasks.clone();
    }
    // Whatever the order asked for, they run as forget, prune, check.
    tasks.sort();
    let checks = tasks.contains(&MaintenanceTask::Check);
    let read_data = if r.check_read_data_subset.is_empty() {
        if checks {
            super::maintenance::normalized_subset(cfg.check_read_data_subset.as_deref())
        } else {
            None
        }
    } else {
        let subset = super::config::parse_read_data_subset(&r.check_read_data_subset)
            .map_err(|p| invalid("check_read_data_subset", p))?;
        if subset.is_some() && !checks {
            return Err(invalid(
                "check_read_data_subset",
                "the tasks include no check: add MAINTENANCE_TASK_CHECK or leave it empty",
            ));
        }
        super::maintenance::normalized_subset(Some(&r.check_read_data_subset))
    };
    Ok(Request::Maintenance {
        tasks,
        dry_run: r.dry_run,
        read_data,
    })
}

impl Service {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Agent) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let agent = self.agent.clone();
        tokio::task::spawn_blocking(move || f(&agent))
            .await
            .map_err(|e| {
                ApiError::Engine(Error::new(Kind::Io, format!("the request failed: {e}")))
            })?
    }

    fn start(
        &self,
        request: Request,
        request_id: Option<String>,
    ) -> Result<api::Operation, ApiError> {
        let (rec, progress) = self
            .agent
            .ops
            .begin(request, request_id, Trigger::Manual, None)?;
        if let Some(progress) = progress {
            super::jobs::spawn(self.agent.clone(), rec.clone(), progress);
        }
        Ok(convert::operation(&rec))
    }
}

#[tonic::async_trait]
impl AgentApi for Service {
    async fn start_snapshot(
        &self,
        req: Req<api::StartSnapshotRequest>,
    ) -> ApiResult<api::Operation> {
        let r = req.into_inner();
        let request_id = check_request_id(&r.request_id)?;
        for t in &r.tags {
            super::config::check_tag(t).map_err(|p| invalid("tags", p))?;
        }
        let ttl = if r.ttl.is_empty() {
            None
        } else {
            Some(
                super::config::parse_duration(&r.ttl)
                    .map_err(|p| invalid("ttl", p))?
                    .as_secs(),
            )
        };
        let request = Request::Snapshot {
            tags: r.tags,
            ttl,
            full: r.full,
        };
        Ok(Response::new(self.start(request, request_id)?))
    }

    async fn start_restore(&self, req: Req<api::StartRestoreRequest>) -> ApiResult<api::Operation> {
        let r = req.into_inner();
        let request_id = check_request_id(&r.request_id)?;
        if r.snapshot.is_empty() {
            return Err(invalid(
                "snapshot",
                "must name a snapshot: an ID, a unique ID prefix, a name, or \"latest\"",
            )
            .into());
        }
        let target = std::path::Path::new(&r.target);
        if r.target.is_empty() || !target.is_absolute() {
            return Err(invalid(
                "target",
                format!("{:?} must be an absolute directory", r.target),
            )
            .into());
        }
        if target.components().any(|c| c == Component::ParentDir) {
            return Err(invalid("target", "must not contain '..'").into());
        }
        let request = Request::Restore {
            source_host: check_source_host(&r.snapshot, &r.source_host)?,
            snapshot: r.snapshot,
            target: target.to_path_buf(),
            include: check_includes(&r.include)?,
            delete: r.delete,
        };
        Ok(Response::new(self.start(request, request_id)?))
    }

    async fn start_node_restore(
        &self,
        req: Req<api::StartNodeRestoreRequest>,
    ) -> ApiResult<api::Operation> {
        let r = req.into_inner();
        let request_id = check_request_id(&r.request_id)?;
        let request = node_restore_request(r)?;
        Ok(Response::new(self.start(request, request_id)?))
    }

    async fn start_maintenance(
        &self,
        req: Req<api::StartMaintenanceRequest>,
    ) -> ApiResult<api::Operation> {
        let r = req.into_inner();
        let request_id = check_request_id(&r.request_id)?;
        let request = maintenance_request(&self.agent.config.maintenance, r)?;
        Ok(Response::new(self.start(request, request_id)?))
    }

    async fn get_operation(&self, req: Req<api::GetOperationRequest>) -> ApiResult<api::Operation> {
        let id = check_operation_id(&req.get_ref().operation_id)?;
        Ok(Response::new(convert::operation(&self.agent.ops.get(id)?)))
    }

    type WatchOperationStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<api::Operation, Status>> + Send>>;

    async fn watch_operation(
        &self,
        req: Req<api::WatchOperationRequest>,
    ) -> ApiResult<Self::WatchOperationStream> {
        let id = check_operation_id(&req.get_ref().operation_id)?.to_string();
        let ops = self.agent.ops.clone();
        let first = ops.get(&id)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut changed = ops.subscribe();
        tokio::spawn(async move {
            let mut last = None;
            let mut rec = first;
            loop {
                let done = rec.phase.is_terminal();
                let msg = convert::operation(&rec);
                if last.as_ref() != Some(&msg) {
                    // The caller went away: stop watching; the operation goes on.
                    if tx.send(Ok(msg.clone())).await.is_err() {
                        return;
                    }
                    last = Some(msg);
                }
                if done {
                    return;
                }
                // Phase and step changes wake us; counters are polled.
                let _ = tokio::time::timeout(Duration::from_millis(200), changed.changed()).await;
                rec = match ops.get(&id) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cancel_operation(
        &self,
        req: Req<api::CancelOperationRequest>,
    ) -> ApiResult<api::Operation> {
        let id = check_operation_id(&req.get_ref().operation_id)?;
        let rec = self.agent.ops.cancel(id, FailureReason::CanceledByUser)?;
        Ok(Response::new(convert::operation(&rec)))
    }

    async fn list_operations(
        &self,
        req: Req<api::ListOperationsRequest>,
    ) -> ApiResult<api::ListOperationsResponse> {
        let limit = req.get_ref().limit as usize;
        let operations = self
            .agent
            .ops
            .list(limit)
            .iter()
            .map(convert::operation)
            .collect();
        Ok(Response::new(api::ListOperationsResponse { operations }))
    }

    async fn list_snapshots(
        &self,
        req: Req<api::ListSnapshotsRequest>,
    ) -> ApiResult<api::ListSnapshotsResponse> {
        let r = req.into_inner();
        let snapshots = self
            .blocking(move |agent| {
                let all = agent.query(|repo| repo.list_snapshots())?;
                Ok(all
                    .iter()
                    .filter(|s| r.hostname.is_empty() || s.snapshot.hostname == r.hostname)
                    .filter(|s| r.tag.is_empty() || s.snapshot.tags.contains(&r.tag))
                    .map(convert::snapshot)
                    .collect())
            })
            .await?;
        Ok(Response::new(api::ListSnapshotsResponse { snapshots }))
    }

    async fn describe_snapshot(
        &self,
        req: Req<api::DescribeSnapshotRequest>,
    ) -> ApiResult<api::Snapshot> {
        let spec = req.into_inner().snapshot;
        if spec.is_empty() {
            return Err(invalid(
                "snapshot",
                "must name a snapshot: an ID, a unique ID prefix, a name, or \"latest\"",
            )
            .into());
        }
        let snap = self
            .blocking(move |agent| {
                let node = agent.node.clone();
                let entry = agent.query(|repo| repo.resolve_for_host(&spec, &node))?;
                Ok(convert::snapshot(&entry))
            })
            .await?;
        Ok(Response::new(snap))
    }

    async fn delete_snapshot(
        &self,
        req: Req<api::DeleteSnapshotRequest>,
    ) -> ApiResult<api::DeleteSnapshotResponse> {
        let spec = req.into_inner().snapshot_id.to_ascii_lowercase();
        if spec.len() < 4 || spec.len() > 64 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(
                "snapshot_id",
                format!(
                    "{:?} is not a snapshot ID: give the ID or at least its first 4 hex digits",
                    spec.chars().take(80).collect::<String>()
                ),
            )
            .into());
        }
        let deleted_id = self
            .blocking(move |agent| {
                let id = agent.query(|repo| {
                    let entry = repo.resolve_snapshot(&spec)?;
                    if !entry.id.to_hex().starts_with(&spec) {
                        return Err(Error::not_found(format!(
                            "no snapshot ID starts with {spec}"
                        )));
                    }
                    let key = crate::repo::snapshot::snapshot_key(&entry.id);
                    repo.store()
                        .delete(&key)
                        .map_err(|e| Error::from(e).context("cannot delete the snapshot"))?;
                    Ok(entry.id.to_hex())
                })?;
                tracing::info!(snapshot_id = %id, "snapshot deleted");
                Ok(id)
            })
            .await?;
        Ok(Response::new(api::DeleteSnapshotResponse { deleted_id }))
    }

    async fn get_status(&self, _req: Req<api::GetStatusRequest>) -> ApiResult<api::AgentStatus> {
        let check = tokio::time::timeout(
            Duration::from_secs(10),
            self.blocking(|agent| Ok(agent.check_repository())),
        )
        .await;
        let (reachable, repository_error) = match check {
            Ok(Ok(Ok(()))) => (true, String::new()),
            Ok(Ok(Err(e))) => (false, e.to_string()),
            Ok(Err(e)) => (false, e.to_string()),
            Err(_) => (
                false,
                "the repository did not answer within 10s".to_string(),
            ),
        };
        let a = &self.agent;
        let now = chrono::Utc::now();
        Ok(Response::new(api::AgentStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            node: a.node.clone(),
            repository: a.config.repository.location().to_string(),
            repository_reachable: reachable,
            repository_error,
            last_success: a
                .ops
                .last_success()
                .into_iter()
                .map(|(k, r)| api::LastSuccess {
                    kind: convert::kind(k) as i32,
                    operation_id: r.id,
                    finished: r.finished.unwrap_or_default(),
                })
                .collect(),
            running: a.ops.running().as_ref().map(convert::operation),
            schedules: super::schedule::status(&a.config, now)
                .into_iter()
                .map(|(name, cron, next)| api::ScheduleStatus {
                    name,
                    cron,
                    next: next
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default(),
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str) -> api::StartNodeRestoreRequest {
        api::StartNodeRestoreRequest {
            snapshot: "latest".into(),
            target: target.into(),
            ..Default::default()
        }
    }

    fn field_of(r: api::StartNodeRestoreRequest) -> String {
        match node_restore_request(r) {
            Err(ApiError::Invalid { field, .. }) => field.to_string(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn node_restore_fields_are_checked_and_named() {
        assert_eq!(field_of(req("var/onprem")), "target");
        assert_eq!(field_of(req("/")), "target");
        assert_eq!(field_of(req("/var/../etc")), "target");
        let mut r = req("/var/onprem");
        r.include = vec!["/var/other".into()];
        assert_eq!(field_of(r), "include");
        let mut r = req("/var/onprem");
        r.snapshot = "abcd1234".into();
        r.source_host = "node-b".into();
        assert_eq!(field_of(r), "source_host");
        let mut r = req("/var/onprem");
        r.source_path = "relative".into();
        assert_eq!(field_of(r), "source_path");
        let mut r = req("/var/onprem");
        r.snapshot = String::new();
        assert_eq!(field_of(r), "snapshot");
    }

    #[test]
    fn maintenance_requests_take_the_configured_defaults_and_run_in_order() {
        use super::super::config::MaintenanceConfig;
        let mut cfg = MaintenanceConfig {
            check_read_data_subset: Some("5%".into()),
            ..Default::default()
        };
        let req = |tasks: &[api::MaintenanceTask], subset: &str| api::StartMaintenanceRequest {
            tasks: tasks.iter().map(|t| *t as i32).collect(),
            check_read_data_subset: subset.into(),
            ..Default::default()
        };
        let got = |cfg: &MaintenanceConfig, r| match maintenance_request(cfg, r) {
            Ok(Request::Maintenance {
                tasks, read_data, ..
            }) => (tasks, read_data),
            other => panic!("{other:?}"),
        };
        use MaintenanceTask::{Check, Forget, Prune};
        // No tasks: the configured ones; no check among them, so no data share.
        assert_eq!(got(&cfg, req(&[], "")), (vec![Forget, Prune], None));
        cfg.tasks = vec![Check, Forget];
        assert_eq!(
            got(&cfg, req(&[], "")),
            (vec![Forget, Check], Some("5%".into()))
        );
        use api::MaintenanceTask as T;
        assert_eq!(
            got(&cfg, req(&[T::Check, T::Prune, T::Check], "all")),
            (vec![Prune, Check], Some("all".into()))
        );
        assert_eq!(got(&cfg, req(&[T::Check], "none")), (vec![Check], None));
        assert_eq!(got(&cfg, req(&[T::Prune], "none")), (vec![Prune], None));
        for (r, field) in [
            (req(&[T::Unspecified], ""), "tasks"),
            (req(&[T::Check], "most"), "check_read_data_subset"),
            (req(&[T::Forget], "10%"), "check_read_data_subset"),
        ] {
            match maintenance_request(&cfg, r) {
                Err(ApiError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_good_node_restore_request_keeps_its_choices() {
        let mut r = req("/var/onprem");
        r.source_host = "node-b".into();
        r.include = vec!["/var/onprem/etc".into()];
        r.dry_run = true;
        match node_restore_request(r).unwrap() {
            Request::NodeRestore {
                source_host,
                include,
                dry_run,
                safety_snapshot,
                ..
            } => {
                assert_eq!(source_host.as_deref(), Some("node-b"));
                assert_eq!(include, vec![PathBuf::from("/var/onprem/etc")]);
                assert!(dry_run && safety_snapshot);
            }
            other => panic!("{other:?}"),
        }
    }
}
