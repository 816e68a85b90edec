//! The S3 server the tests run against: the one named by `HOSTAGENT_TEST_S3_ENDPOINT`,
//! `_REGION`, `_BUCKET`, `_ACCESS_KEY`, `_SECRET_KEY` (a MinIO of your own, say), or else a
//! single-node Garage started by `tests/garage/setup.sh` for this test run.
//!
//! Without either, the S3 tests fail when `HOSTAGENT_TEST_REQUIRE_S3=1` (set by
//! `tests/run-all.sh`) or `CI` is set; a developer's plain `cargo test` says loudly that they
//! did not run. Tests that stop and restart the server always start a private Garage.

#![allow(dead_code)]

pub mod cut;
pub mod tls;

use hostagent::store::{S3Config, S3Credentials, S3Location, S3Store};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub struct Server {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// Set when this run started the server (so it can stop and restart it).
    pub garage_dir: Option<PathBuf>,
    restarted: Mutex<Option<Child>>,
    _tmp: Option<tempfile::TempDir>,
}

fn garage_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GARAGE_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin")))
        .map(|d| d.join("garage"))
        .find(|p| p.is_file())
}

/// Whether a missing server must fail the tests: `HOSTAGENT_TEST_REQUIRE_S3` (the project's
/// test command sets it) or `CI`, set to anything but empty, `0` or `false`.
pub fn required() -> bool {
    ["HOSTAGENT_TEST_REQUIRE_S3", "CI"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false"))
}

/// Says why S3 tests cannot run: fails when a server is required, otherwise warns and
/// returns.
pub fn unavailable(why: &str) {
    let msg = format!(
        "S3 TESTS NOT RUN: {why}. Install Garage (`cargo install --locked garage`) or point \
         HOSTAGENT_TEST_S3_ENDPOINT/_REGION/_BUCKET/_ACCESS_KEY/_SECRET_KEY at a server"
    );
    if required() {
        panic!("{msg} (a server is required: HOSTAGENT_TEST_REQUIRE_S3 or CI is set)");
    }
    eprintln!("{msg}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server shared by the tests of this binary, or None (after saying so) if there is none.
pub fn shared() -> Option<&'static Server> {
    static SERVER: OnceLock<Option<Server>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            if let Ok(endpoint) = std::env::var("HOSTAGENT_TEST_S3_ENDPOINT") {
                let var = |n: &str| {
                    std::env::var(format!("HOSTAGENT_TEST_S3_{n}"))
                        .unwrap_or_else(|_| panic!("HOSTAGENT_TEST_S3_{n} must be set too"))
                };
                return Some(Server {
                    endpoint,
                    region: std::env::var("HOSTAGENT_TEST_S3_REGION")
                        .unwrap_or_else(|_| "us-east-1".into()),
                    bucket: var("BUCKET"),
                    access_key: var("ACCESS_KEY"),
                    secret_key: var("SECRET_KEY"),
                    garage_dir: None,
                    restarted: Mutex::new(None),
                    _tmp: None,
                });
            }
            start_garage()
        })
        .as_ref()
}

/// A Garage of the caller's own, which it may stop and restart.
pub fn private() -> Option<Server> {
    if garage_bin().is_none() && std::env::var_os("HOSTAGENT_TEST_S3_ENDPOINT").is_some() {
        unavailable(
            "this test stops and restarts its server, so it needs a Garage of its own even \
             with HOSTAGENT_TEST_S3_ENDPOINT set",
        );
        return None;
    }
    start_garage()
}

fn start_garage() -> Option<Server> {
    let Some(bin) = garage_bin() else {
        match std::env::var_os("GARAGE_BIN") {
            Some(p) => unavailable(&format!("GARAGE_BIN={} is no file", p.to_string_lossy())),
            None => unavailable("no garage binary on PATH or in ~/.cargo/bin"),
        }
        return None;
    };
    let tmp = tempfile::Builder::new()
        .prefix("hostagent-garage")
        .tempdir()
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/garage/setup.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(tmp.path())
        .env("GARAGE_BIN", &bin)
        .env("GARAGE_S3_PORT", free_port().to_string())
        .env("GARAGE_RPC_PORT", free_port().to_string())
        .env("HOSTAGENT_GARAGE_WATCH_PID", std::process::id().to_string())
        // The shared server's directory outlives every test (it sits in a static).
        .env("HOSTAGENT_GARAGE_REMOVE_DIR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run tests/garage/setup.sh");
    assert!(
        out.status.success(),
        "tests/garage/setup.sh failed: {}\nlog: {}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(tmp.path().join("garage.log")).unwrap_or_default()
    );
    let env = std::fs::read_to_string(tmp.path().join("env")).unwrap();
    let get = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export HOSTAGENT_TEST_S3_{name}=")))
            .unwrap_or_else(|| panic!("{name} missing from the Garage env file"))
            .to_string()
    };
    Some(Server {
        endpoint: get("ENDPOINT"),
        region: get("REGION"),
        bucket: get("BUCKET"),
        access_key: get("ACCESS_KEY"),
        secret_key: get("SECRET_KEY"),
        garage_dir: Some(tmp.path().to_path_buf()),
        restarted: Mutex::new(None),
        _tmp: Some(tmp),
    })
}

impl Server {
    pub fn credentials(&self) -> S3Credentials {
        S3Credentials::new(&self.access_key, &self.secret_key, "the test server's key")
    }

    /// Settings for a repository under `prefix` of the test bucket.
    pub fn config(&self, prefix: &str) -> S3Config {
        let location = S3Location::parse(&format!("s3://{}/{prefix}", self.bucket)).unwrap();
        let mut c = S3Config::new(&self.endpoint, location, self.credentials());
        c.region = self.region.clone();
        c.path_style = true;
        c
    }

    pub fn store(&self, prefix: &str) -> S3Store {
        S3Store::new(self.config(prefix)).unwrap()
    }

    /// Runs the garage CLI against this server (one started by the tests).
    pub fn garage(&self, args: &[&str]) -> String {
        let out = Command::new(garage_bin().unwrap())
            .arg("-c")
            .arg(self.dir().join("garage.toml"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "garage {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new key allowed only to read the test bucket: (key ID, secret).
    pub fn read_only_key(&self, name: &str) -> (String, String) {
        let info = self.garage(&["key", "create", name]);
        let field = |label: &str| {
            info.lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == label))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {label} in: {info}"))
        };
        let (id, secret) = (field("Key ID"), field("Secret key"));
        self.garage(&["bucket", "allow", "--read", &self.bucket, "--key", name]);
        (id, secret)
    }

    /// An AWS credentials file for agentctl.
    pub fn credentials_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("s3-credentials");
        std::fs::write(
            &path,
            format!(
                "[default]\naws_access_key_id={}\naws_secret_access_key={}\n",
                self.access_key, self.secret_key
            ),
        )
        .unwrap();
        path
    }

    /// The server's address (its endpoint's host resolved).
    pub fn addr(&self) -> SocketAddr {
        use std::net::ToSocketAddrs;
        let authority = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap();
        let default_port = if self.endpoint.starts_with("https://") {
            443
        } else {
            80
        };
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:{default_port}")
        };
        with_port
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("cannot resolve the test endpoint {}", self.endpoint))
    }

    fn dir(&self) -> &Path {
        self.garage_dir
            .as_deref()
            .expect("only a Garage started by the tests can be stopped")
    }

    /// Kills the server at once (SIGKILL), as a crash or power loss would.
    pub fn kill(&self) {
        let pid: i32 = std::fs::read_to_string(self.dir().join("garage.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        unsafe { libc::kill(pid, libc::SIGKILL) };
        if let Some(mut child) = self.restarted.lock().unwrap().take() {
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr()).is_ok() {
            assert!(
                Instant::now() < deadline,
                "garage still listening after SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server again on its data, and waits until it accepts connections.
    pub fn restart(&self) {
        let dir = self.dir();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("garage.log"))
            .unwrap();
        let child = Command::new(garage_bin().unwrap())
            .arg("-c")
            .arg(dir.join("garage.toml"))
            .arg("server")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::write(dir.join("garage.pid"), child.id().to_string()).unwrap();
        *self.restarted.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.addr()).is_err() {
            assert!(Instant::now() < deadline, "garage did not come back");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // No assertions here: a panic while unwinding from a failed test would abort the run.
        if let Some(dir) = &self.garage_dir
            && let Ok(pid) = std::fs::read_to_string(dir.join("garage.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut child) = self.restarted.lock().unwrap().take() {
            let _ = child.wait();
        }
    }
}

/// A prefix no other test or run uses.
pub fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos:x}", std::process::id())
}
