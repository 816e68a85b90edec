//! The tree builder: turns the walker's events into tree blobs, bottom-up.
//!
//! Events arrive in walk order; a directory's tree is complete at its `LeaveDir`. Files still
//! being read are waited for here, in order (through the [`Backlog`], which wakes this thread
//! per batch of finished files), so the walker itself never waits on one file and keeps the
//! readers fed.

use super::packer::{FinishedPack, Packer};
use super::reader::{Backlog, FileOutcome, Slot};
use super::{Shared, bump};
use crate::repo::tree::{Node, NodeKind, Tree};
use crate::repo::{BlobKind, Id};
use crossbeam_channel::{Receiver, Sender};
use std::path::PathBuf;
use std::sync::Arc;

pub(super) enum Event {
    EnterDir,
    /// A finished node.
    Node(Node),
    /// A file whose extents a reader is producing.
    File {
        node: Node,
        slot: Arc<Slot>,
        path: PathBuf,
    },
    /// The end of the current directory; its node (None for the root).
    LeaveDir(Option<Node>),
}

/// Returns the root tree's ID, or None after a failure.
pub(super) fn run(
    shared: &Shared<'_>,
    events: Receiver<Event>,
    backlog: &Backlog,
    out: Sender<FinishedPack>,
) -> Option<Id> {
    let mut packer = Packer::new(shared, BlobKind::Tree, out);
    let mut stack: Vec<Vec<Node>> = Vec::new();
    let mut root = None;
    let mut failed = std::collections::HashSet::new();
    for event in events {
        match event {
            Event::EnterDir => stack.push(Vec::new()),
            Event::Node(node) => stack.last_mut()?.push(node),
            Event::File {
                mut node,
                slot,
                path,
            } => match backlog.outcome(&slot) {
                FileOutcome::Read { extents } => {
                    node.kind = NodeKind::File {
                        extents: extents.clone(),
                    };
                    stack.last_mut()?.push(node);
                }
                FileOutcome::Failed(msg) => {
                    // The reader recorded the first link's path; further links record theirs.
                    if !failed.insert(Arc::as_ptr(&slot)) {
                        shared.file_error(&path, format!("hard link to a file not stored: {msg}"));
                    }
                }
            },
            Event::LeaveDir(node) => {
                let nodes = stack.pop()?;
                let tree = Tree { nodes };
                let bytes = tree.encode();
                let id = shared.repo.keys().blob_id(&bytes);
                if shared.claim(&id) {
                    bump(&shared.stats.tree_blobs_new, 1);
                    if let Some(p) = packer.as_mut() {
                        p.add(id, &bytes);
                    }
                }
                match node {
                    Some(mut n) => {
                        n.kind = NodeKind::Dir { tree: id };
                        stack.last_mut()?.push(n);
                    }
                    None => root = Some(id),
                }
            }
        }
    }
    if let Some(p) = packer {
        p.finish();
    }
    if shared.aborted() { None } else { root }
}
