//! agentd, the node daemon: serves the gRPC API on a Unix socket, runs snapshots, restores
//! and maintenance as long-running operations, fires schedules, and speaks to systemd.
//!
//! Layout:
//! - [`config`]: the TOML configuration and its checks;
//! - [`socket`], [`auth`]: the API socket and who may use it;
//! - [`service`] (the gRPC methods), [`convert`] (records to messages), [`status_map`] (the
//!   one mapping of failures to gRPC codes);
//! - [`operations`] (admission, cancel, timeouts, live progress), [`record`] (persisted
//!   records), [`jobs`] (the work of each kind), [`node_restore`] (node restores, and the
//!   units an interrupted one left stopped, started at start), [`maintenance`] (retention,
//!   prune and check as one operation), [`hooks`], [`schedule`],
//!   [`hints`] (inotify change hints for the next snapshot);
//! - [`metrics`], [`systemd`] (logging, readiness, watchdog).
//!
//! The engine (backup, restore, repo) knows nothing of this module: it is called from the
//! blocking pool with a `Progress` to report to and a cancel flag to honour.

pub mod auth;
pub mod config;
pub mod convert;
pub mod hints;
pub mod hooks;
pub mod jobs;
pub mod maintenance;
pub mod metrics;
pub mod node_restore;
pub mod operations;
pub mod record;
pub mod schedule;
pub mod service;
pub mod socket;
pub mod status_map;
pub mod systemd;

use crate::error::{Error, Kind, Result};
use crate::repo::Repository;
use crate::store::{
    CacheStore, LocalStore, ObjectStore, RetryPolicy, RetryStore, S3Store, StoreErrorKind,
};
use clap::Parser;
use config::Config;
use operations::Operations;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

#[derive(Debug, Parser)]
#[command(name = "agentd", version, about = "The hostagent node daemon")]
struct Args {
    /// The configuration file.
    #[arg(long, env = "AGENTD_CONFIG", default_value = config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

/// Exit status for an unusable configuration (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

/// What every part of the daemon shares.
pub struct Agent {
    pub config: Config,
    pub node: String,
    pub ops: Arc<Operations>,
    pub metrics: Arc<metrics::Metrics>,
    pub hints: Option<Arc<hints::ChangeWatcher>>,
    /// The repository as opened for queries (listing, describing, deleting snapshots need
    /// no index), kept so that each query does not pay the password's key derivation.
    query_repo: std::sync::Mutex<Option<Arc<Repository>>>,
}

impl Agent {
    fn store(&self) -> Result<Arc<dyn ObjectStore>> {
        let r = &self.config.repository;
        match (&r.local, &r.s3) {
            (Some(local), _) => Ok(Arc::new(LocalStore::new(&local.path))),
            (None, Some(s3)) => {
                let store =
                    RetryStore::new(S3Store::new(s3.client_config()?)?, RetryPolicy::default());
                Ok(Arc::new(CacheStore::new(store, &s3.cache_dir())))
            }
            (None, None) => unreachable!("validated: a repository location is set"),
        }
    }

    /// Opens the repository with the configured password (blocking: run it off the runtime).
    pub fn open_repository(&self) -> Result<Repository> {
        let repo = self.open_repository_unindexed()?;
        repo.reload_index()?;
        Ok(repo)
    }

    /// [`open_repository`](Self::open_repository) without loading the index, for a backup:
    /// its write session loads it ([`Repository::open_unindexed`]).
    pub fn open_repository_unindexed(&self) -> Result<Repository> {
        let path = self.config.repository.password_path()?;
        let password = read_password(&path)?;
        Repository::open_unindexed(self.store()?, &password).map_err(|e| {
            if e.kind() == Kind::WrongPassword {
                e.context(format!("password from {}", path.display()))
            } else {
                e
            }
        })
    }

    /// Runs a query on the cached repository (opening it if needed). A failed query drops
    /// the cache, so a repository replaced or re-keyed behind agentd's back is reopened.
    pub fn query<T>(&self, f: impl FnOnce(&Repository) -> Result<T>) -> Result<T> {
        let cached = self.query_repo.lock().unwrap().clone();
        let repo = match cached {
            Some(r) => r,
            None => {
                let r = Arc::new(self.open_repository()?);
                *self.query_repo.lock().unwrap() = Some(r.clone());
                r
            }
        };
        let result = f(&repo);
        if result.as_ref().is_err_and(|e| e.kind() != Kind::NotFound) {
            *self.query_repo.lock().unwrap() = None;
        }
        result
    }

    /// Whether the repository's storage answers and holds a repository (no password needed).
    pub fn check_repository(&self) -> Result<()> {
        let store = self.store()?;
        match store.get(crate::repo::config::CONFIG_KEY) {
            Ok(_) => Ok(()),
            Err(e) if e.kind == StoreErrorKind::NotFound => Err(Error::new(
                Kind::NoRepository,
                format!(
                    "{}: there is no repository here; create one with `agentctl --repo DIR repo init`",
                    store.location()
                ),
            )),
            Err(e) => Err(Error::from(e).context("the repository storage does not answer")),
        }
    }
}

/// Reads the first line of the password file. The password is never logged.
fn read_password(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let raw = Zeroizing::new(std::fs::read(path).map_err(|e| {
        Error::io(
            format!(
                "cannot read the repository password file {}",
                path.display()
            ),
            e,
        )
    })?);
    let line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(Error::invalid(format!(
            "the repository password file {} is empty",
            path.display()
        )));
    }
    Ok(Zeroizing::new(line.to_vec()))
}

/// agentd's entry point.
pub fn main() -> ExitCode {
    let args = Args::parse();
    // Everything agentd creates (state, the socket as it is bound) is private by default.
    // SAFETY: umask has no memory-safety preconditions.
    unsafe { libc::umask(0o077) };
    // Both read and clear environment variables: done before any other thread exists.
    let activated = socket::activated_fd();
    let watchdog = systemd::watchdog_period();
    systemd::init_logging();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        println!("{}: the configuration is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    let activated = match activated {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("agentd")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(config, activated, watchdog));
    // A job that ignored cancellation must not keep the process alive past this point.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}

async fn run(config: Config, activated: Option<i32>, watchdog: Option<Duration>) -> Result<()> {
    let node = config.node();
    let group = match &config.daemon.group {
        Some(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Some((name.clone(), g.gid.as_raw())),
            _ => return Err(Error::invalid(format!("daemon.group: no group {name:?}"))),
        },
        None => None,
    };
    let state_dir = &config.daemon.state_dir;
    std::fs::create_dir_all(state_dir).map_err(|e| {
        Error::io(
            format!("cannot create the state directory {}", state_dir.display()),
            e,
        )
    })?;
    let metrics = Arc::new(metrics::Metrics::default());
    let store = record::RecordStore::open(state_dir)?;
    let (ops, moved_aside) =
        Operations::open(store, config.daemon.operations_kept, metrics.clone())?;
    for (path, why) in &moved_aside {
        tracing::warn!(file = %path.display(), "moved an unreadable operation record aside: it {why}");
    }
    // Units a node restore stopped come back before anything else is served.
    let started = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || node_restore::recover_at_start(&config))
            .await
            .unwrap_or_default()
    };
    for rec in ops.interrupted() {
        if rec.kind == record::OpKind::NodeRestore {
            let note = node_restore::restarted_note(&started);
            ops.amend_finished(&rec.id, |r| {
                r.message.push_str(&note);
                r.node_restore
                    .get_or_insert_with(Default::default)
                    .started_units
                    .extend(started.iter().cloned());
            });
        }
    }
    let socket_path = config.daemon.socket.clone();
    let listener = socket::listen(&socket_path, group.as_ref().map(|g| g.1), activated)?;
    let metrics_listen = config.metrics.listen;
    let stop_grace = config.timeouts.stop_grace.0;
    let hints = config.change_hints.enabled.then(|| {
        let watcher = Arc::new(hints::ChangeWatcher::new(
            config.change_hints.full_every,
            config.daemon.state_dir.join("hints"),
        ));
        let (w, paths) = (watcher.clone(), config.backup.paths.clone());
        // Adding a watch per directory takes a while on big trees: not before READY.
        tokio::task::spawn_blocking(move || w.watch(&paths));
        watcher
    });
    let agent = Arc::new(Agent {
        config,
        node: node.clone(),
        ops: ops.clone(),
        metrics: metrics.clone(),
        hints,
        query_repo: std::sync::Mutex::new(None),
    });

    if let Some(addr) = metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("metrics.listen: cannot listen on {addr}"), e))?;
        tracing::info!(%addr, "serving metrics");
        tokio::spawn(metrics::serve(l, metrics.clone()));
    }
    tokio::spawn(schedule::run(agent.clone()));
    let heartbeat = systemd::Heartbeat::default();
    tokio::spawn(heartbeat.clone().run());
    if let Some(period) = watchdog {
        systemd::start_watchdog(period, heartbeat);
    }

    let policy = auth::Policy { group };
    let service = crate::api::agent_server::AgentServer::with_interceptor(
        service::Service {
            agent: agent.clone(),
        },
        auth::interceptor(policy),
    );
    use tokio_stream::StreamExt;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener.listener)
        .map(|conn| conn.map(auth::PeerStream::new));

    // Graceful shutdown waits for open calls; a watcher of an operation that would not stop
    // must not hold the process, so connections get a few seconds after the stop.
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = {
        let ops = ops.clone();
        async move {
            wait_for_signal().await;
            systemd::notify_stopping();
            match ops.begin_shutdown() {
                Some(id) => {
                    tracing::info!(operation_id = %id, "stopping: canceling the running operation");
                    let deadline = tokio::time::Instant::now() + stop_grace;
                    while !ops.is_idle() && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if !ops.is_idle() {
                        tracing::warn!(operation_id = %id, "the operation did not stop in time");
                    }
                }
                None => tracing::info!("stopping"),
            }
            let _ = stopped_tx.send(());
        }
    };
    tracing::info!(
        socket = %socket_path.display(), node = %node, activated = listener.activated,
        repository = %agent.config.repository.location(), version = env!("CARGO_PKG_VERSION"),
        "agentd ready"
    );
    systemd::notify_ready(&format!("serving on {}", socket_path.display()));
    let serve = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown);
    let hard_stop = async {
        if stopped_rx.await.is_ok() {
            tokio::time::sleep(Duration::from_secs(5)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let served = tokio::select! {
        r = serve => r,
        () = hard_stop => {
            tracing::warn!("calls still open 5s after stopping; closing them");
            Ok(())
        }
    };
    if !listener.activated {
        let _ = std::fs::remove_file(&socket_path);
    }
    if !ops.is_idle() {
        // A node restore that would not stop in time may have units stopped: start them
        // before leaving rather than at the next start.
        let config = agent.config.clone();
        let _ = tokio::task::spawn_blocking(move || node_restore::recover_at_start(&config)).await;
    }
    served.map_err(|e| Error::new(Kind::Io, format!("the API server failed: {e}")))?;
    tracing::info!("agentd stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot catch SIGTERM; stopping");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = int.recv() => tracing::info!("received SIGINT"),
    }
}
