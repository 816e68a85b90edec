//! agentd driven by Python grpcio, with stubs generated from proto/ at test time: the API
//! works for clients that share nothing with the Rust code but the .proto file. The script
//! (tests/python/drive_agentd.py) runs in phases; between them this test starts agentd with
//! the configuration a phase needs, kills it and starts it again, and runs the client as
//! another user.
//!
//! Needs a python3 with grpcio and grpcio-tools that uid 65534 can run too (the
//! unauthorized-peer phase): `/usr/bin/python3 -m pip install grpcio grpcio-tools`
//! (tests/run-all.sh does it), or name one in HOSTAGENT_PYTHON.

#[path = "daemon_support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use support::Node;

/// The setpriv arguments that run a program as uid/gid 65534 without supplementary groups:
/// neither root nor in agentd's group.
const AS_NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];

/// A python3 with grpcio that root and uid 65534 can both run (root's own may live under
/// /root, which others cannot enter).
fn python() -> String {
    let candidates = std::env::var("HOSTAGENT_PYTHON")
        .ok()
        .into_iter()
        .chain(["/usr/bin/python3".to_string(), "python3".to_string()]);
    for py in candidates {
        let works = Command::new("setpriv")
            .args(AS_NOBODY)
            .args([py.as_str(), "-c", "import grpc, grpc_tools"])
            .output()
            .is_ok_and(|o| o.status.success());
        if works {
            return py;
        }
    }
    panic!(
        "no python3 with grpcio and grpcio-tools that uid 65534 can run: install them with \
         `/usr/bin/python3 -m pip install --break-system-packages grpcio grpcio-tools` (as \
         tests/run-all.sh does), or name an interpreter in HOSTAGENT_PYTHON"
    );
}

/// The script and the generated stubs, in a directory every user can read.
struct Client {
    python: String,
    dir: tempfile::TempDir,
}

impl Client {
    fn new() -> Client {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/drive_agentd.py"),
            dir.path().join("drive_agentd.py"),
        )
        .unwrap();
        Client {
            python: python(),
            dir,
        }
    }

    /// Runs one phase; returns its standard output after checking that every check passed.
    fn phase(&self, node: &Node, phase: &str, args: &[&str], as_nobody: bool) -> String {
        let mut cmd = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args(AS_NOBODY).arg(&self.python);
            c
        } else {
            Command::new(&self.python)
        };
        let out = cmd
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg(self.dir.path().join("drive_agentd.py"))
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/proto"))
            .arg(self.dir.path())
            .arg(&node.socket)
            .arg(phase)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && stdout.contains(" passed, 0 failed"),
            "phase {phase}:\n{stdout}\n{}\nagentd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            node.log_text()
        );
        stdout
    }
}

fn passed(stdout: &str) -> usize {
    stdout
        .lines()
        .find_map(|l| l.strip_suffix(" passed, 0 failed"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Opens the socket and its directory to everyone, as a systemd socket unit with a wide
/// SocketMode= would: then only agentd's peer-credential check stands between a caller
/// and the API.
fn open_socket_to_everyone(socket: &Path) {
    for (p, mode) in [(socket.parent().unwrap(), 0o755), (socket, 0o666)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

#[test]
fn python_grpcio_client_drives_the_daemon() {
    let client = Client::new();

    // Watched progress, refusal of a concurrent operation, idempotency, cancel,
    // maintenance, bad requests. The hook keeps each snapshot running a few seconds.
    let node = Node::new("");
    node.slow_pre_hook(4);
    let d = node.start();
    let out = client.phase(&node, "main", &[], false);
    assert_eq!(passed(&out), 29, "{out}");
    drop(d);

    // Timeout: the snapshot outlives timeouts.snapshot.
    let node = Node::new("[timeouts]\nsnapshot = \"2s\"\nstop_grace = \"10s\"\n");
    node.slow_pre_hook(60);
    let d = node.start();
    let out = client.phase(&node, "timeout", &[], false);
    assert_eq!(passed(&out), 5, "{out}");
    drop(d);

    // agentd killed mid-operation and started again.
    let node = Node::new("");
    node.slow_pre_hook(60);
    let mut d = node.start();
    let out = client.phase(&node, "restart-start", &[], false);
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("OPERATION "))
        .expect("the script names the operation")
        .to_string();
    d.kill9();
    let _d = node.start();
    let out = client.phase(&node, "restart-check", &[&id], false);
    assert_eq!(passed(&out), 6, "{out}");

    // An unauthorized peer: the client as uid 65534, outside agentd's group, reaching the
    // socket but not the API.
    open_socket_to_everyone(&node.socket);
    let out = client.phase(&node, "denied", &[], true);
    assert_eq!(passed(&out), 9, "{out}");
}
