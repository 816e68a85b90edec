//! Who may call, over which socket, and agentctl as a client; configuration errors.

use super::support::*;

#[test]
fn unauthorized_peers_are_refused() {
    let node = Node::new("");
    let _d = node.start();
    // The socket agentd creates is closed to others by its mode.
    let meta = std::fs::metadata(&node.socket).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 100, "owned by the configured group (users)");
    let dir_mode = std::fs::metadata(node.socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o750);
    let ctl = copy_for_others(&node, AGENTCTL);
    let as_nobody = |groups: &str, socket: &std::path::Path| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534"])
            .arg(groups)
            .arg(&ctl)
            .arg("--socket")
            .arg(socket)
            .arg("status")
            .output()
            .unwrap()
    };
    let out = as_nobody("--clear-groups", &node.socket);
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Permission denied") && stderr.contains("members of its group"),
        "{stderr}"
    );
    // A member of the group (by a supplementary group) is let in.
    let out = as_nobody("--groups=100", &node.socket);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("node node-a"));
}

#[test]
fn socket_activation_and_the_peer_check() {
    let node = Node::new("");
    // Bind the socket as systemd would, world-writable (SocketMode=0666): the daemon's own
    // check must then keep others out.
    std::fs::create_dir_all(node.socket.parent().unwrap()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&node.socket).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&node.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(
        node.socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let log = std::fs::File::create(&node.log).unwrap();
    let child = {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let fd = listener.as_raw_fd();
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\""])
            .arg(AGENTD)
            .arg("--config")
            .arg(&node.config)
            .stderr(log);
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself keeps close-on-exec: clear it by hand in that case.
                let rc = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    };
    drop(listener);
    let _d = Daemon { child: Some(child) };
    node.wait_ready();
    let ctl = copy_for_others(&node, AGENTCTL);
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&ctl)
        .arg("--socket")
        .arg(&node.socket)
        .arg("status")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    assert!(stderr.contains("uid 65534 may not use agentd"), "{stderr}");
    assert!(stderr.contains("PermissionDenied"), "{stderr}");
    // Root passes, over the same inherited socket.
    let out = node.agentctl(&["status"]);
    assert!(out.status.success(), "{out:?}");
    assert!(node.log_text().contains("activated=true"));
}

/// A copy of a binary that other users can run (the build directory may be private).
fn copy_for_others(node: &Node, bin: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let to = node.dir.path().join("agentctl");
    std::fs::copy(bin, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    to
}

#[test]
fn agentctl_client_mode_snapshot_wait_json_and_exit_codes() {
    let node = Node::new("");
    let _d = node.start();
    let out = node.agentctl(&["--json", "snapshot", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["phase"], "Completed");
    assert_eq!(v["progress"]["bytes_done"], v["progress"]["bytes_total"]);
    let sid = v["snapshot_id"].as_str().unwrap().to_string();
    let out = node.agentctl(&["--json", "snapshots"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], sid.as_str());
    let out = node.agentctl(&["--json", "operations"]);
    let ops: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ops[0]["snapshot_id"], sid.as_str());
    let target = node.dir.path().join("via-agentctl");
    let out = node.agentctl(&[
        "restore",
        &sid[..12],
        "--target",
        target.to_str().unwrap(),
        "--wait",
        "--quiet",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Completed"));
    assert_eq!(
        tree_contents(&target.join(node.data.strip_prefix("/").unwrap())),
        tree_contents(&node.data)
    );
    let out = node.agentctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("node node-a") && text.contains("(reachable)"),
        "{text}"
    );
    assert!(text.contains("last restore success"), "{text}");
    let out = node.agentctl(&["watch", "snapshot-20200101-000000-abcdef"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    let out = node.agentctl(&["snapshot", "/etc"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // Units and post-restore steps are agentd's configuration, not the client's.
    let out = node.agentctl(&["node-restore", "latest", "--unit", "autofs.service"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("[node_restore]"));
    // A field agentd refuses: exit 2, the field named.
    let out = node.agentctl(&["node-restore", "latest", "--target", "/"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("target: cannot be /"));
    let out = std::process::Command::new(AGENTCTL)
        .args(["--socket", "/nonexistent/agent.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(11), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach agentd"));
}

#[test]
fn bad_configuration_stops_startup_naming_key_and_file() {
    let node = Node::new("[metrics]\nlisten = \"0.0.0.0:9465\"\n");
    let out = std::process::Command::new(AGENTD)
        .arg("--config")
        .arg(&node.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metrics.listen"), "{err}");
    assert!(err.contains(&node.config.display().to_string()), "{err}");
    let node = Node::new("");
    node.add_config("[backup2]\npaths = []\n");
    let out = std::process::Command::new(AGENTD)
        .arg("--config")
        .arg(&node.config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("backup2"));
}
