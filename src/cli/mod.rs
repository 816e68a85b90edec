//! `agentctl`: the command line. With `--repo`, commands open a repository directly
//! (standalone); without it, they are requests to agentd over its socket (`--socket`), and
//! the daemon does the work ([`client`]). This module parses arguments, dispatches, and maps
//! errors to exit codes in one place.
//!
//! Exit codes: 0 success; 1 failure (also: `check` found damage); 2 invalid usage; 3
//! finished, but some files could not be stored or restored (listed on stderr), or `repair`
//! had to drop lost files from snapshots; 10 no repository at the location; 11 agentd
//! cannot be reached; 12 wrong password; 13 agentd refused the caller; 130 cancelled.

mod access;
pub mod client;
mod commands;
mod maint;
mod node;
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
    /// Repository location: a directory (or local:DIR), or s3://BUCKET/PREFIX.
    #[arg(long, env = "HOSTAGENT_REPO", global = true)]
    pub repo: Option<String>,
    #[command(flatten)]
    pub s3: S3Args,
    /// File holding the repository password (first line).
    #[arg(long, env = "HOSTAGENT_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// agentd's socket, used when no --repo is given.
    #[arg(
        long,
        env = "HOSTAGENT_SOCKET",
        global = true,
        default_value = "/run/hostagent/agent.sock"
    )]
    pub socket: PathBuf,
    /// Machine-readable output on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress display.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

/// How to reach an s3:// repository.
#[derive(Debug, Args, Default)]
pub struct S3Args {
    /// S3 endpoint URL, e.g. https://minio.example:9000.
    #[arg(long, env = "HOSTAGENT_S3_ENDPOINT", global = true, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Region the bucket lives in (the server's configured region).
    #[arg(
        long,
        env = "HOSTAGENT_S3_REGION",
        global = true,
        value_name = "REGION"
    )]
    pub s3_region: Option<String>,
    /// Path-style requests (endpoint/bucket/key), as MinIO and Garage expect.
    #[arg(long, env = "HOSTAGENT_S3_PATH_STYLE", global = true)]
    pub s3_path_style: bool,
    /// PEM file of a CA to trust for the endpoint's certificate.
    #[arg(long, env = "HOSTAGENT_S3_CA_FILE", global = true, value_name = "FILE")]
    pub s3_ca_file: Option<PathBuf>,
    /// Accept any TLS certificate (test setups only: allows interception).
    #[arg(long, env = "HOSTAGENT_S3_INSECURE", global = true)]
    pub s3_insecure: bool,
    /// AWS-format credentials file ([default] aws_access_key_id=... aws_secret_access_key=...);
    /// without it, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are used.
    #[arg(
        long,
        env = "HOSTAGENT_S3_CREDENTIALS_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub s3_credentials_file: Option<PathBuf>,
    /// Uploads and downloads in flight at once.
    #[arg(
        long,
        env = "HOSTAGENT_S3_CONNECTIONS",
        global = true,
        value_name = "N"
    )]
    pub s3_connections: Option<usize>,
    /// Local cache of index and tree data for S3 repositories [default: ~/.cache/hostagent].
    #[arg(long, env = "HOSTAGENT_CACHE_DIR", global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not cache index and tree data locally.
    #[arg(long, global = true)]
    pub no_cache: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the repository itself.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Take a snapshot: of the given paths (with --repo), or of the configured ones by agentd.
    Snapshot(SnapshotArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// Show agentd's state: repository, running operation, last successes, schedules.
    Status,
    /// List agentd's operations, newest first.
    Operations(OperationsArgs),
    /// Follow an operation of agentd until it ends.
    Watch(OperationArg),
    /// Cancel an operation of agentd.
    Cancel(OperationArg),
    /// List the entries of a snapshot.
    Ls(LsArgs),
    /// Show what changed between two snapshots.
    Diff(DiffArgs),
    /// Restore a snapshot, or paths of it, into a directory.
    Restore(RestoreArgs),
    /// Bring a node's tree back: stop units, restore with an atomic swap, run post-restore
    /// steps, start the units again.
    NodeRestore(NodeRestoreArgs),
    /// Ask agentd to run maintenance: forget by its configured keep policy and by expiry,
    /// prune, and check (the tasks and policy are agentd's [maintenance] configuration).
    Maintenance(MaintenanceArgs),
    /// Forget snapshots by expiry and keep rules (see docs/MAINTENANCE.md).
    Forget(maint::ForgetArgs),
    /// Delete snapshots by ID or name (directly with --repo, else through agentd).
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
pub struct OperationsArgs {
    /// At most this many (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct OperationArg {
    /// The operation ID (as `agentctl operations` lists it).
    pub operation: String,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Paths to back up (with --repo; agentd backs up its configured paths).
    pub paths: Vec<PathBuf>,
    /// With agentd: wait for the snapshot to finish, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// With agentd: a retry with the same ID returns the same operation.
    #[arg(long)]
    pub request_id: Option<String>,
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
    /// How long to keep the snapshot (90m, 72h, 30d, 2w); `agentctl forget` removes it after
    /// (with agentd too).
    #[arg(long)]
    pub ttl: Option<String>,
}

#[derive(Debug, Args)]
pub struct MaintenanceArgs {
    /// A task to run (repeatable; they run as forget, prune, check); default: the tasks of
    /// agentd's [maintenance] configuration.
    #[arg(long = "task", value_enum, value_name = "TASK")]
    pub tasks: Vec<MaintenanceTaskArg>,
    /// Report what would be forgotten and pruned; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// The check's share of pack data to read and verify: 10%, 5GiB, all, or none
    /// (structure only); default: agentd's check_read_data_subset.
    #[arg(long, value_name = "SUBSET")]
    pub read_data_subset: Option<String>,
    /// Wait for the maintenance to finish and print what it did.
    #[arg(long)]
    pub wait: bool,
    /// A retry with the same ID returns the same operation.
    #[arg(long)]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MaintenanceTaskArg {
    /// Remove expired snapshots and those the keep policy does not keep.
    Forget,
    /// Delete the data no snapshot needs.
    Prune,
    /// Verify the repository's structure and a share of its data.
    Check,
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
    /// Snapshot ID (or unique prefix), name, or "latest": the latest snapshot of this host
    /// (or of --host).
    pub snapshot: String,
    /// With "latest": take the latest snapshot of this host instead of this one's.
    #[arg(long)]
    pub host: Option<String>,
    /// Only entries at or below this path of the snapshot.
    pub path: Option<PathBuf>,
    /// Show mode, owner, size and modification time.
    #[arg(long, short)]
    pub long: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Snapshot ID (or unique prefix), name, or "latest" (this host's, or --host's).
    pub from: String,
    /// Snapshot ID (or unique prefix), name, or "latest" (this host's, or --host's).
    pub to: String,
    /// Whose latest snapshot "latest" is, instead of this host's.
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot ID (or unique prefix), name, or "latest": the latest snapshot of this host
    /// (or of --host), not counting the safety snapshots a node restore takes.
    pub snapshot: String,
    /// With "latest": take the latest snapshot of this host instead of this one's.
    #[arg(long)]
    pub host: Option<String>,
    /// Directory to restore into ("/" restores to the original place).
    #[arg(long)]
    pub target: PathBuf,
    /// Restore only this snapshot path and what is below it (repeatable).
    #[arg(long = "include")]
    pub includes: Vec<PathBuf>,
    /// Also remove entries of the target that the snapshot does not have.
    #[arg(long)]
    pub delete: bool,
    /// With agentd: wait for the restore to finish, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// With agentd: a retry with the same ID returns the same operation.
    #[arg(long)]
    pub request_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct NodeRestoreArgs {
    /// Snapshot ID (or unique prefix), name, or "latest".
    #[arg(required_unless_present = "recover")]
    pub snapshot: Option<String>,
    /// The tree to bring back.
    #[arg(long, default_value = "/var/onprem")]
    pub target: PathBuf,
    /// With "latest": take the latest Completed snapshot of this host (cross-node restore).
    #[arg(long)]
    pub source_host: Option<String>,
    /// The snapshot path to restore from, when it differs from --target (drills).
    #[arg(long)]
    pub source_path: Option<PathBuf>,
    /// Restore only these directories below the target (repeatable).
    #[arg(long = "include")]
    pub includes: Vec<PathBuf>,
    /// Skip the pre-restore safety snapshot of the current tree.
    #[arg(long)]
    pub no_safety_snapshot: bool,
    /// Show what would be added, changed and removed, and which units would stop; change
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With agentd: a retry with the same ID returns the same operation.
    #[arg(long)]
    pub request_id: Option<String>,
    /// With agentd: print the operation and return instead of following it.
    #[arg(long)]
    pub no_wait: bool,
    /// With --repo: units to stop during the restore, if active (repeatable; default
    /// autofs.service and nfs-server.service). agentd takes them from [node_restore].
    #[arg(long = "unit")]
    pub units: Vec<String>,
    /// With --repo: post-restore command, run with sh -c (repeatable; default: exportfs
    /// -ra).
    #[arg(long = "post-exec")]
    pub post_exec: Vec<String>,
    /// With --repo: run no post-restore command.
    #[arg(long, conflicts_with = "post_exec")]
    pub no_post_steps: bool,
    /// With --repo: seconds each post-restore command may take [default: 60].
    #[arg(long)]
    pub post_timeout: Option<u64>,
    /// With --repo: seconds a unit may take to stop or start [default: 90].
    #[arg(long)]
    pub unit_timeout: Option<u64>,
    /// With --repo: where the record of stopped units is kept [default: /var/lib/hostagent].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// With --repo: D-Bus address of the systemd manager (default: the system bus).
    #[arg(long)]
    pub systemd_address: Option<String>,
    /// With --repo: start the units an interrupted node restore left stopped, then exit
    /// (agentd does this itself when it starts).
    #[arg(long)]
    pub recover: bool,
}

/// Parses the command line, runs the command, and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.global.repo.is_none() {
        return client::run(&cli);
    }
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
