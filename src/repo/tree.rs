//! Tree blobs: one per directory, listing its entries with their metadata.
//!
//! Encoded with postcard (a documented, stable binary serde format) and stored as ordinary
//! blobs of kind Tree, so an unchanged directory encodes to the same bytes, gets the same ID
//! and costs nothing in the next snapshot.

use super::id::Id;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Version byte that starts every encoded tree.
pub const TREE_VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// A run of a regular file: stored content, or a hole (restored as a hole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Extent {
    Data { id: Id, len: u32 },
    Hole { len: u64 },
}

impl Extent {
    pub fn len(&self) -> u64 {
        match self {
            Extent::Data { len, .. } => *len as u64,
            Extent::Hole { len } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    File { extents: Vec<Extent> },
    Dir { tree: Id },
    Symlink { target: Vec<u8> },
    Fifo,
    CharDevice { rdev: u64 },
    BlockDevice { rdev: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// One directory entry. `name` is raw bytes: file names need not be UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: Vec<u8>,
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky (st_mode & 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub group: Option<String>,
    pub size: u64,
    pub mtime: Timestamp,
    /// ctime, inode, device and link count: for change detection and hard links.
    pub ctime: Timestamp,
    pub inode: u64,
    pub device: u64,
    pub links: u64,
    pub xattrs: Vec<Xattr>,
}

impl Node {
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir { .. })
    }

    pub fn subtree(&self) -> Option<Id> {
        match self.kind {
            NodeKind::Dir { tree } => Some(tree),
            _ => None,
        }
    }

    pub fn type_char(&self) -> char {
        match self.kind {
            NodeKind::File { .. } => '-',
            NodeKind::Dir { .. } => 'd',
            NodeKind::Symlink { .. } => 'l',
            NodeKind::Fifo => 'p',
            NodeKind::CharDevice { .. } => 'c',
            NodeKind::BlockDevice { .. } => 'b',
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![TREE_VERSION];
        postcard::to_io(self, &mut out).expect("trees serialize");
        out
    }

    /// Decodes a tree and checks that it is safe to restore: every name is one path component
    /// (not empty, not `.` or `..`, no `/` or NUL) and names are strictly sorted, hence unique.
    pub fn decode(bytes: &[u8]) -> Result<Tree> {
        match bytes.first() {
            Some(&TREE_VERSION) => {}
            other => {
                return Err(Error::corrupt(format!(
                    "tree has unknown version {other:?}"
                )));
            }
        }
        let tree: Tree = postcard::from_bytes(&bytes[1..])
            .map_err(|e| Error::corrupt(format!("tree does not decode: {e}")))?;
        tree.validate()?;
        Ok(tree)
    }

    pub fn validate(&self) -> Result<()> {
        for node in &self.nodes {
            check_name(&node.name)?;
        }
        for pair in self.nodes.windows(2) {
            if pair[0].name >= pair[1].name {
                return Err(Error::hostile(format!(
                    "refusing a tree whose entries are duplicated or out of order ({:?} before {:?})",
                    pair[0].name_lossy(),
                    pair[1].name_lossy()
                )));
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

/// A single, harmless path component.
pub fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Error::hostile(format!(
            "refusing an entry named {:?}: names must be single path components (no '..', no \
             '/', not empty)",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}
