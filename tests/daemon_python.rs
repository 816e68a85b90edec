//! agentd driven by Python grpcio, with stubs generated from proto/ at test time: the API
//! works for clients that share nothing with the Rust code but the .proto file.
//! Needs `pip install grpcio grpcio-tools`.

#[path = "daemon_support/mod.rs"]
mod support;

use support::Node;

#[test]
fn python_grpcio_client_drives_the_daemon() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .expect("python3 runs");
    assert!(
        probe.status.success(),
        "Python grpcio is missing: pip install grpcio grpcio-tools ({})",
        String::from_utf8_lossy(&probe.stderr)
    );
    let node = Node::new("");
    // Keeps the first snapshot running while the script checks that a second is refused.
    node.slow_pre_hook(2);
    let _d = node.start();
    let stubs = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/drive_agentd.py"
        ))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/proto"))
        .arg(stubs.path())
        .arg(&node.socket)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nagentd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log_text()
    );
    assert!(stdout.contains("16 passed, 0 failed"), "{stdout}");
}
