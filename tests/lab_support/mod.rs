//! The lab's nodes as the tests see them: a Debian container booted with systemd-nspawn
//! (tests/lab/lab.sh), powered off when dropped; the tree the node-restore tests bring back,
//! and a comparison of trees down to owners, modes, xattrs and ACLs.

#![allow(dead_code)]

use hostagent::service::Systemd;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lab/lab.sh");

/// A booted lab node, powered off when dropped.
pub struct Node {
    pub name: String,
    pub pid: String,
    pub root: PathBuf,
}

impl Node {
    pub fn start(name: &str) -> Node {
        let out = Command::new(LAB).args(["start", name]).output().unwrap();
        assert!(
            out.status.success(),
            "lab start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let root = PathBuf::from(
            String::from_utf8(
                Command::new(LAB)
                    .args(["root", name])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .unwrap()
            .trim(),
        );
        Node {
            name: name.into(),
            pid,
            root,
        }
    }

    pub fn bus(&self) -> String {
        format!(
            "unix:path=/proc/{}/root/run/dbus/system_bus_socket",
            self.pid
        )
    }

    pub fn systemd(&self) -> Systemd {
        Systemd::at_address(&self.bus()).unwrap()
    }

    pub fn exec(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(LAB)
            .arg("exec")
            .arg(&self.name)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    }

    pub fn is_active(&self, unit: &str) -> String {
        self.exec(&["systemctl", "is-active", unit]).1
    }

    pub fn onprem(&self) -> PathBuf {
        self.root.join("var/onprem")
    }

    /// A command run inside the node, as a post-restore step.
    pub fn in_node(&self, cmd: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "nsenter", "-t", &self.pid, "-m", "-u", "-i", "-n", "-p", "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A failing test's node is gone once dropped: its journal goes to the test's output.
        if std::thread::panicking() {
            let (_, journal) = self.exec(&["journalctl", "--no-pager", "-o", "short-monotonic"]);
            let tail: Vec<&str> = journal.lines().rev().take(60).collect();
            eprintln!("journal of node {} (last lines):", self.name);
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
        let _ = Command::new(LAB).args(["stop", &self.name]).status();
    }
}

pub fn populate(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc/certs")).unwrap();
    std::fs::write(dir.join("etc/exports"), "/srv/share *(rw)\n").unwrap();
    std::fs::write(
        dir.join("etc/certs/node.key"),
        "-----BEGIN KEY-----\nsecret\n",
    )
    .unwrap();
    std::fs::set_permissions(
        dir.join("etc/certs/node.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::chown(dir.join("etc/certs/node.key"), Some(101), Some(102)).unwrap();
    std::fs::write(
        dir.join("big.bin"),
        (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    std::os::unix::fs::symlink("etc/exports", dir.join("exports-link")).unwrap();
    xattr::set(dir.join("etc/exports"), "user.origin", b"lab").unwrap();
    // A POSIX ACL (stored as the system.posix_acl_access xattr, which tree_state compares).
    let acl = Command::new("setfacl")
        .args(["-m", "u:1234:rw,g:4321:r"])
        .arg(dir.join("etc/exports"))
        .status()
        .unwrap();
    assert!(acl.success(), "setfacl (package acl) is needed");
}

/// Path → (type, mode, uid, gid, size, mtime, content hash or link target, xattrs).
pub fn tree_state(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let body = if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().display().to_string()
            } else if m.is_file() {
                blake3::hash(&std::fs::read(&p).unwrap())
                    .to_hex()
                    .to_string()
            } else {
                stack.push(p.clone());
                String::new()
            };
            let mut xattrs: Vec<_> = xattr::list(&p)
                .unwrap()
                .map(|n| format!("{n:?}={:?}", xattr::get(&p, &n).unwrap()))
                .collect();
            xattrs.sort();
            let mtime = if m.is_dir() {
                0
            } else {
                m.mtime_nsec() + m.mtime() * 1_000_000_000
            };
            out.insert(
                p.strip_prefix(dir).unwrap().to_path_buf(),
                format!(
                    "{:o} {} {} {} {} {} {:?}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    if m.is_dir() { 0 } else { m.size() },
                    mtime,
                    body,
                    xattrs
                ),
            );
        }
    }
    out
}
