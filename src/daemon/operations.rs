//! Long-running operations: admission (one mutating operation at a time, idempotent
//! starts), the live state watchers read, cancellation, timeouts, and the records that
//! outlive the process.
//!
//! The work itself runs on tokio's blocking pool ([`super::jobs`]); this module owns
//! everything around it. Every change of phase or step is written to the record file before
//! watchers hear of it, so what GetOperation answers after a restart is what was last said.
//! At start, an operation found unfinished was cut short by the agent's death: it becomes
//! Failed with reason AgentRestarted.

use super::metrics::Metrics;
use super::record::{
    FailureReason, HookRecord, Loaded, MovedAside, OpKind, OpRecord, Phase, ProgressRecord,
    RecordStore, Request, Trigger, new_id, now_rfc3339,
};
use super::status_map::ApiError;
use crate::progress::Progress;
use crate::repo::snapshot::FileError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The operation running now.
struct Running {
    id: String,
    progress: Arc<Progress>,
    /// Why cancellation was asked for, once it was.
    cancel: Option<FailureReason>,
}

struct Inner {
    records: HashMap<String, OpRecord>,
    running: Option<Running>,
    stopping: bool,
}

pub struct Operations {
    inner: Mutex<Inner>,
    store: RecordStore,
    kept: usize,
    metrics: Arc<Metrics>,
    /// Bumped at every change; watchers wait on it (and poll for counter changes).
    changed: tokio::sync::watch::Sender<u64>,
    /// Operations found unfinished at start (now Failed, AgentRestarted).
    interrupted: Vec<String>,
}

/// How an operation ended, as the job reports it.
#[derive(Debug, Default)]
pub struct Outcome {
    pub phase: Option<Phase>,
    pub reason: Option<FailureReason>,
    pub message: String,
    pub snapshot_id: Option<String>,
    pub errors: Vec<FileError>,
}

impl Operations {
    /// Loads the records; unfinished ones become Failed (AgentRestarted), unreadable files
    /// are moved aside. Returns what was moved aside, for the log.
    pub fn open(
        store: RecordStore,
        kept: usize,
        metrics: Arc<Metrics>,
    ) -> crate::Result<(Arc<Operations>, MovedAside)> {
        let Loaded {
            records,
            moved_aside,
        } = store.load()?;
        let mut map = HashMap::new();
        let mut interrupted = Vec::new();
        for mut rec in records {
            if !rec.phase.is_terminal() {
                interrupted.push(rec.id.clone());
                tracing::warn!(
                    operation_id = %rec.id, phase = rec.phase.as_str(),
                    "operation was running when the agent stopped; marking it Failed"
                );
                let was = match rec.phase {
                    Phase::Canceling => "being canceled",
                    _ => "running",
                };
                rec.phase = Phase::Failed;
                rec.failure_reason = Some(FailureReason::AgentRestarted);
                rec.message = format!(
                    "agent restarted: agentd stopped while the operation was {was} (step {:?}); \
                     start it again",
                    rec.progress.step
                );
                rec.finished = Some(now_rfc3339());
                store.save(&rec)?;
            }
            map.insert(rec.id.clone(), rec);
        }
        let ops = Operations {
            inner: Mutex::new(Inner {
                records: map,
                running: None,
                stopping: false,
            }),
            store,
            kept,
            metrics,
            changed: tokio::sync::watch::channel(0).0,
            interrupted,
        };
        for (kind, rec) in ops.last_success() {
            if let Some(t) = rec.finished.as_deref().and_then(parse_time) {
                ops.metrics.set_last_success(kind, t);
            }
        }
        Ok((Arc::new(ops), moved_aside))
    }

    /// The operations that were running when agentd last stopped.
    pub fn interrupted(&self) -> Vec<OpRecord> {
        let inner = self.inner.lock().unwrap();
        self.interrupted
            .iter()
            .filter_map(|id| inner.records.get(id).cloned())
            .collect()
    }

    /// Adds to the record of a finished operation what was done about it since (at start,
    /// for an interrupted one).
    pub fn amend_finished(&self, id: &str, f: impl FnOnce(&mut OpRecord)) {
        let mut inner = self.inner.lock().unwrap();
        let Some(rec) = inner.records.get_mut(id) else {
            return;
        };
        f(rec);
        if let Err(e) = self.store.save(rec) {
            tracing::error!(operation_id = %id, error = %e, "cannot save the operation record");
        }
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Admits a new operation, or returns the one a retried request started.
    /// Returns the record and, when newly admitted, the progress handle for the job.
    pub fn begin(
        &self,
        request: Request,
        request_id: Option<String>,
        trigger: Trigger,
        schedule: Option<String>,
    ) -> Result<(OpRecord, Option<Arc<Progress>>), ApiError> {
        let kind = request.kind();
        let mut inner = self.inner.lock().unwrap();
        if let Some(rid) = &request_id
            && let Some(prev) = inner
                .records
                .values()
                .find(|r| r.request_id.as_ref() == Some(rid))
        {
            if prev.request != request {
                return Err(super::status_map::invalid(
                    "request_id",
                    format!(
                        "{rid:?} was already used for operation {} with different parameters; \
                         use a new request_id",
                        prev.id
                    ),
                ));
            }
            let mut rec = prev.clone();
            refresh(&inner, &mut rec);
            return Ok((rec, None));
        }
        if inner.stopping {
            return Err(ApiError::Stopping);
        }
        if let Some(r) = &inner.running {
            let running_kind = inner.records[&r.id].kind;
            return Err(ApiError::Busy {
                running: r.id.clone(),
                kind: running_kind,
            });
        }
        let rec = OpRecord {
            id: new_id(kind),
            kind,
            phase: Phase::New,
            failure_reason: None,
            message: String::new(),
            progress: ProgressRecord {
                step: "queued".into(),
                ..Default::default()
            },
            created: now_rfc3339(),
            started: None,
            finished: None,
            request_id,
            trigger,
            schedule,
            request,
            snapshot_id: None,
            snapshot_name: None,
            hooks: Vec::new(),
            errors: Vec::new(),
            node_restore: None,
            maintenance: None,
        };
        self.store.save(&rec)?;
        let progress = Arc::new(Progress::new());
        inner.running = Some(Running {
            id: rec.id.clone(),
            progress: progress.clone(),
            cancel: None,
        });
        inner.records.insert(rec.id.clone(), rec.clone());
        drop(inner);
        self.metrics.set_running(true);
        tracing::info!(operation_id = %rec.id, kind = kind.as_str(), trigger = trigger.as_str(), "operation admitted");
        self.notify();
        Ok((rec, Some(progress)))
    }

    /// Changes a record (and saves it) while the operation runs.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut OpRecord)) {
        let mut inner = self.inner.lock().unwrap();
        let Some(mut rec) = inner.records.get(id).cloned() else {
            return;
        };
        if rec.phase.is_terminal() {
            return;
        }
        refresh(&inner, &mut rec);
        f(&mut rec);
        if let Err(e) = self.store.save(&rec) {
            tracing::error!(operation_id = %id, error = %e, "cannot save the operation record");
        }
        inner.records.insert(id.to_string(), rec);
        drop(inner);
        self.notify();
    }

    pub fn mark_started(&self, id: &str) {
        self.update(id, |r| {
            if r.phase == Phase::New {
                r.phase = Phase::InProgress;
            }
            r.started = Some(now_rfc3339());
        });
    }

    pub fn set_step(&self, id: &str, step: &str) {
        tracing::info!(operation_id = %id, step, "operation step");
        self.update(id, |r| r.progress.step = step.to_string());
    }

    pub fn add_hook(&self, id: &str, hook: HookRecord) {
        self.update(id, |r| r.hooks.push(hook));
    }

    /// Asks the running operation to stop. A finished operation is returned unchanged.
    pub fn cancel(&self, id: &str, reason: FailureReason) -> Result<OpRecord, ApiError> {
        let mut inner = self.inner.lock().unwrap();
        let Some(rec) = inner.records.get(id).cloned() else {
            return Err(ApiError::UnknownOperation(id.to_string()));
        };
        if rec.phase.is_terminal() {
            return Ok(rec);
        }
        let running = inner.running.as_mut().filter(|r| r.id == id);
        let Some(running) = running else {
            return Ok(rec);
        };
        if running.cancel.is_none() {
            running.cancel = Some(reason);
            running.progress.cancel();
            tracing::info!(operation_id = %id, reason = ?reason, "canceling operation");
        }
        drop(inner);
        self.update(id, |r| {
            if reason != FailureReason::Timeout {
                r.phase = Phase::Canceling;
            }
        });
        self.get(id)
    }

    /// Why the running operation was asked to stop, if it was.
    pub fn cancel_reason(&self, id: &str) -> Option<FailureReason> {
        let inner = self.inner.lock().unwrap();
        inner
            .running
            .as_ref()
            .filter(|r| r.id == id)
            .and_then(|r| r.cancel)
    }

    /// Writes the final state of an operation. The slot stays taken until [`release`].
    pub fn finish_record(&self, id: &str, outcome: Outcome) {
        let mut inner = self.inner.lock().unwrap();
        let Some(mut rec) = inner.records.get(id).cloned() else {
            return;
        };
        if rec.phase.is_terminal() {
            return;
        }
        refresh(&inner, &mut rec);
        let phase = outcome.phase.unwrap_or(Phase::Failed);
        rec.phase = phase;
        rec.failure_reason = outcome.reason;
        rec.message = outcome.message;
        if outcome.snapshot_id.is_some() {
            rec.snapshot_id = outcome.snapshot_id;
        }
        rec.errors = outcome.errors;
        rec.finished = Some(now_rfc3339());
        if matches!(phase, Phase::Completed | Phase::PartiallyFailed) {
            // Totals are estimates while the walk goes on; once all is done they are what
            // was done.
            let p = &mut rec.progress;
            p.files_total = p.files_total.max(p.files_done);
            p.files_done = p.files_total;
            p.bytes_total = p.bytes_total.max(p.bytes_done);
            p.bytes_done = p.bytes_total;
        }
        rec.progress.step = "finished".into();
        if let Err(e) = self.store.save(&rec) {
            tracing::error!(operation_id = %id, error = %e, "cannot save the operation record");
        }
        let duration = rec
            .started
            .as_deref()
            .and_then(parse_time)
            .map(|s| (chrono::Utc::now() - s).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        self.metrics
            .operation_finished(rec.kind, phase, duration, rec.progress.bytes_done);
        if phase == Phase::Completed {
            self.metrics.set_last_success(rec.kind, chrono::Utc::now());
        }
        tracing::info!(
            operation_id = %rec.id, kind = rec.kind.as_str(), phase = phase.as_str(),
            reason = ?rec.failure_reason, snapshot_id = rec.snapshot_id.as_deref().unwrap_or(""),
            bytes = rec.progress.bytes_done, files = rec.progress.files_done,
            duration_s = duration, "operation finished: {}", rec.message
        );
        inner.records.insert(id.to_string(), rec);
        self.prune(&mut inner);
        drop(inner);
        self.notify();
    }

    /// Frees the slot once the job has really returned.
    pub fn release(&self, id: &str) {
        let mut inner = self.inner.lock().unwrap();
        if inner.running.as_ref().is_some_and(|r| r.id == id) {
            inner.running = None;
        }
        drop(inner);
        self.metrics.set_running(false);
        self.notify();
    }

    /// Forgets the oldest finished records beyond the limit, keeping the last success of
    /// each kind (GetStatus reports it).
    fn prune(&self, inner: &mut Inner) {
        if inner.records.len() <= self.kept {
            return;
        }
        let keep_success: Vec<String> = last_success_of(&inner.records)
            .into_iter()
            .map(|(_, r)| r.id.clone())
            .collect();
        let mut finished: Vec<(String, String)> = inner
            .records
            .values()
            .filter(|r| r.phase.is_terminal() && !keep_success.contains(&r.id))
            .map(|r| (r.created.clone(), r.id.clone()))
            .collect();
        finished.sort();
        let excess = inner.records.len() - self.kept;
        for (_, id) in finished.into_iter().take(excess) {
            inner.records.remove(&id);
            self.store.remove(&id);
        }
    }

    pub fn get(&self, id: &str) -> Result<OpRecord, ApiError> {
        let inner = self.inner.lock().unwrap();
        let mut rec = inner
            .records
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::UnknownOperation(id.to_string()))?;
        refresh(&inner, &mut rec);
        Ok(rec)
    }

    /// Newest first.
    pub fn list(&self, limit: usize) -> Vec<OpRecord> {
        let inner = self.inner.lock().unwrap();
        let mut all: Vec<OpRecord> = inner.records.values().cloned().collect();
        for r in &mut all {
            refresh(&inner, r);
        }
        all.sort_by(|a, b| (&b.created, &b.id).cmp(&(&a.created, &a.id)));
        if limit > 0 {
            all.truncate(limit);
        }
        all
    }

    pub fn running(&self) -> Option<OpRecord> {
        let inner = self.inner.lock().unwrap();
        let id = inner.running.as_ref()?.id.clone();
        let mut rec = inner.records.get(&id)?.clone();
        refresh(&inner, &mut rec);
        Some(rec)
    }

    pub fn last_success(&self) -> Vec<(OpKind, OpRecord)> {
        let inner = self.inner.lock().unwrap();
        last_success_of(&inner.records)
            .into_iter()
            .map(|(k, r)| (k, r.clone()))
            .collect()
    }

    /// Refuses new operations and cancels the running one (SIGTERM).
    pub fn begin_shutdown(&self) -> Option<String> {
        let running = {
            let mut inner = self.inner.lock().unwrap();
            inner.stopping = true;
            inner.running.as_ref().map(|r| r.id.clone())
        };
        if let Some(id) = &running {
            let _ = self.cancel(id, FailureReason::AgentStopping);
        }
        running
    }

    pub fn is_idle(&self) -> bool {
        self.inner.lock().unwrap().running.is_none()
    }
}

/// Folds the live counters of the running operation into its record. Counters only grow,
/// and the record keeps the largest value seen, so what watchers see never goes back.
fn refresh(inner: &Inner, rec: &mut OpRecord) {
    let Some(running) = inner.running.as_ref().filter(|r| r.id == rec.id) else {
        return;
    };
    if rec.phase.is_terminal() {
        return;
    }
    let s = running.progress.snapshot();
    let p = &mut rec.progress;
    p.files_done = p.files_done.max(s.files_done);
    p.bytes_done = p.bytes_done.max(s.bytes_done);
    p.files_total = p.files_total.max(s.files_seen).max(p.files_done);
    p.bytes_total = p.bytes_total.max(s.bytes_seen).max(p.bytes_done);
    p.errors = p.errors.max(s.errors);
}

fn last_success_of(records: &HashMap<String, OpRecord>) -> Vec<(OpKind, &OpRecord)> {
    OpKind::ALL
        .iter()
        .filter_map(|k| {
            records
                .values()
                .filter(|r| r.kind == *k && r.phase == Phase::Completed)
                .max_by(|a, b| a.finished.cmp(&b.finished))
                .map(|r| (*k, r))
        })
        .collect()
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}
