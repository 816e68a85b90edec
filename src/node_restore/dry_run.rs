//! Dry run of a node restore: what would be added, changed and removed in the target, and
//! which units would be stopped. Touches nothing.
//!
//! An entry counts as changed when its type, mode, owner, extended attributes (ACLs and
//! capabilities included), symlink target or device number differ from the snapshot's, or,
//! for a regular file, its size or mtime: contents are not read, so a file rewritten with
//! the same size and its old mtime put back shows as unchanged, as it would to an
//! incremental backup. Directory mtimes and hard-link structure are not compared.

use super::{NodeRestoreOptions, check_swap_points, components, validate};
use crate::error::Result;
use crate::repo::tree::{Node, NodeKind};
use crate::repo::{Repository, Tree};
use crate::service::UnitControl;
use serde::Serialize;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize)]
pub struct DryRun {
    pub snapshot: String,
    pub added: Vec<PathBuf>,
    pub changed: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    pub units_to_stop: Vec<String>,
}

pub fn plan(
    repo: &Repository,
    units: &dyn UnitControl,
    opts: &NodeRestoreOptions,
) -> Result<DryRun> {
    let entry = validate(repo, opts)?;
    check_swap_points(opts)?;
    let source = opts
        .source_path
        .clone()
        .unwrap_or_else(|| opts.target.clone());
    let (tree, _) =
        crate::restore::find_dir(repo, &entry.snapshot.tree, &components(&source), &source)?;
    let mut out = DryRun {
        snapshot: entry.id.to_hex(),
        ..DryRun::default()
    };
    compare(repo, &tree, &opts.target, opts, &mut out)?;
    for u in &opts.units {
        if units.is_active(u)? {
            out.units_to_stop.push(u.clone());
        }
    }
    Ok(out)
}

fn selected(opts: &NodeRestoreOptions, path: &Path) -> bool {
    opts.includes.is_empty()
        || opts
            .includes
            .iter()
            .any(|i| path.starts_with(i) || i.starts_with(path))
}

fn compare(
    repo: &Repository,
    tree: &Tree,
    dir: &Path,
    opts: &NodeRestoreOptions,
    out: &mut DryRun,
) -> Result<()> {
    let mut present: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().as_bytes().to_vec())
                .collect()
        })
        .unwrap_or_default();
    present.sort();
    for node in &tree.nodes {
        let path = dir.join(OsStr::from_bytes(&node.name));
        if !selected(opts, &path) {
            continue;
        }
        match std::fs::symlink_metadata(&path) {
            Err(_) => {
                out.added.push(path.clone());
                if let NodeKind::Dir { tree } = node.kind {
                    add_all(repo, &repo.read_tree(&tree)?, &path, out)?;
                }
            }
            Ok(meta) => {
                if differs(node, &meta) || differs_in_content(node, &path) {
                    out.changed.push(path.clone());
                }
                if let (NodeKind::Dir { tree }, true) = (&node.kind, meta.is_dir()) {
                    compare(repo, &repo.read_tree(tree)?, &path, opts, out)?;
                }
            }
        }
    }
    for name in present {
        let path = dir.join(OsStr::from_bytes(&name));
        if tree.get(&name).is_none()
            && selected(opts, &path)
            && opts.includes.iter().all(|i| path.starts_with(i))
        {
            out.removed.push(path);
        }
    }
    Ok(())
}

fn add_all(repo: &Repository, tree: &Tree, dir: &Path, out: &mut DryRun) -> Result<()> {
    for node in &tree.nodes {
        let path = dir.join(OsStr::from_bytes(&node.name));
        out.added.push(path.clone());
        if let NodeKind::Dir { tree } = node.kind {
            add_all(repo, &repo.read_tree(&tree)?, &path, out)?;
        }
    }
    Ok(())
}

/// What `differs` cannot see in the metadata: a symlink's target, a device's number, the
/// extended attributes. An entry that cannot be read counts as changed (the restore
/// rewrites it).
fn differs_in_content(node: &Node, path: &Path) -> bool {
    let target_differs = match &node.kind {
        NodeKind::Symlink { target } => std::fs::read_link(path)
            .map(|t| t.as_os_str().as_bytes() != target.as_slice())
            .unwrap_or(true),
        NodeKind::CharDevice { rdev } | NodeKind::BlockDevice { rdev } => {
            std::fs::symlink_metadata(path).map_or(true, |m| m.rdev() != *rdev)
        }
        _ => false,
    };
    target_differs
        || crate::fsmeta::read_xattrs(path).map_or(true, |live| {
            let mut want = node.xattrs.clone();
            want.sort_by(|a, b| a.name.cmp(&b.name));
            live != want
        })
}

fn differs(node: &Node, meta: &std::fs::Metadata) -> bool {
    let same_type = match node.kind {
        NodeKind::File { .. } => meta.is_file(),
        NodeKind::Dir { .. } => meta.is_dir(),
        NodeKind::Symlink { .. } => meta.file_type().is_symlink(),
        _ => !meta.is_file() && !meta.is_dir(),
    };
    !same_type
        || meta.mode() & 0o7777 != node.mode
        || meta.uid() != node.uid
        || meta.gid() != node.gid
        || (meta.is_file()
            && (meta.size() != node.size
                || meta.mtime() != node.mtime.secs
                || meta.mtime_nsec() as u32 != node.mtime.nanos))
}
