//! Comparing two directory trees the way a user would check a restore: by lstat (type,
//! permission bits, owner, mtime to the nanosecond, size, device number, link count),
//! content, symlink target, every extended attribute (ACLs and capabilities included),
//! hard-link identity and holes. Sockets in the source are expected to be absent.
//!
//! Reads through std and the `xattr` crate, never through the engine, so the engine's own
//! helpers cannot hide their mistakes here.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

fn xattrs(p: &Path) -> Vec<(OsString, Vec<u8>)> {
    let mut out: Vec<_> = xattr::list(p)
        .unwrap_or_else(|e| panic!("listxattr {}: {e}", p.display()))
        .map(|n| {
            let v = xattr::get(p, &n).unwrap().unwrap_or_default();
            (n, v)
        })
        .collect();
    out.sort();
    out
}

fn same_content(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

fn names(dir: &Path) -> BTreeSet<OsString> {
    fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default()
}

/// Whether a file has holes: fewer allocated bytes than its size.
pub fn has_holes(m: &Metadata) -> bool {
    m.blocks() * 512 < m.size()
}

struct Walk<'a> {
    a: &'a Path,
    b: &'a Path,
    diffs: Vec<String>,
    /// Inode in `a` → inode in `b`, and back: hard links must map one to one.
    a_to_b: HashMap<u64, u64>,
    b_to_a: HashMap<u64, u64>,
}

/// Every difference between tree `a` (the source) and tree `b` (a restore of it), as
/// readable lines; empty when the restore is exact.
pub fn diff_trees(a: &Path, b: &Path) -> Vec<String> {
    let mut w = Walk {
        a,
        b,
        diffs: Vec::new(),
        a_to_b: HashMap::new(),
        b_to_a: HashMap::new(),
    };
    w.entry(Path::new(""));
    w.diffs
}

pub fn assert_same_tree(a: &Path, b: &Path) {
    let diffs = diff_trees(a, b);
    assert!(
        diffs.is_empty(),
        "{} differences between {} and {}:\n{}",
        diffs.len(),
        a.display(),
        b.display(),
        diffs.join("\n")
    );
}

impl Walk<'_> {
    fn diff(&mut self, rel: &Path, what: String) {
        self.diffs.push(format!("{}: {what}", rel.display()));
    }

    fn entry(&mut self, rel: &Path) {
        let (pa, pb) = (self.a.join(rel), self.b.join(rel));
        let ma = fs::symlink_metadata(&pa).unwrap();
        let mb = match fs::symlink_metadata(&pb) {
            Ok(m) => m,
            Err(_) if ma.file_type().is_socket() => return,
            Err(e) => return self.diff(rel, format!("missing in the restore ({e})")),
        };
        let (ta, tb) = (ma.mode() & libc::S_IFMT, mb.mode() & libc::S_IFMT);
        if ta != tb {
            return self.diff(rel, format!("type {ta:o} became {tb:o}"));
        }
        if ma.file_type().is_socket() {
            return self.diff(rel, "a socket was restored".into());
        }
        let is_link = ma.file_type().is_symlink();
        if !is_link && ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            self.diff(
                rel,
                format!(
                    "mode {:o} became {:o}",
                    ma.mode() & 0o7777,
                    mb.mode() & 0o7777
                ),
            );
        }
        if (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
            self.diff(
                rel,
                format!(
                    "owner {}:{} became {}:{}",
                    ma.uid(),
                    ma.gid(),
                    mb.uid(),
                    mb.gid()
                ),
            );
        }
        if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
            self.diff(
                rel,
                format!(
                    "mtime {}.{:09} became {}.{:09}",
                    ma.mtime(),
                    ma.mtime_nsec(),
                    mb.mtime(),
                    mb.mtime_nsec()
                ),
            );
        }
        if xattrs(&pa) != xattrs(&pb) {
            self.diff(
                rel,
                format!("xattrs {:?} became {:?}", xattrs(&pa), xattrs(&pb)),
            );
        }
        if !ma.is_dir() {
            self.links(rel, &ma, &mb);
        }
        let ft = ma.file_type();
        if ft.is_file() {
            if ma.size() != mb.size() {
                self.diff(rel, format!("size {} became {}", ma.size(), mb.size()));
            } else if !same_content(&pa, &pb) {
                self.diff(rel, "content differs".into());
            }
            if has_holes(&ma) && mb.blocks() > ma.blocks() + 256 {
                self.diff(
                    rel,
                    format!(
                        "holes were filled: {} blocks became {}",
                        ma.blocks(),
                        mb.blocks()
                    ),
                );
            }
        } else if is_link {
            let (la, lb) = (fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
            if la != lb {
                self.diff(rel, format!("symlink target {la:?} became {lb:?}"));
            }
        } else if (ft.is_char_device() || ft.is_block_device()) && ma.rdev() != mb.rdev() {
            self.diff(
                rel,
                format!("device {:x} became {:x}", ma.rdev(), mb.rdev()),
            );
        } else if ma.is_dir() {
            let (na, nb) = (names(&pa), names(&pb));
            for extra in nb.difference(&na) {
                self.diff(&rel.join(extra), "extra entry in the restore".into());
            }
            for name in na {
                self.entry(&rel.join(name));
            }
        }
    }

    fn links(&mut self, rel: &Path, ma: &Metadata, mb: &Metadata) {
        if ma.nlink() != mb.nlink() {
            self.diff(
                rel,
                format!("link count {} became {}", ma.nlink(), mb.nlink()),
            );
        }
        let fwd = *self.a_to_b.entry(ma.ino()).or_insert(mb.ino());
        let back = *self.b_to_a.entry(mb.ino()).or_insert(ma.ino());
        if fwd != mb.ino() || back != ma.ino() {
            self.diff(
                rel,
                "hard-link identity differs (names sharing an inode in one tree do not in the other)"
                    .into(),
            );
        }
    }
}

/// Paths below `dir` (relative), in order; for checking what a partial restore created.
pub fn relative_paths(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = dir.join(&rel);
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            for n in names(&p) {
                let child = rel.join(n);
                out.push(child.clone());
                stack.push(child);
            }
        }
    }
    out.sort();
    out
}
