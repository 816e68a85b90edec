//! A wrapper that retries transient store failures with exponential backoff.
//!
//! It sits above a store's own quick retries (the S3 SDK retries a request a few times within
//! seconds) and rides out longer outages: a server restarting, a load balancer failing over.
//! Only [`StoreErrorKind::Transient`] failures are retried; a missing object, denied access
//! or bad credentials fail at once, since repeating them only delays the error. Retrying is
//! safe because every write is idempotent (objects are named by their content) and a failed
//! `put_file` leaves its file in place.

use super::{ObjectInfo, ObjectStore, StoreError, StoreErrorKind, StoreResult};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls in all, the first included (1 = no retry).
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Five calls over about 30 s (2, 4, 8, 16 s apart, ±25 %).
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(16),
        }
    }
}

impl RetryPolicy {
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 1,
            ..Self::default()
        }
    }
}

#[derive(Debug)]
pub struct RetryStore<S> {
    inner: S,
    policy: RetryPolicy,
    retries: Arc<AtomicU64>,
}

impl<S: ObjectStore> RetryStore<S> {
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        RetryStore {
            inner,
            policy,
            retries: Arc::default(),
        }
    }

    /// Retries made so far (for metrics and tests).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn run<T>(&self, op: impl Fn() -> StoreResult<T>) -> StoreResult<T> {
        let started = Instant::now();
        let mut delay = self.policy.first_delay;
        let mut attempt = 1;
        loop {
            match op() {
                Err(e) if e.kind == StoreErrorKind::Transient && attempt < self.policy.attempts => {
                    std::thread::sleep(jitter(delay));
                    delay = (delay * 2).min(self.policy.max_delay);
                    attempt += 1;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if attempt > 1 => {
                    return Err(StoreError {
                        message: format!(
                            "{} (gave up after {attempt} attempts over {} s)",
                            e.message,
                            started.elapsed().as_secs()
                        ),
                        ..e
                    });
                }
                other => return other,
            }
        }
    }
}

/// ±25 %, so that many writers hit by one outage do not return in step.
fn jitter(d: Duration) -> Duration {
    let r = u16::from_le_bytes(crate::repo::crypto::random_bytes::<2>()) as f64 / 65535.0;
    d.mul_f64(0.75 + r * 0.5)
}

impl<S: ObjectStore> ObjectStore for RetryStore<S> {
    fn get(&self, key: &str) -> StoreResult<Vec<u8>> {
        self.run(|| self.inner.get(key))
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Vec<u8>> {
        self.run(|| self.inner.get_range(key, offset, len))
    }
    fn get_range_cacheable(&self, key: &str, offset: u64, len: u64) -> StoreResult<Vec<u8>> {
        self.run(|| self.inner.get_range_cacheable(key, offset, len))
    }
    fn put(&self, key: &str, data: &[u8]) -> StoreResult<()> {
        self.run(|| self.inner.put(key, data))
    }
    fn put_file(&self, key: &str, path: &Path) -> StoreResult<()> {
        self.run(|| self.inner.put_file(key, path))
    }
    fn put_file_cacheable(&self, key: &str, path: &Path, ranges: &[(u64, u64)]) -> StoreResult<()> {
        self.run(|| self.inner.put_file_cacheable(key, path, ranges))
    }
    fn stat(&self, key: &str) -> StoreResult<u64> {
        self.run(|| self.inner.stat(key))
    }
    fn delete(&self, key: &str) -> StoreResult<()> {
        self.run(|| self.inner.delete(key))
    }
    fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        self.run(|| self.inner.list(prefix))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::sync::Mutex;

    /// Fails the first `fail` calls of every operation with `kind`.
    #[derive(Debug)]
    struct Flaky {
        inner: MemoryStore,
        kind: StoreErrorKind,
        left: Mutex<u32>,
        calls: AtomicU64,
    }

    impl Flaky {
        fn new(kind: StoreErrorKind, fail: u32) -> Self {
            Flaky {
                inner: MemoryStore::new(),
                kind,
                left: Mutex::new(fail),
                calls: AtomicU64::new(0),
            }
        }
        fn gate(&self, key: &str) -> StoreResult<()> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let mut left = self.left.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(StoreError::new(self.kind, key, "injected failure"));
            }
            Ok(())
        }
    }

    impl ObjectStore for Flaky {
        fn get(&self, key: &str) -> StoreResult<Vec<u8>> {
            self.gate(key)?;
            self.inner.get(key)
        }
        fn get_range(&self, key: &str, o: u64, l: u64) -> StoreResult<Vec<u8>> {
            self.gate(key)?;
            self.inner.get_range(key, o, l)
        }
        fn put(&self, key: &str, data: &[u8]) -> StoreResult<()> {
            self.gate(key)?;
            self.inner.put(key, data)
        }
        fn stat(&self, key: &str) -> StoreResult<u64> {
            self.gate(key)?;
            self.inner.stat(key)
        }
        fn delete(&self, key: &str) -> StoreResult<()> {
            self.gate(key)?;
            self.inner.delete(key)
        }
        fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
            self.gate(prefix)?;
            self.inner.list(prefix)
        }
        fn location(&self) -> String {
            "flaky".into()
        }
    }

    fn quick(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        }
    }

    #[test]
    fn transient_failures_are_retried_until_success() {
        let store = RetryStore::new(Flaky::new(StoreErrorKind::Transient, 3), quick(5));
        store.put("a", b"x").unwrap();
        assert_eq!(store.get("a").unwrap(), b"x");
        assert_eq!(store.retries(), 3);
        assert_eq!(store.inner().calls.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn giving_up_says_how_often() {
        let store = RetryStore::new(Flaky::new(StoreErrorKind::Transient, 10), quick(3));
        let err = store.put("a", b"x").unwrap_err();
        assert_eq!(err.kind, StoreErrorKind::Transient);
        assert!(err.message.contains("gave up after 3 attempts"), "{err}");
        assert_eq!(store.inner().calls.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn permanent_failures_and_missing_objects_are_not_retried() {
        let store = RetryStore::new(Flaky::new(StoreErrorKind::Permanent, 1), quick(5));
        assert_eq!(
            store.put("a", b"x").unwrap_err().kind,
            StoreErrorKind::Permanent
        );
        assert_eq!(store.inner().calls.load(Ordering::Relaxed), 1);
        assert_eq!(
            store.get("missing").unwrap_err().kind,
            StoreErrorKind::NotFound
        );
        assert_eq!(store.inner().calls.load(Ordering::Relaxed), 2);
        assert_eq!(store.retries(), 0);
    }

    #[test]
    fn conforms() {
        crate::store::conformance::run_all(&RetryStore::new(MemoryStore::new(), quick(3)));
    }
}
