//! Reading file metadata into tree nodes: lstat fields, owner names, extended attributes
//! (POSIX ACLs and file capabilities are xattrs too), and where a sparse file has data.

use crate::repo::tree::{Node, NodeKind, Timestamp, Xattr};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What kind of entry an lstat result is, before any content is read.
pub enum EntryType {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

/// The lstat fields a snapshot records, without following symlinks.
///
/// Taken relative to a directory descriptor where the walk has one ([`Stat::at`]): the kernel
/// then resolves one name instead of the whole path, which is much of what an unchanged
/// re-backup costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte blocks allocated (fewer than the size suggests: a sparse file).
    pub blocks: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub ino: u64,
    pub dev: u64,
    pub nlink: u64,
    pub rdev: u64,
}

impl Stat {
    /// `name` in the directory `dir`, not following a symlink.
    pub fn at(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<Stat> {
        nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map(Stat::from_raw)
            .map_err(std::io::Error::from)
    }

    /// The entry at `path`, not following a symlink.
    pub fn path(path: &Path) -> std::io::Result<Stat> {
        nix::sys::stat::lstat(path)
            .map(Stat::from_raw)
            .map_err(std::io::Error::from)
    }

    fn from_raw(st: libc::stat) -> Stat {
        Stat {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            mtime: Timestamp {
                secs: st.st_mtime,
                nanos: st.st_mtime_nsec as u32,
            },
            ctime: Timestamp {
                secs: st.st_ctime,
                nanos: st.st_ctime_nsec as u32,
            },
            ino: st.st_ino,
            dev: st.st_dev,
            nlink: st.st_nlink,
            rdev: st.st_rdev,
        }
    }

    pub fn entry_type(&self) -> EntryType {
        match self.mode & libc::S_IFMT {
            libc::S_IFREG => EntryType::File,
            libc::S_IFDIR => EntryType::Dir,
            libc::S_IFLNK => EntryType::Symlink,
            libc::S_IFIFO => EntryType::Fifo,
            libc::S_IFCHR => EntryType::CharDevice,
            libc::S_IFBLK => EntryType::BlockDevice,
            _ => EntryType::Socket,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
}

/// Caches uid/gid to name lookups for one walk.
#[derive(Default)]
pub struct OwnerNames {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl OwnerNames {
    pub fn user(&mut self, uid: u32) -> Option<String> {
        self.user_ref(uid).map(str::to_owned)
    }

    pub fn group(&mut self, gid: u32) -> Option<String> {
        self.group_ref(gid).map(str::to_owned)
    }

    pub fn user_ref(&mut self, uid: u32) -> Option<&str> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .as_deref()
    }

    pub fn group_ref(&mut self, gid: u32) -> Option<&str> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .as_deref()
    }
}

/// Builds a node from lstat metadata; the caller fills in the kind's payload (extents,
/// subtree) where it needs reading.
pub fn node_from_meta(name: &OsStr, meta: &Stat, kind: NodeKind, owners: &mut OwnerNames) -> Node {
    Node {
        name: name.as_bytes().to_vec(),
        kind,
        mode: meta.mode & 0o7777,
        uid: meta.uid,
        gid: meta.gid,
        user: owners.user(meta.uid),
        group: owners.group(meta.gid),
        size: if meta.is_file() { meta.size } else { 0 },
        mtime: meta.mtime,
        ctime: meta.ctime,
        inode: meta.ino,
        device: meta.dev,
        links: meta.nlink,
        xattrs: Vec::new(),
    }
}

/// [`node_from_meta`] for an entry the parent snapshot has: `prev`'s name, owner names and
/// extended attributes are moved into the new node (a walk then allocates nothing for an
/// unchanged entry); every field the lstat result gives is taken from it.
pub fn node_reusing(prev: Node, meta: &Stat, kind: NodeKind, owners: &mut OwnerNames) -> Node {
    let user = match (owners.user_ref(meta.uid), prev.user) {
        (Some(now), Some(was)) if now == was => Some(was),
        (now, _) => now.map(str::to_owned),
    };
    let group = match (owners.group_ref(meta.gid), prev.group) {
        (Some(now), Some(was)) if now == was => Some(was),
        (now, _) => now.map(str::to_owned),
    };
    Node {
        name: prev.name,
        kind,
        mode: meta.mode & 0o7777,
        uid: meta.uid,
        gid: meta.gid,
        user,
        group,
        size: if meta.is_file() { meta.size } else { 0 },
        mtime: meta.mtime,
        ctime: meta.ctime,
        inode: meta.ino,
        device: meta.dev,
        links: meta.nlink,
        xattrs: prev.xattrs,
    }
}

/// Reads every extended attribute of a path without following symlinks, sorted by name.
/// File systems without xattr support yield none.
pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if is_unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        match xattr::get(path, &name) {
            Ok(Some(value)) => out.push(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            }),
            // Removed between list and get: nothing to keep.
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn is_unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENOSYS))
}

/// The data regions of a file as (offset, len), using SEEK_DATA/SEEK_HOLE when the file
/// occupies fewer blocks than its size suggests. Dense files yield one region without any
/// extra system call.
pub fn data_regions(file: &File, meta: &Metadata) -> std::io::Result<Vec<(u64, u64)>> {
    let size = meta.size();
    if size == 0 {
        return Ok(Vec::new());
    }
    if meta.blocks() * 512 >= size {
        return Ok(vec![(0, size)]);
    }
    use nix::unistd::{Whence, lseek};
    let mut regions = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        let data = match lseek(file, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            // No SEEK_DATA support: treat the file as dense.
            Err(nix::errno::Errno::EINVAL) => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(file, data, Whence::SeekHole).map_err(std::io::Error::from)?;
        let end = (hole as u64).min(size);
        if end > data as u64 {
            regions.push((data as u64, end - data as u64));
        }
        pos = hole;
    }
    Ok(regions)
}
