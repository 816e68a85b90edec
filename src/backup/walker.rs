//! The walker: lists directories in byte order of names, decides per entry what the snapshot
//! needs, and emits events for the tree builder.
//!
//! A regular file whose size, mtime, ctime, inode and mode equal its node in the parent
//! snapshot (and whose chunks are all indexed) keeps the parent's extents and xattrs without
//! being opened. Everything else that is a regular file becomes a [`FileJob`] for the readers.

use super::reader::{FileJob, Slot};
use super::trees::Event;
use super::{ChangeHints, Excludes, Shared, bump};
use crate::fsmeta::{self, EntryType, OwnerNames};
use crate::progress::Progress;
use crate::repo::Id;
use crate::repo::tree::{Extent, Node, NodeKind, Tree};
use crossbeam_channel::Sender;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
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
    excludes: &'s Excludes,
    hints: Option<&'s ChangeHints>,
    events: Sender<Event>,
    jobs: Sender<FileJob>,
    owners: OwnerNames,
    /// Files with several links seen in this walk: later links share the first one's result.
    hardlinks: HashMap<(u64, u64), Arc<Slot>>,
}

const PLACEHOLDER: Id = Id([0; 32]);

impl<'s, 'r> Walker<'s, 'r> {
    pub fn new(
        shared: &'s Shared<'r>,
        excludes: &'s Excludes,
        hints: Option<&'s ChangeHints>,
        events: Sender<Event>,
        jobs: Sender<FileJob>,
    ) -> Self {
        Walker {
            shared,
            excludes,
            hints,
            events,
            jobs,
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

    fn parent_subtree(&self, parent: Option<&Tree>, name: &[u8]) -> Option<Tree> {
        let id = parent?.get(name)?.subtree()?;
        // An unreadable parent tree only costs incrementality.
        self.shared.repo.read_tree(&id).ok()
    }

    /// Walks the directories leading to the selected paths, keeping only selected names.
    fn walk_selection(&mut self, dir: &Path, sel: &Selection, parent: Option<&Tree>) {
        for (name, child) in &sel.children {
            if self.shared.aborted() {
                return;
            }
            let path = dir.join(OsStr::from_bytes(name));
            if child.whole {
                self.entry(&path, OsStr::from_bytes(name), parent);
                continue;
            }
            let meta = match std::fs::symlink_metadata(&path) {
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
            let node = self.dir_node(&path, OsStr::from_bytes(name), &meta, parent);
            let sub = self.parent_subtree(parent, name);
            self.emit(Event::EnterDir);
            self.walk_selection(&path, child, sub.as_ref());
            self.emit(Event::LeaveDir(Some(node)));
        }
    }

    fn walk_dir(&mut self, dir: &Path, parent: Option<&Tree>) {
        let mut names: Vec<OsString> = match std::fs::read_dir(dir) {
            Ok(rd) => {
                let mut v = Vec::new();
                for e in rd {
                    match e {
                        Ok(e) => v.push(e.file_name()),
                        Err(err) => {
                            self.shared.file_error(
                                dir,
                                format!("cannot list the directory completely: {err}"),
                            );
                            break;
                        }
                    }
                }
                v
            }
            Err(e) => {
                self.shared
                    .file_error(dir, format!("cannot list the directory: {e}"));
                return;
            }
        };
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let cache = self.excludes.is_cache_dir(dir);
        for name in names {
            if self.shared.aborted() {
                return;
            }
            if self.shared.progress.is_cancelled() {
                self.shared.fail(crate::error::Error::cancelled());
                return;
            }
            let path = dir.join(&name);
            if (cache && name != super::CACHEDIR_TAG) || self.excludes.is_excluded(&path) {
                bump(&self.shared.stats.excluded, 1);
                continue;
            }
            self.entry(&path, &name, parent);
        }
    }

    /// One entry of any type.
    fn entry(&mut self, path: &Path, name: &OsStr, parent: Option<&Tree>) {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.shared
                    .file_error(path, "vanished before it could be read");
                return;
            }
            Err(e) => {
                self.shared.file_error(path, format!("cannot read: {e}"));
                return;
            }
        };
        let prev = parent.and_then(|t| t.get(name.as_bytes()));
        let stats = &self.shared.stats;
        let kind = match fsmeta::entry_type(&meta) {
            EntryType::Socket => {
                bump(&stats.sockets_skipped, 1);
                return;
            }
            EntryType::Dir => {
                let mut node = self.dir_node(path, name, &meta, parent);
                if let Some(tree) = self.reusable_subtree(path, &node, prev) {
                    node.kind = NodeKind::Dir { tree };
                    bump(&stats.dirs_reused, 1);
                    self.emit(Event::Node(node));
                    return;
                }
                let sub = self.parent_subtree(parent, name.as_bytes());
                self.emit(Event::EnterDir);
                self.walk_dir(path, sub.as_ref());
                self.emit(Event::LeaveDir(Some(node)));
                return;
            }
            EntryType::File => return self.file(path, name, &meta, prev),
            EntryType::Symlink => match std::fs::read_link(path) {
                Ok(t) => {
                    bump(&stats.symlinks, 1);
                    NodeKind::Symlink {
                        target: t.into_os_string().into_vec(),
                    }
                }
                Err(e) => {
                    self.shared
                        .file_error(path, format!("cannot read the symlink: {e}"));
                    return;
                }
            },
            EntryType::Fifo => NodeKind::Fifo,
            EntryType::CharDevice => NodeKind::CharDevice { rdev: meta.rdev() },
            EntryType::BlockDevice => NodeKind::BlockDevice { rdev: meta.rdev() },
        };
        if !matches!(kind, NodeKind::Symlink { .. }) {
            bump(&stats.others, 1);
        }
        let mut node = fsmeta::node_from_meta(name, &meta, kind, &mut self.owners);
        self.fill_xattrs(path, &mut node, prev);
        self.emit(Event::Node(node));
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
                    let indexed = extents.iter().all(|e| match e {
                        Extent::Data { id, .. } => index.contains(id),
                        Extent::Hole { .. } => true,
                    });
                    if !indexed {
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

    fn dir_node(
        &mut self,
        path: &Path,
        name: &OsStr,
        meta: &Metadata,
        parent: Option<&Tree>,
    ) -> Node {
        bump(&self.shared.stats.dirs, 1);
        let mut node = fsmeta::node_from_meta(
            name,
            meta,
            NodeKind::Dir { tree: PLACEHOLDER },
            &mut self.owners,
        );
        let prev = parent.and_then(|t| t.get(name.as_bytes()));
        self.fill_xattrs(path, &mut node, prev);
        node
    }

    /// Extended attributes, taken from the parent snapshot when the inode's ctime shows no
    /// change (every xattr change updates ctime).
    fn fill_xattrs(&self, path: &Path, node: &mut Node, prev: Option<&Node>) {
        if let Some(p) = prev
            && p.ctime == node.ctime
            && p.inode == node.inode
            && std::mem::discriminant(&p.kind) == std::mem::discriminant(&node.kind)
        {
            node.xattrs = p.xattrs.clone();
            return;
        }
        match fsmeta::read_xattrs(path) {
            Ok(x) => node.xattrs = x,
            Err(e) => self
                .shared
                .file_error(path, format!("cannot read extended attributes: {e}")),
        }
    }

    fn file(&mut self, path: &Path, name: &OsStr, meta: &Metadata, prev: Option<&Node>) {
        let stats = &self.shared.stats;
        let progress = self.shared.progress;
        bump(&stats.files, 1);
        bump(&stats.total_bytes, meta.size());
        Progress::add(&progress.files_seen, 1);
        Progress::add(&progress.bytes_seen, meta.size());
        let mut node = fsmeta::node_from_meta(
            name,
            meta,
            NodeKind::File {
                extents: Vec::new(),
            },
            &mut self.owners,
        );
        self.fill_xattrs(path, &mut node, prev);

        if let Some(p) = prev
            && unchanged(p, &node)
            && let NodeKind::File { extents } = &p.kind
            && extents.iter().all(|e| match e {
                Extent::Data { id, .. } => self.shared.index.contains(id),
                Extent::Hole { .. } => true,
            })
        {
            node.kind = p.kind.clone();
            bump(&stats.files_unmodified, 1);
            Progress::add(&progress.files_done, 1);
            Progress::add(&progress.bytes_done, meta.size());
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

        if meta.nlink() > 1
            && let Some(slot) = self.hardlinks.get(&(meta.dev(), meta.ino()))
        {
            // Another link to content already being read.
            Progress::add(&progress.files_done, 1);
            Progress::add(&progress.bytes_done, meta.size());
            self.emit(Event::File {
                node,
                slot: slot.clone(),
                path: path.to_path_buf(),
            });
            return;
        }
        let slot = Arc::new(Slot::default());
        if meta.nlink() > 1 {
            self.hardlinks
                .insert((meta.dev(), meta.ino()), slot.clone());
        }
        let job = FileJob {
            path: path.to_path_buf(),
            size: meta.size(),
            mtime: node.mtime,
            ctime: node.ctime,
            inode: node.inode,
            slot: slot.clone(),
        };
        if self.jobs.send(job).is_err() {
            return;
        }
        self.emit(Event::File {
            node,
            slot,
            path: path.to_path_buf(),
        });
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
fn unchanged(prev: &Node, now: &Node) -> bool {
    matches!(prev.kind, NodeKind::File { .. })
        && prev.size == now.size
        && prev.mtime == now.mtime
        && prev.ctime == now.ctime
        && prev.inode == now.inode
        && prev.mode == now.mode
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

    #[test]
    fn each_compared_field_alone_makes_a_file_changed() {
        let prev = file();
        assert!(unchanged(&prev, &file()));
        type Change = (&'static str, fn(&mut Node));
        let changes: [Change; 5] = [
            ("size", |n| n.size += 1),
            ("mtime", |n| n.mtime.nanos += 1),
            ("ctime", |n| n.ctime.nanos += 1),
            ("inode", |n| n.inode += 1),
            ("mode", |n| n.mode = 0o600),
        ];
        for (field, change) in changes {
            let mut now = file();
            change(&mut now);
            assert!(
                !unchanged(&prev, &now),
                "a different {field} went unnoticed"
            );
        }
    }
}
