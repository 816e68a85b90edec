//! systemd (readiness, watchdog, journald), metrics, schedules and change hints.

use super::support::*;
use hostagent::api;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_served_on_loopback() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let node = Node::new(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[maintenance]\nkeep_last = 1\n"
    ));
    // The first snapshot has a big file of its own, which the second no longer has.
    std::fs::write(node.data.join("gone.bin"), pseudo_random(2 << 20, 9)).unwrap();
    let read_first: u64 = tree_contents(&node.data)
        .values()
        .map(|v| v.len() as u64)
        .sum();
    let _d = node.start();
    let mut c = node.client().await;
    let text = http_get(port, "/metrics");
    // Counters are there from the start, at zero.
    for zero in [
        "hostagent_snapshot_read_bytes_total 0\n",
        "hostagent_maintenance_freed_bytes_total 0\n",
    ] {
        assert!(text.contains(zero), "{zero}\n{text}");
    }
    assert!(
        !text.contains("hostagent_last_snapshot_dedup_ratio"),
        "{text}"
    );
    let mut snaps = Vec::new();
    for _ in 0..2 {
        let op = c
            .start_snapshot(snapshot_req(""))
            .await
            .unwrap()
            .into_inner();
        let done = wait_for(&mut c, &op.id, 120, is_terminal).await;
        assert_eq!(phase(&done), api::Phase::Completed, "{done:#?}");
        let stats = c
            .describe_snapshot(api::DescribeSnapshotRequest {
                snapshot: done.snapshot_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        snaps.push((done, stats));
        std::fs::remove_file(node.data.join("gone.bin")).ok();
    }
    let (first, s1) = &snaps[0];
    let (_, s2) = &snaps[1];
    let text = http_get(port, "/metrics");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("hostagent_operations_total{kind=\"snapshot\",result=\"Completed\"} 2"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "hostagent_operation_bytes_total{{kind=\"snapshot\"}} {}",
        first.progress.clone().unwrap().bytes_done
            + snaps[1].0.progress.clone().unwrap().bytes_done
    )));
    assert!(text.contains("hostagent_last_success_timestamp_seconds{kind=\"snapshot\"}"));
    assert!(text.contains("hostagent_operation_duration_seconds_count{kind=\"snapshot\"} 2"));
    // Read: every file of the first snapshot, nothing of the second (nothing changed but
    // a removal). New and stored: what each snapshot says it added.
    assert_eq!(s1.bytes_read, read_first);
    assert_eq!(s2.bytes_read, 0);
    assert_eq!(
        metric(&text, "hostagent_snapshot_read_bytes_total"),
        read_first as f64
    );
    assert_eq!(
        metric(&text, "hostagent_snapshot_new_bytes_total"),
        (s1.bytes_new + s2.bytes_new) as f64
    );
    assert!(s1.bytes_new >= 2 << 20, "{s1:?}");
    assert_eq!(
        metric(&text, "hostagent_snapshot_stored_bytes_total"),
        (s1.bytes_stored + s2.bytes_stored) as f64
    );
    // The dedup ratio of the last snapshot: its files' total size over what it stored
    // (only its new trees), far above 1.
    assert!(
        s2.bytes_stored > 0 && s2.total_bytes > 10 * s2.bytes_stored,
        "{s2:?}"
    );
    let ratio = metric(&text, "hostagent_last_snapshot_dedup_ratio");
    let want = s2.total_bytes as f64 / s2.bytes_stored as f64;
    assert!((ratio - want).abs() < 1e-9 * want, "{ratio} vs {want}");

    // A maintenance: the first snapshot goes (keep_last = 1), the prune frees gone.bin's
    // pack, the check finds nothing.
    let before = chrono::Utc::now().timestamp();
    let op = c
        .start_maintenance(api::StartMaintenanceRequest {
            tasks: vec![
                api::MaintenanceTask::Forget as i32,
                api::MaintenanceTask::Prune as i32,
                api::MaintenanceTask::Check as i32,
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait_for(&mut c, &op.id, 120, is_terminal).await;
    assert_eq!(phase(&done), api::Phase::Completed, "{done:#?}");
    let m = done.maintenance.unwrap();
    assert_eq!(m.removed.len(), 1);
    assert!(m.bytes_freed >= 2 << 20, "{m:#?}");
    let text = http_get(port, "/metrics");
    for want in [
        "hostagent_operations_total{kind=\"maintenance\",result=\"Completed\"} 1\n".to_string(),
        "hostagent_maintenance_snapshots_removed_total 1\n".to_string(),
        format!(
            "hostagent_maintenance_freed_bytes_total {}\n",
            m.bytes_freed
        ),
        "hostagent_last_check_problems 0\n".to_string(),
        "hostagent_operation_duration_seconds_count{kind=\"maintenance\"} 1\n".to_string(),
    ] {
        assert!(text.contains(&want), "{want}\n{text}");
    }
    let last = metric(
        &text,
        "hostagent_last_success_timestamp_seconds{kind=\"maintenance\"}",
    );
    assert!(
        last >= before as f64 && last <= chrono::Utc::now().timestamp() as f64,
        "{last}"
    );
    assert!(http_get(port, "/other").starts_with("HTTP/1.1 404"));
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
    let op = first_listed(&mut c, 90, "the schedule never fired", |o| {
        o.trigger == "scheduled"
    })
    .await;
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
