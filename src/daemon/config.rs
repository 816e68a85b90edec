//! agentd's configuration: a TOML file (documented in config/agentd.example.toml), read once
//! at start and checked whole before anything runs.
//!
//! Every table refuses unknown keys, so a misspelt key is an error instead of a silently
//! ignored setting. Syntax and type errors come from the TOML parser with the line and the
//! key; the checks that follow parsing name the key (`schedules[1].cron`) and the file.
//! Each kind of repository location is its own optional table under `[repository]`
//! (`local` today); a new kind adds a table and a case in [`RepositoryConfig::location`].

use crate::backup::Excludes;
use crate::error::{Error, Result};
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// A repository in a local directory.
    #[serde(default)]
    pub local: Option<LocalRepository>,
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

/// Where the repository is, once the configuration has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "local:{}", p.display()),
        }
    }
}

impl RepositoryConfig {
    pub fn location(&self) -> Location {
        let local = self
            .local
            .as_ref()
            .expect("validated: a repository location is set");
        Location::Local(local.path.clone())
    }

    /// The password file to read: the configured file, or the credential in the directory
    /// systemd passes in `$CREDENTIALS_DIRECTORY`.
    pub fn password_path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.password_file {
            return Ok(p.clone());
        }
        let name = self
            .password_credential
            .as_deref()
            .expect("validated: a password source is set");
        match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => Ok(Path::new(&dir).join(name)),
            None => Err(Error::invalid(format!(
                "repository.password_credential = {name:?} needs $CREDENTIALS_DIRECTORY, which \
                 is not set: run agentd under systemd with LoadCredential={name}:FILE, or use \
                 repository.password_file"
            ))),
        }
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
        match &r.local {
            None => {
                return err(
                    "repository",
                    "no repository location: add a [repository.local] table with path = \"DIR\""
                        .into(),
                );
            }
            Some(l) if !l.path.is_absolute() => {
                return err(
                    "repository.local.path",
                    format!("{} must be an absolute path", l.path.display()),
                );
            }
            Some(_) => {}
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

    pub fn timeout(&self, kind: super::record::OpKind) -> Duration {
        use super::record::OpKind;
        match kind {
            OpKind::Snapshot => self.timeouts.snapshot.0,
            OpKind::Restore => self.timeouts.restore.0,
            OpKind::Maintenance => self.timeouts.maintenance.0,
        }
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
