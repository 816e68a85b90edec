//! The maintenance commands: forget, delete, prune, check, repair, key, unlock.

use super::output::{self, table};
use super::{EXIT_PARTIAL, Global, access};
use crate::error::{Error, Kind, Result};
use crate::maintenance::check::{self, CheckOptions, DataSubset};
use crate::maintenance::keys;
use crate::maintenance::prune::{self, PruneOptions, PruneReport};
use crate::maintenance::repair::{self, RepairOptions};
use crate::maintenance::retention::{self, GroupBy, KeepPolicy};
use crate::maintenance::session::{self, LOCKS_PREFIX, MaintenanceLock, WRITERS_PREFIX};
use crate::repo::{KdfParams, Repository};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Keep the N newest snapshots of each group.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: u32,
    /// ... of each of the last N days.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// ... of each of the last N ISO weeks.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// ... of each of the last N months.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// ... of each of the last N years.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep snapshots with this tag (repeatable).
    #[arg(long = "keep-tag", value_name = "TAG")]
    pub keep_tags: Vec<String>,
    /// Group snapshots by these fields before applying the rules: host, tags, paths.
    #[arg(long, default_value = "host,tags")]
    pub group_by: String,
    /// Only consider snapshots of this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only consider snapshots with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Show what would be forgotten, change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Run a prune afterwards.
    #[arg(long)]
    pub prune: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Snapshots to delete: ID (or unique prefix), name, or "latest".
    #[arg(required = true)]
    pub snapshots: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Show what would be deleted and repacked, change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Repack packs with at least this share of garbage (percent).
    #[arg(long, default_value = "50%")]
    pub repack_unused: String,
    /// Only announce deletions; leave completing them to the next prune.
    #[arg(long)]
    pub single_pass: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also read and verify all pack data.
    #[arg(long)]
    pub read_data: bool,
    /// Read and verify a part of the pack data: a percentage (10%) or a size (5GiB);
    /// repeated checks continue where the last one stopped.
    #[arg(long, value_name = "SUBSET")]
    pub read_data_subset: Option<String>,
    /// Where to keep the position of partial data checks.
    #[arg(long, env = "HOSTAGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// What to repair; both when omitted.
    #[arg(value_enum)]
    pub what: Option<RepairWhat>,
    /// Verify every blob while rebuilding the index; corrupt ones count as lost.
    #[arg(long)]
    pub read_data: bool,
    /// Show what would change, change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RepairWhat {
    /// Rebuild the index from the packs' headers.
    Index,
    /// Rewrite snapshots that refer to lost data.
    Snapshots,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List the key slots.
    List,
    /// Add a key slot for another password (read from --new-password-file).
    Add(KeyNewArgs),
    /// Change your password: adds a slot for the new one, removes yours.
    Passwd(KeyNewArgs),
    /// Remove a key slot.
    Remove(KeyRemoveArgs),
}

#[derive(Debug, Args)]
pub struct KeyNewArgs {
    /// File holding the new password (first line); prompted for on a terminal otherwise.
    #[arg(long)]
    pub new_password_file: Option<PathBuf>,
    /// A label for the slot.
    #[arg(long, default_value = "password")]
    pub label: String,
}

#[derive(Debug, Args)]
pub struct KeyRemoveArgs {
    /// Slot ID (4 digits or more of it).
    pub slot: String,
    /// Allow removing the slot your own password opens.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Token of a lock or writer marker (as prune and its errors show it); without one,
    /// removes only those this host can prove dead.
    pub token: Option<String>,
}

fn open(g: &Global) -> Result<Repository> {
    super::commands::open(g)
}

fn short_time(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|_| t.to_string())
}

pub fn forget(g: &Global, a: &ForgetArgs) -> Result<ExitCode> {
    let mut repo = open(g)?;
    let policy = KeepPolicy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        tags: a.keep_tags.clone(),
    };
    let by = GroupBy::parse(&a.group_by)?;
    let snaps: Vec<_> = repo
        .list_snapshots()?
        .into_iter()
        .filter(|s| a.host.as_ref().is_none_or(|h| &s.snapshot.hostname == h))
        .filter(|s| a.tag.as_ref().is_none_or(|t| s.snapshot.tags.contains(t)))
        .collect();
    let groups = retention::apply(&snaps, &policy, by, chrono::Utc::now());
    if g.json {
        let items: Vec<_> = groups
            .iter()
            .map(|grp| {
                let list = |keep: bool| -> Vec<serde_json::Value> {
                    grp.decisions
                        .iter()
                        .filter(|d| d.keep == keep)
                        .map(|d| {
                            serde_json::json!({
                                "id": d.entry.id.to_hex(), "time": d.entry.snapshot.time,
                                "host": d.entry.snapshot.hostname, "tags": d.entry.snapshot.tags,
                                "reasons": d.reasons,
                            })
                        })
                        .collect()
                };
                serde_json::json!({"group": grp.key.describe(), "keep": list(true), "remove": list(false)})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"dry_run": a.dry_run, "groups": items})
        );
    } else {
        println!("Applying policy: {}", policy.describe());
        for grp in &groups {
            println!();
            println!("snapshots for {}:", grp.key.describe());
            for (keep, verb) in [(true, "keep"), (false, "remove")] {
                let rows: Vec<Vec<String>> = grp
                    .decisions
                    .iter()
                    .filter(|d| d.keep == keep)
                    .map(|d| {
                        let s = &d.entry.snapshot;
                        vec![
                            d.entry.id.short(),
                            short_time(&s.time),
                            s.hostname.clone(),
                            s.tags.join(","),
                            d.reasons.join(", "),
                            s.paths.join(" "),
                        ]
                    })
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                println!(
                    "{verb} {} snapshot{}:",
                    rows.len(),
                    if rows.len() == 1 { "" } else { "s" }
                );
                table(&["ID", "TIME", "HOST", "TAGS", "REASONS", "PATHS"], &rows);
            }
        }
    }
    let removing: usize = groups.iter().map(|g| g.removed().count()).sum();
    if a.dry_run {
        if !g.json {
            println!("\ndry run: {removing} snapshots would be removed; nothing was changed");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let n = retention::forget(&repo, &groups)?;
    if !g.json {
        println!("\nremoved {n} snapshots");
    }
    if a.prune {
        return run_prune(g, &mut repo, &PruneOptions::default(), false);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn delete(g: &Global, a: &DeleteArgs) -> Result<ExitCode> {
    let repo = open(g)?;
    let mut entries = Vec::new();
    for spec in &a.snapshots {
        entries.push(repo.resolve_snapshot(spec)?);
    }
    for e in &entries {
        retention::delete_snapshot(&repo, &e.id)?;
        if g.json {
            println!("{}", serde_json::json!({"deleted": e.id.to_hex()}));
        } else {
            println!(
                "deleted snapshot {} ({}, {}); its data goes with the next prunes",
                e.id.short(),
                short_time(&e.snapshot.time),
                e.snapshot.hostname
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_percent(s: &str) -> Result<f64> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| Error::invalid(format!("{s:?} is not a percentage (like 50%)")))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(Error::invalid(format!("{s:?} is not between 0% and 100%")));
    }
    Ok(v / 100.0)
}

pub fn prune_cmd(g: &Global, a: &PruneArgs) -> Result<ExitCode> {
    let mut repo = open(g)?;
    let opts = PruneOptions {
        dry_run: a.dry_run,
        repack_unused: parse_percent(&a.repack_unused)?,
        ..Default::default()
    };
    run_prune(g, &mut repo, &opts, a.single_pass)
}

fn run_prune(
    g: &Global,
    repo: &mut Repository,
    opts: &PruneOptions,
    single_pass: bool,
) -> Result<ExitCode> {
    let first = prune::prune(repo, opts)?;
    print_prune(g, &first, 1);
    // Nobody was writing when the batch was announced: a second, complete run (fresh
    // listings, fresh mark) may delete it now.
    if !single_pass && !opts.dry_run && first.announced_ripe {
        let second = prune::prune(repo, opts)?;
        print_prune(g, &second, 2);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_prune(g: &Global, r: &PruneReport, pass: u32) {
    if g.json {
        println!(
            "{}",
            serde_json::json!({
                "pass": pass, "dry_run": r.dry_run, "snapshots": r.snapshots,
                "referenced_blobs": r.referenced_blobs,
                "packs_before": r.packs_before, "pack_bytes_before": r.pack_bytes_before,
                "deleted_packs": r.deleted_packs, "freed_bytes": r.deleted_bytes,
                "kept_for_new_snapshots": r.kept_for_new_snapshots,
                "announced": {"unused": r.announced_unused, "repacked": r.announced_repacked,
                    "unindexed": r.announced_unindexed, "bytes": r.announced_bytes,
                    "pending": r.announced_pending.map(|i| i.to_hex())},
                "repacked_blobs": r.repacked_blobs, "repack_bytes_written": r.repack_bytes_written,
                "missing_blobs": r.missing_blobs,
                "damaged_packs": r.damaged_packs.iter().map(|i| i.to_hex()).collect::<Vec<_>>(),
                "waiting": r.waiting.iter().map(|w| serde_json::json!({
                    "pending": w.pending.to_hex(), "packs": w.packs, "bytes": w.bytes,
                    "blocked_by": w.blocked_by})).collect::<Vec<_>>(),
                "index_files_before": r.index_files_before, "index_files_after": r.index_files_after,
            })
        );
        return;
    }
    let b = output::bytes;
    println!(
        "prune pass {pass}{}: {} snapshots, {} referenced blobs, {} packs ({})",
        if r.dry_run { " (dry run)" } else { "" },
        r.snapshots,
        r.referenced_blobs,
        r.packs_before,
        b(r.pack_bytes_before)
    );
    let (delete, announce, repack) = if r.dry_run {
        ("would delete", "would announce", "would copy")
    } else {
        ("deleted", "announced", "copied")
    };
    println!(
        "  {delete} {} packs announced earlier, freeing {}{}",
        r.deleted_packs,
        b(r.deleted_bytes),
        if r.kept_for_new_snapshots > 0 {
            format!(
                "; kept {} that newer snapshots use",
                r.kept_for_new_snapshots
            )
        } else {
            String::new()
        }
    );
    for w in &r.waiting {
        println!(
            "  waiting: {} packs ({}) announced in {} wait for writers that were running then: {}",
            w.packs,
            b(w.bytes),
            w.pending.short(),
            w.blocked_by.join("; ")
        );
    }
    println!(
        "  {announce} for deletion by the next prune: {} unused, {} repacked, {} unindexed packs ({})",
        r.announced_unused,
        r.announced_repacked,
        r.announced_unindexed,
        b(r.announced_bytes)
    );
    if r.announced_waiting_for > 0 {
        println!(
            "  {} writers are running: what was announced is deleted by a prune after they finish",
            r.announced_waiting_for
        );
    }
    if r.repacked_blobs > 0 {
        if r.dry_run {
            println!("  {repack} {} live blobs into new packs", r.repacked_blobs);
        } else {
            println!(
                "  {repack} {} live blobs into {} of new packs",
                r.repacked_blobs,
                b(r.repack_bytes_written)
            );
        }
    }
    println!(
        "  index files: {} -> {}",
        r.index_files_before, r.index_files_after
    );
    if r.missing_blobs > 0 {
        eprintln!(
            "warning: {} blobs that snapshots refer to are in no pack; run `agentctl check`",
            r.missing_blobs
        );
    }
    for p in &r.damaged_packs {
        eprintln!(
            "warning: pack {} holds a damaged live blob and was not repacked; run `agentctl check --read-data`",
            p.short()
        );
    }
}

pub fn check_cmd(g: &Global, a: &CheckArgs) -> Result<ExitCode> {
    let mut repo = open(g)?;
    let read_data = match (&a.read_data_subset, a.read_data) {
        (Some(s), _) => Some(DataSubset::parse(s)?),
        (None, true) => Some(DataSubset::Fraction(1.0)),
        (None, false) => None,
    };
    let state_dir = a.state_dir.clone().or_else(default_state_dir);
    let r = check::check(
        &mut repo,
        &CheckOptions {
            read_data,
            state_dir,
        },
    )?;
    if g.json {
        println!(
            "{}",
            serde_json::json!({
                "ok": r.is_ok(), "index_files": r.index_files, "packs": r.packs, "blobs": r.blobs,
                "snapshots": r.snapshots, "errors": r.errors, "warnings": r.warnings,
                "unreadable_snapshots": r.unreadable_snapshots.iter()
                    .map(|(i, e)| serde_json::json!({"id": i.to_hex(), "error": e})).collect::<Vec<_>>(),
                "damaged_snapshots": r.damaged_snapshots.iter().map(|d| serde_json::json!({
                    "id": d.id.to_hex(), "time": d.time, "host": d.hostname,
                    "paths": d.damage.iter().map(|x| serde_json::json!({"path": x.path, "problem": x.reason})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "packs_read": r.packs_read, "bytes_read": r.bytes_read,
            })
        );
    } else {
        println!(
            "checked {} index files, {} packs, {} blobs, {} snapshots",
            r.index_files, r.packs, r.blobs, r.snapshots
        );
        if read_data.is_some() {
            println!(
                "read {} packs ({}){}",
                r.packs_read,
                output::bytes(r.bytes_read),
                if r.rotation_wrapped {
                    "; this completes a pass over all packs"
                } else {
                    ""
                }
            );
        }
        for w in &r.warnings {
            println!("warning: {w}");
        }
        for e in &r.errors {
            println!("error: {e}");
        }
        for (id, e) in &r.unreadable_snapshots {
            println!("error: snapshot {}: {e}", id.short());
        }
        for d in &r.damaged_snapshots {
            println!(
                "error: snapshot {} ({}, {}) cannot be fully restored:",
                d.id.short(),
                short_time(&d.time),
                d.hostname
            );
            for x in &d.damage {
                println!("    {}: {}", x.path, x.reason);
            }
        }
        if r.is_ok() {
            println!("no errors found");
        } else {
            println!(
                "found {} problems in the repository and {} damaged snapshots; `agentctl repair` \
                 rebuilds the index and rewrites damaged snapshots without what is lost",
                r.errors.len() + r.unreadable_snapshots.len(),
                r.damaged_snapshots.len()
            );
        }
    }
    Ok(if r.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn default_state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("hostagent"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hostagent"))
}

pub fn repair_cmd(g: &Global, a: &RepairArgs) -> Result<ExitCode> {
    let mut repo = open(g)?;
    let opts = RepairOptions {
        dry_run: a.dry_run,
        read_data: a.read_data,
    };
    let lock = if a.dry_run {
        None
    } else {
        Some(MaintenanceLock::acquire(&repo, "repair")?)
    };
    let mut damaged = false;
    if !matches!(a.what, Some(RepairWhat::Snapshots)) {
        let r = repair::repair_index(&mut repo, &opts)?;
        println!(
            "index{}: {} packs with {} blobs indexed from their headers, replacing {} index files",
            if a.dry_run { " (dry run)" } else { "" },
            r.packs_indexed,
            r.blobs_indexed,
            r.index_files_replaced
        );
        for (id, e) in &r.unreadable_packs {
            println!(
                "  pack {} cannot be indexed, its blobs count as lost: {e}",
                id.short()
            );
        }
        for (blob, pack) in &r.corrupt_blobs {
            println!(
                "  blob {} in pack {} is corrupt and was left out",
                blob.short(),
                pack.short()
            );
        }
    }
    if !matches!(a.what, Some(RepairWhat::Index)) {
        let r = repair::repair_snapshots(&repo, &opts)?;
        println!(
            "snapshots{}: {} checked, {} rewritten without lost data, {} removed",
            if a.dry_run { " (dry run)" } else { "" },
            r.checked,
            r.rewritten.len(),
            r.removed.len()
        );
        for s in &r.rewritten {
            damaged = true;
            println!(
                "  snapshot {} -> {} (tagged {}):",
                s.old.short(),
                s.new
                    .map(|i| i.short())
                    .unwrap_or_else(|| "(dry run)".into()),
                repair::DAMAGED_TAG
            );
            for d in &s.lost {
                println!("    lost {}: {}", d.path, d.reason);
            }
        }
        for (id, why) in &r.removed {
            damaged = true;
            println!("  snapshot {} removed: {why}", id.short());
        }
    }
    if let Some(l) = lock {
        l.release()?;
    }
    Ok(if damaged {
        ExitCode::from(EXIT_PARTIAL)
    } else {
        ExitCode::SUCCESS
    })
}

fn new_password(a: &KeyNewArgs) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let g = Global {
        repo: None,
        password_file: a.new_password_file.clone(),
        json: false,
        quiet: true,
        socket: Default::default(),
        s3: Default::default(),
    };
    if a.new_password_file.is_none() && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(Error::invalid(
            "no new password: pass --new-password-file FILE",
        ));
    }
    // HOSTAGENT_PASSWORD names the current password, never the new one.
    if a.new_password_file.is_none() {
        return access::prompt("new repository password: ");
    }
    Ok(access::password(&g, false)?.0)
}

fn kdf() -> KdfParams {
    KdfParams::default()
}

pub fn key(g: &Global, cmd: &KeyCommand) -> Result<ExitCode> {
    let repo = open(g)?;
    let (password, _) = access::password(g, false)?;
    match cmd {
        KeyCommand::List => {
            let slots = keys::list(&repo, &password)?;
            if g.json {
                let items: Vec<_> = slots
                    .iter()
                    .map(|s| serde_json::json!({"id": s.id, "label": s.label, "created": s.created, "current": s.current}))
                    .collect();
                println!("{}", serde_json::Value::Array(items));
            } else {
                let rows: Vec<Vec<String>> = slots
                    .iter()
                    .map(|s| {
                        vec![
                            if s.current { "*" } else { " " }.to_string(),
                            s.id[..8].to_string(),
                            s.label.clone(),
                            short_time(&s.created),
                            format!(
                                "argon2id m={}KiB t={} p={}",
                                s.params.m_cost, s.params.t_cost, s.params.p_cost
                            ),
                        ]
                    })
                    .collect();
                table(&["", "ID", "LABEL", "CREATED", "KDF"], &rows);
                println!("{} key slots (* opens with your password)", rows.len());
            }
        }
        KeyCommand::Add(a) => {
            let new = new_password(a)?;
            let id = keys::add(&repo, &new, &a.label, kdf())?;
            println!("added key slot {}", &id[..8]);
        }
        KeyCommand::Passwd(a) => {
            let new = new_password(a)?;
            let (id, removed) = keys::change_password(&repo, &password, &new, kdf())?;
            println!(
                "password changed: added key slot {}, removed {}",
                &id[..8],
                removed
                    .iter()
                    .map(|r| &r[..8])
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        KeyCommand::Remove(a) => {
            let id = keys::remove(&repo, &password, &a.slot, a.force)?;
            println!("removed key slot {}", &id[..8]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn unlock(g: &Global, a: &UnlockArgs) -> Result<ExitCode> {
    let repo = open(g)?;
    match &a.token {
        None => {
            let n = session::remove_stale(&repo, LOCKS_PREFIX)?
                + session::remove_stale(&repo, WRITERS_PREFIX)?;
            println!("removed {n} locks and writer markers of dead processes on this host");
        }
        Some(t) => {
            let mut found = false;
            for prefix in [LOCKS_PREFIX, WRITERS_PREFIX] {
                for (key, token, holder) in session::list_holders(&repo, prefix)? {
                    if token.starts_with(t.as_str()) && t.len() >= 4 {
                        repo.store()
                            .delete(&key)
                            .map_err(|e| Error::from(e).context("cannot remove the lock"))?;
                        println!(
                            "removed {key}{}",
                            holder
                                .map(|h| format!(" ({})", h.describe()))
                                .unwrap_or_default()
                        );
                        found = true;
                    }
                }
            }
            if !found {
                return Err(Error::new(
                    Kind::NotFound,
                    format!("no lock or writer marker matches {t:?}"),
                ));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
