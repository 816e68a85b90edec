//! Maintenance through agentd: retention by expiry and keep policy, prune, check; damage
//! found; the maintenance schedule, skipped while another operation runs; its configuration
//! errors.

use super::support::*;
use hostagent::api;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use tonic::Code;

/// Every pack file of a local repository, path to size.
fn packs_on_disk(repo: &Path) -> BTreeMap<std::path::PathBuf, u64> {
    let mut out = BTreeMap::new();
    fn walk(dir: &Path, out: &mut BTreeMap<std::path::PathBuf, u64>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.insert(e.path(), e.metadata().unwrap().len());
            }
        }
    }
    walk(&repo.join("packs"), &mut out);
    out
}

fn maintenance_req(
    request_id: &str,
    tasks: &[api::MaintenanceTask],
    dry_run: bool,
    subset: &str,
) -> api::StartMaintenanceRequest {
    api::StartMaintenanceRequest {
        request_id: request_id.into(),
        tasks: tasks.iter().map(|t| *t as i32).collect(),
        dry_run,
        check_read_data_subset: subset.into(),
    }
}

async fn snapshot_with(
    c: &mut hostagent::api::agent_client::AgentClient<tonic::transport::Channel>,
    tags: &[&str],
    ttl: &str,
) -> api::Operation {
    let op = c
        .start_snapshot(api::StartSnapshotRequest {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ttl: ttl.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = wait_for(c, &op.id, 120, is_terminal).await;
    assert_eq!(phase(&done), api::Phase::Completed, "{done:#?}");
    done
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_forgets_expired_and_unkept_snapshots_prunes_and_the_rest_restore() {
    use api::MaintenanceTask::{Check, Forget, Prune};
    let node = Node::new("[maintenance]\nkeep_last = 2\n");
    let _d = node.start();
    let mut c = node.client().await;

    // s0 holds the base data, in a group of its own (its tag); then four snapshots, each
    // with a file of its own: s1 (kept by no rule: only the two newest are), s2 (expires
    // one second after it is taken), s3 and s4 (the two newest).
    let s0 = snapshot_with(&mut c, &["base"], "").await;
    let mut taken = vec![(s0.snapshot_id.clone(), tree_contents(&node.data))];
    for (i, ttl) in [(1u64, ""), (2, "1s"), (3, ""), (4, "")] {
        std::fs::write(
            node.data.join("unique.bin"),
            pseudo_random(300_000, 100 + i),
        )
        .unwrap();
        let done = snapshot_with(&mut c, &[], ttl).await;
        taken.push((done.snapshot_id.clone(), tree_contents(&node.data)));
    }
    let id = |i: usize| taken[i].0.clone();
    let s2 = c
        .describe_snapshot(api::DescribeSnapshotRequest { snapshot: id(2) })
        .await
        .unwrap()
        .into_inner();
    let expires = chrono::DateTime::parse_from_rfc3339(&s2.expires).unwrap();
    while chrono::Utc::now() <= expires {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let packs_before = packs_on_disk(&node.repo);

    // A dry run says what would go and changes nothing.
    let op = c
        .start_maintenance(maintenance_req("dry-1", &[], true, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(op.id.starts_with("maintenance-"), "{}", op.id);
    assert_eq!(op.kind, api::OperationKind::Maintenance as i32);
    let dry = wait_for(&mut c, &op.id, 120, is_terminal).await;
    assert_eq!(phase(&dry), api::Phase::Completed, "{dry:#?}");
    let m = dry.maintenance.clone().unwrap();
    assert!(m.dry_run);
    assert_eq!(m.tasks, ["forget", "prune"], "the configured tasks");
    assert_eq!(
        m.policy,
        "keep 2 latest snapshots; forget expired snapshots"
    );
    assert_eq!(
        (m.snapshots_kept, m.snapshots_expired, m.snapshots_forgotten),
        (3, 1, 1)
    );
    let removed: BTreeMap<String, String> = m
        .removed
        .iter()
        .map(|r| (r.id.clone(), r.reason.clone()))
        .collect();
    assert_eq!(removed[&id(1)], "no rule keeps it");
    assert_eq!(removed[&id(2)], format!("expired {}", s2.expires));
    assert_eq!(removed.len(), 2);
    assert!(
        dry.message.starts_with("dry run: would forget 2 snapshots"),
        "{}",
        dry.message
    );
    assert!(
        dry.message.ends_with("nothing was changed"),
        "{}",
        dry.message
    );
    let listed = c
        .list_snapshots(api::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert_eq!(listed.len(), 5);
    assert_eq!(packs_on_disk(&node.repo), packs_before);

    // The real run, with a check reading every pack, followed with WatchOperation.
    let op = c
        .start_maintenance(maintenance_req(
            "run-1",
            &[Check, Prune, Forget],
            false,
            "all",
        ))
        .await
        .unwrap()
        .into_inner();
    let seen = watch_to_end(&mut c, &op.id).await;
    let done = seen.last().unwrap().clone();
    assert_eq!(phase(&done), api::Phase::Completed, "{done:#?}");
    let m = done.maintenance.clone().unwrap();
    assert_eq!(m.tasks, ["forget", "prune", "check"], "run in that order");
    assert_eq!(
        m.steps,
        [
            "opening repository",
            "forget",
            "prune pass 1",
            "prune pass 2",
            "check"
        ]
    );
    // Watchers saw the steps as they came, never going back.
    let steps_seen: Vec<usize> = seen
        .iter()
        .map(|o| o.maintenance.as_ref().map_or(0, |m| m.steps.len()))
        .collect();
    assert!(
        steps_seen.windows(2).all(|w| w[0] <= w[1]),
        "{steps_seen:?}"
    );
    assert!(!m.dry_run);
    assert_eq!(
        (m.snapshots_kept, m.snapshots_expired, m.snapshots_forgotten),
        (3, 1, 1)
    );
    // The packs of s1 and s2 held only their own file and trees: deleted whole, nothing
    // repacked, so the repository shrank by exactly what the prune reports.
    assert!(m.packs_deleted >= 2, "{m:#?}");
    assert!(m.bytes_freed >= 2 * 300_000, "{m:#?}");
    let packs_after = packs_on_disk(&node.repo);
    let (before, after): (u64, u64) = (packs_before.values().sum(), packs_after.values().sum());
    assert_eq!(after, before - m.bytes_freed, "{m:#?}");
    assert_eq!(
        packs_after.len() as u64,
        packs_before.len() as u64 - m.packs_deleted
    );
    assert!(m.packs_announced == 0 && m.missing_blobs == 0, "{m:#?}");
    // The check read every pack that is left, and found nothing wrong.
    assert!(m.checked && m.check_ok, "{m:#?}");
    assert_eq!(m.check_packs_read, packs_after.len() as u64);
    assert_eq!(m.check_bytes_read, after);
    assert!(m.check_errors.is_empty() && m.damaged_snapshots.is_empty());
    assert!(
        done.message
            .starts_with("forgot 2 snapshots (1 expired, 1 kept by no rule), kept 3; prune freed"),
        "{}",
        done.message
    );
    // The same request_id again: the same operation.
    let again = c
        .start_maintenance(maintenance_req(
            "run-1",
            &[Check, Prune, Forget],
            false,
            "all",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.id, done.id);

    // What is left: s0, s3, s4, each restoring byte-identical; s1 and s2 are gone.
    let listed: BTreeSet<String> = c
        .list_snapshots(api::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .snapshots
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, BTreeSet::from([id(0), id(3), id(4)]));
    for i in [0, 3, 4] {
        let target = node.dir.path().join(format!("restored-{i}"));
        let op = c
            .start_restore(api::StartRestoreRequest {
                snapshot: id(i),
                target: target.display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let r = wait_for(&mut c, &op.id, 120, is_terminal).await;
        assert_eq!(phase(&r), api::Phase::Completed, "s{i}: {r:#?}");
        let root = target.join(node.data.strip_prefix("/").unwrap());
        assert_eq!(
            tree_contents(&root),
            taken[i].1,
            "s{i} restores byte-identical"
        );
    }
    for i in [1, 2] {
        let e = c
            .describe_snapshot(api::DescribeSnapshotRequest { snapshot: id(i) })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "s{i}: {e:?}");
        let op = c
            .start_restore(api::StartRestoreRequest {
                snapshot: id(i),
                target: node.dir.path().join("gone").display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let r = wait_for(&mut c, &op.id, 60, is_terminal).await;
        assert_eq!(phase(&r), api::Phase::Failed, "{r:#?}");
        assert_eq!(reason(&r), api::FailureReason::NotFound, "{r:#?}");
    }
    let st = c
        .get_status(api::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let last = st
        .last_success
        .iter()
        .find(|l| l.kind == api::OperationKind::Maintenance as i32)
        .expect("a last maintenance success");
    assert_eq!(last.operation_id, done.id);
}

#[tokio::test(flavor = "multi_thread")]
async fn damage_found_by_the_check_fails_the_maintenance_naming_the_snapshot() {
    let node = Node::new("");
    let _d = node.start();
    let mut c = node.client().await;
    let snap = snapshot_with(&mut c, &[], "").await;
    // Lose the biggest pack (the one holding blob.bin's data).
    let (lost, _) = packs_on_disk(&node.repo)
        .into_iter()
        .max_by_key(|(_, size)| *size)
        .unwrap();
    std::fs::remove_file(&lost).unwrap();
    let lost_name = lost.file_name().unwrap().to_string_lossy().into_owned();

    let op = c
        .start_maintenance(maintenance_req(
            "",
            &[api::MaintenanceTask::Check],
            false,
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    let done = wait_for(&mut c, &op.id, 120, is_terminal).await;
    assert_eq!(phase(&done), api::Phase::Failed, "{done:#?}");
    assert_eq!(reason(&done), api::FailureReason::RepositoryCorrupt);
    assert!(
        done.message.starts_with(
            "the repository is damaged: check found 1 problem in the repository and 1 damaged \
             snapshot"
        ),
        "{}",
        done.message
    );
    let m = done.maintenance.unwrap();
    assert_eq!(m.tasks, ["check"]);
    assert!(m.checked && !m.check_ok);
    assert_eq!(m.check_errors.len(), 1, "{m:#?}");
    let e = &m.check_errors[0];
    assert!(
        e.starts_with(&format!("pack {} is missing", &lost_name[..8])),
        "{e}"
    );
    assert_eq!(m.damaged_snapshots.len(), 1);
    assert_eq!(m.damaged_snapshots[0].id, snap.snapshot_id);
    let blob = node.data.join("blob.bin").display().to_string();
    assert!(
        m.damaged_snapshots[0]
            .damage
            .iter()
            .any(|d| d.starts_with(&format!("{blob}: "))),
        "{:?}",
        m.damaged_snapshots[0].damage
    );
    // No success to report for maintenance.
    let st = c
        .get_status(api::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        !st.last_success
            .iter()
            .any(|l| l.kind == api::OperationKind::Maintenance as i32)
    );

    // agentctl as a client: the same finding, exit 1, the damage on stderr.
    let out = node.agentctl(&["maintenance", "--task", "check", "--wait", "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains(" Failed: the repository is damaged"),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("check error: pack {}", &lost_name[..8])),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("    {blob}: ")), "{stderr}");
    let out = node.agentctl(&["--json", "maintenance", "--task", "check", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "maintenance");
    assert_eq!(v["failure_reason"], "REPOSITORY_CORRUPT");
    assert_eq!(v["maintenance"]["check_ok"], false);
    assert_eq!(
        v["maintenance"]["damaged_snapshots"][0]["id"],
        snap.snapshot_id.as_str()
    );
    // The maintenance's own commands need agentd; forget, prune and check need --repo.
    let out = node.agentctl(&["prune"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("agentctl maintenance"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_maintenance_schedule_runs_by_itself_and_is_skipped_while_a_snapshot_runs() {
    use chrono::Timelike;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let node = Node::new(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    node.add_config("[maintenance]\ncron = \"* * * * *\"\n");

    // A snapshot that expired an hour ago, with a big file of its own, written before
    // agentd starts.
    std::fs::write(node.data.join("old.bin"), pseudo_random(1 << 20, 77)).unwrap();
    let expired_id = {
        let mut repo = hostagent::repo::Repository::open(
            std::sync::Arc::new(hostagent::store::LocalStore::new(&node.repo)),
            PASSWORD.as_bytes(),
        )
        .unwrap();
        let mut opts = hostagent::backup::BackupOptions::new(vec![node.data.clone()]);
        opts.hostname = "node-a".into();
        opts.expires = Some(chrono::Utc::now() - chrono::Duration::hours(1));
        hostagent::maintenance::backup(&mut repo, &opts)
            .unwrap()
            .id
            .to_hex()
    };
    std::fs::remove_file(node.data.join("old.bin")).unwrap();

    // Hold a snapshot running across the next minute boundary, when the schedule fires.
    let mut to_boundary = 60 - chrono::Utc::now().second() as u64;
    if to_boundary < 10 {
        tokio::time::sleep(Duration::from_secs(to_boundary + 1)).await;
        to_boundary = 60 - chrono::Utc::now().second() as u64;
    }
    node.slow_pre_hook(to_boundary as u32 + 10);
    let _d = node.start();
    let mut c = node.client().await;
    let st = c
        .get_status(api::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let sched = st
        .schedules
        .iter()
        .find(|s| s.name == "maintenance")
        .expect("the maintenance schedule is reported");
    assert_eq!(sched.cron, "* * * * *");
    assert!(sched.next.ends_with(":00Z"), "{}", sched.next);
    let snap = c
        .start_snapshot(snapshot_req(""))
        .await
        .unwrap()
        .into_inner();
    let snap = wait_for(&mut c, &snap.id, 120, is_terminal).await;
    assert_eq!(phase(&snap), api::Phase::Completed, "{snap:#?}");
    assert!(
        node.log_text().contains("scheduled maintenance skipped"),
        "{}",
        node.log_text()
    );
    let metrics = http_get(port, "/metrics");
    assert!(
        metrics.contains("hostagent_schedule_skipped_total{schedule=\"maintenance\"} 1\n"),
        "{metrics}"
    );

    // At the next minute the schedule finds agentd idle and runs.
    let op = first_listed(&mut c, 90, "the maintenance schedule never ran", |o| {
        o.kind == api::OperationKind::Maintenance as i32
    })
    .await;
    assert_eq!(
        (op.trigger.as_str(), op.schedule.as_str()),
        ("scheduled", "maintenance")
    );
    let done = wait_for(&mut c, &op.id, 120, is_terminal).await;
    assert_eq!(phase(&done), api::Phase::Completed, "{done:#?}");
    let m = done.maintenance.unwrap();
    assert_eq!(m.tasks, ["forget", "prune"]);
    assert_eq!((m.snapshots_expired, m.snapshots_forgotten), (1, 0));
    assert_eq!(m.removed[0].id, expired_id);
    // old.bin's data was most of its pack: the live rest was copied out, the pack deleted.
    assert!(m.bytes_freed > 1 << 20, "{m:#?}");
    let listed: Vec<String> = c
        .list_snapshots(api::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .snapshots
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&snap.snapshot_id));
    let metrics = http_get(port, "/metrics");
    for want in [
        "hostagent_operations_total{kind=\"maintenance\",result=\"Completed\"} 1\n".to_string(),
        "hostagent_maintenance_snapshots_removed_total 1\n".to_string(),
        format!(
            "hostagent_maintenance_freed_bytes_total {}\n",
            m.bytes_freed
        ),
    ] {
        assert!(metrics.contains(&want), "{want}\n{metrics}");
    }
    let finished = chrono::DateTime::parse_from_rfc3339(&done.finished).unwrap();
    let ts = metric(
        &metrics,
        "hostagent_last_success_timestamp_seconds{kind=\"maintenance\"}",
    );
    assert!(
        (ts - finished.timestamp() as f64).abs() <= 1.0,
        "{ts} vs {finished}"
    );
}

#[test]
fn maintenance_configuration_errors_name_key_and_file() {
    for (table, key, why) in [
        (
            "cron = \"every night\"",
            "maintenance.cron",
            "five-field cron",
        ),
        ("tasks = []", "maintenance.tasks", "empty"),
        (
            "tasks = [\"prune\", \"prune\"]",
            "maintenance.tasks",
            "listed twice",
        ),
        ("tasks = [\"purge\"]", "tasks", "purge"),
        (
            "group_by = \"node\"",
            "maintenance.group_by",
            "host, tags and paths",
        ),
        (
            "keep_tags = [\"a,b\"]",
            "maintenance.keep_tags[0]",
            "not a tag",
        ),
        (
            "check_read_data_subset = \"lots\"",
            "maintenance.check_read_data_subset",
            "not a share of the data",
        ),
        ("keep_daily = -7", "keep_daily", "invalid value"),
        ("keep_dayly = 7", "keep_dayly", "unknown field"),
    ] {
        let node = Node::new("");
        node.add_config(&format!("[maintenance]\n{table}\n"));
        let out = std::process::Command::new(AGENTD)
            .arg("--check-config")
            .arg("--config")
            .arg(&node.config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{table}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{table}: {err}");
        assert!(err.contains(why), "{table}: {err}");
        assert!(
            err.contains(&node.config.display().to_string()),
            "{table}: {err}"
        );
    }
    let node = Node::new("[[schedules]]\nname = \"maintenance\"\ncron = \"0 2 * * *\"\n");
    let out = std::process::Command::new(AGENTD)
        .arg("--config")
        .arg(&node.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("schedules[0].name"), "{err}");
    assert!(err.contains("names the maintenance schedule"), "{err}");
}
