//! Helpers shared by the integration tests: repositories with a fast KDF, backup and restore
//! with test settings, running `agentctl`, and small file-system utilities. Fixture trees
//! live in [`fixture`], tree comparison in [`compare`], hand-made (hostile) trees in
//! [`craft`], a trap that acts when another process opens a file in [`lease`].
//!
//! Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod compare;
pub mod craft;
pub mod fixture;
pub mod lease;

use hostagent::backup::{self, BackupOptions, BackupReport, ParentChoice};
use hostagent::repo::{InitOptions, KdfParams, Repository, Snapshot};
use hostagent::restore::{self, RestoreOptions, RestoreReport};
use hostagent::store::{CountingStore, LocalStore, ObjectStore};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

pub const PASSWORD: &[u8] = b"test password: correct horse battery staple";
pub const HOST: &str = "test-host";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True (after saying why) when a test that needs root runs without it.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipped {test}: needs root (owners, device nodes, capabilities, mounts)");
    true
}

/// A temporary directory that other users can traverse (tempfile makes them 0700), for
/// tests that run `agentctl` as an unprivileged user.
pub fn tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("hostagent-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

pub fn fast_init() -> InitOptions {
    InitOptions {
        kdf: KdfParams::insecure_fast(),
        ..Default::default()
    }
}

pub fn init_repo(path: &Path) -> Repository {
    Repository::init(Arc::new(LocalStore::new(path)), PASSWORD, fast_init()).unwrap()
}

pub fn open_repo(path: &Path) -> Repository {
    Repository::open(Arc::new(LocalStore::new(path)), PASSWORD).unwrap()
}

/// Opens a repository through a [`CountingStore`]; the returned copy shares the counters.
pub fn open_counting(path: &Path) -> (Repository, CountingStore<LocalStore>) {
    let store = CountingStore::new(LocalStore::new(path));
    let repo = Repository::open(Arc::new(store.clone()) as Arc<dyn ObjectStore>, PASSWORD).unwrap();
    (repo, store)
}

pub fn backup_options(paths: &[&Path]) -> BackupOptions {
    let mut opts = BackupOptions::new(paths.iter().map(|p| p.to_path_buf()).collect());
    opts.hostname = HOST.to_string();
    opts.threads = 2;
    opts
}

pub fn snapshot(repo: &Repository, paths: &[&Path]) -> BackupReport {
    backup::backup(repo, &backup_options(paths)).unwrap()
}

pub fn snapshot_from_scratch(repo: &Repository, paths: &[&Path]) -> BackupReport {
    let mut opts = backup_options(paths);
    opts.parent = ParentChoice::None;
    backup::backup(repo, &opts).unwrap()
}

pub fn restore_options(target: &Path, includes: &[&str], delete: bool) -> RestoreOptions {
    let mut opts = RestoreOptions::new(target);
    opts.includes = includes.iter().map(PathBuf::from).collect();
    opts.delete = delete;
    opts.threads = 2;
    opts
}

pub fn restore_to(repo: &Repository, snap: &Snapshot, target: &Path) -> RestoreReport {
    restore::restore(repo, snap, &restore_options(target, &[], false)).unwrap()
}

/// Where a source path lands when a snapshot is restored into `target`.
pub fn restored(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").unwrap())
}

/// Every object file under a repository directory (including its spool), with its bytes.
pub fn repo_files(repo_dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![repo_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(repo_dir).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// Repository keys under a prefix (`packs`, `index`, ...), relative to the repository.
pub fn objects_under(repo_dir: &Path, prefix: &str) -> Vec<PathBuf> {
    repo_files(repo_dir)
        .into_keys()
        .filter(|p| p.starts_with(prefix))
        .collect()
}

/// Paths below `dir` whose file name starts with `prefix` (e.g. restore temp files).
pub fn names_starting_with(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_name()
                .as_encoded_bytes()
                .starts_with(prefix.as_bytes())
            {
                out.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Runs a helper program and insists that it succeeds.
pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout_of(program: &str, args: &[&str]) -> String {
    String::from_utf8(run(program, args).stdout).unwrap()
}

/// A tmpfs of `size` mounted at a fresh directory, unmounted on drop.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                path.to_str().unwrap(),
            ],
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// `agentctl` with a repository and a password file; tests add the subcommand.
pub struct Agentctl {
    pub repo: PathBuf,
    pub password_file: PathBuf,
}

/// What a finished `agentctl` run produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Agentctl {
    /// Writes the password file next to the repository.
    pub fn new(dir: &Path, password: &str) -> Agentctl {
        let password_file = dir.join("password");
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        Agentctl {
            repo: dir.join("repo"),
            password_file,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentctl"));
        self.configure(&mut cmd, args);
        cmd
    }

    pub fn configure(&self, cmd: &mut Command, args: &[&str]) {
        cmd.arg("--repo")
            .arg(&self.repo)
            .arg("--password-file")
            .arg(&self.password_file)
            .arg("--quiet")
            .args(args)
            .env_remove("HOSTAGENT_PASSWORD")
            .env_remove("HOSTAGENT_PASSWORD_FILE")
            .env_remove("HOSTAGENT_REPO");
    }

    pub fn run(&self, args: &[&str]) -> Run {
        finish(self.command(args))
    }

    /// Runs and insists on exit code 0.
    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "agentctl {args:?} failed: {r:?}");
        r
    }
}

pub fn finish(mut cmd: Command) -> Run {
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every entry of a snapshot with its absolute snapshot path, in tree order.
pub fn snapshot_nodes(
    repo: &Repository,
    tree: &hostagent::repo::Id,
) -> Vec<(PathBuf, hostagent::repo::Node)> {
    fn walk(
        repo: &Repository,
        tree: &hostagent::repo::Id,
        dir: &Path,
        out: &mut Vec<(PathBuf, hostagent::repo::Node)>,
    ) {
        use std::os::unix::ffi::OsStrExt;
        for node in repo.read_tree(tree).unwrap().nodes {
            let path = dir.join(std::ffi::OsStr::from_bytes(&node.name));
            if let Some(sub) = node.subtree() {
                walk(repo, &sub, &path, out);
            }
            out.push((path, node));
        }
    }
    let mut out = Vec::new();
    walk(repo, tree, Path::new("/"), &mut out);
    out
}
