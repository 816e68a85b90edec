//! File-system operations for restore, all relative to directory descriptors opened without
//! following symlinks, so that nothing in the snapshot or already in the target can redirect
//! a write outside the target.

use crate::repo::tree::{Node, Timestamp};
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, UtimensatFlags, futimens, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, unlinkat};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

pub type IoResult<T> = std::io::Result<T>;

pub fn errno(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// Opens a directory below `root` one component at a time, refusing symlinks at every step.
pub fn open_dir_below(root: BorrowedFd<'_>, rel: &Path) -> IoResult<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let mut fd = openat(root, ".", flags, Mode::empty()).map_err(errno)?;
    for c in rel.components() {
        match c {
            Component::Normal(name) => {
                fd = openat(&fd, name, flags, Mode::empty()).map_err(|e| match e {
                    nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => {
                        std::io::Error::other(format!(
                            "{} is not a directory (a symlink or file is in the way)",
                            name.to_string_lossy()
                        ))
                    }
                    e => errno(e),
                })?;
            }
            _ => {
                return Err(std::io::Error::other(format!(
                    "refusing path component {:?}",
                    c.as_os_str()
                )));
            }
        }
    }
    Ok(fd)
}

/// Directories below a root, opened as [`open_dir_below`] does, keeping the last path's
/// directories open: walking directories in tree order, each is opened about once instead of
/// once per component of its path.
pub struct DirChain<'a> {
    root: BorrowedFd<'a>,
    open: Vec<(std::ffi::OsString, OwnedFd)>,
    base: Option<OwnedFd>,
}

impl<'a> DirChain<'a> {
    pub fn new(root: BorrowedFd<'a>) -> Self {
        DirChain {
            root,
            open: Vec::new(),
            base: None,
        }
    }

    pub fn open(&mut self, rel: &Path) -> IoResult<BorrowedFd<'_>> {
        let comps: Vec<&OsStr> = rel
            .components()
            .map(|c| match c {
                Component::Normal(n) => Ok(n),
                _ => Err(std::io::Error::other(format!(
                    "refusing path component {:?}",
                    c.as_os_str()
                ))),
            })
            .collect::<IoResult<_>>()?;
        let common = self
            .open
            .iter()
            .zip(&comps)
            .take_while(|((a, _), b)| a.as_os_str() == **b)
            .count();
        self.open.truncate(common);
        if self.base.is_none() {
            self.base = Some(open_dir_below(self.root, Path::new(""))?);
        }
        for name in &comps[common..] {
            let parent = match self.open.last() {
                Some((_, fd)) => fd.as_fd(),
                None => self.base.as_ref().expect("opened above").as_fd(),
            };
            let fd = open_dir_below(parent, Path::new(name))?;
            self.open.push((name.to_os_string(), fd));
        }
        Ok(match self.open.last() {
            Some((_, fd)) => fd.as_fd(),
            None => self.base.as_ref().expect("opened above").as_fd(),
        })
    }
}

/// A temporary name in a directory, unique enough for concurrent restores.
pub fn temp_name() -> Vec<u8> {
    format!(
        ".hostagent-restore-{}",
        hex::encode(crate::repo::crypto::random_bytes::<8>())
    )
    .into_bytes()
}

pub fn to_timespec(t: Timestamp) -> TimeSpec {
    TimeSpec::new(t.secs, t.nanos as i64)
}

/// Whether this process runs as root (and may restore owners). Asked once: it is asked for
/// every file restored.
pub fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| nix::unistd::geteuid().is_root())
}

/// Owner, mode, xattrs and mtime on an open regular file or directory, in the order that
/// keeps each: chown clears setuid bits and file capabilities, so it goes first.
pub fn apply_meta_fd(fd: BorrowedFd<'_>, node: &Node) -> IoResult<()> {
    if is_root() {
        fchown(
            fd,
            Some(Uid::from_raw(node.uid)),
            Some(Gid::from_raw(node.gid)),
        )
        .map_err(errno)?;
    }
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(node.mode)).map_err(errno)?;
    if !node.xattrs.is_empty() {
        let file = File::from(fd.try_clone_to_owned()?);
        use xattr::FileExt;
        for x in &node.xattrs {
            set_xattr_checked(
                file.set_xattr(OsStr::from_bytes(&x.name), &x.value),
                &x.name,
            )?;
        }
    }
    let mtime = to_timespec(node.mtime);
    futimens(fd, &mtime, &mtime).map_err(errno)
}

/// The same for an entry that cannot be opened (symlink, FIFO, device), by name in `dir`.
pub fn apply_meta_at(dir: BorrowedFd<'_>, name: &[u8], node: &Node, symlink: bool) -> IoResult<()> {
    let name = OsStr::from_bytes(name);
    if is_root() {
        fchownat(
            dir,
            name,
            Some(Uid::from_raw(node.uid)),
            Some(Gid::from_raw(node.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(errno)?;
    }
    if !symlink {
        nix::sys::stat::fchmodat(
            dir,
            name,
            Mode::from_bits_truncate(node.mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(errno)?;
    }
    if !node.xattrs.is_empty() {
        // The /proc path resolves the directory by descriptor; the last component is not
        // followed by lsetxattr.
        let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        for x in &node.xattrs {
            set_xattr_checked(
                xattr::set(&path, OsStr::from_bytes(&x.name), &x.value),
                &x.name,
            )?;
        }
    }
    let mtime = to_timespec(node.mtime);
    utimensat(dir, name, &mtime, &mtime, UtimensatFlags::NoFollowSymlink).map_err(errno)
}

fn set_xattr_checked(r: IoResult<()>, name: &[u8]) -> IoResult<()> {
    r.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot set extended attribute {}: {e}",
                String::from_utf8_lossy(name)
            ),
        )
    })
}

/// Moves `tmp` over `name` in `dir`. A directory in the way is an error unless `replace_dirs`.
pub fn commit(
    dir: BorrowedFd<'_>,
    tmp: &[u8],
    name: &[u8],
    replace_dirs: bool,
    dir_path: &Path,
) -> IoResult<()> {
    let (tmp, name) = (OsStr::from_bytes(tmp), OsStr::from_bytes(name));
    match renameat(dir, tmp, dir, name) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EISDIR)
        | Err(nix::errno::Errno::ENOTEMPTY)
        | Err(nix::errno::Errno::EEXIST) => {
            if replace_dirs {
                std::fs::remove_dir_all(dir_path.join(name))?;
                renameat(dir, tmp, dir, name).map_err(errno)
            } else {
                Err(std::io::Error::other(
                    "a directory is in the way in the target; it was not replaced (remove it, or restore with --delete)",
                ))
            }
        }
        Err(e) => Err(errno(e)),
    }
}

/// Creates an unnamed file in `dir` (`O_TMPFILE`): it has no name until [`link_unnamed`]
/// gives it one, so a crash or a failure leaves nothing behind. None when the file system
/// does not support it; the caller then uses a temporary name.
pub fn create_unnamed(dir: BorrowedFd<'_>) -> IoResult<Option<OwnedFd>> {
    let flags = OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
    match openat(dir, ".", flags, Mode::from_bits_truncate(0o600)) {
        Ok(fd) => Ok(Some(fd)),
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EISDIR) => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

/// Gives an unnamed file its name in `dir`. Fails with `EEXIST` when the name is taken: a link
/// never replaces anything.
pub fn link_unnamed(file: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &[u8]) -> IoResult<()> {
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: both paths are valid NUL-terminated strings and both descriptors are open for
    // the duration of the calls.
    let linked = unsafe {
        libc::linkat(
            file.as_raw_fd(),
            c"".as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if linked == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOENT) {
        return Err(err);
    }
    // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it, link through /proc.
    let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .expect("no NUL in a number");
    // SAFETY: as above.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if linked == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn unlink_quiet(dir: BorrowedFd<'_>, name: &[u8]) {
    let _ = unlinkat(dir, OsStr::from_bytes(name), UnlinkatFlags::NoRemoveDir);
}

/// Creates a directory if missing; replaces a non-directory in its place. Returns whether it
/// was created.
pub fn ensure_dir(parent: BorrowedFd<'_>, name: &[u8]) -> IoResult<bool> {
    let name = OsStr::from_bytes(name);
    match nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EEXIST) => {
            let st =
                nix::sys::stat::fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(errno)?;
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                Ok(false)
            } else {
                // A file or symlink where the snapshot has a directory: the snapshot wins.
                unlinkat(parent, name, UnlinkatFlags::NoRemoveDir).map_err(errno)?;
                nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700))
                    .map_err(errno)?;
                Ok(true)
            }
        }
        Err(e) => Err(errno(e)),
    }
}
