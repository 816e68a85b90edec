//! Node restore on a real systemd node: a Debian container booted with systemd-nspawn
//! (tests/lab/lab.sh), whose systemd this test drives over its D-Bus socket while the engine
//! restores the node's /var/onprem.

#[path = "lab_support/mod.rs"]
mod lab;

use hostagent::node_restore::{self, NodeRestoreOptions, PostStep};
use hostagent::repo::{InitOptions, KdfParams, Repository};
use hostagent::service::UnitControl;
use hostagent::store::{LocalStore, ObjectStore};
use lab::{Node, populate, tree_state};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn repo_for(dir: &Path) -> (Repository, Arc<dyn ObjectStore>) {
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.join("repo")));
    let opts = InitOptions {
        kdf: KdfParams::insecure_fast(),
        ..Default::default()
    };
    (Repository::init(store.clone(), b"pw", opts).unwrap(), store)
}

fn snapshot(repo: &Repository, path: &Path) -> hostagent::repo::Id {
    let mut o = hostagent::backup::BackupOptions::new(vec![path.to_path_buf()]);
    o.hostname = "lab".into();
    hostagent::backup::backup(repo, &o).unwrap().id
}

fn options(node: &Node, state: &Path, snap: &str) -> NodeRestoreOptions {
    let mut o = NodeRestoreOptions::new(snap, node.onprem(), state);
    o.hostname = "lab".into();
    o.unit_timeout = Duration::from_secs(30);
    o.post_steps = vec![
        PostStep {
            name: "record unit state".into(),
            argv: node.in_node(&[
                "sh",
                "-c",
                "systemctl is-active autofs.service > /run/autofs-during-restore; true",
            ]),
            timeout: Duration::from_secs(30),
        },
        PostStep {
            name: "nfs exports recreation".into(),
            argv: node.in_node(&["exportfs", "-rav"]),
            timeout: Duration::from_secs(30),
        },
    ];
    o
}

#[test]
fn node_restore_stops_autofs_restores_the_tree_and_starts_it_again() {
    let node = Node::start("ha-restore");
    let tmp = tempfile::tempdir().unwrap();
    populate(&node.onprem());
    let (mut repo, _) = repo_for(tmp.path());
    let snap = snapshot(&repo, &node.onprem());
    let expected = tree_state(&node.onprem());
    // Damage the live tree: a changed file, a lost one, a stray one.
    std::fs::write(node.onprem().join("etc/exports"), "wrong\n").unwrap();
    std::fs::remove_file(node.onprem().join("etc/certs/node.key")).unwrap();
    std::fs::write(node.onprem().join("stray"), "x").unwrap();
    assert_eq!(node.is_active("autofs.service"), "active");
    assert_eq!(node.is_active("nfs-server.service"), "inactive");

    let report = node_restore::run(
        &mut repo,
        &node.systemd(),
        &options(&node, tmp.path(), &snap.to_hex()),
    )
    .unwrap();

    assert_eq!(
        report.stopped_units,
        vec!["autofs.service"],
        "only the active unit is stopped"
    );
    assert_eq!(report.started_units, vec!["autofs.service"]);
    assert_eq!(
        std::fs::read_to_string(node.root.join("run/autofs-during-restore")).ok(),
        None,
        "/run is the node's own tmpfs"
    );
    assert_eq!(
        node.exec(&["cat", "/run/autofs-during-restore"]).1,
        "inactive",
        "autofs was stopped while files were restored"
    );
    assert_eq!(
        node.is_active("autofs.service"),
        "active",
        "autofs runs again after the restore"
    );
    assert_eq!(
        tree_state(&node.onprem()),
        expected,
        "the tree is back byte for byte, with metadata"
    );
    let exports = &report.post_steps[1];
    assert!(
        exports.success && exports.argv.contains(&"exportfs".to_string()),
        "{exports:?}"
    );
    let safety = report.safety_snapshot.expect("a safety snapshot was taken");
    assert_eq!(
        repo.read_snapshot(&safety).unwrap().tags,
        vec!["pre-restore"]
    );
    assert!(
        !node_restore::state::path(tmp.path()).exists(),
        "no stopped units left on record"
    );
    let leftovers: Vec<_> = std::fs::read_dir(node.root.join("var"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("staging"))
        .collect();
    assert!(leftovers.is_empty(), "staging directories are cleaned up");
}

#[test]
fn a_unit_that_refuses_to_stop_aborts_before_any_file_changes() {
    let node = Node::start("ha-refuse");
    let tmp = tempfile::tempdir().unwrap();
    populate(&node.onprem());
    let (mut repo, _) = repo_for(tmp.path());
    let snap = snapshot(&repo, &node.onprem());
    std::fs::write(
        node.onprem().join("etc/exports"),
        "changed after the snapshot\n",
    )
    .unwrap();
    let before = tree_state(&node.onprem());
    assert!(node.exec(&["systemctl", "start", "refuse-stop.service"]).0);
    let mut opts = options(&node, tmp.path(), &snap.to_hex());
    opts.units = vec!["autofs.service".into(), "refuse-stop.service".into()];

    let failure = node_restore::run(&mut repo, &node.systemd(), &opts).unwrap_err();

    assert_eq!(failure.reason, "refuse-stop.service stop failed");
    assert!(
        failure.error.to_string().contains("refuse-stop.service"),
        "{}",
        failure.error
    );
    assert_eq!(failure.report.stopped_units, vec!["autofs.service"]);
    assert_eq!(
        failure.report.started_units,
        vec!["autofs.service"],
        "what was stopped is started again"
    );
    assert_eq!(node.is_active("autofs.service"), "active");
    assert_eq!(node.is_active("refuse-stop.service"), "active");
    assert_eq!(
        tree_state(&node.onprem()),
        before,
        "the restore was not attempted"
    );
}

#[test]
fn a_restore_that_fails_midway_leaves_the_old_tree_and_restarts_units() {
    let node = Node::start("ha-midway");
    let tmp = tempfile::tempdir().unwrap();
    populate(&node.onprem());
    let (mut repo, store) = repo_for(tmp.path());
    let snap = snapshot(&repo, &node.onprem());
    std::fs::write(node.onprem().join("etc/exports"), "the live version\n").unwrap();
    let before = tree_state(&node.onprem());
    // Lose the data packs (trees stay): the restore fails on the first file's content.
    let trees: Vec<_> = repo
        .index()
        .packs()
        .iter()
        .filter(|p| p.kind == hostagent::repo::BlobKind::Tree)
        .map(|p| p.id)
        .collect();
    for o in store.list("packs/").unwrap() {
        if !trees.iter().any(|t| o.key.ends_with(&t.to_hex())) {
            store.delete(&o.key).unwrap();
        }
    }
    let mut opts = options(&node, tmp.path(), &snap.to_hex());
    opts.safety_snapshot = false;

    let failure = node_restore::run(&mut repo, &node.systemd(), &opts).unwrap_err();

    assert_eq!(failure.reason, "file-system restore failed");
    assert!(
        failure.error.to_string().contains("missing"),
        "{}",
        failure.error
    );
    assert_eq!(failure.report.started_units, vec!["autofs.service"]);
    assert_eq!(node.is_active("autofs.service"), "active");
    assert_eq!(tree_state(&node.onprem()), before, "the old tree is intact");
    assert!(
        failure.report.post_steps.is_empty(),
        "post-restore steps do not run after a failed restore"
    );
}

#[test]
fn a_unit_that_dies_right_after_its_start_is_retried_then_reported() {
    let node = Node::start("ha-dies");
    let tmp = tempfile::tempdir().unwrap();
    populate(&node.onprem());
    // A service that runs unless the tree holds a marker: the snapshot has the marker, the
    // live tree not, so the service runs before the restore and dies right after its start.
    std::fs::write(
        node.root.join("etc/systemd/system/picky.service"),
        "[Service]\nExecStart=/bin/sh -c '[ ! -e /var/onprem/refuse ] && exec sleep infinity'\n",
    )
    .unwrap();
    std::fs::write(node.onprem().join("refuse"), "").unwrap();
    let (mut repo, _) = repo_for(tmp.path());
    let snap = snapshot(&repo, &node.onprem());
    std::fs::remove_file(node.onprem().join("refuse")).unwrap();
    assert!(node.exec(&["systemctl", "daemon-reload"]).0);
    assert!(node.exec(&["systemctl", "start", "picky.service"]).0);
    assert_eq!(node.is_active("picky.service"), "active");
    let mut opts = options(&node, tmp.path(), &snap.to_hex());
    opts.units = vec!["picky.service".into(), "autofs.service".into()];
    opts.safety_snapshot = false;

    let failure = node_restore::run(&mut repo, &node.systemd(), &opts).unwrap_err();

    assert_eq!(failure.reason, "picky.service start failed");
    let message = failure.error.to_string();
    assert!(
        message.contains("started, then stopped at once (now failed)")
            && message.contains("3 attempts")
            && message.contains("journalctl -u picky.service"),
        "{message}"
    );
    assert_eq!(failure.report.started_units, vec!["autofs.service"]);
    assert_eq!(node.is_active("autofs.service"), "active");
    assert_eq!(node.is_active("picky.service"), "failed");
    let journal = node
        .exec(&["journalctl", "--no-pager", "-u", "picky.service"])
        .1;
    assert_eq!(
        journal.matches("Main process exited").count(),
        3,
        "three start attempts:\n{journal}"
    );
    assert!(
        node.onprem().join("refuse").exists(),
        "the tree was restored"
    );
}

#[test]
fn a_failing_exports_step_is_reported_as_that_step() {
    let node = Node::start("ha-exports");
    let tmp = tempfile::tempdir().unwrap();
    populate(&node.onprem());
    let (mut repo, _) = repo_for(tmp.path());
    let snap = snapshot(&repo, &node.onprem());
    let mut opts = options(&node, tmp.path(), &snap.to_hex());
    opts.post_steps = vec![PostStep {
        name: "nfs exports recreation".into(),
        argv: node.in_node(&["exportfs", "-o", "rw", "*:/no/such/dir"]),
        timeout: Duration::from_secs(30),
    }];

    let failure = node_restore::run(&mut repo, &node.systemd(), &opts).unwrap_err();

    assert_eq!(failure.reason, "nfs exports recreation failed");
    assert_eq!(failure.report.started_units, vec!["autofs.service"]);
    assert_eq!(node.is_active("autofs.service"), "active");
}

#[test]
fn killed_mid_restore_the_units_come_back_at_the_next_start() {
    let node = Node::start("ha-killed");
    let tmp = tempfile::tempdir().unwrap();
    populate(&node.onprem());
    // Enough data that the restore is still running when it is killed.
    let big: Vec<u8> = (0..400_000_000u64)
        .map(|i| (i.wrapping_mul(0x9E3779B97F4A7C15) >> 56) as u8)
        .collect();
    std::fs::write(node.onprem().join("huge.bin"), &big).unwrap();
    drop(big);
    let (repo, _) = repo_for(tmp.path());
    snapshot(&repo, &node.onprem());
    std::fs::write(node.onprem().join("etc/exports"), "live\n").unwrap();
    let before = tree_state(&node.onprem());
    let bin = env!("CARGO_BIN_EXE_agentctl");
    let state = tmp.path().join("state");
    let common = |c: &mut Command| {
        c.env("HOSTAGENT_REPO", tmp.path().join("repo"))
            .env("HOSTAGENT_PASSWORD", "pw")
            .args([
                "--systemd-address",
                &node.bus(),
                "--state-dir",
                state.to_str().unwrap(),
            ]);
    };
    let mut cmd = Command::new(bin);
    cmd.args([
        "node-restore",
        "latest",
        "--source-host",
        "lab",
        "--no-safety-snapshot",
        "--no-post-steps",
        "--target",
        node.onprem().to_str().unwrap(),
    ]);
    common(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    // Wait until autofs is down (the restore is under way), then kill -9.
    let mut stopped = false;
    for _ in 0..300 {
        if node.is_active("autofs.service") == "inactive" {
            stopped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(stopped, "autofs was stopped");
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed before completing");
    assert_eq!(
        node.is_active("autofs.service"),
        "inactive",
        "the dead restore left autofs stopped"
    );

    let mut recover = Command::new(bin);
    recover.args(["node-restore", "--recover"]);
    common(&mut recover);
    let out = recover.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("autofs.service"));
    assert_eq!(
        node.is_active("autofs.service"),
        "active",
        "the next start brings autofs back"
    );
    assert_eq!(
        tree_state(&node.onprem()),
        before,
        "the live tree was never swapped"
    );
    let leftovers: Vec<_> = std::fs::read_dir(node.root.join("var"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("staging"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "recovery removes the staging directory"
    );
}

#[test]
fn dry_run_lists_changes_and_units_and_touches_nothing() {
    let node = Node::start("ha-dryrun");
    let tmp = tempfile::tempdir().unwrap();
    populate(&node.onprem());
    let (repo, _) = repo_for(tmp.path());
    let snap = snapshot(&repo, &node.onprem());
    std::fs::write(node.onprem().join("etc/exports"), "changed\n").unwrap();
    std::fs::remove_file(node.onprem().join("big.bin")).unwrap();
    std::fs::write(node.onprem().join("stray"), "x").unwrap();
    let before = tree_state(&node.onprem());
    let opts = options(&node, tmp.path(), &snap.to_hex());

    let plan = node_restore::dry_run_plan(&repo, &node.systemd(), &opts).unwrap();

    assert_eq!(plan.added, vec![node.onprem().join("big.bin")]);
    assert!(
        plan.changed.contains(&node.onprem().join("etc/exports")),
        "{:?}",
        plan.changed
    );
    assert_eq!(plan.removed, vec![node.onprem().join("stray")]);
    assert_eq!(plan.units_to_stop, vec!["autofs.service"]);
    assert_eq!(tree_state(&node.onprem()), before);
    assert_eq!(node.is_active("autofs.service"), "active");
    assert!(node.systemd().is_active("autofs.service").unwrap());
}
