//! Walking snapshots' trees: the set of blobs they refer to (for prune), and the damaged
//! paths below a tree (for check and repair).
//!
//! Snapshots share most of their trees, so every walk remembers the trees it has done: the
//! cost is one read per distinct tree, whatever the number of snapshots.

use crate::error::{Error, Result};
use crate::repo::tree::{Extent, NodeKind};
use crate::repo::{Id, Repository, Snapshot, SnapshotEntry};
use std::collections::HashMap;
use std::sync::Arc;

/// Reads every snapshot manifest; the unreadable ones are returned apart with the reason.
/// Snapshots that read, and the IDs of those that did not with the reason.
pub type SnapshotsRead = (Vec<SnapshotEntry>, Vec<(Id, Error)>);

pub fn read_snapshots(repo: &Repository) -> Result<SnapshotsRead> {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for id in super::list_snapshot_ids(repo)? {
        match repo.read_snapshot(&id) {
            Ok(snapshot) => good.push(SnapshotEntry { id, snapshot }),
            // Forgotten by someone else since the listing.
            Err(e) if e.kind() == crate::error::Kind::NotFound => {}
            Err(e) if e.kind() == crate::error::Kind::Unavailable => return Err(e),
            Err(e) => bad.push((id, e)),
        }
    }
    good.sort_by(|a, b| {
        (a.snapshot.time(), &a.snapshot.time).cmp(&(b.snapshot.time(), &b.snapshot.time))
    });
    Ok((good, bad))
}

/// Every blob (trees and data) the snapshots refer to, each with a byte of flags (zero) for
/// the caller's bookkeeping: one map instead of several sets keeps prune's memory at about
/// 48 bytes per referenced blob. Fails on the first tree that cannot be read: without it,
/// what it refers to is unknown, and nothing may be deleted.
pub fn referenced_blobs<'a>(
    repo: &Repository,
    snapshots: impl IntoIterator<Item = &'a Snapshot>,
) -> Result<HashMap<Id, u8>> {
    let mut seen = HashMap::new();
    let mut stack = Vec::new();
    for s in snapshots {
        if seen.insert(s.tree, 0).is_none() {
            stack.push(s.tree);
        }
    }
    while let Some(id) = stack.pop() {
        let tree = repo.read_tree(&id).map_err(|e| {
            e.context(format!(
                "cannot read tree {}, so what it refers to is unknown; run `agentctl check`, \
                 then `agentctl repair`",
                id.short()
            ))
        })?;
        for node in &tree.nodes {
            match &node.kind {
                NodeKind::Dir { tree } if seen.insert(*tree, 0).is_none() => stack.push(*tree),
                NodeKind::File { extents } => {
                    for e in extents {
                        if let Extent::Data { id, .. } = e {
                            seen.insert(*id, 0);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(seen)
}

/// One damaged entry: its path relative to the walked tree ("" is the tree itself) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub path: String,
    pub reason: String,
}

/// Finds damaged entries below trees, given a judgement of data blobs.
pub struct Inspector<'a> {
    repo: &'a Repository,
    /// Why a data blob cannot be restored, or None when it can.
    blob_problem: &'a dyn Fn(&Id) -> Option<String>,
    memo: HashMap<Id, Arc<Vec<Damage>>>,
}

impl<'a> Inspector<'a> {
    pub fn new(repo: &'a Repository, blob_problem: &'a dyn Fn(&Id) -> Option<String>) -> Self {
        Inspector {
            repo,
            blob_problem,
            memo: HashMap::new(),
        }
    }

    /// The damage below tree `id`, paths relative to it.
    pub fn tree(&mut self, id: &Id) -> Arc<Vec<Damage>> {
        if let Some(d) = self.memo.get(id) {
            return d.clone();
        }
        let mut out = Vec::new();
        match self.repo.read_tree(id) {
            Err(e) => out.push(Damage {
                path: String::new(),
                reason: format!("directory listing (tree {}) is lost: {e}", id.short()),
            }),
            Ok(tree) => {
                for node in &tree.nodes {
                    let name = node.name_lossy();
                    match &node.kind {
                        NodeKind::Dir { tree } => {
                            for d in self.tree(tree).iter() {
                                let path = if d.path.is_empty() {
                                    name.clone()
                                } else {
                                    format!("{name}/{}", d.path)
                                };
                                out.push(Damage {
                                    path,
                                    reason: d.reason.clone(),
                                });
                            }
                        }
                        NodeKind::File { extents } => {
                            if let Some(reason) = self.file_problem(extents) {
                                out.push(Damage {
                                    path: name.clone(),
                                    reason,
                                });
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let out = Arc::new(out);
        self.memo.insert(*id, out.clone());
        out
    }

    pub fn file_problem(&self, extents: &[Extent]) -> Option<String> {
        let mut problems = extents.iter().filter_map(|e| match e {
            Extent::Data { id, .. } => (self.blob_problem)(id).map(|p| (id, p)),
            Extent::Hole { .. } => None,
        });
        let (id, first) = problems.next()?;
        let more = problems.count();
        Some(if more == 0 {
            format!("data blob {} {first}", id.short())
        } else {
            format!("data blob {} {first} (and {more} more blobs)", id.short())
        })
    }
}

/// Joins a snapshot's root with a relative damaged path for display.
pub fn display_path(rel: &str) -> String {
    format!("/{rel}")
}
