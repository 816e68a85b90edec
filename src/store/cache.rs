//! A local cache of the objects the engine reads on every run: index files, snapshot
//! manifests, and ranged reads of tree blobs. With it, listing snapshots or starting an
//! incremental backup of an S3 repository downloads only what is new. What this host
//! writes is kept as it is written (index files and manifests whole, the tree blobs of tree
//! packs as the ranges later reads ask for), so the host's next backup downloads nothing it
//! wrote itself.
//!
//! Everything cached is immutable (named by its content), so a cached copy never goes
//! stale; objects deleted from the store (by pruning) are dropped from the cache when their
//! prefix is next listed. Each entry carries a BLAKE3 hash of its bytes and is checked on
//! every read: a damaged entry is removed and fetched again. Writes to the cache are
//! atomic (temp file, then rename) and their failures ignored, so deleting the cache, or a
//! full disk, changes nothing but speed. The cache holds only what the store holds:
//! encrypted bytes.

use super::{ObjectInfo, ObjectStore, StoreResult};
use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefixes whose whole objects are cached.
const WHOLE: [&str; 2] = ["index/", "snapshots/"];
const RANGES_DIR: &str = "ranges";
const TMP_DIR: &str = "tmp";

#[derive(Debug)]
pub struct CacheStore<S> {
    inner: S,
    dir: PathBuf,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<S: ObjectStore> CacheStore<S> {
    /// Caches `inner` under a directory of `base` named for the store's location, so one
    /// cache directory serves many repositories.
    pub fn new(inner: S, base: &Path) -> Self {
        let name = blake3::hash(inner.location().as_bytes()).to_hex();
        CacheStore {
            dir: base.join(&name.as_str()[..16]),
            inner,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads served from the cache, and reads that had to go to the store.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn whole_path(&self, key: &str) -> Option<PathBuf> {
        let name = WHOLE.iter().find_map(|p| key.strip_prefix(p))?;
        plain_name(name).then(|| self.dir.join(key))
    }

    fn range_path(&self, key: &str, offset: u64, len: u64) -> Option<PathBuf> {
        let name = key.rsplit('/').next()?;
        plain_name(name).then(|| {
            self.dir
                .join(RANGES_DIR)
                .join(&name[..2.min(name.len())])
                .join(format!("{name}-{offset}-{len}"))
        })
    }

    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let mut bytes = fs::read(path).ok()?;
        if bytes.len() >= 32 && blake3::hash(&bytes[32..]).as_bytes() == &bytes[..32] {
            bytes.drain(..32);
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Some(bytes);
        }
        let _ = fs::remove_file(path);
        None
    }

    fn write(&self, path: &Path, data: &[u8]) {
        if let Some(tmp) = self.stage(data) {
            self.commit(&tmp, path);
        }
    }

    /// Writes an entry (hash, then bytes) to a temporary file of the cache; None on failure.
    fn stage(&self, data: &[u8]) -> Option<PathBuf> {
        let tmp_dir = self.dir.join(TMP_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&tmp_dir)
            .ok()?;
        let tmp = tmp_dir.join(hex::encode(crate::repo::crypto::random_bytes::<8>()));
        let written = (|| -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(blake3::hash(data).as_bytes())?;
            f.write_all(data)
        })();
        match written {
            Ok(()) => Some(tmp),
            Err(_) => {
                let _ = fs::remove_file(&tmp);
                None
            }
        }
    }

    /// Moves a staged entry into place (atomically: readers see all of it or none).
    fn commit(&self, tmp: &Path, path: &Path) {
        let parent = path.parent().expect("cache paths have a parent");
        let moved = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .and_then(|_| fs::rename(tmp, path));
        if moved.is_err() {
            let _ = fs::remove_file(tmp);
        }
    }

    /// Copies `ranges` of the file at `path` into staged entries, before the store may
    /// consume the file. Ranges that cannot be read are left out: the cache is optional.
    fn stage_ranges(
        &self,
        key: &str,
        path: &Path,
        ranges: &[(u64, u64)],
    ) -> Vec<(PathBuf, PathBuf)> {
        use std::os::unix::fs::FileExt;
        let Ok(file) = fs::File::open(path) else {
            return Vec::new();
        };
        let mut staged = Vec::new();
        let mut buf = Vec::new();
        for &(offset, len) in ranges {
            let Some(dest) = self.range_path(key, offset, len) else {
                break;
            };
            buf.resize(len as usize, 0);
            if file.read_exact_at(&mut buf, offset).is_err() {
                continue;
            }
            if let Some(tmp) = self.stage(&buf) {
                staged.push((tmp, dest));
            }
        }
        staged
    }

    /// Drops cached objects under `prefix` that the store no longer lists: whole objects,
    /// or, when all packs are listed (by check or prune), ranges of packs that are gone.
    fn forget_missing(&self, prefix: &str, listed: &[ObjectInfo]) {
        if prefix == "packs/" {
            let present: std::collections::HashSet<&str> = listed
                .iter()
                .filter_map(|o| o.key.rsplit('/').next())
                .collect();
            let Ok(shards) = fs::read_dir(self.dir.join(RANGES_DIR)) else {
                return;
            };
            for entry in shards
                .flatten()
                .flat_map(|d| fs::read_dir(d.path()))
                .flatten()
            {
                let Ok(entry) = entry else { continue };
                let name = entry.file_name().to_string_lossy().into_owned();
                let pack = name.split('-').next().unwrap_or_default();
                if !present.contains(pack) {
                    let _ = fs::remove_file(entry.path());
                }
            }
            return;
        }
        let Some(dir) = WHOLE
            .iter()
            .find(|p| **p == prefix)
            .map(|p| self.dir.join(p))
        else {
            return;
        };
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        let present: std::collections::HashSet<&str> =
            listed.iter().map(|o| &o.key[prefix.len()..]).collect();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !present.contains(name.to_string_lossy().as_ref()) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// A single hex-ish path component: safe as a file name.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl<S: ObjectStore> ObjectStore for CacheStore<S> {
    fn get(&self, key: &str) -> StoreResult<Vec<u8>> {
        let Some(path) = self.whole_path(key) else {
            return self.inner.get(key);
        };
        if let Some(data) = self.read(&path) {
            return Ok(data);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let data = self.inner.get(key)?;
        self.write(&path, &data);
        Ok(data)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Vec<u8>> {
        self.inner.get_range(key, offset, len)
    }

    fn get_range_cacheable(&self, key: &str, offset: u64, len: u64) -> StoreResult<Vec<u8>> {
        let Some(path) = self.range_path(key, offset, len) else {
            return self.inner.get_range_cacheable(key, offset, len);
        };
        if let Some(data) = self.read(&path) {
            return Ok(data);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let data = self.inner.get_range_cacheable(key, offset, len)?;
        // A short read (object cut short) is not worth keeping: the caller reports it.
        if data.len() as u64 == len {
            self.write(&path, &data);
        }
        Ok(data)
    }

    fn put(&self, key: &str, data: &[u8]) -> StoreResult<()> {
        self.inner.put(key, data)?;
        if let Some(path) = self.whole_path(key) {
            self.write(&path, data);
        }
        Ok(())
    }

    fn put_file(&self, key: &str, path: &Path) -> StoreResult<()> {
        self.inner.put_file(key, path)
    }

    /// Keeps the ranges the engine will read again (the tree blobs of a tree pack it just
    /// wrote), so that the next incremental backup finds the trees here instead of
    /// downloading them. They are staged before the upload (the store may move the file) and
    /// put in place only once the store holds the object.
    fn put_file_cacheable(&self, key: &str, path: &Path, ranges: &[(u64, u64)]) -> StoreResult<()> {
        let staged = self.stage_ranges(key, path, ranges);
        let stored = self.inner.put_file_cacheable(key, path, ranges);
        for (tmp, dest) in staged {
            if stored.is_ok() {
                self.commit(&tmp, &dest);
            } else {
                let _ = fs::remove_file(&tmp);
            }
        }
        stored
    }

    fn stat(&self, key: &str) -> StoreResult<u64> {
        self.inner.stat(key)
    }

    fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key)?;
        if let Some(path) = self.whole_path(key) {
            let _ = fs::remove_file(path);
        }
        Ok(())
    }

    fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        let listed = self.inner.list(prefix)?;
        self.forget_missing(prefix, &listed);
        Ok(listed)
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
    use crate::store::{CountingStore, MemoryStore};
    use std::sync::Arc;

    #[test]
    fn second_reads_come_from_the_cache_and_damage_is_refetched() {
        let dir = tempfile::tempdir().unwrap();
        let counting = CountingStore::new(MemoryStore::new());
        let store = CacheStore::new(counting.clone(), dir.path());
        store.put("index/ab12", b"index bytes").unwrap();
        counting.inner().put("snapshots/cd34", b"manifest").unwrap();
        counting
            .inner()
            .put("packs/ab/ab99", b"0123456789")
            .unwrap();
        counting.reset();

        for _ in 0..3 {
            assert_eq!(store.get("index/ab12").unwrap(), b"index bytes");
            assert_eq!(store.get("snapshots/cd34").unwrap(), b"manifest");
            assert_eq!(
                store.get_range_cacheable("packs/ab/ab99", 2, 4).unwrap(),
                b"2345"
            );
        }
        let c = counting.counters();
        assert_eq!(c.gets.get("index"), None, "written through, never fetched");
        assert_eq!(c.gets.get("snapshots"), Some(&1));
        assert_eq!(c.gets.get("packs"), Some(&1));

        // Damage every cached file: reads still return the right bytes, from the store.
        for entry in walk(store.dir()) {
            fs::write(
                &entry,
                b"garbage that is long enough to have a hash prefix....",
            )
            .unwrap();
        }
        counting.reset();
        assert_eq!(store.get("snapshots/cd34").unwrap(), b"manifest");
        assert_eq!(
            store.get_range_cacheable("packs/ab/ab99", 2, 4).unwrap(),
            b"2345"
        );
        assert_eq!(counting.counters().gets.values().sum::<u64>(), 2);

        // Deleted behind the cache's back: the next listing forgets it.
        counting.inner().delete("snapshots/cd34").unwrap();
        assert!(store.list("snapshots/").unwrap().is_empty());
        assert!(!store.dir().join("snapshots/cd34").exists());
        let ranges = || walk(&store.dir().join(RANGES_DIR)).len();
        assert_eq!(ranges(), 1);
        store.list("packs/").unwrap();
        assert_eq!(ranges(), 1, "the pack is still there");
        counting.inner().delete("packs/ab/ab99").unwrap();
        store.list("packs/").unwrap();
        assert_eq!(ranges(), 0, "ranges of a deleted pack are dropped");
    }

    #[test]
    fn ranges_of_a_stored_file_are_kept_and_a_failed_upload_keeps_none() {
        let dir = tempfile::tempdir().unwrap();
        let counting = CountingStore::new(MemoryStore::new());
        let store = CacheStore::new(counting.clone(), dir.path());
        let spool = dir.path().join("spool");
        fs::write(&spool, b"0123456789abcdef").unwrap();
        store
            .put_file_cacheable("packs/ab/ab77", &spool, &[(0, 4), (10, 6)])
            .unwrap();
        counting.reset();
        assert_eq!(
            store.get_range_cacheable("packs/ab/ab77", 0, 4).unwrap(),
            b"0123"
        );
        assert_eq!(
            store.get_range_cacheable("packs/ab/ab77", 10, 6).unwrap(),
            b"abcdef"
        );
        assert_eq!(
            counting.counters().gets.get("packs"),
            None,
            "kept when written"
        );
        // A range not named at upload is fetched (and kept) as before.
        assert_eq!(
            store.get_range_cacheable("packs/ab/ab77", 4, 2).unwrap(),
            b"45"
        );
        assert_eq!(counting.counters().gets.get("packs"), Some(&1));

        // The store refuses the object: nothing of it is cached, no temporary file is left.
        let failing = CacheStore::new(
            crate::store::FaultyStore::new(Arc::new(MemoryStore::new()), 0),
            &dir.path().join("other"),
        );
        fs::write(&spool, b"0123456789abcdef").unwrap();
        failing
            .put_file_cacheable("packs/cd/cd88", &spool, &[(0, 4)])
            .unwrap_err();
        assert!(walk(failing.dir()).is_empty(), "{:?}", walk(failing.dir()));
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }

    #[test]
    fn conforms() {
        let dir = tempfile::tempdir().unwrap();
        crate::store::conformance::run_all(&CacheStore::new(MemoryStore::new(), dir.path()));
    }
}
