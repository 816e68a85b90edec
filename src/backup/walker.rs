//! The walker: lists directories in byte order of names, decides per entry what the snapshot
//! needs, and emits events for the tree builder.
//!
//! A regular file whose size, mtime, ctime, inode and mode equal its node in the parent
//! snapshot (and whose chunks are all indexed) keeps the parent's extents and xattrs without
//! being opened. Everything else that is a regular file becomes a [`FileJob`] for the readers.

use super::reader::{Backlog, FileJob, Slot};
use super::scan::Scanner;
use super::trees::Event;
use super::{ChangeHints, Shared, bump};
use crate::fsmeta::{self, EntryType, OwnerNames, Stat};
use crate::progress::Progress;
use crate::repo::Id;
use crate::repo::tree::{Extent, Node, NodeKind, Tree};
use crossbeam_channel::Sender;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The part of the file-system namespace a backup covers: the given paths and the directories
/// leading to them.
#[derive(Default)]
struct Selection {
    children: BTreeMap<Vec<u8>, Selection>,
    whole: bool,
}

impl Selection {
    fn from_paths(paths: &[PathBuf]) -> Selection {
        let mut root = Selection::default();
        for p in paths {
            let mut node = &mut root;
            for c in p.components().skip(1) {
                if node.whole {
                    break;
                }
                node = node
                    .children
                    .entry(c.as_os_str().as_bytes().to_vec())
                    .or_default();
            }
            node.whole = true;
            node.children.clear();
        }
        root
    }
}

pub(super) struct Walker<'s, 'r> {
    shared: &'s Shared<'r>,
    hints: Option<&'s ChangeHints>,
    scan: &'s Scanner,
    events: Sender<Event>,
    jobs: Sender<FileJob>,
    backlog: &'s Backlog,
    owners: OwnerNames,
    /// Files with several links seen in this walk: later links share the first one's result.
    hardlinks: HashMap<(u64, u64), Arc<Slot>>,
}

const PLACEHOLDER: Id = Id([0; 32]);

impl<'s, 'r> Walker<'s, 'r> {
    pub fn new(
        shared: &'s Shared<'r>,
        hints: Option<&'s ChangeHints>,
        scan: &'s Scanner,
        events: Sender<Event>,
        jobs: Sender<FileJob>,
        backlog: &'s Backlog,
    ) -> Self {
        Walker {
            shared,
            hints,
            scan,
            events,
            jobs,
            backlog,
            owners: OwnerNames::default(),
            hardlinks: HashMap::new(),
        }
    }

    pub fn run(mut self, paths: &[PathBuf], parent: Option<&Tree>) {
        let sel = Selection::from_paths(paths);
        self.emit(Event::EnterDir);
        self.walk_selection(Path::new("/"), &sel, parent);
        self.emit(Event::LeaveDir(None));
        // Dropping the senders closes the channels: readers, then packers, finish.
    }

    fn emit(&self, e: Event) {
        // The tree builder only hangs up after a failure, which is recorded already.
        let _ = self.events.send(e);
    }

    /// The parent snapshot's tree of a directory, when its node there is one.
    fn parent_subtree(&self, prev: Option<&Node>) -> Option<Tree> {
        let id = prev?.subtree()?;
        // An unreadable parent tree only costs incrementality.
        self.shared.repo.read_tree(&id).ok()
    }

    /// Walks the directories leading to the selected paths, keeping only selected names.
    fn walk_selection(&mut self, dir: &Path, sel: &Selection, parent: Option<&Tree>) {
        for (name, child) in &sel.children {
            if self.shared.aborted() {
                return;
            }
            let os_name = OsStr::from_bytes(name);
            let path = dir.join(os_name);
            let prev = parent.and_then(|t| t.get(name)).cloned();
            if child.whole {
                let stat = Stat::path(&path);
                self.entry(dir, os_name, stat, prev);
                continue;
            }
            let meta = match Stat::path(&path) {
                Ok(m) if m.is_dir() => m,
                Ok(_) => {
                    self.shared.file_error(
                        &path,
                        "is no longer a directory; its selected paths were skipped",
                    );
                    continue;
                }
                Err(e) => {
                    self.shared.file_error(&path, format!("cannot read: {e}"));
                    continue;
                }
            };
            let sub = self.parent_subtree(prev.as_ref());
            let node = self.dir_node(&path, os_name, &meta, prev);
            self.emit(Event::EnterDir);
            self.walk_selection(&path, child, sub.as_ref());
            self.emit(Event::LeaveDir(Some(node)));
        }
    }

    /// Walks a directory's entries. Listing and parent tree are both in byte order of names,
    /// so each entry finds its node in the parent snapshot by advancing one cursor; the
    /// parent's nodes are moved into the new ones, not copied.
    fn walk_dir(&mut self, dir: &Path, parent: Option<Tree>) {
        let listing = self.scan.take(dir);
        if let Some(e) = listing.error {
            self.shared.file_error(dir, e);
        }
        bump(&self.shared.stats.excluded, listing.excluded);
        let mut prev_nodes = parent
            .map(|t| t.nodes)
            .unwrap_or_default()
            .into_iter()
            .peekable();
        for entry in listing.entries {
            if self.shared.aborted() {
                return;
            }
            if self.shared.progress.is_cancelled() {
                self.shared.fail(crate::error::Error::cancelled());
                return;
            }
            let name = entry.name.as_bytes();
            while prev_nodes.next_if(|n| n.name.as_slice() < name).is_some() {}
            let prev = prev_nodes.next_if(|n| n.name.as_slice() == name);
            self.entry(dir, &entry.name, entry.stat, prev);
        }
    }

    /// One entry of `dir`, with its lstat result and its node in the parent snapshot. Its
    /// path is only made where something needs it: an unchanged file needs none.
    fn entry(&mut self, dir: &Path, name: &OsStr, stat: std::io::Result<Stat>, prev: Option<Node>) {
        let meta = match stat {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.shared
                    .file_error(&dir.join(name), "vanished before it could be read");
                return;
            }
            Err(e) => {
                self.shared
                    .file_error(&dir.join(name), format!("cannot read: {e}"));
                return;
            }
        };
        let stats = &self.shared.stats;
        let kind = match meta.entry_type() {
            EntryType::Socket => {
                bump(&stats.sockets_skipped, 1);
                return;
            }
            EntryType::Dir => {
                let path = dir.join(name);
                let sub_prev = prev.as_ref().and_then(Node::subtree);
                // Only change hints can keep a subtree unlisted.
                let prev_dir = self.hints.and(prev.clone());
                let mut node = self.dir_node(&path, name, &meta, prev);
                if let Some(tree) = self.reusable_subtree(&path, &node, prev_dir.as_ref()) {
                    self.scan.skip(&path);
                    node.kind = NodeKind::Dir { tree };
                    bump(&stats.dirs_reused, 1);
                    self.emit(Event::Node(node));
                    return;
                }
                // An unreadable parent tree only costs incrementality.
                let sub = sub_prev.and_then(|id| self.shared.repo.read_tree(&id).ok());
                self.emit(Event::EnterDir);
                self.walk_dir(&path, sub);
                self.emit(Event::LeaveDir(Some(node)));
                return;
            }
            EntryType::File => return self.file(dir, name, &meta, prev),
            // A symlink's target never changes in place: same inode and ctime, same target.
            EntryType::Symlink => match prev.as_ref().map(|p| (&p.kind, p.inode, p.ctime)) {
                Some((NodeKind::Symlink { .. }, ino, ctime))
                    if ino == meta.ino && ctime == meta.ctime =>
                {
                    bump(&stats.symlinks, 1);
                    let node = self.node(dir, name, &meta, None, prev);
                    self.emit(Event::Node(node));
                    return;
                }
                _ => match std::fs::read_link(dir.join(name)) {
                    Ok(t) => {
                        bump(&stats.symlinks, 1);
                        NodeKind::Symlink {
                            target: t.into_os_string().into_vec(),
                        }
                    }
                    Err(e) => {
                        self.shared
                            .file_error(&dir.join(name), format!("cannot read the symlink: {e}"));
                        return;
                    }
                },
            },
            EntryType::Fifo => NodeKind::Fifo,
            EntryType::CharDevice => NodeKind::CharDevice { rdev: meta.rdev },
            EntryType::BlockDevice => NodeKind::BlockDevice { rdev: meta.rdev },
        };
        if !matches!(kind, NodeKind::Symlink { .. }) {
            bump(&stats.others, 1);
        }
        let node = self.node(dir, name, &meta, Some(kind), prev);
        self.emit(Event::Node(node));
    }

    /// The node for an entry: from its lstat result, reusing what the parent snapshot's node
    /// holds where it cannot have changed (the name's and owners' bytes; extended attributes
    /// while the ctime is the same, as every xattr change updates it). `kind` None keeps
    /// `prev`'s (an unchanged file's extents, an unchanged symlink's target).
    fn node(
        &mut self,
        dir: &Path,
        name: &OsStr,
        meta: &Stat,
        kind: Option<NodeKind>,
        prev: Option<Node>,
    ) -> Node {
        let Some(mut p) = prev else {
            let kind = kind.expect("a new entry comes with its kind");
            let mut node = fsmeta::node_from_meta(name, meta, kind, &mut self.owners);
            self.read_xattrs(&dir.join(name), &mut node);
            return node;
        };
        let same_type = kind
            .as_ref()
            .is_none_or(|k| std::mem::discriminant(&p.kind) == std::mem::discriminant(k));
        let xattrs_kept = same_type && p.ctime == meta.ctime && p.inode == meta.ino;
        let kind = kind.unwrap_or_else(|| std::mem::replace(&mut p.kind, NodeKind::Fifo));
        let mut node = fsmeta::node_reusing(p, meta, kind, &mut self.owners);
        if !xattrs_kept {
            self.read_xattrs(&dir.join(name), &mut node);
        }
        node
    }

    /// The parent's subtree for `path`, when change hints say nothing below it changed and
    /// the directory itself looks as it did. Its entries are counted as if walked.
    fn reusable_subtree(&self, path: &Path, node: &Node, prev: Option<&Node>) -> Option<Id> {
        let hints = self.hints?;
        let prev = prev?;
        let NodeKind::Dir { tree } = prev.kind else {
            return None;
        };
        if hints.touches(path)
            || prev.mtime != node.mtime
            || prev.ctime != node.ctime
            || prev.inode != node.inode
            || prev.mode != node.mode
            || prev.xattrs != node.xattrs
        {
            return None;
        }
        let mut count = Counts::default();
        self.count_subtree(&tree, &mut count)?;
        let stats = &self.shared.stats;
        let progress = self.shared.progress;
        bump(&stats.dirs, count.dirs);
        bump(&stats.files, count.files);
        bump(&stats.files_unmodified, count.files);
        bump(&stats.total_bytes, count.bytes);
        bump(&stats.symlinks, count.symlinks);
        bump(&stats.others, count.others);
        Progress::add(&progress.files_seen, count.files);
        Progress::add(&progress.files_done, count.files);
        Progress::add(&progress.bytes_seen, count.bytes);
        Progress::add(&progress.bytes_done, count.bytes);
        Some(tree)
    }

    /// Counts a stored subtree; None when any of its trees or data is not in the index (the
    /// directory is then walked as usual).
    fn count_subtree(&self, id: &Id, count: &mut Counts) -> Option<()> {
        let index = self.shared.repo.index();
        if !index.contains(id) {
            return None;
        }
        let tree = self.shared.repo.read_tree(id).ok()?;
        for n in &tree.nodes {
            match &n.kind {
                NodeKind::Dir { tree } => {
                    count.dirs += 1;
                    self.count_subtree(tree, count)?;
                }
                NodeKind::File { extents } => {
                    if !all_indexed(&index, extents) {
                        return None;
                    }
                    count.files += 1;
                    count.bytes += n.size;
                }
                NodeKind::Symlink { .. } => count.symlinks += 1,
                _ => count.others += 1,
            }
        }
        Some(())
    }

    fn dir_node(&mut self, path: &Path, name: &OsStr, meta: &Stat, prev: Option<Node>) -> Node {
        bump(&self.shared.stats.dirs, 1);
        let dir = path.parent().unwrap_or(Path::new("/"));
        self.node(
            dir,
            name,
            meta,
            Some(NodeKind::Dir { tree: PLACEHOLDER }),
            prev,
        )
    }

    fn read_xattrs(&self, path: &Path, node: &mut Node) {
        match fsmeta::read_xattrs(path) {
            Ok(x) => node.xattrs = x,
            Err(e) => self
                .shared
                .file_error(path, format!("cannot read extended attributes: {e}")),
        }
    }

    fn file(&mut self, dir: &Path, name: &OsStr, meta: &Stat, prev: Option<Node>) {
        let stats = &self.shared.stats;
        let progress = self.shared.progress;
        bump(&stats.files, 1);
        bump(&stats.total_bytes, meta.size);
        Progress::add(&progress.files_seen, 1);
        Progress::add(&progress.bytes_seen, meta.size);

        let reusable = prev.as_ref().is_some_and(|p| {
            unchanged(p, meta)
                && matches!(&p.kind, NodeKind::File { extents }
                    if all_indexed(&self.shared.index, extents))
        });
        if reusable {
            let node = self.node(dir, name, meta, None, prev);
            bump(&stats.files_unmodified, 1);
            Progress::add(&progress.files_done, 1);
            Progress::add(&progress.bytes_done, meta.size);
            self.emit(Event::Node(node));
            return;
        }
        bump(
            if prev.is_some() {
                &stats.files_changed
            } else {
                &stats.files_new
            },
            1,
        );
        let kind = NodeKind::File {
            extents: Vec::new(),
        };
        let node = self.node(dir, name, meta, Some(kind), prev);
        let path = dir.join(name);
        if meta.nlink > 1
            && let Some(slot) = self.hardlinks.get(&(meta.dev, meta.ino))
        {
            // Another link to content already being read.
            Progress::add(&progress.files_done, 1);
            Progress::add(&progress.bytes_done, meta.size);
            self.emit(Event::File {
                node,
                slot: slot.clone(),
                path: path.clone(),
            });
            return;
        }
        let slot = Arc::new(Slot::default());
        if meta.nlink > 1 {
            self.hardlinks.insert((meta.dev, meta.ino), slot.clone());
        }
        let job = FileJob {
            path: path.clone(),
            size: meta.size,
            mtime: node.mtime,
            ctime: node.ctime,
            inode: node.inode,
            slot: slot.clone(),
        };
        self.backlog.admit();
        if self.jobs.send(job).is_err() {
            return;
        }
        self.emit(Event::File { node, slot, path });
    }
}

#[derive(Default)]
struct Counts {
    dirs: u64,
    files: u64,
    bytes: u64,
    symlinks: u64,
    others: u64,
}

/// The incremental test: same size, mtime, ctime, inode and mode as in the parent snapshot.
fn unchanged(prev: &Node, now: &Stat) -> bool {
    matches!(prev.kind, NodeKind::File { .. })
        && prev.size == now.size
        && prev.mtime == now.mtime
        && prev.ctime == now.ctime
        && prev.inode == now.ino
        && prev.mode == now.mode & 0o7777
}

/// Whether every stored piece of a file is in the index (else it must be read again: its
/// data may be on its way out of the repository).
fn all_indexed(index: &crate::repo::Index, extents: &[Extent]) -> bool {
    extents.iter().all(|e| match e {
        Extent::Data { id, .. } => index.contains(id),
        Extent::Hole { .. } => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::tree::Timestamp;

    fn file() -> Node {
        Node {
            name: b"f".to_vec(),
            kind: NodeKind::File {
                extents: Vec::new(),
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            size: 100,
            mtime: Timestamp { secs: 10, nanos: 1 },
            ctime: Timestamp { secs: 20, nanos: 2 },
            inode: 1000,
            device: 1,
            links: 1,
            xattrs: Vec::new(),
        }
    }

    /// The lstat result of an entry that looks exactly as `file()` recorded it.
    fn stat() -> Stat {
        Stat {
            mode: libc::S_IFREG | 0o644,
            uid: 0,
            gid: 0,
            size: 100,
            blocks: 8,
            mtime: Timestamp { secs: 10, nanos: 1 },
            ctime: Timestamp { secs: 20, nanos: 2 },
            ino: 1000,
            dev: 1,
            nlink: 1,
            rdev: 0,
        }
    }

    #[test]
    fn each_compared_field_alone_makes_a_file_changed() {
        let prev = file();
        assert!(unchanged(&prev, &stat()));
        type Change = (&'static str, fn(&mut Stat));
        let changes: [Change; 5] = [
            ("size", |s| s.size += 1),
            ("mtime", |s| s.mtime.nanos += 1),
            ("ctime", |s| s.ctime.nanos += 1),
            ("inode", |s| s.ino += 1),
            ("mode", |s| s.mode = libc::S_IFREG | 0o600),
        ];
        for (field, change) in changes {
            let mut now = stat();
            change(&mut now);
            assert!(
                !unchanged(&prev, &now),
                "a different {field} went unnoticed"
            );
        }
    }
}
