//! agentd end to end: the real daemon binary on a temporary socket, with a temporary
//! configuration and local repository, driven by the generated Rust client, by agentctl,
//! and by Python grpcio (tests/daemon_python.rs).

#[path = "daemon_support/mod.rs"]
mod support;

use hostagent::api;
use std::time::{Duration, Instant};
use support::*;
use tonic::Code;

fn snapshot_req(request_id: &str) -> api::StartSnapshotRequest {
    api::StartSnapshotRequest {
        request_id: request_id.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_with_watched_progress_then_restore_and_delete() {
    let node = Node::new("");
    let _d = node.start();
    let mut c = node.client().await;
    let op = c
        .start_snapshot(snapshot_req(""))
        .await
        .unwrap()
        .into_inner();
    assert!(op.id.starts_with("snapshot-"), "{}", op.id);
    let mut stream = c
        .watch_operation(api::WatchOperationRequest {
            operation_id: op.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        seen.push(m);
    }
    let last = seen.last().unwrap().clone();
    assert_eq!(phase(&last), api::Phase::Completed, "{last:#?}");
    // Progress never goes backwards; at the end done equals total.
    for w in seen.windows(2) {
        let (a, b) = (
            w[0].progress.clone().unwrap(),
            w[1].progress.clone().unwrap(),
        );
        assert!(b.files_done >= a.files_done && b.bytes_done >= a.bytes_done);
        assert!(b.files_total >= a.files_total && b.bytes_total >= a.bytes_total);
    }
    let p = last.progress.clone().unwrap();
    let data_bytes: u64 = tree_contents(&node.data)
        .values()
        .map(|v| v.len() as u64)
        .sum();
    assert_eq!(p.bytes_total, data_bytes);
    assert_eq!(p.bytes_done, p.bytes_total);
    assert_eq!(p.files_done, 3);
    assert_eq!(p.files_done, p.files_total);
    assert_eq!(last.snapshot_id.len(), 64);
    let name = &last.snapshot_name;
    let re_ok = name.starts_with("node-a-")
        && name.ends_with("-manual")
        && name.len() == "node-a-YYYYMMDD-HHMM-manual".len();
    assert!(re_ok, "snapshot name {name}");

    let list = c
        .list_snapshots(api::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, last.snapshot_id);
    assert_eq!(&list[0].name, name);
    assert_eq!(list[0].hostname, "node-a");
    let described = c
        .describe_snapshot(api::DescribeSnapshotRequest {
            snapshot: name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.id, last.snapshot_id);
    assert_eq!(described.stats.unwrap().files, 3);

    // Restore it elsewhere and compare the bytes.
    let target = node.dir.path().join("restored");
    let op = c
        .start_restore(api::StartRestoreRequest {
            snapshot: "latest".into(),
            target: target.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait_for(&mut c, &op.id, 120, is_terminal).await;
    assert_eq!(phase(&done), api::Phase::Completed, "{done:#?}");
    let restored_root = target.join(node.data.strip_prefix("/").unwrap());
    assert_eq!(tree_contents(&restored_root), tree_contents(&node.data));

    // Status tells the last success of each kind.
    let st = c
        .get_status(api::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(st.repository_reachable, "{st:#?}");
    assert_eq!(st.node, "node-a");
    assert!(st.running.is_none());
    let kinds: Vec<i32> = st.last_success.iter().map(|l| l.kind).collect();
    assert!(kinds.contains(&(api::OperationKind::Snapshot as i32)));
    assert!(kinds.contains(&(api::OperationKind::Restore as i32)));

    // Delete removes the manifest; the snapshot is gone for every query.
    let del = c
        .delete_snapshot(api::DeleteSnapshotRequest {
            snapshot_id: last.snapshot_id[..10].into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(del.deleted_id, last.snapshot_id);
    assert!(!node.repo.join("snapshots").join(&last.snapshot_id).exists());
    let e = c
        .describe_snapshot(api::DescribeSnapshotRequest {
            snapshot: last.snapshot_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_daemon_reports_the_running_operation_failed_after_restart() {
    let node = Node::new("");
    node.slow_pre_hook(30);
    let mut d = node.start();
    let mut c = node.client().await;
    let op = c
        .start_snapshot(snapshot_req(""))
        .await
        .unwrap()
        .into_inner();
    wait_for(&mut c, &op.id, 30, |o| step(o) == "pre-snapshot hooks").await;
    d.kill9();
    let _d = node.start();
    let mut c = node.client().await;
    let after = c
        .get_operation(api::GetOperationRequest {
            operation_id: op.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(phase(&after), api::Phase::Failed);
    assert_eq!(reason(&after), api::FailureReason::AgentRestarted);
    assert!(
        after.message.starts_with("agent restarted"),
        "{}",
        after.message
    );
    // The agent is free again.
    let next = c
        .start_snapshot(snapshot_req(""))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(next.id, op.id);
}

#[tokio::test(flavor = "multi_thread")]
async fn second_start_is_refused_request_id_is_idempotent_and_cancel_stops() {
    let node = Node::new("");
    node.slow_pre_hook(30);
    let _d = node.start();
    let mut c = node.client().await;
    let first = c
        .start_snapshot(snapshot_req("req-1"))
        .await
        .unwrap()
        .into_inner();
    // The same request again: the same operation, not a refusal.
    let again = c
        .start_snapshot(snapshot_req("req-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.id, first.id);
    // Another request while it runs: refused, naming the running operation.
    let e = c.start_snapshot(snapshot_req("req-2")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains(&first.id), "{}", e.message());
    let e = c
        .start_restore(api::StartRestoreRequest {
            snapshot: "latest".into(),
            target: "/tmp/x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // The same request_id with other parameters is a client bug, said as such.
    let e = c
        .start_snapshot(api::StartSnapshotRequest {
            request_id: "req-1".into(),
            full: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("request_id"), "{}", e.message());

    wait_for(&mut c, &first.id, 30, |o| step(o) == "pre-snapshot hooks").await;
    let t = Instant::now();
    let canceling = c
        .cancel_operation(api::CancelOperationRequest {
            operation_id: first.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        phase(&canceling),
        api::Phase::Canceling | api::Phase::Canceled
    ));
    let done = wait_for(&mut c, &first.id, 30, is_terminal).await;
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(phase(&done), api::Phase::Canceled, "{done:#?}");
    assert_eq!(reason(&done), api::FailureReason::CanceledByUser);
    assert_eq!(done.hooks.len(), 1);
    assert_eq!(done.hooks[0].exit_code, -1, "the hook was killed");
    // No snapshot was written.
    let list = c
        .list_snapshots(api::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.snapshots.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_during_the_backup_itself() {
    let node = Node::new("");
    // Enough data that the backup is still running when the cancel arrives.
    for i in 0..40 {
        std::fs::write(
            node.data.join(format!("f{i:02}")),
            pseudo_random(1 << 20, i + 10),
        )
        .unwrap();
    }
    let _d = node.start();
    let mut c = node.client().await;
    let op = c
        .start_snapshot(snapshot_req(""))
        .await
        .unwrap()
        .into_inner();
    wait_for(&mut c, &op.id, 60, |o| {
        o.progress.as_ref().is_some_and(|p| p.bytes_done > 0) || is_terminal(o)
    })
    .await;
    c.cancel_operation(api::CancelOperationRequest {
        operation_id: op.id.clone(),
    })
    .await
    .unwrap();
    let done = wait_for(&mut c, &op.id, 60, is_terminal).await;
    assert_eq!(phase(&done), api::Phase::Canceled, "{done:#?}");
    let p = done.progress.unwrap();
    assert!(
        p.bytes_done < p.bytes_total,
        "canceled before the end: {p:?}"
    );
    assert!(done.snapshot_id.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_leaves_a_failed_record() {
    let node = Node::new("[timeouts]\nsnapshot = \"2s\"\nstop_grace = \"10s\"\n");
    node.slow_pre_hook(30);
    let mut d = node.start();
    let mut c = node.client().await;
    let op = c
        .start_snapshot(snapshot_req(""))
        .await
        .unwrap()
        .into_inner();
    let done = wait_for(&mut c, &op.id, 30, is_terminal).await;
    assert_eq!(phase(&done), api::Phase::Failed, "{done:#?}");
    assert_eq!(reason(&done), api::FailureReason::Timeout);
    assert!(
        done.message.contains("timed out after 2s"),
        "{}",
        done.message
    );
    assert!(done.hooks[0].exit_code == -1);
    // The record outlives the process.
    assert!(d.terminate().success());
    let _d = node.start();
    let mut c = node.client().await;
    let again = c
        .get_operation(api::GetOperationRequest {
            operation_id: op.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reason(&again), api::FailureReason::Timeout);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_cancels_the_running_operation_and_records_it() {
    let node = Node::new("");
    node.slow_pre_hook(30);
    let mut d = node.start();
    let mut c = node.client().await;
    let op = c
        .start_snapshot(snapshot_req(""))
        .await
        .unwrap()
        .into_inner();
    wait_for(&mut c, &op.id, 30, |o| step(o) == "pre-snapshot hooks").await;
    let t = Instant::now();
    let status = d.terminate();
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(!node.socket.exists(), "the socket is removed on exit");
    let _d = node.start();
    let mut c = node.client().await;
    let after = c
        .get_operation(api::GetOperationRequest {
            operation_id: op.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(phase(&after), api::Phase::Canceled, "{after:#?}");
    assert_eq!(reason(&after), api::FailureReason::AgentStopping);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_ids_and_malformed_fields_get_precise_codes() {
    let node = Node::new("");
    let _d = node.start();
    let mut c = node.client().await;
    let e = c
        .get_operation(api::GetOperationRequest {
            operation_id: "snapshot-20200101-000000-abcdef".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    for bad in ["", "../../etc/passwd", "op 1"] {
        let e = c
            .get_operation(api::GetOperationRequest {
                operation_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().starts_with("operation_id:"), "{}", e.message());
    }
    let e = c
        .cancel_operation(api::CancelOperationRequest {
            operation_id: "restore-20200101-000000-abcdef".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .describe_snapshot(api::DescribeSnapshotRequest {
            snapshot: "deadbeef".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = c
        .delete_snapshot(api::DeleteSnapshotRequest {
            snapshot_id: "latest".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("snapshot_id:"), "{}", e.message());
    let e = c
        .start_restore(api::StartRestoreRequest {
            snapshot: "latest".into(),
            target: "relative/dir".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("target:"), "{}", e.message());
    let e = c
        .start_restore(api::StartRestoreRequest {
            snapshot: "".into(),
            target: "/tmp/x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("snapshot:"), "{}", e.message());
    let e = c
        .start_snapshot(api::StartSnapshotRequest {
            ttl: "soon".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("ttl:"), "{}", e.message());
    let e = c
        .start_snapshot(api::StartSnapshotRequest {
            tags: vec!["a,b".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("tags:"), "{}", e.message());
    let e = c
        .start_maintenance(api::StartMaintenanceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("not available in this build"),
        "{}",
        e.message()
    );
    // None of these started anything.
    let ops = c
        .list_operations(api::ListOperationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(ops.operations.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_that_disconnects_does_not_stop_the_operation() {
    let node = Node::new("");
    node.slow_pre_hook(2);
    let _d = node.start();
    let id = {
        let mut c = node.client().await;
        let op = c
            .start_snapshot(snapshot_req(""))
            .await
            .unwrap()
            .into_inner();
        let mut stream = c
            .watch_operation(api::WatchOperationRequest {
                operation_id: op.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert!(!is_terminal(&first));
        op.id
        // Client and stream dropped here: the connection closes mid-watch.
    };
    let mut c = node.client().await;
    let done = wait_for(&mut c, &id, 120, is_terminal).await;
    assert_eq!(phase(&done), api::Phase::Completed, "{done:#?}");
    assert_eq!(done.snapshot_id.len(), 64);
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_state_file_is_moved_aside_and_the_daemon_starts() {
    let node = Node::new("");
    let ops_dir = node.state.join("operations");
    std::fs::create_dir_all(&ops_dir).unwrap();
    let bad = ops_dir.join("snapshot-20200101-000000-abcdef.json");
    std::fs::write(&bad, b"{\"id\": \"snapshot-2020").unwrap();
    let _d = node.start();
    assert!(!bad.exists());
    let aside: Vec<_> = std::fs::read_dir(&ops_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snapshot-20200101-000000-abcdef.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let log = node.log_text();
    assert!(
        log.contains("moved an unreadable operation record aside"),
        "{log}"
    );
    let mut c = node.client().await;
    let e = c
        .get_operation(api::GetOperationRequest {
            operation_id: "snapshot-20200101-000000-abcdef".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let st = c.get_status(api::GetStatusRequest {}).await.unwrap();
    assert!(st.into_inner().repository_reachable);
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_run_around_the_snapshot_and_their_failures_follow_on_error() {
    let node = Node::new("");
    let marker = node.dir.path().join("post-hook-saw");
    node.add_config(&format!(
        r#"[[hooks.pre_snapshot]]
argv = ["/bin/sh", "-c", "echo freezing; exit 4"]
on_error = "Continue"
[[hooks.post_snapshot]]
argv = ["/bin/sh", "-c", "echo $HOSTAGENT_SNAPSHOT_ID > {}"]
"#,
        marker.display()
    ));
    let _d = node.start();
    let mut c = node.client().await;
    let op = c
        .start_snapshot(snapshot_req(""))
        .await
        .unwrap()
        .into_inner();
    let done = wait_for(&mut c, &op.id, 120, is_terminal).await;
    assert_eq!(phase(&done), api::Phase::Completed, "{done:#?}");
    assert_eq!(done.hooks.len(), 2);
    let pre = &done.hooks[0];
    assert_eq!((pre.stage.as_str(), pre.exit_code), ("pre-snapshot", 4));
    assert!(pre.continued && pre.output.contains("freezing"));
    assert_eq!(done.hooks[1].exit_code, 0);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        done.snapshot_id
    );
    assert!(
        node.log_text().contains("freezing"),
        "hook output is logged"
    );

    // A failing pre hook with on_error = Fail stops the snapshot.
    let node = Node::new("");
    node.add_config("[[hooks.pre_snapshot]]\nargv = [\"/bin/false\"]\n");
    let _d = node.start();
    let mut c = node.client().await;
    let op = c
        .start_snapshot(snapshot_req(""))
        .await
        .unwrap()
        .into_inner();
    let done = wait_for(&mut c, &op.id, 60, is_terminal).await;
    assert_eq!(phase(&done), api::Phase::Failed);
    assert_eq!(reason(&done), api::FailureReason::HookFailed);
    assert!(done.snapshot_id.is_empty());
}

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
    assert_eq!(out.status.code(), Some(11), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
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

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_served_on_loopback() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let node = Node::new(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let _d = node.start();
    let mut c = node.client().await;
    let op = c
        .start_snapshot(snapshot_req(""))
        .await
        .unwrap()
        .into_inner();
    let done = wait_for(&mut c, &op.id, 120, is_terminal).await;
    let bytes = done.progress.unwrap().bytes_done;
    let text = http_get(port, "/metrics");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("hostagent_operations_total{kind=\"snapshot\",result=\"Completed\"} 1"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "hostagent_operation_bytes_total{{kind=\"snapshot\"}} {bytes}"
    )));
    assert!(text.contains("hostagent_last_success_timestamp_seconds{kind=\"snapshot\"}"));
    assert!(text.contains("hostagent_operation_duration_seconds_count{kind=\"snapshot\"} 1"));
    assert!(http_get(port, "/other").starts_with("HTTP/1.1 404"));
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_takes_a_named_snapshot_with_its_ttl() {
    let node =
        Node::new("[[schedules]]\nname = \"every-minute\"\ncron = \"* * * * *\"\nttl = \"720h\"\n");
    let _d = node.start();
    let mut c = node.client().await;
    let st = c
        .get_status(api::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.schedules[0].name, "every-minute");
    // The schedule fires at the next minute boundary.
    let deadline = Instant::now() + Duration::from_secs(90);
    let op = loop {
        let ops = c
            .list_operations(api::ListOperationsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .operations;
        if let Some(op) = ops.into_iter().find(|o| o.trigger == "scheduled") {
            break op;
        }
        assert!(Instant::now() < deadline, "the schedule never fired");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(op.schedule, "every-minute");
    let done = wait_for(&mut c, &op.id, 120, is_terminal).await;
    assert_eq!(phase(&done), api::Phase::Completed, "{done:#?}");
    assert!(
        done.snapshot_name.ends_with("-scheduled"),
        "{}",
        done.snapshot_name
    );
    let snap = c
        .describe_snapshot(api::DescribeSnapshotRequest {
            snapshot: done.snapshot_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let expires = chrono::DateTime::parse_from_rfc3339(&snap.expires).unwrap();
    let time = chrono::DateTime::parse_from_rfc3339(&snap.time).unwrap();
    let ttl = (expires - time).num_hours();
    assert!(
        (719..=720).contains(&ttl),
        "expires {} time {}",
        snap.expires,
        snap.time
    );
    assert!(snap.tags.contains(&"schedule=every-minute".to_string()));
}

#[test]
fn systemd_readiness_watchdog_and_stopping_notifications() {
    let node = Node::new("");
    let notify_path = node.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // As systemd does: WATCHDOG_PID names the service's own process.
    let child = std::process::Command::new("/bin/sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(AGENTD)
        .arg("--config")
        .arg(&node.config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .stderr(std::fs::File::create(&node.log).unwrap())
        .spawn()
        .unwrap();
    let mut d = Daemon { child: Some(child) };
    let recv = || {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification arrives");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv();
    assert!(first.contains("READY=1"), "{first}");
    // READY comes only once the socket answers.
    assert!(std::os::unix::net::UnixStream::connect(&node.socket).is_ok());
    let t = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        if recv().contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    // Three pings within a few periods of 1s: the watchdog thread keeps its pace.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    unsafe { libc::kill(d.pid(), libc::SIGTERM) };
    let mut stopping = false;
    for _ in 0..20 {
        if recv().contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping);
    assert!(d.terminate().success());
}

/// The stored tree of `dir` in a snapshot, read from the repository directly.
fn subtree_of(node: &Node, snapshot_id: &str, dir: &std::path::Path) -> hostagent::repo::Id {
    use hostagent::repo::{Id, Repository};
    let repo = Repository::open(
        std::sync::Arc::new(hostagent::store::LocalStore::new(&node.repo)),
        PASSWORD.as_bytes(),
    )
    .unwrap();
    let snap = repo
        .read_snapshot(&Id::from_hex(snapshot_id).unwrap())
        .unwrap();
    let mut id = snap.tree;
    for c in dir.components().skip(1) {
        id = repo
            .read_tree(&id)
            .unwrap()
            .get(c.as_os_str().as_encoded_bytes())
            .and_then(|n| n.subtree())
            .unwrap();
    }
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn change_hints_and_full_comparison_store_the_same_snapshot() {
    let node = Node::new("[change_hints]\nenabled = true\n");
    std::fs::create_dir_all(node.data.join("quiet/deeper")).unwrap();
    std::fs::write(node.data.join("quiet/deeper/q"), b"untouched").unwrap();
    let mut d = node.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.log_text().contains("watching the backed-up trees") {
        assert!(Instant::now() < deadline, "{}", node.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = node.client().await;
    let snap = |full: bool| api::StartSnapshotRequest {
        full,
        ..Default::default()
    };
    let op = c.start_snapshot(snap(false)).await.unwrap().into_inner();
    let first = wait_for(&mut c, &op.id, 120, is_terminal).await;
    assert_eq!(phase(&first), api::Phase::Completed, "{first:#?}");
    assert!(!first.message.contains("change hints"), "{}", first.message);
    assert!(
        node.log_text()
            .contains("comparing every entry: no snapshot was saved since the watch began")
    );

    // Changes: a file rewritten, a directory with a file added, a mode changed.
    std::fs::write(node.data.join("etc/app.conf"), b"listen = 9090 # changed\n").unwrap();
    std::fs::create_dir_all(node.data.join("etc/new")).unwrap();
    std::fs::write(node.data.join("etc/new/file"), b"new").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        node.data.join("blob.bin"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // No pause: the changes made just now must reach this snapshot's hints.
    let op = c.start_snapshot(snap(false)).await.unwrap().into_inner();
    let hinted = wait_for(&mut c, &op.id, 120, is_terminal).await;
    assert_eq!(phase(&hinted), api::Phase::Completed, "{hinted:#?}");
    assert!(
        hinted
            .message
            .contains("unchanged directories kept from the previous snapshot"),
        "{}",
        hinted.message
    );
    assert!(node.log_text().contains("using change hints"));
    let op = c.start_snapshot(snap(true)).await.unwrap().into_inner();
    let full = wait_for(&mut c, &op.id, 120, is_terminal).await;
    assert_eq!(phase(&full), api::Phase::Completed, "{full:#?}");
    assert!(!full.message.contains("change hints"), "{}", full.message);
    assert!(
        node.log_text()
            .contains("comparing every entry: a full comparison was asked for")
    );
    let hinted_tree = subtree_of(&node, &hinted.snapshot_id, &node.data);
    assert_eq!(
        hinted_tree,
        subtree_of(&node, &full.snapshot_id, &node.data)
    );
    assert_ne!(
        hinted_tree,
        subtree_of(&node, &first.snapshot_id, &node.data)
    );

    // After a restart nothing is known about what changed meanwhile: full comparison.
    assert!(d.terminate().success());
    std::fs::write(
        node.data.join("quiet/deeper/q"),
        b"changed while agentd was down",
    )
    .unwrap();
    let _d = node.start();
    let mut c = node.client().await;
    let op = c.start_snapshot(snap(false)).await.unwrap().into_inner();
    let after = wait_for(&mut c, &op.id, 120, is_terminal).await;
    assert!(!after.message.contains("change hints"), "{}", after.message);
    assert_ne!(
        subtree_of(&node, &after.snapshot_id, &node.data.join("quiet")),
        subtree_of(&node, &full.snapshot_id, &node.data.join("quiet")),
        "the change made while agentd was down is in the snapshot"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_go_to_journald_with_structured_fields() {
    use std::os::unix::fs::MetadataExt;
    let node = Node::new("");
    // A stand-in for journald's socket, mounted at its fixed path in a private mount
    // namespace, so the host's journal (if any) is untouched.
    let journal = node.dir.path().join("journal.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&journal).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let stderr = std::fs::File::create(&node.log).unwrap();
    let meta = stderr.metadata().unwrap();
    let script = "mount -t tmpfs none /run/systemd && mkdir /run/systemd/journal && \
                  touch /run/systemd/journal/socket && \
                  mount --bind \"$JOURNAL_SOCK\" /run/systemd/journal/socket && \
                  exec \"$0\" \"$@\"";
    let child = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .arg(AGENTD)
        .arg("--config")
        .arg(&node.config)
        .env("JOURNAL_SOCK", &journal)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(stderr)
        .spawn()
        .unwrap();
    let _d = Daemon { child: Some(child) };
    node.wait_ready();
    let mut c = node.client().await;
    let op = c
        .start_snapshot(snapshot_req(""))
        .await
        .unwrap()
        .into_inner();
    let done = wait_for(&mut c, &op.id, 120, is_terminal).await;
    assert_eq!(phase(&done), api::Phase::Completed);
    let mut buf = vec![0u8; 1 << 16];
    let entry = loop {
        let n = sock.recv(&mut buf).expect("journal entries arrive");
        let fields = journal_fields(&buf[..n]);
        if fields.get("MESSAGE").is_some_and(|m| m == "snapshot saved") {
            break fields;
        }
    };
    assert_eq!(entry["OPERATION_ID"], op.id, "{entry:?}");
    assert_eq!(entry["SNAPSHOT_ID"], done.snapshot_id, "{entry:?}");
    assert_eq!(
        entry["BYTES"],
        done.progress.unwrap().bytes_done.to_string()
    );
    assert_eq!(entry["SYSLOG_IDENTIFIER"], "agentd");
    // Nothing went to stderr: the journal took it all.
    assert!(!node.log_text().contains("snapshot saved"));
}

/// Parses one datagram of journald's native protocol: `KEY=value\n`, or `KEY\n`, a 64-bit
/// little-endian length, the value, `\n`.
fn journal_fields(mut b: &[u8]) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    while !b.is_empty() {
        let nl = b.iter().position(|&c| c == b'\n').unwrap_or(b.len());
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|&c| c == b'=') {
            out.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            b = &b[(nl + 1).min(b.len())..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &b[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            out.insert(key, String::from_utf8_lossy(&rest[8..8 + len]).into_owned());
            b = &rest[(8 + len + 1).min(rest.len())..];
        }
    }
    out
}
