//! Operations: progress, restart, refusal, idempotency, cancel, timeout, SIGTERM, bad
//! requests, watchers that leave, corrupt state, hooks.

use super::support::*;
use hostagent::api;
use std::time::{Duration, Instant};
use tonic::Code;

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
    let seen = watch_to_end(&mut c, &op.id).await;
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
    let latest = c
        .describe_snapshot(api::DescribeSnapshotRequest {
            snapshot: "latest".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.id, last.snapshot_id);

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
    // "latest" is this node's latest: another host has none here, said by name.
    let op = c
        .start_restore(api::StartRestoreRequest {
            snapshot: "latest".into(),
            target: node.dir.path().join("other").display().to_string(),
            source_host: "node-b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait_for(&mut c, &op.id, 120, is_terminal).await;
    assert_eq!(phase(&done), api::Phase::Failed, "{done:#?}");
    assert_eq!(reason(&done), api::FailureReason::NotFound);
    assert!(
        done.message.contains("no snapshot of host \"node-b\""),
        "{}",
        done.message
    );
    // A host goes with "latest" only: an ID already says whose snapshot it is.
    let e = c
        .start_restore(api::StartRestoreRequest {
            snapshot: last.snapshot_id.clone(),
            target: node.dir.path().join("other").display().to_string(),
            source_host: "node-b".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("source_host"), "{}", e.message());

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
        .start_maintenance(api::StartMaintenanceRequest {
            tasks: vec![api::MaintenanceTask::Prune as i32, 7],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .starts_with("tasks: 7 is not a maintenance task"),
        "{}",
        e.message()
    );
    let e = c
        .start_maintenance(api::StartMaintenanceRequest {
            tasks: vec![api::MaintenanceTask::Check as i32],
            check_read_data_subset: "lots".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("check_read_data_subset:"),
        "{}",
        e.message()
    );
    // A data share for a check that is not asked for is a mistake, said as such.
    let e = c
        .start_maintenance(api::StartMaintenanceRequest {
            tasks: vec![api::MaintenanceTask::Prune as i32],
            check_read_data_subset: "10%".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("the tasks include no check"),
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
