//! A wrapper that injects failures: once a budget of mutating operations (puts and deletes)
//! is spent, the next mutation and every operation after it fail, as if the process had
//! died at that point. Tests use it to
//! kill long operations (prune, repair) at every step and check that the repository stays
//! valid; it works over any store, so the same tests run on local, memory and S3 stores.

use super::{ObjectInfo, ObjectStore, StoreError, StoreErrorKind, StoreResult};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Clone)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    /// Mutating operations still allowed; u64::MAX means no limit.
    budget: Arc<AtomicU64>,
    /// Mutating operations performed so far.
    done: Arc<AtomicU64>,
    dead: Arc<AtomicBool>,
}

impl FaultyStore {
    /// Allows `budget` puts/deletes; the one after fails, and so does everything after it.
    pub fn new(inner: Arc<dyn ObjectStore>, budget: u64) -> Self {
        FaultyStore {
            inner,
            budget: Arc::new(AtomicU64::new(budget)),
            done: Arc::default(),
            dead: Arc::default(),
        }
    }

    /// A wrapper that never fails but counts, to learn how many operations a run takes.
    pub fn unlimited(inner: Arc<dyn ObjectStore>) -> Self {
        Self::new(inner, u64::MAX)
    }

    pub fn mutations(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    pub fn has_failed(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    fn dead(&self, key: &str) -> StoreError {
        StoreError::new(StoreErrorKind::Permanent, key, "injected failure")
    }

    fn alive(&self, key: &str) -> StoreResult<()> {
        if self.has_failed() {
            Err(self.dead(key))
        } else {
            Ok(())
        }
    }

    fn spend(&self, key: &str) -> StoreResult<()> {
        let took = self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| match b {
                0 => None,
                u64::MAX => Some(u64::MAX),
                n => Some(n - 1),
            });
        match took {
            Ok(_) => {
                self.done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Err(_) => {
                self.dead.store(true, Ordering::SeqCst);
                Err(self.dead(key))
            }
        }
    }
}

impl ObjectStore for FaultyStore {
    fn get(&self, key: &str) -> StoreResult<Vec<u8>> {
        self.alive(key)?;
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Vec<u8>> {
        self.alive(key)?;
        self.inner.get_range(key, offset, len)
    }
    fn put(&self, key: &str, data: &[u8]) -> StoreResult<()> {
        self.spend(key)?;
        self.inner.put(key, data)
    }
    fn put_file(&self, key: &str, path: &Path) -> StoreResult<()> {
        if let Err(e) = self.spend(key) {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        self.inner.put_file(key, path)
    }
    fn put_file_cacheable(&self, key: &str, path: &Path, ranges: &[(u64, u64)]) -> StoreResult<()> {
        if let Err(e) = self.spend(key) {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        self.inner.put_file_cacheable(key, path, ranges)
    }
    fn stat(&self, key: &str) -> StoreResult<u64> {
        self.alive(key)?;
        self.inner.stat(key)
    }
    fn delete(&self, key: &str) -> StoreResult<()> {
        self.spend(key)?;
        self.inner.delete(key)
    }
    fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        self.alive(prefix)?;
        self.inner.list(prefix)
    }
    fn spool_dir(&self) -> Option<PathBuf> {
        self.inner.spool_dir()
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}
