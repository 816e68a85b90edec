//! Object stores: where a repository's objects live.
//!
//! A store is a flat namespace of immutable objects named by `/`-separated keys
//! (`packs/3f/3f9a...`, `snapshots/...`). The engine names every object by its content, so it
//! never needs more than the small set of operations in [`ObjectStore`], and every store —
//! local directory, memory, S3 — gives the same guarantees, checked by one conformance suite
//! ([`conformance`]).
//!
//! Cross-cutting behaviour (counting for metrics and tests, retries, a local cache, fault
//! injection) is written as wrappers implementing the same trait, never inside a store.

mod cache;
mod counting;
mod faulty;
mod local;
mod memory;
mod retry;
pub mod s3;

pub mod conformance;

pub use cache::CacheStore;
pub use counting::{CountingStore, StoreCounters};
pub use faulty::FaultyStore;
pub use local::LocalStore;
pub use memory::MemoryStore;
pub use retry::{RetryPolicy, RetryStore};
pub use s3::{S3Config, S3Credentials, S3Location, S3Store};

use std::fmt;
use std::path::{Path, PathBuf};

/// Whether a store failure names a missing object, a conflict, or an outage, and whether
/// retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The object does not exist. Never used for any other failure.
    NotFound,
    /// The store itself (bucket, directory) already exists where it was to be created.
    AlreadyExists,
    /// An outage, timeout or throttling: retrying later may succeed.
    Transient,
    /// Denied, misconfigured or broken: retrying will not help.
    Permanent,
}

/// A store failure: what kind, on which key, and the store's own words.
#[derive(Debug, Clone)]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub key: String,
    pub message: String,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, key: &str, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub fn not_found(key: &str) -> Self {
        Self::new(StoreErrorKind::NotFound, key, "object not found")
    }

    /// Maps a local I/O error: ENOENT is NotFound, interruptions are transient, the rest is
    /// permanent.
    pub fn from_io(key: &str, err: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let kind = match err.kind() {
            K::NotFound => StoreErrorKind::NotFound,
            K::Interrupted | K::TimedOut | K::WouldBlock => StoreErrorKind::Transient,
            _ => StoreErrorKind::Permanent,
        };
        Self::new(kind, key, err.to_string())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "object store: {}", self.message)
        } else {
            write!(f, "object store: {}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// The operations the engine needs from a place that holds objects.
///
/// Guarantees every implementation gives (checked by [`conformance`]):
/// - **Atomic puts.** A reader sees either no object or the whole object, never a prefix.
/// - **Read-after-write.** Once `put` returns, `get`, `stat` and `list` see the object.
/// - **Idempotent writes.** Putting a key again with the same bytes succeeds; the engine never
///   puts different bytes under one key (objects are named by content), so stores need not
///   detect that.
/// - **NotFound is distinct.** A missing object yields [`StoreErrorKind::NotFound`], and no
///   other failure does; a caller can tell "gone" from "unreachable".
/// - **Idempotent deletes.** Deleting a missing object succeeds.
/// - **Listing** returns every object whose key starts with the prefix, in no particular order.
///
/// Stores are blocking and shareable between threads: the engine runs its pipelines on
/// threads of its own, and async callers wrap calls in their runtime's blocking pool.
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// The whole object.
    fn get(&self, key: &str) -> StoreResult<Vec<u8>>;

    /// `len` bytes from `offset`; fewer if the object ends first.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Vec<u8>>;

    /// Like [`get_range`](Self::get_range), into `buf` (replacing what it held), so that a
    /// caller reading many ranges can reuse one buffer. The default allocates anew.
    fn get_range_into(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> StoreResult<()> {
        *buf = self.get_range(key, offset, len)?;
        Ok(())
    }

    /// Like [`get_range`](Self::get_range), for data the engine reads again and again (tree
    /// blobs): a caching wrapper may keep it locally. The bytes are the same.
    fn get_range_cacheable(&self, key: &str, offset: u64, len: u64) -> StoreResult<Vec<u8>> {
        self.get_range(key, offset, len)
    }

    /// Stores `data` under `key`, atomically.
    fn put(&self, key: &str, data: &[u8]) -> StoreResult<()>;

    /// Stores the contents of a local file under `key`, atomically. The file is consumed: the
    /// store may move it instead of copying. The default reads it into memory and calls `put`.
    fn put_file(&self, key: &str, path: &Path) -> StoreResult<()> {
        let data = std::fs::read(path).map_err(|e| StoreError::from_io(key, &e))?;
        self.put(key, &data)?;
        let _ = std::fs::remove_file(path);
        Ok(())
    }

    /// Like [`put_file`](Self::put_file), for an object of which the engine will read the
    /// byte ranges `ranges` (offset, length) again with
    /// [`get_range_cacheable`](Self::get_range_cacheable) (the tree blobs of a tree pack): a
    /// caching wrapper may keep those ranges once the object is stored. The object is the same.
    fn put_file_cacheable(&self, key: &str, path: &Path, ranges: &[(u64, u64)]) -> StoreResult<()> {
        let _ = ranges;
        self.put_file(key, path)
    }

    /// Size of the object in bytes.
    fn stat(&self, key: &str) -> StoreResult<u64>;

    fn delete(&self, key: &str) -> StoreResult<()>;

    fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>>;

    /// A directory on the same file system as the store, where the engine may build large
    /// objects so that `put_file` can rename them into place instead of copying.
    fn spool_dir(&self) -> Option<PathBuf> {
        None
    }

    /// How many requests the engine should keep in flight at once for bulk transfers (pack
    /// uploads, index loading): 1 for a local disk, more for a store across a network.
    fn parallelism(&self) -> usize {
        1
    }

    /// A short, credential-free description for messages ("local:/srv/repo").
    fn location(&self) -> String;
}

impl<T: ObjectStore + ?Sized> ObjectStore for std::sync::Arc<T> {
    fn get(&self, key: &str) -> StoreResult<Vec<u8>> {
        (**self).get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Vec<u8>> {
        (**self).get_range(key, offset, len)
    }
    fn get_range_into(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> StoreResult<()> {
        (**self).get_range_into(key, offset, len, buf)
    }
    fn get_range_cacheable(&self, key: &str, offset: u64, len: u64) -> StoreResult<Vec<u8>> {
        (**self).get_range_cacheable(key, offset, len)
    }
    fn put(&self, key: &str, data: &[u8]) -> StoreResult<()> {
        (**self).put(key, data)
    }
    fn put_file(&self, key: &str, path: &Path) -> StoreResult<()> {
        (**self).put_file(key, path)
    }
    fn put_file_cacheable(&self, key: &str, path: &Path, ranges: &[(u64, u64)]) -> StoreResult<()> {
        (**self).put_file_cacheable(key, path, ranges)
    }
    fn stat(&self, key: &str) -> StoreResult<u64> {
        (**self).stat(key)
    }
    fn delete(&self, key: &str) -> StoreResult<()> {
        (**self).delete(key)
    }
    fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        (**self).list(prefix)
    }
    fn spool_dir(&self) -> Option<PathBuf> {
        (**self).spool_dir()
    }
    fn parallelism(&self) -> usize {
        (**self).parallelism()
    }
    fn location(&self) -> String {
        (**self).location()
    }
}
