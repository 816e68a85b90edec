//! Directory listings for the walker, made ahead of it on scanner threads.
//!
//! Listing a directory and lstat-ing its entries is nearly all an unchanged re-backup costs,
//! and almost all of that is the kernel's. The walker needs listings in depth-first order, so
//! the scanners produce them in that order ahead of it: a finished listing pushes its
//! subdirectories on a stack, the first one on top, and the scanners descend as the walker
//! will. Entries are stat-ed relative to their directory's descriptor, so the kernel resolves
//! one name per entry instead of its whole path.
//!
//! Memory stays flat: scanners pause while listings holding [`BUFFERED_ENTRIES`] entries wait
//! for the walker. The walker never waits for a listing nobody is making: one not yet begun
//! it makes itself.

use super::{ChangeHints, Excludes};
use crate::fsmeta::Stat;
use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

/// Entries in finished listings the walker has not taken yet, beyond which scanners pause.
const BUFFERED_ENTRIES: usize = 8192;

/// A directory's entries in byte order of names, exclusions applied.
#[derive(Default)]
pub(super) struct Listing {
    pub entries: Vec<Entry>,
    /// Entries left out by an exclusion rule or a cache-directory tag.
    pub excluded: u64,
    /// Why the directory could not be listed, or not completely (the entries read are kept).
    pub error: Option<String>,
}

pub(super) struct Entry {
    pub name: OsString,
    pub stat: std::io::Result<Stat>,
}

#[derive(Default)]
struct State {
    /// Directories to list, the next one last.
    stack: Vec<PathBuf>,
    running: HashSet<PathBuf>,
    done: BTreeMap<PathBuf, Listing>,
    buffered: usize,
    /// Directories the walker skipped while a scanner was listing something below them.
    skipped: Vec<PathBuf>,
    closed: bool,
}

pub(crate) struct Scanner {
    excludes: Excludes,
    hints: Option<ChangeHints>,
    state: Mutex<State>,
    changed: Condvar,
}

impl Scanner {
    pub fn new(excludes: Excludes, hints: Option<ChangeHints>) -> Self {
        Scanner {
            excludes,
            hints,
            state: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    /// Queues directories to list before the walk asks for them (the paths a backup starts
    /// from), the first one to be listed first.
    pub fn seed(&self, dirs: &[PathBuf]) {
        let mut st = self.state.lock().unwrap();
        st.stack.extend(dirs.iter().rev().cloned());
        self.changed.notify_all();
    }

    /// A scanner thread's loop: lists directories from the stack until [`Scanner::close`].
    pub fn run(&self) {
        let mut st = self.state.lock().unwrap();
        loop {
            if st.closed {
                return;
            }
            if st.buffered >= BUFFERED_ENTRIES || st.stack.is_empty() {
                st = self.changed.wait(st).unwrap();
                continue;
            }
            let dir = st.stack.pop().expect("checked non-empty");
            st.running.insert(dir.clone());
            drop(st);
            let listing = self.list(&dir);
            st = self.state.lock().unwrap();
            st.running.remove(&dir);
            self.finished(&mut st, dir, listing);
        }
    }

    /// Stops the scanner threads; listings not taken are dropped.
    pub fn close(&self) {
        let mut st = self.state.lock().unwrap();
        st.closed = true;
        st.stack.clear();
        st.done.clear();
        self.changed.notify_all();
    }

    /// The listing of `dir`: made ahead, being made (waited for), or made now.
    pub fn take(&self, dir: &Path) -> Listing {
        let mut st = self.state.lock().unwrap();
        loop {
            if let Some(listing) = st.done.remove(dir) {
                st.buffered -= listing.entries.len();
                self.changed.notify_all();
                return listing;
            }
            if !st.running.contains(dir) {
                break;
            }
            st = self.changed.wait(st).unwrap();
        }
        st.stack.retain(|d| d != dir);
        drop(st);
        let listing = self.list(dir);
        let mut st = self.state.lock().unwrap();
        self.push_subdirs(&mut st, dir, &listing);
        listing
    }

    /// `dir` will not be walked (its subtree is kept from the parent snapshot, or it is no
    /// longer a directory): drops what was listed of it and below it, so that the buffer
    /// does not fill with listings nobody takes.
    pub fn skip(&self, dir: &Path) {
        let mut st = self.state.lock().unwrap();
        st.stack.retain(|d| !d.starts_with(dir));
        let below: Vec<PathBuf> = st
            .done
            .range(dir.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(dir))
            .map(|(p, _)| p.clone())
            .collect();
        for p in below {
            if let Some(l) = st.done.remove(&p) {
                st.buffered -= l.entries.len();
            }
        }
        if st.running.iter().any(|d| d.starts_with(dir)) {
            st.skipped.push(dir.to_path_buf());
        }
        self.changed.notify_all();
    }

    fn finished(&self, st: &mut State, dir: PathBuf, listing: Listing) {
        if st.closed || st.skipped.iter().any(|s| dir.starts_with(s)) {
            self.changed.notify_all();
            return;
        }
        self.push_subdirs(st, &dir, &listing);
        st.buffered += listing.entries.len();
        st.done.insert(dir, listing);
        self.changed.notify_all();
    }

    /// Queues the subdirectories of a listed directory, the first one on top. With change
    /// hints, a subdirectory without hinted changes is probably kept whole from the parent
    /// snapshot: listing it ahead would be wasted.
    fn push_subdirs(&self, st: &mut State, dir: &Path, listing: &Listing) {
        if st.closed {
            return;
        }
        for e in listing.entries.iter().rev() {
            if matches!(&e.stat, Ok(s) if s.is_dir()) {
                let path = dir.join(&e.name);
                if self.hints.as_ref().is_none_or(|h| h.touches(&path)) {
                    st.stack.push(path);
                }
            }
        }
        self.changed.notify_all();
    }

    /// Lists `dir` and lstats its entries.
    fn list(&self, dir: &Path) -> Listing {
        let mut listing = Listing::default();
        let fd = match open_dir(dir) {
            Ok(fd) => fd,
            Err(e) => {
                listing.error = Some(format!("cannot list the directory: {e}"));
                return listing;
            }
        };
        let names = match read_names(&fd) {
            Ok(names) => names,
            Err((names, e)) => {
                listing.error = Some(format!("cannot list the directory completely: {e}"));
                names
            }
        };
        let cache = self.excludes.is_cache_dir(dir);
        let filter = cache || self.excludes.any();
        listing.entries.reserve(names.len());
        for name in names {
            if filter
                && ((cache && name != super::CACHEDIR_TAG)
                    || self.excludes.is_excluded(&dir.join(&name)))
            {
                listing.excluded += 1;
                continue;
            }
            let stat = Stat::at(fd.as_fd(), &name);
            listing.entries.push(Entry { name, stat });
        }
        listing
    }
}

fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{OFlag, open};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    open(dir, flags, nix::sys::stat::Mode::empty()).map_err(std::io::Error::from)
}

/// The names in a directory (without `.` and `..`), sorted by bytes. On an error midway,
/// the names read so far come with it.
fn read_names(fd: &OwnedFd) -> Result<Vec<OsString>, (Vec<OsString>, std::io::Error)> {
    let dup = fd.try_clone().map_err(|e| (Vec::new(), e))?;
    let mut dir = nix::dir::Dir::from_fd(dup).map_err(|e| (Vec::new(), e.into()))?;
    let mut names = Vec::new();
    let mut failure = None;
    for entry in dir.iter() {
        match entry {
            Ok(e) => {
                let name = e.file_name().to_bytes();
                if name != b"." && name != b".." {
                    names.push(OsStr::from_bytes(name).to_os_string());
                }
            }
            Err(e) => {
                failure = Some(std::io::Error::from(e));
                break;
            }
        }
    }
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    match failure {
        None => Ok(names),
        Some(e) => Err((names, e)),
    }
}
