//! agentd's configuration: a TOML file (documented in config/agentd.example.toml), read once
//! at start and checked whole before anything runs.
//!
//! Every table refuses unknown keys, so a misspelt key is an error instead of a silently
//! ignored setting. Syntax and type errors come from the TOML parser with the line and the
//! key; the checks that follow parsing name the key (`schedules[1].cron`) and the file.
//! Each kind of repository location is its own optional table under `[repository]`
//! (`local`, `s3`); a new kind adds a table and a case in [`RepositoryConfig::location`].

use super::record::MaintenanceTask;
use crate::backup::Excludes;
use crate::error::{Error, Result};
use crate::maintenance::check::DataSubset;
use crate::maintenance::retention::{GroupBy, KeepPolicy};
use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG: &str = "/etc/hostagent/agentd.toml";
pub const DEFAULT_SOCKET: &str = "/run/hostagent/agent.sock";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The node's name in snapshot names and hostnames; the host name when absent.
    #[serde(default)]
    pub node: Option<String>,
    pub repository: RepositoryConfig,
    pub backup: BackupConfig,
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub schedules: Vec<Schedule>,
    #[serde(default)]
    pub hooks: Hooks,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub change_hints: ChangeHints,
    #[serde(default)]
    pub node_restore: NodeRestoreConfig,
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// A repository in a local directory.
    #[serde(default)]
    pub local: Option<LocalRepository>,
    /// A repository in an S3 bucket (MinIO, Garage, AWS).
    #[serde(default)]
    pub s3: Option<S3Repository>,
    /// A file whose first line is the repository password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The name of a systemd credential (LoadCredential=) holding the password: the file
    /// `$CREDENTIALS_DIRECTORY/<name>`.
    #[serde(default)]
    pub password_credential: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRepository {
    pub path: PathBuf,
}

/// `[repository.s3]`: the bucket and prefix, the server, and where the keys are (an
/// AWS-format credentials file, as a systemd credential or a plain file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Repository {
    /// `s3://BUCKET/PREFIX`.
    pub url: String,
    /// `https://minio.example:9000`.
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// `endpoint/bucket/key` addressing, what MinIO expects without a wildcard domain.
    #[serde(default)]
    pub path_style: bool,
    /// Extra PEM certificates to trust (a private CA), besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The name of a systemd credential holding the AWS-format credentials file.
    #[serde(default)]
    pub credentials_credential: Option<String>,
    /// An AWS-format credentials file readable by root only.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// The section of the credentials file to use.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Requests in flight at once.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Where index and tree objects are cached; `$CACHE_DIRECTORY` (systemd's
    /// CacheDirectory=) or /var/cache/hostagent when absent.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

fn default_region() -> String {
    crate::store::S3Config::DEFAULT_REGION.to_string()
}

fn default_profile() -> String {
    "default".to_string()
}

fn default_connections() -> usize {
    4
}

/// Where the repository is, once the configuration has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3 { url: String, endpoint: String },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "local:{}", p.display()),
            Location::S3 { url, endpoint } => write!(f, "{url} at {endpoint}"),
        }
    }
}

/// A file named either by a systemd credential or by a path.
fn credential_path(credential: Option<&str>, file: Option<&PathBuf>, key: &str) -> Result<PathBuf> {
    if let Some(p) = file {
        return Ok(p.clone());
    }
    let name = credential.expect("validated: a credential source is set");
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) => Ok(Path::new(&dir).join(name)),
        None => Err(Error::invalid(format!(
            "{key} = {name:?} needs $CREDENTIALS_DIRECTORY, which is not set: run agentd under \
             systemd with LoadCredential={name}:FILE, or name a file instead"
        ))),
    }
}

impl S3Repository {
    /// The S3 client settings, with the keys read from their file now (a rotated key is
    /// picked up by the next operation).
    pub fn client_config(&self) -> Result<crate::store::S3Config> {
        let path = credential_path(
            self.credentials_credential.as_deref(),
            self.credentials_file.as_ref(),
            "repository.s3.credentials_credential",
        )?;
        let credentials = crate::store::S3Credentials::from_file(&path, &self.profile)?;
        let location = crate::store::S3Location::parse(&self.url)?;
        let mut c = crate::store::S3Config::new(&self.endpoint, location, credentials);
        c.region = self.region.clone();
        c.path_style = self.path_style;
        c.ca_file = self.ca_file.clone();
        c.connections = self.connections;
        c.validate()?;
        Ok(c)
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| {
            std::env::var_os("CACHE_DIRECTORY")
                // CacheDirectory= may list several, separated by ':'.
                .and_then(|d| {
                    d.to_str()
                        .and_then(|d| d.split(':').next())
                        .map(PathBuf::from)
                })
                .unwrap_or_else(|| PathBuf::from("/var/cache/hostagent"))
        })
    }
}

impl RepositoryConfig {
    pub fn location(&self) -> Location {
        match (&self.local, &self.s3) {
            (Some(local), _) => Location::Local(local.path.clone()),
            (None, Some(s3)) => Location::S3 {
                url: s3.url.clone(),
                endpoint: s3.endpoint.clone(),
            },
            (None, None) => unreachable!("validated: a repository location is set"),
        }
    }

    /// The password file to read: the configured file, or the credential in the directory
    /// systemd passes in `$CREDENTIALS_DIRECTORY`.
    pub fn password_path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.password_file {
            return Ok(p.clone());
        }
        credential_path(
            self.password_credential.as_deref(),
            None,
            "repository.password_credential",
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    pub paths: Vec<PathBuf>,
    #[serde(default)]
    pub excludes: Vec<String>,
    #[serde(default)]
    pub exclude_caches: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Reader and packer threads each; 0 means one per core.
    #[serde(default)]
    pub threads: usize,
    /// Retention of manual snapshots ("720h"); none when absent.
    #[serde(default)]
    pub default_ttl: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Members of this group (besides root) may use the API; the socket belongs to it.
    pub group: Option<String>,
    /// Finished operations remembered (the last success of each kind is always kept).
    pub operations_kept: usize,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            state_dir: PathBuf::from("/var/lib/hostagent"),
            group: None,
            operations_kept: 200,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub snapshot: Dur,
    pub restore: Dur,
    pub maintenance: Dur,
    /// How long, after SIGTERM or a timeout, to wait for the running operation to stop.
    pub stop_grace: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            snapshot: Dur(Duration::from_secs(6 * 3600)),
            restore: Dur(Duration::from_secs(12 * 3600)),
            maintenance: Dur(Duration::from_secs(4 * 3600)),
            stop_grace: Dur(Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub name: String,
    /// Five fields, minute hour day-of-month month day-of-week, evaluated in UTC.
    pub cron: String,
    /// Retention stamped on the snapshots it takes.
    #[serde(default)]
    pub ttl: Option<Dur>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    #[serde(default)]
    pub pre_snapshot: Vec<Hook>,
    #[serde(default)]
    pub post_snapshot: Vec<Hook>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// The program (absolute path) and its arguments; no shell is involved.
    pub argv: Vec<String>,
    #[serde(default = "default_hook_timeout")]
    pub timeout: Dur,
    #[serde(default)]
    pub on_error: OnError,
}

fn default_hook_timeout() -> Dur {
    Dur(Duration::from_secs(300))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OnError {
    /// The operation fails (Velero's default for hooks).
    #[default]
    Fail,
    /// The failure is recorded and the operation goes on.
    Continue,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Loopback address to serve Prometheus metrics on (`127.0.0.1:9465`); off when absent.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChangeHints {
    /// Watch the backed-up trees with inotify; a snapshot then lists only the directories
    /// in which something changed since the previous one (see `daemon::hints`).
    pub enabled: bool,
    /// Every this many snapshots, compare every entry anyway (0: never forced).
    pub full_every: u32,
}

impl Default for ChangeHints {
    fn default() -> Self {
        ChangeHints {
            enabled: false,
            full_every: 24,
        }
    }
}

/// How a node restore treats the node: which units it stops and what it runs after.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeRestoreConfig {
    /// Units stopped, if active, in this order; started again in reverse.
    pub units: Vec<String>,
    /// How long a unit may take to stop or to start.
    pub unit_timeout: Dur,
    /// Run in order once the restored tree is in place; `exportfs -ra` when absent.
    pub post_restore: Vec<PostRestoreStep>,
}

impl Default for NodeRestoreConfig {
    fn default() -> Self {
        let exportfs = crate::node_restore::PostStep::exportfs();
        NodeRestoreConfig {
            units: crate::node_restore::DEFAULT_UNITS
                .iter()
                .map(|u| u.to_string())
                .collect(),
            unit_timeout: Dur(Duration::from_secs(90)),
            post_restore: vec![PostRestoreStep {
                name: exportfs.name,
                argv: vec!["/usr/sbin/exportfs".into(), "-ra".into()],
                timeout: Dur(exportfs.timeout),
            }],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostRestoreStep {
    /// Names the step in failure reasons: "{name} failed".
    pub name: String,
    /// The program (absolute path) and its arguments; no shell is involved.
    pub argv: Vec<String>,
    #[serde(default = "default_post_restore_timeout")]
    pub timeout: Dur,
}

fn default_post_restore_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}

impl NodeRestoreConfig {
    pub fn post_steps(&self) -> Vec<crate::node_restore::PostStep> {
        self.post_restore
            .iter()
            .map(|s| crate::node_restore::PostStep {
                name: s.name.clone(),
                argv: s.argv.clone(),
                timeout: s.timeout.0,
            })
            .collect()
    }
}

/// The name under which the maintenance schedule is reported (GetStatus, metrics); no
/// snapshot schedule may take it.
pub const MAINTENANCE_SCHEDULE: &str = "maintenance";

/// `[maintenance]`: what a maintenance operation does (retention, prune, check) and when
/// agentd runs one by itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Five fields, evaluated in UTC, like a snapshot schedule; no scheduled maintenance
    /// when absent.
    pub cron: Option<String>,
    /// The tasks of scheduled runs, and of requests that name none.
    pub tasks: Vec<MaintenanceTask>,
    /// The keep policy (see `maintenance::retention`); expired snapshots go regardless.
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    pub keep_tags: Vec<String>,
    /// "host,tags", "host", "host,paths", "" (one group).
    pub group_by: String,
    /// Apply the policy to every host's snapshots, not only this node's.
    pub all_hosts: bool,
    /// The check's share of pack data: "10%", "5GiB", "all"; structure only when absent.
    pub check_read_data_subset: Option<String>,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            cron: None,
            tasks: vec![MaintenanceTask::Forget, MaintenanceTask::Prune],
            keep_last: 0,
            keep_hourly: 0,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            keep_yearly: 0,
            keep_tags: Vec::new(),
            group_by: "host,tags".to_string(),
            all_hosts: false,
            check_read_data_subset: None,
        }
    }
}

impl MaintenanceConfig {
    pub fn keep_policy(&self) -> KeepPolicy {
        KeepPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            tags: self.keep_tags.clone(),
        }
    }

    pub fn group_by(&self) -> GroupBy {
        GroupBy::parse(&self.group_by).expect("validated at load")
    }
}

/// A check's data share as written in the configuration or a request: "10%", "5GiB",
/// "all", or "none" (structure only, returned as None).
pub fn parse_read_data_subset(s: &str) -> std::result::Result<Option<DataSubset>, String> {
    if s.trim() == "none" {
        return Ok(None);
    }
    DataSubset::parse(s).map(Some).map_err(|_| {
        format!(
            "{s:?} is not a share of the data: give a percentage (\"10%\"), a size (\"5GiB\"), \
             \"all\" or \"none\""
        )
    })
}

/// A systemd unit name: `name.type`, of the characters systemd allows.
fn check_unit_name(u: &str) -> std::result::Result<(), String> {
    let ok = u.len() <= 255
        && u.rsplit_once('.')
            .is_some_and(|(n, t)| !n.is_empty() && !t.is_empty())
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{u:?} is not a unit name: write it in full, like \"autofs.service\""
        ))
    }
}

/// A duration written for people: "30s", "5m", "720h", "1h 30m".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses "30s", "720h" and the like; the error says what was wrong and what is expected.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if d.is_zero() => Err(format!("duration {s:?} must be greater than zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "{s:?} is not a duration ({e}); write it like \"30s\", \"5m\" or \"720h\""
        )),
    }
}

impl Config {
    /// Reads and checks the file; the error names the file and the key.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::io(
                format!("cannot read the configuration {}", path.display()),
                e,
            )
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let config: Config = toml::from_str(text)
            .map_err(|e| Error::invalid(format!("{}: {}", path.display(), e.to_string().trim())))?;
        config.validate().map_err(|(key, problem)| {
            Error::invalid(format!("{}: {key}: {problem}", path.display()))
        })?;
        Ok(config)
    }

    /// The node's name: configured, or the host name.
    pub fn node(&self) -> String {
        self.node.clone().unwrap_or_else(crate::backup::hostname)
    }

    fn validate(&self) -> std::result::Result<(), (String, String)> {
        let err = |key: &str, problem: String| Err((key.to_string(), problem));
        if let Some(n) = &self.node
            && (n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'))
        {
            return err(
                "node",
                format!("{n:?} is not a node name: use letters, digits, '-', '_' and '.'"),
            );
        }
        let r = &self.repository;
        match (&r.local, &r.s3) {
            (None, None) => {
                return err(
                    "repository",
                    "no repository location: add a [repository.local] table with path = \"DIR\" \
                     or a [repository.s3] table"
                        .into(),
                );
            }
            (Some(_), Some(_)) => {
                return err(
                    "repository",
                    "set only one of [repository.local] and [repository.s3]".into(),
                );
            }
            (Some(l), None) if !l.path.is_absolute() => {
                return err(
                    "repository.local.path",
                    format!("{} must be an absolute path", l.path.display()),
                );
            }
            (None, Some(s3)) => validate_s3(s3)?,
            _ => {}
        }
        match (&r.password_file, &r.password_credential) {
            (None, None) => {
                return err(
                    "repository",
                    "no password source: set password_file = \"FILE\" or password_credential = \
                     \"NAME\" (a systemd credential)"
                        .into(),
                );
            }
            (Some(_), Some(_)) => {
                return err(
                    "repository",
                    "set only one of password_file and password_credential".into(),
                );
            }
            (Some(p), None) if !p.is_absolute() => {
                return err(
                    "repository.password_file",
                    format!("{} must be an absolute path", p.display()),
                );
            }
            (None, Some(n)) if n.is_empty() || n.contains('/') => {
                return err(
                    "repository.password_credential",
                    format!("{n:?} must be a credential name, without '/'"),
                );
            }
            _ => {}
        }
        let b = &self.backup;
        if b.paths.is_empty() {
            return err(
                "backup.paths",
                "no paths to back up: list at least one directory".into(),
            );
        }
        for (i, p) in b.paths.iter().enumerate() {
            if !p.is_absolute() {
                return err(
                    &format!("backup.paths[{i}]"),
                    format!("{} must be an absolute path", p.display()),
                );
            }
        }
        if let Err(e) = Excludes::new(&b.excludes, b.exclude_caches) {
            return err("backup.excludes", e.message().to_string());
        }
        for (i, t) in b.tags.iter().enumerate() {
            if let Err(problem) = check_tag(t) {
                return err(&format!("backup.tags[{i}]"), problem);
            }
        }
        let d = &self.daemon;
        if !d.socket.is_absolute() {
            return err(
                "daemon.socket",
                format!("{} must be an absolute path", d.socket.display()),
            );
        }
        if !d.state_dir.is_absolute() {
            return err(
                "daemon.state_dir",
                format!("{} must be an absolute path", d.state_dir.display()),
            );
        }
        if let Some(g) = &d.group {
            match nix::unistd::Group::from_name(g) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return err(
                        "daemon.group",
                        format!("there is no group {g:?} on this host: create it or fix the name"),
                    );
                }
                Err(e) => return err("daemon.group", format!("cannot look up {g:?}: {e}")),
            }
        }
        if d.operations_kept == 0 {
            return err("daemon.operations_kept", "must be at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.schedules.iter().enumerate() {
            let key = format!("schedules[{i}]");
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return err(
                    &format!("{key}.name"),
                    format!(
                        "{:?} is not a schedule name: use letters, digits, '-' and '_'",
                        s.name
                    ),
                );
            }
            if !names.insert(&s.name) {
                return err(
                    &format!("{key}.name"),
                    format!("another schedule is already named {:?}", s.name),
                );
            }
            if s.name == MAINTENANCE_SCHEDULE {
                return err(
                    &format!("{key}.name"),
                    format!(
                        "{MAINTENANCE_SCHEDULE:?} names the maintenance schedule ([maintenance] \
                         cron); give this snapshot schedule another name"
                    ),
                );
            }
            if let Err(problem) = super::schedule::parse_cron(&s.cron) {
                return err(&format!("{key}.cron"), problem);
            }
        }
        for (stage, hooks) in [
            ("pre_snapshot", &self.hooks.pre_snapshot),
            ("post_snapshot", &self.hooks.post_snapshot),
        ] {
            for (i, h) in hooks.iter().enumerate() {
                let key = format!("hooks.{stage}[{i}].argv");
                match h.argv.first() {
                    None => return err(&key, "empty: give the program and its arguments".into()),
                    Some(p) if !Path::new(p).is_absolute() => {
                        return err(
                            &key,
                            format!("the program {p:?} must be an absolute path (no $PATH lookup)"),
                        );
                    }
                    _ => {}
                }
            }
        }
        let nr = &self.node_restore;
        for (i, u) in nr.units.iter().enumerate() {
            if let Err(problem) = check_unit_name(u) {
                return err(&format!("node_restore.units[{i}]"), problem);
            }
        }
        let mut step_names = std::collections::HashSet::new();
        for (i, s) in nr.post_restore.iter().enumerate() {
            let key = format!("node_restore.post_restore[{i}]");
            if s.name.trim().is_empty() || s.name.chars().any(|c| c.is_control()) {
                return err(
                    &format!("{key}.name"),
                    "must name the step (it is reported as \"<name> failed\")".into(),
                );
            }
            if !step_names.insert(&s.name) {
                return err(
                    &format!("{key}.name"),
                    format!("another post-restore step is already named {:?}", s.name),
                );
            }
            match s.argv.first() {
                None => {
                    return err(
                        &format!("{key}.argv"),
                        "empty: give the program and its arguments".into(),
                    );
                }
                Some(p) if !Path::new(p).is_absolute() => {
                    return err(
                        &format!("{key}.argv"),
                        format!("the program {p:?} must be an absolute path (no $PATH lookup)"),
                    );
                }
                _ => {}
            }
        }
        self.validate_maintenance()?;
        if let Some(addr) = self.metrics.listen
            && !addr.ip().is_loopback()
        {
            return err(
                "metrics.listen",
                format!(
                    "{addr} is not a loopback address: metrics are served on 127.0.0.1 or [::1] \
                     only (put a proxy in front to expose them)"
                ),
            );
        }
        Ok(())
    }

    fn validate_maintenance(&self) -> std::result::Result<(), (String, String)> {
        let err = |key: &str, problem: String| Err((format!("maintenance.{key}"), problem));
        let m = &self.maintenance;
        if let Some(cron) = &m.cron
            && let Err(problem) = super::schedule::parse_cron(cron)
        {
            return err("cron", problem);
        }
        if m.tasks.is_empty() {
            return err(
                "tasks",
                "empty: name the tasks of a maintenance, among \"forget\", \"prune\" and \
                 \"check\""
                    .into(),
            );
        }
        for (i, t) in m.tasks.iter().enumerate() {
            if m.tasks[..i].contains(t) {
                return err("tasks", format!("{:?} is listed twice", t.as_str()));
            }
        }
        if GroupBy::parse(&m.group_by).is_err() {
            return err(
                "group_by",
                format!(
                    "{:?}: list the fields to group snapshots by, among host, tags and paths, \
                     comma-separated (\"\" puts every snapshot in one group)",
                    m.group_by
                ),
            );
        }
        for (i, t) in m.keep_tags.iter().enumerate() {
            if let Err(problem) = check_tag(t) {
                return err(&format!("keep_tags[{i}]"), problem);
            }
        }
        if let Some(s) = &m.check_read_data_subset
            && let Err(problem) = parse_read_data_subset(s)
        {
            return err("check_read_data_subset", problem);
        }
        Ok(())
    }

    pub fn timeout(&self, kind: super::record::OpKind) -> Duration {
        use super::record::OpKind;
        match kind {
            OpKind::Snapshot => self.timeouts.snapshot.0,
            OpKind::Restore | OpKind::NodeRestore => self.timeouts.restore.0,
            OpKind::Maintenance => self.timeouts.maintenance.0,
        }
    }
}

fn validate_s3(s3: &S3Repository) -> std::result::Result<(), (String, String)> {
    let err = |key: &str, problem: String| Err((format!("repository.s3.{key}"), problem));
    if let Err(e) = crate::store::S3Location::parse(&s3.url) {
        return err("url", e.message().to_string());
    }
    let https = s3.endpoint.starts_with("https://");
    if !https && !s3.endpoint.starts_with("http://") {
        return err(
            "endpoint",
            format!(
                "{:?}: give a URL such as https://minio.example:9000",
                s3.endpoint
            ),
        );
    }
    if s3.region.is_empty() {
        return err("region", "empty".into());
    }
    if let Some(ca) = &s3.ca_file {
        if !ca.is_absolute() {
            return err(
                "ca_file",
                format!("{} must be an absolute path", ca.display()),
            );
        }
        if !https {
            return err("ca_file", "needs an https:// endpoint".into());
        }
    }
    match (&s3.credentials_credential, &s3.credentials_file) {
        (None, None) => err(
            "credentials_credential",
            "no S3 keys: set credentials_credential = \"NAME\" (a systemd credential) or \
             credentials_file = \"FILE\""
                .into(),
        ),
        (Some(_), Some(_)) => err(
            "credentials_file",
            "set only one of credentials_credential and credentials_file".into(),
        ),
        (Some(n), None) if n.is_empty() || n.contains('/') => err(
            "credentials_credential",
            format!("{n:?} must be a credential name, without '/'"),
        ),
        (None, Some(p)) if !p.is_absolute() => err(
            "credentials_file",
            format!("{} must be an absolute path", p.display()),
        ),
        _ if s3.connections == 0 => err("connections", "must be at least 1".into()),
        _ if s3.cache_dir.as_ref().is_some_and(|d| !d.is_absolute()) => {
            err("cache_dir", "must be an absolute path".into())
        }
        _ => Ok(()),
    }
}

/// Tags: printable, no commas (the CLI lists them comma-separated).
pub fn check_tag(t: &str) -> std::result::Result<(), String> {
    if t.is_empty() || t.len() > 128 || t.chars().any(|c| c.is_control() || c == ',') {
        Err(format!(
            "{t:?} is not a tag: 1 to 128 printable characters, no commas"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[repository]
password_file = "/etc/hostagent/password"
[repository.local]
path = "/srv/repo"
[backup]
paths = ["/var/onprem"]
"#;

    fn parse(extra: &str) -> Result<Config> {
        Config::parse(&format!("{MINIMAL}{extra}"), Path::new("/etc/a.toml"))
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.daemon.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(c.repository.location(), Location::Local("/srv/repo".into()));
        assert_eq!(c.timeouts.snapshot.0, Duration::from_secs(6 * 3600));
        assert!(c.metrics.listen.is_none());
        assert_eq!(
            c.node_restore.units,
            vec!["autofs.service", "nfs-server.service"]
        );
        let steps = c.node_restore.post_steps();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].name, "nfs exports recreation");
        assert_eq!(steps[0].argv, vec!["/usr/sbin/exportfs", "-ra"]);
    }

    #[test]
    fn node_restore_steps_can_be_replaced_or_removed() {
        let c = parse(
            "[node_restore]\nunits = [\"autofs.service\"]\nunit_timeout = \"2m\"\n\
             [[node_restore.post_restore]]\nname = \"reload\"\nargv = [\"/bin/true\"]\n",
        )
        .unwrap();
        assert_eq!(c.node_restore.units, vec!["autofs.service"]);
        assert_eq!(c.node_restore.unit_timeout.0, Duration::from_secs(120));
        let steps = c.node_restore.post_steps();
        assert_eq!(steps[0].name, "reload");
        assert_eq!(steps[0].timeout, Duration::from_secs(60));
        let none = parse("[node_restore]\npost_restore = []\n").unwrap();
        assert!(none.node_restore.post_steps().is_empty());
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let text = include_str!("../../config/agentd.example.toml")
            // The example's group need not exist on the machine running the tests.
            .replace("group = \"hostagent\"", "");
        let c = Config::parse(&text, Path::new("agentd.example.toml")).unwrap();
        assert_eq!(c.schedules.len(), 2);
        assert_eq!(
            c.schedules[0].ttl,
            Some(Dur(Duration::from_secs(720 * 3600)))
        );
        assert_eq!(c.hooks.post_snapshot[0].on_error, OnError::Continue);
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9465".parse().unwrap()));
        let m = &c.maintenance;
        assert_eq!(m.cron.as_deref(), Some("30 4 * * *"));
        assert_eq!(
            m.tasks,
            [
                MaintenanceTask::Forget,
                MaintenanceTask::Prune,
                MaintenanceTask::Check
            ]
        );
        let p = m.keep_policy();
        assert_eq!((p.last, p.daily, p.weekly, p.monthly), (3, 7, 4, 6));
        assert_eq!(m.group_by(), GroupBy::default());
    }

    #[test]
    fn maintenance_defaults_forget_expired_snapshots_and_prune_unscheduled() {
        let c = parse("").unwrap();
        let m = &c.maintenance;
        assert!(m.cron.is_none());
        assert_eq!(m.tasks, [MaintenanceTask::Forget, MaintenanceTask::Prune]);
        assert!(m.keep_policy().is_empty());
        assert!(!m.all_hosts);
        assert!(m.check_read_data_subset.is_none());
        let c =
            parse("[maintenance]\ngroup_by = \"\"\ncheck_read_data_subset = \"none\"\n").unwrap();
        assert!(!c.maintenance.group_by().host);
    }

    const S3: &str = r#"
[repository]
password_credential = "repo-password"
[repository.s3]
url = "s3://backups/cluster-a/node-1"
endpoint = "https://minio.example:9000"
path_style = true
credentials_file = "/etc/hostagent/s3-credentials"
[backup]
paths = ["/var/onprem"]
"#;

    #[test]
    fn s3_repository_takes_defaults_and_reads_its_keys_file() {
        let c = Config::parse(S3, Path::new("/etc/a.toml")).unwrap();
        assert_eq!(
            c.repository.location().to_string(),
            "s3://backups/cluster-a/node-1 at https://minio.example:9000"
        );
        let s3 = c.repository.s3.as_ref().unwrap();
        assert_eq!(s3.region, "us-east-1");
        assert_eq!(s3.profile, "default");
        // The keys are read when a store is made, and a missing file says which file.
        let e = s3.client_config().unwrap_err().to_string();
        assert!(e.contains("/etc/hostagent/s3-credentials"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(
            &keys,
            "[default]\naws_access_key_id=AK\naws_secret_access_key=SK\n",
        )
        .unwrap();
        let text = S3.replace("/etc/hostagent/s3-credentials", keys.to_str().unwrap());
        let c = Config::parse(&text, Path::new("/etc/a.toml")).unwrap();
        let client = c.repository.s3.unwrap().client_config().unwrap();
        assert_eq!(client.credentials.access_key_id, "AK");
        assert!(client.path_style);
        assert_eq!(client.location.prefix, "cluster-a/node-1");
    }

    #[test]
    fn bad_s3_settings_name_their_key() {
        for (from, to, key) in [
            (
                "url = \"s3://backups/cluster-a/node-1\"",
                "url = \"backups\"",
                "repository.s3.url",
            ),
            (
                "endpoint = \"https://minio.example:9000\"",
                "endpoint = \"minio:9000\"",
                "repository.s3.endpoint",
            ),
            (
                "credentials_file = \"/etc/hostagent/s3-credentials\"",
                "",
                "repository.s3.credentials_credential",
            ),
            (
                "credentials_file = \"/etc/hostagent/s3-credentials\"",
                "credentials_file = \"/k\"\ncredentials_credential = \"k\"",
                "repository.s3.credentials_file",
            ),
            (
                "path_style = true",
                "ca_file = \"ca.pem\"",
                "repository.s3.ca_file",
            ),
            (
                "[backup]",
                "[repository.local]\npath = \"/srv/repo\"\n[backup]",
                "set only one of [repository.local] and [repository.s3]",
            ),
        ] {
            let text = S3.replace(from, to);
            let e = Config::parse(&text, Path::new("/etc/a.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{to}: {e}");
        }
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = parse("[daemon]\nsokcet = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/a.toml"), "{e}");
        assert!(e.contains("sokcet"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (extra, key) in [
            (
                "[[schedules]]\nname = \"n\"\ncron = \"0 25 * * *\"\n",
                "schedules[0].cron",
            ),
            ("[metrics]\nlisten = \"0.0.0.0:9000\"\n", "metrics.listen"),
            (
                "[[hooks.pre_snapshot]]\nargv = [\"freeze\"]\n",
                "hooks.pre_snapshot[0].argv",
            ),
            ("[daemon]\nstate_dir = \"rel\"\n", "daemon.state_dir"),
            ("[daemon]\ngroup = \"no-such-group-here\"\n", "daemon.group"),
            (
                "[node_restore]\nunits = [\"autofs\"]\n",
                "node_restore.units[0]",
            ),
            (
                "[[node_restore.post_restore]]\nname = \"x\"\nargv = [\"exportfs\"]\n",
                "node_restore.post_restore[0].argv",
            ),
            ("[node_restore]\nunit_timeout = \"0s\"\n", "unit_timeout"),
            ("[maintenance]\ncron = \"daily\"\n", "maintenance.cron"),
            ("[maintenance]\ntasks = []\n", "maintenance.tasks"),
            (
                "[maintenance]\ntasks = [\"prune\", \"prune\"]\n",
                "maintenance.tasks",
            ),
            ("[maintenance]\ntasks = [\"purge\"]\n", "purge"),
            (
                "[maintenance]\ngroup_by = \"node\"\n",
                "maintenance.group_by",
            ),
            (
                "[maintenance]\nkeep_tags = [\"a,b\"]\n",
                "maintenance.keep_tags[0]",
            ),
            (
                "[maintenance]\ncheck_read_data_subset = \"lots\"\n",
                "maintenance.check_read_data_subset",
            ),
            ("[maintenance]\nkeep_daily = -1\n", "keep_daily"),
            ("[maintenance]\nkeep_weekly = 2\nprune = true\n", "prune"),
            (
                "[[schedules]]\nname = \"maintenance\"\ncron = \"0 2 * * *\"\n",
                "schedules[0].name",
            ),
        ] {
            let e = parse(extra).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
            assert!(e.starts_with("/etc/a.toml"), "{e}");
        }
        let e = parse("[timeouts]\nsnapshot = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("snapshot") && e.contains("not a duration"),
            "{e}"
        );
    }
}
