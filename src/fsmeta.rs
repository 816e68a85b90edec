//! Reading file metadata into tree nodes: lstat fields, owner names, extended attributes
//! (POSIX ACLs and file capabilities are xattrs too), and where a sparse file has data.

use crate::repo::tree::{Node, NodeKind, Timestamp, Xattr};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
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

pub fn entry_type(meta: &Metadata) -> EntryType {
    let ft = meta.file_type();
    if ft.is_file() {
        EntryType::File
    } else if ft.is_dir() {
        EntryType::Dir
    } else if ft.is_symlink() {
        EntryType::Symlink
    } else if ft.is_fifo() {
        EntryType::Fifo
    } else if ft.is_char_device() {
        EntryType::CharDevice
    } else if ft.is_block_device() {
        EntryType::BlockDevice
    } else {
        EntryType::Socket
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
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }

    pub fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }
}

/// Builds a node from lstat metadata; the caller fills in the kind's payload (extents,
/// subtree) where it needs reading.
pub fn node_from_meta(
    name: &OsStr,
    meta: &Metadata,
    kind: NodeKind,
    owners: &mut OwnerNames,
) -> Node {
    Node {
        name: name.as_bytes().to_vec(),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        user: owners.user(meta.uid()),
        group: owners.group(meta.gid()),
        size: if meta.is_file() { meta.size() } else { 0 },
        mtime: Timestamp {
            secs: meta.mtime(),
            nanos: meta.mtime_nsec() as u32,
        },
        ctime: Timestamp {
            secs: meta.ctime(),
            nanos: meta.ctime_nsec() as u32,
        },
        inode: meta.ino(),
        device: meta.dev(),
        links: meta.nlink(),
        xattrs: Vec::new(),
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
