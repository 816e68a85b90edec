//! The planner: walks the snapshot's trees in order, creates directories, restores symlinks
//! and special files itself, and hands regular files to the writers in pieces.

use super::RestoreReport;
use super::fsops::{self, IoResult};
use super::writer::{Context, FileState, Piece};
use crate::progress::Progress;
use crate::repo::tree::{Extent, Node, NodeKind, Tree};
use crossbeam_channel::Sender;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Files larger than this are split into pieces of about this size for parallel writing.
const PIECE_BYTES: u64 = 32 << 20;
/// Deeper trees are refused: no real file system nests this far, a hostile repository might.
const MAX_DEPTH: usize = 4096;

#[derive(PartialEq, Eq, Clone, Copy)]
enum Sel {
    Full,
    Partial,
    Skip,
}

struct Link {
    rel_dir: PathBuf,
    name: Vec<u8>,
    first: (PathBuf, Vec<u8>),
}

/// What is left once every file is written: hard links and directory metadata.
pub(super) struct Plan {
    links: Vec<Link>,
    dir_meta: Vec<(PathBuf, Node)>,
    dirs: u64,
    others: u64,
    deleted: u64,
}

pub(super) struct Planner<'c, 'r> {
    ctx: &'c Context<'r>,
    includes: &'c [Vec<Vec<u8>>],
    snapshot_paths: &'c [Vec<Vec<u8>>],
    delete: bool,
    tx: Sender<Piece>,
    first_links: HashMap<(u64, u64), (PathBuf, Vec<u8>)>,
    plan: Plan,
}

fn is_prefix(a: &[Vec<u8>], b: &[Vec<u8>]) -> bool {
    a.len() <= b.len() && a == &b[..a.len()]
}

impl<'c, 'r> Planner<'c, 'r> {
    pub fn new(
        ctx: &'c Context<'r>,
        includes: &'c [Vec<Vec<u8>>],
        snapshot_paths: &'c [Vec<Vec<u8>>],
        delete: bool,
        tx: Sender<Piece>,
    ) -> Self {
        Planner {
            ctx,
            includes,
            snapshot_paths,
            delete,
            tx,
            first_links: HashMap::new(),
            plan: Plan {
                links: Vec::new(),
                dir_meta: Vec::new(),
                dirs: 0,
                others: 0,
                deleted: 0,
            },
        }
    }

    fn select(&self, comps: &[Vec<u8>]) -> Sel {
        if self.includes.is_empty() || self.includes.iter().any(|i| is_prefix(i, comps)) {
            Sel::Full
        } else if self.includes.iter().any(|i| is_prefix(comps, i)) {
            Sel::Partial
        } else {
            Sel::Skip
        }
    }

    /// Restores `root`, the tree at snapshot path `start` (empty for the snapshot's root),
    /// into the target directory. `root_node` is that directory's own node, whose metadata
    /// the target takes at the end.
    pub fn run(&mut self, root: &Tree, start: Vec<Vec<u8>>, root_node: Option<Node>) {
        match fsops::open_dir_below(self.ctx.root.as_fd(), Path::new("")) {
            Ok(fd) => {
                let full = self.select(&start) == Sel::Full;
                if let Some(node) = root_node.filter(|_| full) {
                    self.plan.dir_meta.push((PathBuf::new(), node));
                }
                self.dir(root, Path::new(""), &mut start.clone(), full, &Arc::new(fd));
            }
            Err(e) => self.ctx.errors.record(self.ctx.target, e),
        }
    }

    /// Ends the walk: closes the writers' queue and returns what remains to do.
    pub fn finish(self) -> Plan {
        drop(self.tx);
        self.plan
    }

    /// Whether `comps` is a directory strictly above one of the snapshot's paths.
    fn is_intermediate(&self, comps: &[Vec<u8>]) -> bool {
        self.snapshot_paths
            .iter()
            .any(|p| p.len() > comps.len() && is_prefix(comps, p))
    }

    fn display(comps: &[Vec<u8>]) -> PathBuf {
        let mut p = PathBuf::from("/");
        for c in comps {
            p.push(OsStr::from_bytes(c));
        }
        p
    }

    fn dir(
        &mut self,
        tree: &Tree,
        rel: &Path,
        comps: &mut Vec<Vec<u8>>,
        full: bool,
        fd: &Arc<OwnedFd>,
    ) {
        if comps.len() > MAX_DEPTH {
            self.ctx.errors.record(
                &Self::display(comps),
                "refusing a tree nested deeper than 4096 levels",
            );
            return;
        }
        for node in &tree.nodes {
            if self.ctx.progress.is_cancelled() {
                return;
            }
            comps.push(node.name.clone());
            let sel = self.select(comps);
            if sel != Sel::Skip {
                self.entry(node, rel, comps, sel, fd);
            }
            comps.pop();
        }
        // A directory above a snapshot path holds only that path in the snapshot; what else
        // the target has beside it was never backed up and is not ours to delete.
        if full && self.delete && !self.is_intermediate(comps) {
            self.delete_extras(tree, rel, comps, fd);
        }
    }

    fn entry(
        &mut self,
        node: &Node,
        rel: &Path,
        comps: &mut Vec<Vec<u8>>,
        sel: Sel,
        fd: &Arc<OwnedFd>,
    ) {
        let ctx = self.ctx;
        let shown = Self::display(comps);
        let name = node.name.as_slice();
        match &node.kind {
            NodeKind::Dir { tree } => {
                let created = match fsops::ensure_dir(fd.as_fd(), name) {
                    Ok(c) => c,
                    Err(e) => {
                        return ctx
                            .errors
                            .record(&shown, format!("cannot create directory: {e}"));
                    }
                };
                self.plan.dirs += 1;
                let intermediate = self.is_intermediate(comps);
                let child_rel = rel.join(OsStr::from_bytes(name));
                if created || (sel == Sel::Full && !intermediate) {
                    self.plan.dir_meta.push((child_rel.clone(), node.clone()));
                }
                let subtree = match ctx.repo.read_tree(tree) {
                    Ok(t) => t,
                    Err(e) => return ctx.errors.record(&shown, e),
                };
                let flags =
                    OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
                match openat(fd, OsStr::from_bytes(name), flags, Mode::empty()) {
                    Ok(sub) => self.dir(
                        &subtree,
                        &child_rel,
                        comps,
                        sel == Sel::Full,
                        &Arc::new(sub),
                    ),
                    Err(e) => ctx.errors.record(&shown, fsops::errno(e)),
                }
            }
            _ if sel != Sel::Full => {}
            NodeKind::File { extents } => self.file(node, extents, rel, shown, fd),
            _ => {
                self.plan.others += 1;
                Progress::add(&ctx.progress.files_seen, 1);
                if let Err(e) = self.special(node, rel, fd) {
                    ctx.errors.record(&shown, e);
                }
                Progress::add(&ctx.progress.files_done, 1);
            }
        }
    }

    fn file(
        &mut self,
        node: &Node,
        extents: &[Extent],
        rel: &Path,
        shown: PathBuf,
        dir: &Arc<OwnedFd>,
    ) {
        let progress = self.ctx.progress;
        Progress::add(&progress.files_seen, 1);
        Progress::add(&progress.bytes_seen, node.size);
        if node.links > 1 {
            let key = (node.device, node.inode);
            if let Some(first) = self.first_links.get(&key) {
                self.plan.links.push(Link {
                    rel_dir: rel.to_path_buf(),
                    name: node.name.clone(),
                    first: first.clone(),
                });
                return;
            }
            self.first_links
                .insert(key, (rel.to_path_buf(), node.name.clone()));
        }
        // Cut the extent list into pieces of about PIECE_BYTES.
        let mut pieces: Vec<Vec<(u64, Extent)>> = vec![Vec::new()];
        let (mut offset, mut piece_bytes) = (0u64, 0u64);
        for e in extents {
            if piece_bytes >= PIECE_BYTES {
                pieces.push(Vec::new());
                piece_bytes = 0;
            }
            pieces.last_mut().unwrap().push((offset, e.clone()));
            offset += e.len();
            if let Extent::Data { len, .. } = e {
                piece_bytes += *len as u64;
            }
        }
        let state = Arc::new(FileState::new(
            dir.clone(),
            rel.to_path_buf(),
            node.clone(),
            shown,
            pieces.len(),
        ));
        for extents in pieces {
            if self
                .tx
                .send(Piece {
                    file: state.clone(),
                    extents,
                })
                .is_err()
            {
                return;
            }
        }
    }

    /// Symlinks, FIFOs and device nodes: created under a temporary name, given their
    /// metadata, renamed into place.
    fn special(&mut self, node: &Node, rel: &Path, dir: &OwnedFd) -> IoResult<()> {
        let tmp = fsops::temp_name();
        let tmp_os = OsStr::from_bytes(&tmp);
        let created = match &node.kind {
            NodeKind::Symlink { target } => {
                nix::unistd::symlinkat(OsStr::from_bytes(target), dir, tmp_os)
            }
            NodeKind::Fifo => nix::sys::stat::mknodat(
                dir,
                tmp_os,
                SFlag::S_IFIFO,
                Mode::from_bits_truncate(0o600),
                0,
            ),
            NodeKind::CharDevice { rdev } => nix::sys::stat::mknodat(
                dir,
                tmp_os,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o600),
                *rdev,
            ),
            NodeKind::BlockDevice { rdev } => nix::sys::stat::mknodat(
                dir,
                tmp_os,
                SFlag::S_IFBLK,
                Mode::from_bits_truncate(0o600),
                *rdev,
            ),
            NodeKind::File { .. } | NodeKind::Dir { .. } => unreachable!("handled by the caller"),
        };
        created.map_err(fsops::errno)?;
        let symlink = matches!(node.kind, NodeKind::Symlink { .. });
        let result = fsops::apply_meta_at(dir.as_fd(), &tmp, node, symlink).and_then(|()| {
            fsops::commit(
                dir.as_fd(),
                &tmp,
                &node.name,
                self.ctx.replace_dirs,
                &self.ctx.target.join(rel),
            )
        });
        if result.is_err() {
            fsops::unlink_quiet(dir.as_fd(), &tmp);
        }
        result
    }

    /// With `delete`: removes what the target has in this directory and the snapshot lacks.
    fn delete_extras(&mut self, tree: &Tree, rel: &Path, comps: &[Vec<u8>], fd: &OwnedFd) {
        let keep: HashSet<&[u8]> = tree.nodes.iter().map(|n| n.name.as_slice()).collect();
        let dir_path = self.ctx.target.join(rel);
        let Ok(entries) = std::fs::read_dir(&dir_path) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let bytes = name.as_bytes();
            if keep.contains(bytes) || bytes.starts_with(b".hostagent-restore-") {
                continue;
            }
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let result = if is_dir {
                std::fs::remove_dir_all(dir_path.join(&name))
            } else {
                nix::unistd::unlinkat(
                    fd,
                    name.as_os_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                )
                .map_err(fsops::errno)
            };
            match result {
                Ok(()) => self.plan.deleted += 1,
                Err(e) => {
                    let mut shown = Self::display(comps);
                    shown.push(&name);
                    self.ctx
                        .errors
                        .record(&shown, format!("cannot delete: {e}"));
                }
            }
        }
    }
}

impl Plan {
    pub fn finish(self, ctx: &Context<'_>, report: &mut RestoreReport) {
        report.dirs = self.dirs;
        report.others = self.others;
        report.deleted = self.deleted;
        for link in &self.links {
            let shown = ctx
                .target
                .join(&link.rel_dir)
                .join(OsStr::from_bytes(&link.name));
            match make_link(ctx, link) {
                Ok(()) => report.files += 1,
                Err(e) => ctx
                    .errors
                    .record(&shown, format!("cannot create hard link: {e}")),
            }
            Progress::add(&ctx.progress.files_done, 1);
        }
        // Deepest first (the reverse of tree order), so each directory's times are set after
        // everything in it; the chain keeps the path's directories open between them.
        let mut chain = fsops::DirChain::new(ctx.root.as_fd());
        for (rel, node) in self.dir_meta.iter().rev() {
            let result = chain
                .open(rel)
                .and_then(|fd| fsops::apply_meta_fd(fd, node));
            if let Err(e) = result {
                ctx.errors.record(&ctx.target.join(rel), e);
            }
        }
    }
}

fn make_link(ctx: &Context<'_>, link: &Link) -> IoResult<()> {
    let dir = fsops::open_dir_below(ctx.root.as_fd(), &link.rel_dir)?;
    let first_dir = fsops::open_dir_below(ctx.root.as_fd(), &link.first.0)?;
    let tmp = fsops::temp_name();
    nix::unistd::linkat(
        &first_dir,
        OsStr::from_bytes(&link.first.1),
        &dir,
        OsStr::from_bytes(&tmp),
        nix::fcntl::AtFlags::empty(),
    )
    .map_err(fsops::errno)?;
    let dir_path = ctx.target.join(&link.rel_dir);
    fsops::commit(dir.as_fd(), &tmp, &link.name, ctx.replace_dirs, &dir_path).inspect_err(|_| {
        fsops::unlink_quiet(dir.as_fd(), &tmp);
    })
}
