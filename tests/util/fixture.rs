//! Fixture trees: a directory holding an entry of every kind the engine must keep (and a
//! socket it must skip), with owners, modes, nanosecond mtimes, xattrs, ACLs and a file
//! capability set, so that one round trip exercises every branch of backup and restore.
//!
//! Also the small tools to build such trees (mknod, lchown, utimensat) and deterministic
//! pseudo-random data.

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// xorshift64* bytes: incompressible, and the same on every run for a given seed.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text-like data that zstd shrinks a lot, but that does not repeat exactly (so it does not
/// dedup into a single chunk).
pub fn compressible(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("line {i:08} of a compressible log file\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn check(rc: libc::c_int, what: &str, p: &Path) {
    assert_eq!(
        rc,
        0,
        "{what} {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

pub fn write(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

pub fn mkdir(p: &Path) {
    fs::create_dir_all(p).unwrap();
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn lchown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

pub fn mkfifo(p: &Path, mode: u32) {
    // SAFETY: a valid NUL-terminated path.
    check(
        unsafe { libc::mkfifo(cpath(p).as_ptr(), mode) },
        "mkfifo",
        p,
    );
}

/// A character (`'c'`) or block (`'b'`) device node.
pub fn mknod(p: &Path, kind: char, major: u32, minor: u32, mode: u32) {
    let fmt = if kind == 'c' {
        libc::S_IFCHR
    } else {
        libc::S_IFBLK
    };
    let dev = libc::makedev(major, minor);
    // SAFETY: a valid NUL-terminated path.
    check(
        unsafe { libc::mknod(cpath(p).as_ptr(), fmt | mode, dev) },
        "mknod",
        p,
    );
}

/// Sets atime and mtime (to the nanosecond) without following a symlink.
pub fn set_mtime(p: &Path, secs: i64, nanos: i64) {
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: nanos,
    };
    let times = [t, t];
    // SAFETY: a valid path and a two-element array, as utimensat requires.
    check(
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                cpath(p).as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        },
        "utimensat",
        p,
    );
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    xattr::set(p, name, value).unwrap_or_else(|e| panic!("setxattr {name} {}: {e}", p.display()));
}

/// Every path below `root` (itself included), deepest first, so that a directory's mtime
/// is set after its entries stop changing it.
pub fn all_paths_deepest_first(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            let mut names: Vec<_> = fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            out.extend(names);
        }
        i += 1;
    }
    out.reverse();
    out
}

/// Gives every entry below `root` its own mtime with a nanosecond part.
pub fn stamp_mtimes(root: &Path, base: i64) {
    for (i, p) in all_paths_deepest_first(root).iter().enumerate() {
        set_mtime(p, base + i as i64 * 3_600, 123_456_789 - i as i64 * 1_001);
    }
}

/// Sizes in the fixture; the large file only in the full round trip.
pub const LARGE_LEN: usize = 12 << 20;
pub const SPARSE_LEN: u64 = 16 << 20;

/// Paths of interest in a built fixture.
pub struct Fixture {
    pub root: PathBuf,
    pub sparse: PathBuf,
    pub hardlinks: Vec<PathBuf>,
    pub capability: PathBuf,
    pub acl_file: PathBuf,
    pub acl_dir: PathBuf,
    pub non_utf8: PathBuf,
    pub socket: PathBuf,
}

/// Builds the tree of every kind under `root` (created). `large` adds the 12 MiB file.
pub fn build(root: &Path, large: bool) -> Fixture {
    let p = |rel: &str| root.join(rel);
    mkdir(root);
    mkdir(&p("sub/deeper"));
    write(&p("empty"), b"");
    write(&p("small.txt"), b"a small text file\n");
    write(&p("sub/notes.txt"), &compressible(40_000));
    write(&p("sub/deeper/random.bin"), &pseudo_random(7, 300_000));
    if large {
        let mut data = pseudo_random(42, LARGE_LEN / 2);
        data.extend_from_slice(&compressible(LARGE_LEN / 2));
        write(&p("large.bin"), &data);
    }

    // Sparse: data at 1 MiB and 9 MiB, holes around, a hole at the end.
    let sparse = p("sparse.img");
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(&sparse).unwrap();
        f.set_len(SPARSE_LEN).unwrap();
        f.write_all_at(&pseudo_random(3, 64 << 10), 1 << 20)
            .unwrap();
        f.write_all_at(&compressible(100 << 10), 9 << 20).unwrap();
    }
    let holes_only = p("holes-only.img");
    fs::File::create(&holes_only)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();

    // Three links to one inode, across directories.
    let hardlinks = vec![
        p("hardlink-a"),
        p("sub/hardlink-b"),
        p("sub/deeper/hardlink-c"),
    ];
    write(&hardlinks[0], b"one inode, three names\n");
    fs::hard_link(&hardlinks[0], &hardlinks[1]).unwrap();
    fs::hard_link(&hardlinks[0], &hardlinks[2]).unwrap();

    mkfifo(&p("fifo"), 0o640);
    mknod(&p("chardev"), 'c', 1, 3, 0o666);
    mknod(&p("blockdev"), 'b', 7, 200, 0o660);
    lchown(&p("blockdev"), 0, 6);

    symlink("small.txt", p("link-relative")).unwrap();
    symlink("does/not/exist", p("link-dangling")).unwrap();
    symlink("/etc/hostagent-test-absolute-target", p("link-absolute")).unwrap();
    symlink("sub", p("link-dir")).unwrap();
    lchown(&p("link-relative"), 4321, 4322);

    // Owners first: chown clears setuid/setgid bits and capabilities.
    write(&p("setuid"), b"#!/bin/sh\n");
    lchown(&p("setuid"), 1234, 1235);
    chmod(&p("setuid"), 0o4755);
    write(&p("setgid"), b"setgid\n");
    lchown(&p("setgid"), 0, 50);
    chmod(&p("setgid"), 0o2750);
    write(&p("setuid-setgid-sticky"), b"all three\n");
    chmod(&p("setuid-setgid-sticky"), 0o7711);
    mkdir(&p("sticky-dir"));
    chmod(&p("sticky-dir"), 0o1777);
    write(&p("sticky-dir/inside"), b"in a sticky dir\n");
    mkdir(&p("setgid-dir"));
    lchown(&p("setgid-dir"), 0, 2002);
    chmod(&p("setgid-dir"), 0o2775);
    write(&p("owned-1001"), b"owned by 1001:2002\n");
    lchown(&p("owned-1001"), 1001, 2002);
    write(&p("owned-nobody"), b"owned by nobody\n");
    lchown(&p("owned-nobody"), 65534, 65534);
    write(&p("owned-unnamed"), b"owner without a passwd entry\n");
    lchown(&p("owned-unnamed"), 4_000_000, 4_000_001);
    write(&p("mode-000"), b"nobody may read this\n");
    chmod(&p("mode-000"), 0o000);
    mkdir(&p("read-only-dir"));
    write(&p("read-only-dir/file"), b"inside a read-only directory\n");
    chmod(&p("read-only-dir"), 0o555);

    write(&p("xattrs.txt"), b"has extended attributes\n");
    set_xattr(&p("xattrs.txt"), "user.plain", b"a plain value");
    set_xattr(&p("xattrs.txt"), "user.binary", &[0, 1, 2, 0xff, 0xfe, 0]);
    set_xattr(&p("xattrs.txt"), "user.empty", b"");
    set_xattr(&p("sub"), "user.on-a-directory", b"dir value");

    let acl_file = p("acl.txt");
    write(&acl_file, b"has a POSIX ACL\n");
    super::run(
        "setfacl",
        &["-m", "u:1234:rw-,g:2345:r--", acl_file.to_str().unwrap()],
    );
    let acl_dir = p("acl-dir");
    mkdir(&acl_dir);
    super::run(
        "setfacl",
        &["-d", "-m", "u:1234:rwx", acl_dir.to_str().unwrap()],
    );
    write(&acl_dir.join("inherits"), b"created under a default ACL\n");

    let capability = p("cap-bin");
    write(&capability, b"\x7fELF not really\n");
    chmod(&capability, 0o755);
    super::run(
        "setcap",
        &[
            "cap_net_raw,cap_net_bind_service+ep",
            capability.to_str().unwrap(),
        ],
    );

    let non_utf8 = root.join(OsStr::from_bytes(b"caf\xe9 \xff\xfe name"));
    write(&non_utf8, b"a name that is not UTF-8\n");

    let socket = p("socket");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());

    stamp_mtimes(root, 1_600_000_000);
    Fixture {
        root: root.to_path_buf(),
        sparse,
        hardlinks,
        capability,
        acl_file,
        acl_dir,
        non_utf8,
        socket,
    }
}

/// Copies part of /usr/share/doc (whole package directories in name order, about
/// `budget` bytes) with `cp -a`, which keeps modes, owners, times, links and xattrs. A
/// copy, not the original, so that package installs during the test cannot change it.
pub fn copy_real_docs(dest: &Path, budget: u64) -> usize {
    let src = Path::new("/usr/share/doc");
    let mut names: Vec<_> = fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    mkdir(dest);
    let (mut used, mut copied) = (0u64, 0usize);
    for name in names {
        if used >= budget {
            break;
        }
        let from = src.join(&name);
        used += tree_size(&from);
        super::run(
            "cp",
            &["-a", from.to_str().unwrap(), dest.to_str().unwrap()],
        );
        copied += 1;
    }
    copied
}

fn tree_size(p: &Path) -> u64 {
    let m = fs::symlink_metadata(p).unwrap();
    if m.is_dir() {
        fs::read_dir(p)
            .unwrap()
            .map(|e| tree_size(&e.unwrap().path()))
            .sum()
    } else {
        m.len()
    }
}
