//! Snapshot manifests: small sealed JSON objects under `snapshots/<id>`, pointing at the root
//! tree. Written last, after the packs and the index they depend on.

use super::id::Id;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

pub const SNAPSHOTS_PREFIX: &str = "snapshots/";
pub const SNAPSHOT_AAD: &[u8] = b"hostagent snapshot v1";
/// Per-file errors kept in a manifest; the count is always exact.
pub const MAX_RECORDED_ERRORS: usize = 1000;
/// The tag of the safety snapshot a node restore takes of the tree it replaces. `latest`
/// never names one: after a restore, it still names what was restored.
pub const SAFETY_TAG: &str = "pre-restore";

pub fn snapshot_key(id: &Id) -> String {
    format!("{SNAPSHOTS_PREFIX}{}", id.to_hex())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotStatus {
    /// Every selected entry was stored.
    Completed,
    /// Some entries could not be stored; they are listed in `errors`.
    PartiallyFailed,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub others: u64,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub sockets_skipped: u64,
    pub excluded: u64,
    pub errors: u64,
    /// Logical size of the files in the snapshot.
    pub total_bytes: u64,
    /// File content actually read (0 when nothing changed).
    pub bytes_read: u64,
    /// Plaintext bytes of new blobs.
    pub bytes_new: u64,
    /// Bytes of new packs written to the store.
    pub bytes_stored: u64,
    pub data_blobs_new: u64,
    pub tree_blobs_new: u64,
    pub packs_written: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileError {
    pub path: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// When the snapshot started, RFC 3339 with nanoseconds, UTC.
    pub time: String,
    pub hostname: String,
    /// Absolute paths that were backed up.
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub name: Option<String>,
    pub parent: Option<Id>,
    pub tree: Id,
    pub status: SnapshotStatus,
    pub stats: SnapshotStats,
    pub errors: Vec<FileError>,
    /// After this time, retention may forget the snapshot (RFC 3339).
    pub expires: Option<String>,
    pub program_version: String,
}

impl Snapshot {
    pub fn time(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc3339(&self.time)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("snapshots serialize")
    }

    pub fn decode(bytes: &[u8], id: &Id) -> Result<Snapshot> {
        let snap: Snapshot = serde_json::from_slice(bytes).map_err(|e| {
            Error::corrupt(format!(
                "snapshot {}: manifest does not parse: {e}",
                id.short()
            ))
        })?;
        if snap.version != 1 {
            return Err(Error::new(
                crate::error::Kind::Unsupported,
                format!(
                    "snapshot {} has manifest version {}, newer than this build knows (1)",
                    id.short(),
                    snap.version
                ),
            ));
        }
        Ok(snap)
    }
}

/// A snapshot together with its ID.
#[derive(Debug, Clone)]
pub struct SnapshotEntry {
    pub id: Id,
    pub snapshot: Snapshot,
}
