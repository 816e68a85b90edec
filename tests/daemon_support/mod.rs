//! Helpers for the daemon tests: a temporary node (data tree, repository, password file,
//! configuration), the real agentd binary started on a temporary socket, and a gRPC client
//! for it.

#![allow(dead_code)]

use hostagent::api;
use hostagent::api::agent_client::AgentClient;
use hostagent::repo::{InitOptions, KdfParams, Repository};
use hostagent::store::LocalStore;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

pub const AGENTD: &str = env!("CARGO_BIN_EXE_agentd");
pub const AGENTCTL: &str = env!("CARGO_BIN_EXE_agentctl");
pub const PASSWORD: &str = "correct horse battery staple";

/// A node: its files, repository and configuration, all under one temporary directory.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub repo: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Node {
    /// A node whose configuration adds `extra` (TOML) to the essentials.
    pub fn new(extra: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        // Other users (the unauthorized-caller test) must be able to reach inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        std::fs::create_dir_all(data.join("etc/conf.d")).unwrap();
        std::fs::write(data.join("etc/app.conf"), b"listen = 8080\n").unwrap();
        std::fs::write(data.join("etc/conf.d/a"), vec![7u8; 70_000]).unwrap();
        std::fs::write(data.join("blob.bin"), pseudo_random(300_000, 1)).unwrap();
        let repo = root.join("repo");
        Repository::init(
            Arc::new(LocalStore::new(&repo)),
            PASSWORD.as_bytes(),
            InitOptions {
                kdf: KdfParams::insecure_fast(),
                ..Default::default()
            },
        )
        .unwrap();
        let pw = root.join("password");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let state = root.join("state");
        let socket = root.join("run/agent.sock");
        let config = root.join("agentd.toml");
        let text = format!(
            r#"node = "node-a"
{extra}
[repository]
password_file = "{pw}"
[repository.local]
path = "{repo}"
[backup]
paths = ["{data}"]
threads = 2
[daemon]
socket = "{socket}"
state_dir = "{state}"
group = "users"
"#,
            pw = pw.display(),
            repo = repo.display(),
            data = data.display(),
            socket = socket.display(),
            state = state.display(),
        );
        std::fs::write(&config, text).unwrap();
        Node {
            log: root.join("agentd.log"),
            dir,
            data,
            repo,
            state,
            socket,
            config,
        }
    }

    /// Appends TOML tables to the configuration.
    pub fn add_config(&self, tables: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push('\n');
        text.push_str(tables);
        std::fs::write(&self.config, text).unwrap();
    }

    /// Starts agentd and waits until its socket answers.
    pub fn start(&self) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(AGENTD)
            .arg("--config")
            .arg(&self.config)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Daemon { child: Some(child) };
        self.wait_ready();
        d
    }

    /// Waits until agentd serves: a connection is not enough (it may sit in the backlog of a
    /// daemon still starting, or that is about to fail), so this waits for the server's
    /// HTTP/2 SETTINGS frame in answer to a client preface.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if serves_http2(&self.socket) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agentd did not start; its log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn client(&self) -> AgentClient<Channel> {
        client(&self.socket).await
    }

    /// Runs agentctl against this node's daemon.
    pub fn agentctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(AGENTCTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("HOSTAGENT_REPO")
            .output()
            .unwrap()
    }

    /// A pre-snapshot hook that sleeps, to keep an operation running for a while.
    pub fn slow_pre_hook(&self, seconds: u32) {
        self.add_config(&format!(
            "[[hooks.pre_snapshot]]\nargv = [\"/bin/sleep\", \"{seconds}\"]\ntimeout = \"5m\"\n"
        ));
    }
}

/// Whether an HTTP/2 server answers on `socket`: the client preface and an empty SETTINGS
/// frame out, a SETTINGS frame (type 4) back.
fn serves_http2(socket: &Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let mut frame = [0u8; 9];
    s.write_all(&hello).is_ok() && s.read_exact(&mut frame).is_ok() && frame[3] == 4
}

pub async fn client(socket: &Path) -> AgentClient<Channel> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://agentd.test")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap();
    AgentClient::new(channel)
}

/// The agentd process; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    pub child: Option<Child>,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("agentd did not stop within 60s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A failed test shows what agentd logged: its log file goes with the temporary directory.
impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- agentd's log ---\n{}--- end of agentd's log ---",
                self.log_text()
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Deterministic bytes that do not compress or deduplicate.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Polls GetOperation until `pred` holds (or panics after `secs`).
pub async fn wait_for(
    c: &mut AgentClient<Channel>,
    id: &str,
    secs: u64,
    pred: impl Fn(&api::Operation) -> bool,
) -> api::Operation {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let op = c
            .get_operation(api::GetOperationRequest {
                operation_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if pred(&op) {
            return op;
        }
        if Instant::now() > deadline {
            panic!("operation never reached the expected state: {op:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Follows an operation with WatchOperation until the stream ends; every message, in order.
pub async fn watch_to_end(c: &mut AgentClient<Channel>, id: &str) -> Vec<api::Operation> {
    let mut stream = c
        .watch_operation(api::WatchOperationRequest {
            operation_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        seen.push(m);
    }
    seen
}

/// Polls ListOperations until an operation matching `pred` appears (or panics after `secs`,
/// saying `what` never happened): how a test sees a schedule fire.
pub async fn first_listed(
    c: &mut AgentClient<Channel>,
    secs: u64,
    what: &str,
    pred: impl Fn(&api::Operation) -> bool,
) -> api::Operation {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let ops = c
            .list_operations(api::ListOperationsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .operations;
        if let Some(op) = ops.into_iter().find(&pred) {
            return op;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn phase(op: &api::Operation) -> api::Phase {
    api::Phase::try_from(op.phase).unwrap()
}

pub fn reason(op: &api::Operation) -> api::FailureReason {
    api::FailureReason::try_from(op.failure_reason).unwrap()
}

pub fn is_terminal(op: &api::Operation) -> bool {
    matches!(
        phase(op),
        api::Phase::Completed
            | api::Phase::PartiallyFailed
            | api::Phase::Failed
            | api::Phase::Canceled
    )
}

pub fn step(op: &api::Operation) -> String {
    op.progress
        .as_ref()
        .map(|p| p.step.clone())
        .unwrap_or_default()
}

/// Every regular file under `dir`, relative path to contents.
pub fn tree_contents(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(base, &e.path(), out);
            } else if ft.is_file() {
                out.insert(
                    e.path().strip_prefix(base).unwrap().to_path_buf(),
                    std::fs::read(e.path()).unwrap(),
                );
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

pub fn snapshot_req(request_id: &str) -> api::StartSnapshotRequest {
    api::StartSnapshotRequest {
        request_id: request_id.into(),
        ..Default::default()
    }
}

/// GET on agentd's metrics listener: the whole HTTP response.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of a series (name and labels, as written) in a metrics page.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}
