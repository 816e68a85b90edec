//! Operation records and their files under the state directory.
//!
//! One JSON file per operation (`<state_dir>/operations/<id>.json`), written to a temporary
//! name, synced and renamed, so a crash leaves the old record or the new one, never half of
//! one. A file that does not parse is moved aside (`<name>.corrupt-<time>`) with the reason
//! logged: a damaged record must not keep the agent from starting.

use crate::error::{Error, Result};
use crate::repo::snapshot::FileError;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OpKind {
    Snapshot,
    Restore,
    Maintenance,
    NodeRestore,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Snapshot => "snapshot",
            OpKind::Restore => "restore",
            OpKind::Maintenance => "maintenance",
            OpKind::NodeRestore => "node-restore",
        }
    }

    pub const ALL: [OpKind; 4] = [
        OpKind::Snapshot,
        OpKind::Restore,
        OpKind::Maintenance,
        OpKind::NodeRestore,
    ];
}

/// Velero's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    New,
    InProgress,
    Canceling,
    Canceled,
    Completed,
    PartiallyFailed,
    Failed,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Canceled | Phase::Completed | Phase::PartiallyFailed | Phase::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::New => "New",
            Phase::InProgress => "InProgress",
            Phase::Canceling => "Canceling",
            Phase::Canceled => "Canceled",
            Phase::Completed => "Completed",
            Phase::PartiallyFailed => "PartiallyFailed",
            Phase::Failed => "Failed",
        }
    }
}

/// Why an operation failed or was canceled; mirrors the API's FailureReason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureReason {
    AgentRestarted,
    Timeout,
    CanceledByUser,
    AgentStopping,
    StorageUnavailable,
    RepositoryUnusable,
    RepositoryCorrupt,
    HookFailed,
    NotFound,
    InvalidInput,
    LocalIo,
    Unsupported,
    Internal,
    UnitControl,
    RepositoryBusy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    Manual,
    Scheduled,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Scheduled => "scheduled",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressRecord {
    pub step: String,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRecord {
    pub stage: String,
    pub argv: Vec<String>,
    pub exit_code: i32,
    pub timed_out: bool,
    pub output: String,
    pub duration_ms: u64,
    pub continued: bool,
}

/// What was asked for, kept to run the operation and to answer a retried request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Snapshot {
        tags: Vec<String>,
        /// Seconds.
        ttl: Option<u64>,
        full: bool,
    },
    Restore {
        snapshot: String,
        target: PathBuf,
        include: Vec<PathBuf>,
        delete: bool,
        /// Whose latest snapshot "latest" is; this node's when absent (and in records
        /// written before the field existed).
        #[serde(default)]
        source_host: Option<String>,
    },
    Maintenance {
        /// In the order they run.
        tasks: Vec<MaintenanceTask>,
        dry_run: bool,
        /// The check's share of pack data ("10%", "5GiB", "all"); None: structure only.
        read_data: Option<String>,
    },
    NodeRestore {
        snapshot: String,
        target: PathBuf,
        source_host: Option<String>,
        source_path: Option<PathBuf>,
        include: Vec<PathBuf>,
        dry_run: bool,
        safety_snapshot: bool,
    },
}

impl Request {
    pub fn kind(&self) -> OpKind {
        match self {
            Request::Snapshot { .. } => OpKind::Snapshot,
            Request::Restore { .. } => OpKind::Restore,
            Request::Maintenance { .. } => OpKind::Maintenance,
            Request::NodeRestore { .. } => OpKind::NodeRestore,
        }
    }

    /// Where a restore puts the files.
    pub fn target(&self) -> Option<&Path> {
        match self {
            Request::Restore { target, .. } | Request::NodeRestore { target, .. } => Some(target),
            _ => None,
        }
    }
}

/// A task of a maintenance operation; they run in this order. Written in lower case in the
/// configuration (`tasks = ["forget", "prune"]`) and in records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaintenanceTask {
    Forget,
    Prune,
    Check,
}

impl MaintenanceTask {
    pub fn as_str(self) -> &'static str {
        match self {
            MaintenanceTask::Forget => "forget",
            MaintenanceTask::Prune => "prune",
            MaintenanceTask::Check => "check",
        }
    }
}

/// A snapshot a maintenance's forget removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedSnapshot {
    pub id: String,
    pub name: String,
    pub time: String,
    pub hostname: String,
    pub reason: String,
}

/// A snapshot the check found damaged: "<path>: <problem>" lines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedSnapshot {
    pub id: String,
    pub time: String,
    pub hostname: String,
    pub damage: Vec<String>,
}

/// What a maintenance did, task by task (see `daemon::maintenance`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceRecord {
    pub tasks: Vec<String>,
    pub dry_run: bool,
    pub steps: Vec<String>,
    pub policy: String,
    pub snapshots_kept: u64,
    pub snapshots_expired: u64,
    pub snapshots_forgotten: u64,
    pub removed: Vec<RemovedSnapshot>,
    pub packs_deleted: u64,
    pub bytes_freed: u64,
    pub packs_announced: u64,
    pub bytes_announced: u64,
    pub missing_blobs: u64,
    pub prune_problems: Vec<String>,
    pub checked: bool,
    pub check_ok: bool,
    pub check_packs_read: u64,
    pub check_bytes_read: u64,
    pub check_errors: Vec<String>,
    pub check_warnings: Vec<String>,
    pub damaged_snapshots: Vec<DamagedSnapshot>,
}

impl MaintenanceRecord {
    /// Lists kept in a record are cut at this length (counts say how many there were).
    pub const LISTED: usize = 1000;
}

/// What a node restore did, step by step (see `node_restore`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRestoreRecord {
    /// The steps begun so far, in order.
    #[serde(default)]
    pub steps: Vec<String>,
    /// "autofs.service stop failed", "file-system restore failed", ...; empty unless failed.
    pub failed_step: String,
    pub safety_snapshot_id: Option<String>,
    pub stopped_units: Vec<String>,
    pub started_units: Vec<String>,
    pub post_steps: Vec<crate::node_restore::StepOutput>,
    pub dry_run: Option<DryRunRecord>,
}

/// A dry run's findings: the first [`DryRunRecord::LISTED`] paths of each kind, and counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRunRecord {
    pub units_to_stop: Vec<String>,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub added_count: u64,
    pub changed_count: u64,
    pub removed_count: u64,
}

impl DryRunRecord {
    pub const LISTED: usize = 1000;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    pub id: String,
    pub kind: OpKind,
    pub phase: Phase,
    pub failure_reason: Option<FailureReason>,
    pub message: String,
    pub progress: ProgressRecord,
    pub created: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub request_id: Option<String>,
    pub trigger: Trigger,
    pub schedule: Option<String>,
    pub request: Request,
    pub snapshot_id: Option<String>,
    pub snapshot_name: Option<String>,
    pub hooks: Vec<HookRecord>,
    pub errors: Vec<FileError>,
    /// Node restores only; absent from records written before node restores existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_restore: Option<NodeRestoreRecord>,
    /// Maintenance only; absent from records of other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceRecord>,
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Operation IDs: `<kind>-<UTC time>-<random>`, sortable by time and safe as file names.
pub fn new_id(kind: OpKind) -> String {
    let mut r = [0u8; 3];
    getrandom::fill(&mut r).expect("the system random source works");
    format!(
        "{}-{}-{}",
        kind.as_str(),
        chrono::Utc::now().format("%Y%m%d-%H%M%S"),
        hex::encode(r)
    )
}

/// Whether `id` has the shape of an operation ID (checked before it names a file).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && OpKind::ALL
            .iter()
            .any(|k| id.starts_with(&format!("{}-", k.as_str())))
}

/// The directory of operation records.
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
}

/// Files moved aside at load: where each went and why.
pub type MovedAside = Vec<(PathBuf, String)>;

/// What loading found: the records, and the files moved aside.
pub struct Loaded {
    pub records: Vec<OpRecord>,
    pub moved_aside: MovedAside,
}

impl RecordStore {
    pub fn open(state_dir: &Path) -> Result<RecordStore> {
        let dir = state_dir.join("operations");
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::io(
                format!("cannot create the state directory {}", dir.display()),
                e,
            )
        })?;
        Ok(RecordStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes a record atomically: temporary file, fsync, rename, fsync of the directory.
    pub fn save(&self, rec: &OpRecord) -> Result<()> {
        let path = self.path(&rec.id);
        let tmp = self.dir.join(format!(".{}.json.tmp", rec.id));
        let bytes = serde_json::to_vec_pretty(rec).expect("records serialize");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(
                format!("cannot write the operation record {}", path.display()),
                e,
            )
        })
    }

    pub fn remove(&self, id: &str) {
        let _ = std::fs::remove_file(self.path(id));
    }

    pub fn load(&self) -> Result<Loaded> {
        let mut out = Loaded {
            records: Vec::new(),
            moved_aside: Vec::new(),
        };
        let entries = std::fs::read_dir(&self.dir).map_err(|e| {
            Error::io(
                format!("cannot read the state directory {}", self.dir.display()),
                e,
            )
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("cannot read the state directory", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A write interrupted before its rename: the previous record is intact.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let problem = match std::fs::read(&path) {
                Err(e) => format!("cannot be read: {e}"),
                Ok(bytes) => match serde_json::from_slice::<OpRecord>(&bytes) {
                    Ok(rec) if rec.id == stem => {
                        out.records.push(rec);
                        continue;
                    }
                    Ok(rec) => format!("holds operation {:?}, not {stem:?}", rec.id),
                    Err(e) => format!("is not a valid operation record: {e}"),
                },
            };
            let aside = self.dir.join(format!(
                "{name}.corrupt-{}",
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
            ));
            match std::fs::rename(&path, &aside) {
                Ok(()) => out.moved_aside.push((aside, problem)),
                Err(e) => out
                    .moved_aside
                    .push((path, format!("{problem}; moving it aside failed: {e}"))),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_file_names_and_bad_ones_are_refused() {
        for k in OpKind::ALL {
            assert!(is_valid_id(&new_id(k)));
        }
        for bad in ["", "../etc/passwd", "snapshot-x/y", "other-1", "Snapshot-1"] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }
}
