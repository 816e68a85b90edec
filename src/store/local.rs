//! A store in a local directory: the embedded default.
//!
//! Objects are files under the root, one per key. Every write goes to `tmp/` first, is
//! fsynced, renamed into place and the directory fsynced, so a crash leaves either the old
//! state or the whole new object, never a torn one. Leftovers in `tmp/` are harmless and
//! ignored by listings.

use super::{ObjectInfo, ObjectStore, StoreError, StoreErrorKind, StoreResult};
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const TMP_DIR: &str = "tmp";
/// Objects kept open for ranged reads. A restore reads its blobs pack by pack, one range per
/// blob: reopening the pack for each of tens of thousands of small files cost more than
/// writing them.
const OPEN_OBJECTS: usize = 16;

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    /// Most recently used first. Objects are immutable, so a kept handle never reads stale
    /// bytes; [`ObjectStore::delete`] drops the object's handle so NotFound stays exact.
    open: Arc<Mutex<Vec<OpenObject>>>,
}

/// An object's key and its open file.
type OpenObject = (String, Arc<File>);

impl LocalStore {
    /// A store rooted at `root`; the directory is created on first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore {
            root: root.into(),
            open: Arc::default(),
        }
    }

    /// The object's file, opened once and kept among the last [`OPEN_OBJECTS`] used.
    fn open_object(&self, key: &str) -> std::io::Result<Arc<File>> {
        {
            let mut open = self.open.lock().unwrap();
            if let Some(i) = open.iter().position(|(k, _)| k == key) {
                let entry = open.remove(i);
                let file = entry.1.clone();
                open.insert(0, entry);
                return Ok(file);
            }
        }
        let path = self
            .path(key)
            .map_err(|e| std::io::Error::other(e.message))?;
        let file = Arc::new(File::open(path)?);
        let mut open = self.open.lock().unwrap();
        open.insert(0, (key.to_string(), file.clone()));
        open.truncate(OPEN_OBJECTS);
        Ok(file)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> StoreResult<PathBuf> {
        let valid = !key.is_empty()
            && !key.starts_with('/')
            && key
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
        if !valid {
            return Err(StoreError::new(
                StoreErrorKind::Permanent,
                key,
                "invalid object key",
            ));
        }
        Ok(self.root.join(key))
    }

    fn tmp_path(&self) -> StoreResult<PathBuf> {
        let dir = self.root.join(TMP_DIR);
        fs::create_dir_all(&dir).map_err(|e| StoreError::from_io(TMP_DIR, &e))?;
        let mut rnd = [0u8; 12];
        getrandom::fill(&mut rnd).map_err(|e| {
            StoreError::new(StoreErrorKind::Permanent, "", format!("no randomness: {e}"))
        })?;
        Ok(dir.join(hex::encode(rnd)))
    }

    /// Moves a complete, synced file into place and makes the rename durable.
    fn commit(&self, key: &str, tmp: &Path) -> StoreResult<()> {
        let dest = self.path(key)?;
        let parent = dest.parent().expect("keys have a parent under the root");
        fs::create_dir_all(parent).map_err(|e| StoreError::from_io(key, &e))?;
        fs::rename(tmp, &dest).map_err(|e| StoreError::from_io(key, &e))?;
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::from_io(key, &e))
    }
}

impl ObjectStore for LocalStore {
    fn get(&self, key: &str) -> StoreResult<Vec<u8>> {
        fs::read(self.path(key)?).map_err(|e| StoreError::from_io(key, &e))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Vec<u8>> {
        let mut buf = Vec::new();
        self.get_range_into(key, offset, len, &mut buf)?;
        Ok(buf)
    }

    fn get_range_into(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> StoreResult<()> {
        let io = |e: std::io::Error| StoreError::from_io(key, &e);
        self.path(key)?;
        let f = self.open_object(key).map_err(io)?;
        // Up to `len` bytes: fewer when the object ends first, as a ranged GET answers.
        let len = if len > 64 << 20 {
            // Sized by the object, not by a length that may come from a damaged index.
            len.min(f.metadata().map_err(io)?.len().saturating_sub(offset))
        } else {
            len
        };
        read_at_into(&f, offset, len as usize, buf).map_err(io)
    }

    fn put(&self, key: &str, data: &[u8]) -> StoreResult<()> {
        let tmp = self.tmp_path()?;
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::from_io(key, &e));
        }
        self.commit(key, &tmp).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    fn put_file(&self, key: &str, path: &Path) -> StoreResult<()> {
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::from_io(key, &e))?;
        match self.commit(key, path) {
            // Not on our file system after all: copy through a temp file of our own.
            Err(e) if e.message.contains("cross-device") => {
                let data = fs::read(path).map_err(|e| StoreError::from_io(key, &e))?;
                self.put(key, &data)?;
                let _ = fs::remove_file(path);
                Ok(())
            }
            other => other,
        }
    }

    fn stat(&self, key: &str) -> StoreResult<u64> {
        fs::metadata(self.path(key)?)
            .map(|m| m.len())
            .map_err(|e| StoreError::from_io(key, &e))
    }

    fn delete(&self, key: &str) -> StoreResult<()> {
        self.open.lock().unwrap().retain(|(k, _)| k != key);
        match fs::remove_file(self.path(key)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::from_io(key, &e)),
        }
    }

    fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        // Walk the deepest directory the prefix names, then filter by the full prefix.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path(dir_part)?
        };
        let mut out = Vec::new();
        let mut stack = vec![(start, dir_part.to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::from_io(&rel, &e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| StoreError::from_io(&rel, &e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let key = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                if rel.is_empty() && name == TMP_DIR {
                    continue;
                }
                let meta = entry
                    .metadata()
                    .map_err(|e| StoreError::from_io(&key, &e))?;
                if meta.is_dir() {
                    if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                        stack.push((entry.path(), key));
                    }
                } else if key.starts_with(prefix) {
                    out.push(ObjectInfo {
                        key,
                        size: meta.len(),
                    });
                }
            }
        }
        Ok(out)
    }

    fn spool_dir(&self) -> Option<PathBuf> {
        let dir = self.root.join(TMP_DIR);
        fs::create_dir_all(&dir).ok()?;
        Some(dir)
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }
}

/// Reads up to `len` bytes from `offset` into `buf` (replacing its contents), stopping early
/// at the end of the file. The bytes land in `buf`'s spare capacity directly: zeroing a
/// reused megabyte buffer before every read would cost as much as the copy itself.
fn read_at_into(f: &File, offset: u64, len: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    buf.reserve(len);
    while buf.len() < len {
        let filled = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..len - filled];
        let at = offset + filled as u64;
        // SAFETY: pread writes at most `spare.len()` bytes into `spare`, memory `buf` owns.
        let n = unsafe {
            libc::pread(
                f.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                at as libc::off_t,
            )
        };
        match n {
            0 => break,
            n if n > 0 => {
                // SAFETY: the kernel initialised the `n` bytes after `filled`.
                unsafe { buf.set_len(filled + n as usize) };
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}
