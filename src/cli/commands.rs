//! The standalone commands: each opens the repository, calls the engine, prints the result.

use super::output::{self, Bar};
use super::{Cli, Command, EXIT_PARTIAL, RepoCommand, access, maint};
use crate::backup::{BackupOptions, Excludes, ParentChoice};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::tree::{Node, NodeKind, Tree};
use crate::repo::{Id, InitOptions, Repository, SnapshotStatus};
use crate::restore::{self, RestoreOptions};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

pub fn run(cli: &Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match &cli.command {
        Command::Repo(RepoCommand::Init) => {
            if let Some(checked) = access::check_s3(g)?
                && !g.json
            {
                println!("checked {checked}");
            }
            let store = access::store(g)?;
            let (password, _) = access::password(g, true)?;
            let repo = Repository::init(store, &password, InitOptions::default())?;
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({"id": repo.config().id, "location": repo.store().location()})
                );
            } else {
                println!(
                    "created repository {} at {}",
                    repo.config().id,
                    repo.store().location()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot(a) => {
            if a.paths.is_empty() {
                return Err(Error::invalid(
                    "no paths to back up: name at least one (agentd backs up its configured \
                     paths: drop --repo to ask it)",
                ));
            }
            let mut opts = BackupOptions::new(a.paths.clone());
            opts.tags = a.tags.clone();
            opts.excludes = Excludes::new(&a.excludes, a.exclude_caches)?;
            if let Some(h) = &a.host {
                opts.hostname = h.clone();
            }
            opts.name = a.name.clone();
            if a.force {
                opts.parent = ParentChoice::None;
            }
            if let Some(ttl) = &a.ttl {
                opts.expires =
                    Some(chrono::Utc::now() + crate::maintenance::retention::parse_ttl(ttl)?);
            }
            // The tree is listed while the password unlocks the repository.
            opts.prescan = Some(Arc::new(crate::backup::Prescan::start(&opts)));
            let mut repo = open_unindexed(g)?;
            let bar = Bar::start(opts.progress.clone(), "snapshot", !g.quiet && !g.json);
            let report = crate::maintenance::backup(&mut repo, &opts);
            drop(bar);
            let report = report?;
            let s = &report.snapshot;
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({"id": report.id.to_hex(), "snapshot": s})
                );
            } else {
                let st = &s.stats;
                println!(
                    "snapshot {} saved: {} files ({} new, {} changed, {} unmodified), {} dirs, {} read, {} new data, {} stored in {:.1}s",
                    report.id.short(),
                    st.files,
                    st.files_new,
                    st.files_changed,
                    st.files_unmodified,
                    st.dirs,
                    output::bytes(st.bytes_read),
                    output::bytes(st.bytes_new),
                    output::bytes(st.bytes_stored),
                    st.duration_ms as f64 / 1000.0
                );
                if st.sockets_skipped > 0 {
                    println!("{} sockets skipped", st.sockets_skipped);
                }
                if st.excluded > 0 {
                    println!("{} entries excluded", st.excluded);
                }
            }
            for e in &s.errors {
                eprintln!("error: {}: {}", e.path, e.error);
            }
            if s.status == SnapshotStatus::PartiallyFailed {
                eprintln!(
                    "agentctl: snapshot {} is PartiallyFailed: {} entries could not be stored",
                    report.id.short(),
                    s.stats.errors
                );
                return Ok(ExitCode::from(EXIT_PARTIAL));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshots(a) => {
            let repo = open(g)?;
            let list: Vec<_> = repo
                .list_snapshots()?
                .into_iter()
                .filter(|s| a.host.as_ref().is_none_or(|h| &s.snapshot.hostname == h))
                .filter(|s| a.tag.as_ref().is_none_or(|t| s.snapshot.tags.contains(t)))
                .collect();
            if g.json {
                let items: Vec<_> = list
                    .iter()
                    .map(|s| serde_json::json!({"id": s.id.to_hex(), "snapshot": s.snapshot}))
                    .collect();
                println!("{}", serde_json::Value::Array(items));
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    let t = s
                        .snapshot
                        .time()
                        .map(|t| {
                            t.with_timezone(&chrono::Local)
                                .format("%Y-%m-%d %H:%M:%S")
                                .to_string()
                        })
                        .unwrap_or_else(|| s.snapshot.time.clone());
                    vec![
                        s.id.short(),
                        t,
                        s.snapshot.hostname.clone(),
                        format!("{:?}", s.snapshot.status),
                        s.snapshot.tags.join(","),
                        s.snapshot.stats.files.to_string(),
                        output::bytes(s.snapshot.stats.total_bytes),
                        s.snapshot.paths.join(" "),
                    ]
                })
                .collect();
            output::table(
                &[
                    "ID", "TIME", "HOST", "STATUS", "TAGS", "FILES", "SIZE", "PATHS",
                ],
                &rows,
            );
            println!("{} snapshots", rows.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls(a) => {
            let host = latest_host(&[&a.snapshot], &a.host)?;
            let repo = open(g)?;
            let snap = repo.resolve_for_host(&a.snapshot, &host)?;
            let mut out = Vec::new();
            let start = a.path.clone().unwrap_or_else(|| PathBuf::from("/"));
            let (tree, prefix, single) = descend(&repo, &snap.snapshot.tree, &start)?;
            match single {
                Some(node) => out.push((prefix, node)),
                None => list_tree(&repo, &tree, &prefix, &mut out)?,
            }
            for (path, node) in &out {
                if g.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "path": path.to_string_lossy(),
                            "type": node.type_char().to_string(),
                            "mode": format!("{:o}", node.mode),
                            "uid": node.uid, "gid": node.gid,
                            "user": node.user, "group": node.group,
                            "size": node.size,
                            "mtime": node.mtime.secs,
                        })
                    );
                } else if a.long {
                    println!(
                        "{}{:04o} {:>8} {:>8} {:>12} {} {}",
                        node.type_char(),
                        node.mode,
                        node.user.clone().unwrap_or_else(|| node.uid.to_string()),
                        node.group.clone().unwrap_or_else(|| node.gid.to_string()),
                        node.size,
                        chrono::DateTime::from_timestamp(node.mtime.secs, node.mtime.nanos)
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                            .unwrap_or_default(),
                        path.display()
                    );
                } else {
                    println!("{}", path.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff(a) => {
            let host = latest_host(&[&a.from, &a.to], &a.host)?;
            let repo = open(g)?;
            let from = repo.resolve_for_host(&a.from, &host)?;
            let to = repo.resolve_for_host(&a.to, &host)?;
            let mut changes = Vec::new();
            diff_trees(
                &repo,
                Some(&from.snapshot.tree),
                Some(&to.snapshot.tree),
                Path::new("/"),
                &mut changes,
            )?;
            for (mark, path) in &changes {
                if g.json {
                    println!(
                        "{}",
                        serde_json::json!({"change": mark.to_string(), "path": path.to_string_lossy()})
                    );
                } else {
                    println!("{mark} {}", path.display());
                }
            }
            if !g.json {
                let count = |m: char| changes.iter().filter(|(c, _)| *c == m).count();
                println!(
                    "{} added, {} removed, {} modified",
                    count('+'),
                    count('-'),
                    count('M')
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::NodeRestore(a) => super::node::run(g, a),
        Command::Status | Command::Operations(_) | Command::Watch(_) | Command::Cancel(_) => {
            Err(Error::invalid(
                "this command asks agentd: drop --repo (and pass --socket if agentd listens \
             elsewhere)",
            ))
        }
        Command::Maintenance(_) => Err(Error::invalid(
            "maintenance asks agentd to apply its configured retention, prune and check: drop \
             --repo; on a repository directly, run `forget`, `prune` and `check`",
        )),
        Command::Restore(a) => {
            let host = latest_host(&[&a.snapshot], &a.host)?;
            let repo = open(g)?;
            let snap = repo.resolve_for_host(&a.snapshot, &host)?;
            let mut opts = RestoreOptions::new(&a.target);
            opts.includes = a.includes.clone();
            opts.delete = a.delete;
            opts.progress = Arc::new(Progress::new());
            let bar = Bar::start(opts.progress.clone(), "restore", !g.quiet && !g.json);
            let report = restore::restore(&repo, &snap.snapshot, &opts);
            drop(bar);
            let report = report?;
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "snapshot": snap.id.to_hex(), "files": report.files, "dirs": report.dirs,
                        "others": report.others, "bytes": report.bytes, "deleted": report.deleted,
                        "error_count": report.error_count, "errors": report.errors,
                    })
                );
            } else {
                println!(
                    "restored snapshot {} into {}: {} files, {} dirs, {} other entries, {}{}",
                    snap.id.short(),
                    a.target.display(),
                    report.files,
                    report.dirs,
                    report.others,
                    output::bytes(report.bytes),
                    if a.delete {
                        format!(", {} entries deleted", report.deleted)
                    } else {
                        String::new()
                    }
                );
            }
            for e in &report.errors {
                eprintln!("error: {}: {}", e.path, e.error);
            }
            if report.error_count > 0 {
                eprintln!(
                    "agentctl: restore finished with {} errors; the entries above were not restored",
                    report.error_count
                );
                return Ok(ExitCode::from(EXIT_PARTIAL));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Forget(a) => maint::forget(g, a),
        Command::Delete(a) => maint::delete(g, a),
        Command::Prune(a) => maint::prune_cmd(g, a),
        Command::Check(a) => maint::check_cmd(g, a),
        Command::Repair(a) => maint::repair_cmd(g, a),
        Command::Key(c) => maint::key(g, c),
        Command::Unlock(a) => maint::unlock(g, a),
    }
}

/// Whose snapshots `latest` chooses from: --host, or this host. --host where no snapshot is
/// given as "latest" would be ignored, so it is refused.
fn latest_host(specs: &[&str], host: &Option<String>) -> Result<String> {
    match host {
        Some(h) if !specs.contains(&"latest") => Err(Error::invalid(format!(
            "--host {h} needs snapshot \"latest\": a snapshot ID or name already says whose \
             snapshot it is"
        ))),
        Some(h) => Ok(h.clone()),
        None => Ok(crate::backup::hostname()),
    }
}

pub(super) fn open(g: &super::Global) -> Result<Repository> {
    let repo = open_unindexed(g)?;
    repo.reload_index()?;
    Ok(repo)
}

/// [`open`] without loading the index, for a backup: its write session loads it.
fn open_unindexed(g: &super::Global) -> Result<Repository> {
    let store = access::store(g)?;
    let (password, source) = access::password(g, false)?;
    Repository::open_unindexed(store, &password).map_err(|e| {
        if e.kind() == crate::error::Kind::WrongPassword {
            e.context(format!("password from {source}"))
        } else {
            e
        }
    })
}

/// Follows `path` from the root tree: returns the tree to list and its path, or a single
/// non-directory node.
fn descend(repo: &Repository, root: &Id, path: &Path) -> Result<(Tree, PathBuf, Option<Node>)> {
    let mut tree = repo.read_tree(root)?;
    let mut shown = PathBuf::from("/");
    let comps: Vec<_> = path
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect();
    for (i, c) in comps.iter().enumerate() {
        let name = c.as_os_str().as_bytes();
        let node = tree.get(name).cloned().ok_or_else(|| {
            Error::not_found(format!("{} is not in the snapshot", path.display()))
        })?;
        shown.push(c.as_os_str());
        match node.kind {
            NodeKind::Dir { tree: id } => tree = repo.read_tree(&id)?,
            _ if i + 1 == comps.len() => return Ok((tree, shown, Some(node))),
            _ => {
                return Err(Error::not_found(format!(
                    "{} is not a directory in the snapshot",
                    shown.display()
                )));
            }
        }
    }
    Ok((tree, shown, None))
}

fn list_tree(
    repo: &Repository,
    tree: &Tree,
    prefix: &Path,
    out: &mut Vec<(PathBuf, Node)>,
) -> Result<()> {
    for node in &tree.nodes {
        let path = prefix.join(OsStr::from_bytes(&node.name));
        out.push((path.clone(), node.clone()));
        if let NodeKind::Dir { tree: id } = node.kind {
            list_tree(repo, &repo.read_tree(&id)?, &path, out)?;
        }
    }
    Ok(())
}

/// Compares two trees; identical subtree IDs are skipped without reading them.
fn diff_trees(
    repo: &Repository,
    a: Option<&Id>,
    b: Option<&Id>,
    prefix: &Path,
    out: &mut Vec<(char, PathBuf)>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let ta = a
        .map(|id| repo.read_tree(id))
        .transpose()?
        .unwrap_or_default();
    let tb = b
        .map(|id| repo.read_tree(id))
        .transpose()?
        .unwrap_or_default();
    let (mut i, mut j) = (0, 0);
    while i < ta.nodes.len() || j < tb.nodes.len() {
        let (na, nb) = (ta.nodes.get(i), tb.nodes.get(j));
        let order = match (na, nb) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let n = na.unwrap();
                let p = prefix.join(OsStr::from_bytes(&n.name));
                out.push(('-', p.clone()));
                diff_trees(repo, n.subtree().as_ref(), None, &p, out)?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let n = nb.unwrap();
                let p = prefix.join(OsStr::from_bytes(&n.name));
                out.push(('+', p.clone()));
                diff_trees(repo, None, n.subtree().as_ref(), &p, out)?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (na.unwrap(), nb.unwrap());
                let p = prefix.join(OsStr::from_bytes(&x.name));
                match (x.subtree(), y.subtree()) {
                    (Some(sa), Some(sb)) => diff_trees(repo, Some(&sa), Some(&sb), &p, out)?,
                    _ if x.kind != y.kind
                        || x.mode != y.mode
                        || x.uid != y.uid
                        || x.gid != y.gid
                        || x.xattrs != y.xattrs =>
                    {
                        out.push(('M', p))
                    }
                    _ => {}
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}
