//! `agentctl`: the command line. Standalone commands open a repository directly (`--repo`);
//! this module parses arguments, dispatches, and maps errors to exit codes in one place.
//!
//! Exit codes: 0 success; 1 failure (also: `check` found damage); 2 invalid usage; 3
//! finished, but some files could not be stored or restored (listed on stderr), or `repair`
//! had to drop lost files from snapshots; 10 no repository at the location; 12 wrong
//! password; 130 cancelled.

mod access;
mod commands;
mod maint;
mod output;

use crate::error::{Error, Kind};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "agentctl",
    version,
    about = "Back up and restore host trees with hostagent"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Repository location: a directory (or local:DIR).
    #[arg(long, env = "HOSTAGENT_REPO", global = true)]
    pub repo: Option<String>,
    /// File holding the repository password (first line).
    #[arg(long, env = "HOSTAGENT_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Machine-readable output on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress display.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the repository itself.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Take a snapshot of one or more paths.
    Snapshot(SnapshotArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// List the entries of a snapshot.
    Ls(LsArgs),
    /// Show what changed between two snapshots.
    Diff(DiffArgs),
    /// Restore a snapshot, or paths of it, into a directory.
    Restore(RestoreArgs),
    /// Forget snapshots by expiry and keep rules (see docs/MAINTENANCE.md).
    Forget(maint::ForgetArgs),
    /// Delete snapshots by ID or name.
    Delete(maint::DeleteArgs),
    /// Remove data no snapshot needs; safe while other nodes keep backing up.
    Prune(maint::PruneArgs),
    /// Verify the repository's structure, and optionally its data.
    Check(maint::CheckArgs),
    /// Rebuild the index from packs and rewrite snapshots that lost data.
    Repair(maint::RepairArgs),
    /// Manage key slots (passwords).
    #[command(subcommand)]
    Key(maint::KeyCommand),
    /// Remove a maintenance lock or writer marker left by a process that is gone.
    Unlock(maint::UnlockArgs),
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create a new repository.
    Init,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Paths to back up.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Exclude paths matching a glob (repeatable): with a '/', matched against the whole
    /// path; without, against each entry's name.
    #[arg(long = "exclude")]
    pub excludes: Vec<String>,
    /// Exclude the contents of directories tagged with CACHEDIR.TAG.
    #[arg(long)]
    pub exclude_caches: bool,
    /// Host name recorded in the snapshot.
    #[arg(long)]
    pub host: Option<String>,
    /// A name for the snapshot.
    #[arg(long)]
    pub name: Option<String>,
    /// Read every file, ignoring the previous snapshot.
    #[arg(long)]
    pub force: bool,
    /// How long to keep the snapshot (90m, 72h, 30d, 2w); `agentctl forget` removes it after.
    #[arg(long)]
    pub ttl: Option<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Only snapshots of this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag.
    #[arg(long)]
    pub tag: Option<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Snapshot ID (or unique prefix), name, or "latest".
    pub snapshot: String,
    /// Only entries at or below this path of the snapshot.
    pub path: Option<PathBuf>,
    /// Show mode, owner, size and modification time.
    #[arg(long, short)]
    pub long: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot ID (or unique prefix), name, or "latest".
    pub snapshot: String,
    /// Directory to restore into ("/" restores to the original place).
    #[arg(long)]
    pub target: PathBuf,
    /// Restore only this snapshot path and what is below it (repeatable).
    #[arg(long = "include")]
    pub includes: Vec<PathBuf>,
    /// Also remove entries of the target that the snapshot does not have.
    #[arg(long)]
    pub delete: bool,
}

/// Parses the command line, runs the command, and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(&cli) {
        Ok(code) => code,
        Err(e) => {
            if cli.global.json {
                let msg =
                    serde_json::json!({"error": e.message(), "kind": format!("{:?}", e.kind())});
                println!("{msg}");
            }
            eprintln!("agentctl: {e}");
            exit_code(&e)
        }
    }
}

pub fn exit_code(e: &Error) -> ExitCode {
    ExitCode::from(match e.kind() {
        Kind::NoRepository => 10,
        Kind::WrongPassword => 12,
        Kind::Cancelled => 130,
        _ => 1,
    })
}

/// Finished with per-file errors.
pub const EXIT_PARTIAL: u8 = 3;
