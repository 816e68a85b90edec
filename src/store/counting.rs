//! A wrapper that counts requests and bytes per key prefix: the numbers behind metrics, and
//! what tests assert on ("the second snapshot wrote no pack").

use super::{ObjectInfo, ObjectStore, StoreResult};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Requests and bytes seen, keyed by the key's first path component (`packs`, `index`...).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoreCounters {
    pub puts: BTreeMap<String, u64>,
    pub put_bytes: BTreeMap<String, u64>,
    pub gets: BTreeMap<String, u64>,
    pub get_bytes: BTreeMap<String, u64>,
    pub deletes: u64,
    pub lists: u64,
}

impl StoreCounters {
    pub fn puts_under(&self, prefix: &str) -> u64 {
        self.puts.get(prefix).copied().unwrap_or(0)
    }
    pub fn put_bytes_under(&self, prefix: &str) -> u64 {
        self.put_bytes.get(prefix).copied().unwrap_or(0)
    }
    pub fn total_put_bytes(&self) -> u64 {
        self.put_bytes.values().sum()
    }
}

#[derive(Debug, Clone)]
pub struct CountingStore<S> {
    inner: S,
    counters: Arc<Mutex<StoreCounters>>,
}

fn top(key: &str) -> String {
    key.split('/').next().unwrap_or("").to_string()
}

impl<S: ObjectStore> CountingStore<S> {
    pub fn new(inner: S) -> Self {
        CountingStore {
            inner,
            counters: Arc::default(),
        }
    }

    pub fn counters(&self) -> StoreCounters {
        self.counters.lock().unwrap().clone()
    }

    pub fn reset(&self) {
        *self.counters.lock().unwrap() = StoreCounters::default();
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn count_put(&self, key: &str, bytes: u64) {
        let mut c = self.counters.lock().unwrap();
        *c.puts.entry(top(key)).or_default() += 1;
        *c.put_bytes.entry(top(key)).or_default() += bytes;
    }
}

impl<S: ObjectStore> ObjectStore for CountingStore<S> {
    fn get(&self, key: &str) -> StoreResult<Vec<u8>> {
        let data = self.inner.get(key)?;
        let mut c = self.counters.lock().unwrap();
        *c.gets.entry(top(key)).or_default() += 1;
        *c.get_bytes.entry(top(key)).or_default() += data.len() as u64;
        Ok(data)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Vec<u8>> {
        let data = self.inner.get_range(key, offset, len)?;
        let mut c = self.counters.lock().unwrap();
        *c.gets.entry(top(key)).or_default() += 1;
        *c.get_bytes.entry(top(key)).or_default() += data.len() as u64;
        Ok(data)
    }

    fn get_range_cacheable(&self, key: &str, offset: u64, len: u64) -> StoreResult<Vec<u8>> {
        let data = self.inner.get_range_cacheable(key, offset, len)?;
        let mut c = self.counters.lock().unwrap();
        *c.gets.entry(top(key)).or_default() += 1;
        *c.get_bytes.entry(top(key)).or_default() += data.len() as u64;
        Ok(data)
    }

    fn put(&self, key: &str, data: &[u8]) -> StoreResult<()> {
        self.inner.put(key, data)?;
        self.count_put(key, data.len() as u64);
        Ok(())
    }

    fn put_file(&self, key: &str, path: &Path) -> StoreResult<()> {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        self.inner.put_file(key, path)?;
        self.count_put(key, size);
        Ok(())
    }

    fn put_file_cacheable(&self, key: &str, path: &Path, ranges: &[(u64, u64)]) -> StoreResult<()> {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        self.inner.put_file_cacheable(key, path, ranges)?;
        self.count_put(key, size);
        Ok(())
    }

    fn stat(&self, key: &str) -> StoreResult<u64> {
        self.inner.stat(key)
    }

    fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key)?;
        self.counters.lock().unwrap().deletes += 1;
        Ok(())
    }

    fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        self.counters.lock().unwrap().lists += 1;
        self.inner.list(prefix)
    }

    fn spool_dir(&self) -> Option<PathBuf> {
        self.inner.spool_dir()
    }

    fn parallelism(&self) -> usize {
        self.inner.parallelism()
    }

    fn location(&self) -> String {
        self.inner.location()
    }
}
