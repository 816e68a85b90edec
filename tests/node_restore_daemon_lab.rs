//! Node restore through agentd, as it runs in production: agentd installed in a lab node
//! (a Debian container booted with systemd-nspawn) as the systemd service of
//! systemd/agentd.service, with its configuration, a password credential and a local
//! repository inside the node, driven from the host through its socket with the generated
//! gRPC client and with agentctl. Units are the node's own (autofs runs, nfs-server cannot
//! start in a container, refuse-stop.service refuses a manual stop).

#[path = "lab_support/mod.rs"]
mod lab;
// Only the lease trap of the tests' utilities: the rest needs no lab.
#[path = "util/lease.rs"]
#[allow(dead_code)]
mod lease;
#[path = "daemon_support/mod.rs"]
mod support;

use hostagent::api;
use hostagent::api::agent_client::AgentClient;
use hostagent::repo::{InitOptions, KdfParams, Repository};
use hostagent::store::{LocalStore, ObjectStore};
use lab::{Node, populate, tree_state};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::{phase, reason};
use tonic::transport::Channel;

const PASSWORD: &str = "lab node repository password";
const UNIT_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/agentd.service");
/// The repository, inside the node.
const REPO: &str = "/var/lib/hostagent-repo";

/// A lab node with agentd installed and running as its systemd service.
struct AgentNode {
    node: Node,
}

impl AgentNode {
    /// Boots `name`, fills /var/onprem, installs agentd with `node_restore` (TOML: the
    /// `[node_restore]` table) added to its configuration, and starts it.
    fn install(name: &str, node_restore: &str) -> AgentNode {
        let node = Node::start(name);
        let root = node.root.clone();
        populate(&node.onprem());
        std::fs::copy(support::AGENTD, root.join("usr/bin/agentd")).unwrap();
        std::fs::copy(UNIT_FILE, root.join("etc/systemd/system/agentd.service")).unwrap();
        let etc = root.join("etc/hostagent");
        std::fs::create_dir_all(&etc).unwrap();
        let pw = etc.join("repo-password");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        Repository::init(
            Arc::new(LocalStore::new(root.join(&REPO[1..]))),
            PASSWORD.as_bytes(),
            InitOptions {
                kdf: KdfParams::insecure_fast(),
                ..Default::default()
            },
        )
        .unwrap();
        std::fs::write(
            etc.join("agentd.toml"),
            format!(
                r#"node = "{name}"
[repository]
password_credential = "repo-password"
[repository.local]
path = "{REPO}"
[backup]
paths = ["/var/onprem"]
threads = 2
[daemon]
state_dir = "/var/lib/hostagent"
{node_restore}
"#
            ),
        )
        .unwrap();
        let a = AgentNode { node };
        let (ok, out) = a.node.exec(&[
            "sh",
            "-c",
            "systemctl daemon-reload && systemctl start agentd 2>&1",
        ]);
        assert!(ok, "agentd did not start: {out}\n{}", a.journal());
        a.wait_ready();
        a
    }

    fn journal(&self) -> String {
        self.node
            .exec(&["journalctl", "-u", "agentd", "--no-pager", "-n", "60"])
            .1
    }

    /// agentd's socket, as the host reaches it.
    fn socket(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/run/hostagent/agent.sock",
            self.node.pid
        ))
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "agentd's socket does not answer; its journal:\n{}",
            self.journal()
        );
    }

    async fn client(&self) -> AgentClient<Channel> {
        support::client(&self.socket()).await
    }

    fn agentctl(&self, args: &[&str]) -> Output {
        Command::new(support::AGENTCTL)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .env_remove("HOSTAGENT_REPO")
            .output()
            .unwrap()
    }

    /// The node's repository, opened from the host.
    fn repo(&self) -> (Repository, Arc<dyn ObjectStore>) {
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalStore::new(self.node.root.join(&REPO[1..])));
        (
            Repository::open(store.clone(), PASSWORD.as_bytes()).unwrap(),
            store,
        )
    }

    fn onprem(&self) -> PathBuf {
        self.node.onprem()
    }

    /// A snapshot of /var/onprem taken by agentd; returns its ID.
    async fn snapshot(&self, c: &mut AgentClient<Channel>) -> String {
        let op = c
            .start_snapshot(support::snapshot_req(""))
            .await
            .unwrap()
            .into_inner();
        let op = support::wait_for(c, &op.id, 120, support::is_terminal).await;
        assert_eq!(phase(&op), api::Phase::Completed, "{op:#?}");
        op.snapshot_id
    }

    fn staging_leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.node.root.join("var"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("staging"))
            .collect()
    }

    /// No staging directory is left beside the target.
    fn assert_no_staging_left(&self) {
        let left = self.staging_leftovers();
        assert!(left.is_empty(), "staging left behind: {left:?}");
    }

    /// No record of stopped units is left: every unit the agent stopped was started again.
    fn assert_no_stopped_units_on_record(&self) {
        let record = self
            .node
            .root
            .join("var/lib/hostagent")
            .join(hostagent::node_restore::state::STATE_FILE);
        assert!(
            !record.exists(),
            "stopped units still on record at {}",
            record.display()
        );
    }
}

/// The restore's reads of file contents held at their first open of a data pack, as a slow
/// store would hold them: the test acts while the restore is mid-way, then lets it go on.
struct HeldReads {
    opened: std::sync::mpsc::Receiver<PathBuf>,
    release: Arc<AtomicBool>,
    traps: Vec<lease::LeaseTrap>,
}

impl HeldReads {
    /// A lease on every data pack of the node's repository (agentd has none of them open).
    fn set(a: &AgentNode) -> HeldReads {
        let (repo, _) = a.repo();
        let (tx, opened) = std::sync::mpsc::channel();
        let release = Arc::new(AtomicBool::new(false));
        let mut traps = Vec::new();
        for pack in repo.index().packs() {
            if pack.kind != hostagent::repo::BlobKind::Data {
                continue;
            }
            let path = a
                .node
                .root
                .join(&REPO[1..])
                .join(hostagent::repo::pack::pack_key(&pack.id));
            let (tx, release, shown) = (tx.clone(), release.clone(), path.clone());
            traps.push(lease::LeaseTrap::set(
                &path,
                Duration::from_secs(180),
                move |_| {
                    let _ = tx.send(shown);
                    while !release.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                },
            ));
        }
        assert!(!traps.is_empty(), "no data pack to hold");
        HeldReads {
            opened,
            release,
            traps,
        }
    }

    /// Waits until the restore opens a data pack (and is held there).
    async fn wait_opened(&self) -> PathBuf {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(p) = self.opened.try_recv() {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "the restore never read file contents"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn release(self) {
        self.release.store(true, Ordering::Relaxed);
        drop(self.traps);
    }
}

fn node_restore(snapshot: &str, target: &str) -> api::StartNodeRestoreRequest {
    api::StartNodeRestoreRequest {
        snapshot: snapshot.into(),
        target: target.into(),
        ..Default::default()
    }
}

async fn run_to_end(
    c: &mut AgentClient<Channel>,
    req: api::StartNodeRestoreRequest,
) -> api::Operation {
    let op = c.start_node_restore(req).await.unwrap().into_inner();
    assert_eq!(
        api::OperationKind::try_from(op.kind).unwrap(),
        api::OperationKind::NodeRestore
    );
    support::wait_for(c, &op.id, 180, support::is_terminal).await
}

fn result(op: &api::Operation) -> &api::NodeRestoreResult {
    op.node_restore
        .as_ref()
        .unwrap_or_else(|| panic!("no node_restore in {op:#?}"))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Damages the live tree: a changed file, a lost one, a stray one.
fn damage(onprem: &Path) {
    std::fs::write(onprem.join("etc/exports"), "wrong\n").unwrap();
    std::fs::remove_file(onprem.join("etc/certs/node.key")).unwrap();
    std::fs::write(onprem.join("stray"), "x").unwrap();
}

const RECORD_AUTOFS: &str = r#"
[[node_restore.post_restore]]
name = "record autofs state"
argv = ["/bin/sh", "-c", "systemctl is-active autofs.service > /var/lib/hostagent/autofs-during-restore; true"]
"#;

const EXPORTS: &str = r#"
[[node_restore.post_restore]]
name = "nfs exports recreation"
argv = ["/usr/sbin/exportfs", "-ra"]
timeout = "60s"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn agentd_restores_the_node_with_autofs_stopped_and_started_again() {
    let a = AgentNode::install("nrd-happy", &format!("{RECORD_AUTOFS}{EXPORTS}"));
    let mut c = a.client().await;
    let out = a.agentctl(&["snapshot", "--wait"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let expected = tree_state(&a.onprem());
    damage(&a.onprem());
    let damaged = tree_state(&a.onprem());
    assert_eq!(a.node.is_active("autofs.service"), "active");
    assert_eq!(a.node.is_active("nfs-server.service"), "inactive");

    // The dry run lists the changes and the units, and changes nothing.
    let out = a.agentctl(&["node-restore", "latest", "--dry-run"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "M /var/onprem/etc/exports",
        "+ /var/onprem/etc/certs/node.key",
        "- /var/onprem/stray",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in\n{stdout}");
    }
    assert!(
        stdout.contains("units to stop: autofs.service;"),
        "{stdout}"
    );
    eprintln!("$ agentctl node-restore latest --dry-run\n{stdout}");
    assert_eq!(
        tree_state(&a.onprem()),
        damaged,
        "a dry run changes nothing"
    );
    assert_eq!(a.node.is_active("autofs.service"), "active");

    // The restore, followed step by step with agentctl.
    let started = Instant::now();
    let out = a.agentctl(&["node-restore", "latest", "--target", "/var/onprem"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let steps: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, s)| s))
        .collect();
    let want = [
        "opening repository",
        "validate",
        "safety snapshot",
        "stop units",
        "restore",
        "post-restore: record autofs state",
        "post-restore: nfs exports recreation",
        "start units",
    ];
    assert_eq!(
        &steps[..want.len()],
        want,
        "the steps as printed:\n{stdout}"
    );
    assert!(
        stdout.contains(" Completed: node restore of /var/onprem"),
        "{stdout}"
    );
    eprintln!(
        "$ agentctl node-restore latest\n{stdout}{stderr}(took {:?})",
        started.elapsed()
    );

    assert_eq!(
        std::fs::read_to_string(a.node.root.join("var/lib/hostagent/autofs-during-restore"))
            .unwrap()
            .trim(),
        "inactive",
        "autofs was stopped while the tree was restored"
    );
    assert_eq!(
        a.node.is_active("autofs.service"),
        "active",
        "autofs runs again"
    );
    assert_eq!(
        a.node.is_active("nfs-server.service"),
        "inactive",
        "an inactive unit is neither stopped nor started"
    );
    assert_eq!(
        tree_state(&a.onprem()),
        expected,
        "the tree is back byte for byte, with owners, modes, xattrs and ACLs"
    );
    a.assert_no_staging_left();

    let op = c
        .list_operations(api::ListOperationsRequest { limit: 1 })
        .await
        .unwrap()
        .into_inner()
        .operations
        .remove(0);
    assert_eq!(phase(&op), api::Phase::Completed, "{op:#?}");
    let r = result(&op);
    assert_eq!(r.stopped_units, vec!["autofs.service"]);
    assert_eq!(r.started_units, vec!["autofs.service"]);
    assert_eq!(r.failed_step, "");
    let exports = &r.post_steps[1];
    assert_eq!(exports.name, "nfs exports recreation");
    assert_eq!(exports.argv, vec!["/usr/sbin/exportfs", "-ra"]);
    assert!(exports.success, "{exports:#?}");
    let safety = c
        .describe_snapshot(api::DescribeSnapshotRequest {
            snapshot: r.safety_snapshot_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        safety.tags.contains(&"pre-restore".to_string()),
        "{safety:#?}"
    );
    a.assert_no_stopped_units_on_record();

    // A partial restore: only the chosen directory comes back.
    std::fs::write(a.onprem().join("etc/exports"), "wrong again\n").unwrap();
    std::fs::write(a.onprem().join("big.bin"), "changed, and not restored").unwrap();
    let mut req = node_restore("latest", "/var/onprem");
    req.include = vec!["/var/onprem/etc".into()];
    req.skip_safety_snapshot = true;
    let op = run_to_end(&mut c, req).await;
    assert_eq!(phase(&op), api::Phase::Completed, "{op:#?}");
    assert_eq!(
        std::fs::read_to_string(a.onprem().join("etc/exports")).unwrap(),
        "/srv/share *(rw)\n"
    );
    assert_eq!(
        std::fs::read_to_string(a.onprem().join("big.bin")).unwrap(),
        "changed, and not restored"
    );

    // Cross-node drill: another host's snapshot restored to another target; the live tree
    // is not touched.
    let other = tempfile::tempdir().unwrap();
    let other_tree = other.path().join("onprem");
    populate(&other_tree);
    std::fs::write(other_tree.join("from-node-b"), "b").unwrap();
    let (repo, _) = a.repo();
    let mut o = hostagent::backup::BackupOptions::new(vec![other_tree.clone()]);
    o.hostname = "node-b".into();
    hostagent::backup::backup(&repo, &o).unwrap();
    let live = tree_state(&a.onprem());
    let mut req = node_restore("latest", "/var/drill");
    req.source_host = "node-b".into();
    req.source_path = other_tree.display().to_string();
    let op = run_to_end(&mut c, req).await;
    assert_eq!(phase(&op), api::Phase::Completed, "{op:#?}");
    assert_eq!(
        tree_state(&a.node.root.join("var/drill")),
        tree_state(&other_tree),
        "node-b's tree, in the drill target"
    );
    assert_eq!(tree_state(&a.onprem()), live, "production untouched");
    assert_eq!(a.node.is_active("autofs.service"), "active");

    // A failing exports step fails the operation under its name, after the tree is back,
    // and the units are started all the same.
    std::fs::write(a.node.root.join("etc/exports"), "/no/such/dir *(rw)\n").unwrap();
    std::fs::write(a.onprem().join("etc/exports"), "wrong\n").unwrap();
    let op = run_to_end(&mut c, node_restore("latest", "/var/onprem")).await;
    assert_eq!(phase(&op), api::Phase::Failed, "{op:#?}");
    assert_eq!(reason(&op), api::FailureReason::UnitControl);
    let r = result(&op);
    assert_eq!(r.failed_step, "nfs exports recreation failed");
    assert!(
        op.message.starts_with("nfs exports recreation failed")
            && op.message.contains("the restored tree is in place"),
        "{}",
        op.message
    );
    assert!(!r.post_steps[1].success);
    assert!(
        r.post_steps[1].output.contains("/no/such/dir"),
        "{:#?}",
        r.post_steps[1]
    );
    assert_eq!(r.started_units, vec!["autofs.service"]);
    assert_eq!(a.node.is_active("autofs.service"), "active");
    assert_eq!(
        std::fs::read_to_string(a.onprem().join("etc/exports")).unwrap(),
        "/srv/share *(rw)\n"
    );
    let out = a.agentctl(&["watch", &op.id]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("failed step: nfs exports recreation failed"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_unit_that_refuses_to_stop_fails_the_restore_before_any_file_changes() {
    let a = AgentNode::install(
        "nrd-refuse",
        "[node_restore]\nunits = [\"autofs.service\", \"refuse-stop.service\"]\n",
    );
    let mut c = a.client().await;
    let snap = a.snapshot(&mut c).await;
    std::fs::write(
        a.onprem().join("etc/exports"),
        "changed after the snapshot\n",
    )
    .unwrap();
    let before = tree_state(&a.onprem());
    assert!(
        a.node
            .exec(&["systemctl", "start", "refuse-stop.service"])
            .0
    );

    let op = run_to_end(&mut c, node_restore(&snap, "/var/onprem")).await;

    assert_eq!(phase(&op), api::Phase::Failed, "{op:#?}");
    assert_eq!(reason(&op), api::FailureReason::UnitControl);
    let r = result(&op);
    assert_eq!(r.failed_step, "refuse-stop.service stop failed");
    assert!(
        op.message.starts_with("refuse-stop.service stop failed")
            && op.message.contains("the live tree was not changed"),
        "{}",
        op.message
    );
    assert_eq!(r.stopped_units, vec!["autofs.service"]);
    assert_eq!(r.started_units, vec!["autofs.service"], "started again");
    assert_eq!(a.node.is_active("autofs.service"), "active");
    assert_eq!(a.node.is_active("refuse-stop.service"), "active");
    assert_eq!(
        tree_state(&a.onprem()),
        before,
        "the restore was not attempted"
    );
    assert!(r.post_steps.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_that_fails_midway_leaves_the_old_tree_and_restarts_units() {
    let a = AgentNode::install("nrd-midway", "");
    let mut c = a.client().await;
    let snap = a.snapshot(&mut c).await;
    std::fs::write(a.onprem().join("etc/exports"), "the live version\n").unwrap();
    let before = tree_state(&a.onprem());
    // Lose the data packs (trees stay): the restore fails on the first file's content.
    let (repo, store) = a.repo();
    let trees: Vec<String> = repo
        .index()
        .packs()
        .iter()
        .filter(|p| p.kind == hostagent::repo::BlobKind::Tree)
        .map(|p| p.id.to_hex())
        .collect();
    for o in store.list("packs/").unwrap() {
        if !trees.iter().any(|t| o.key.ends_with(t)) {
            store.delete(&o.key).unwrap();
        }
    }
    let mut req = node_restore(&snap, "/var/onprem");
    req.skip_safety_snapshot = true;

    let op = run_to_end(&mut c, req).await;

    assert_eq!(phase(&op), api::Phase::Failed, "{op:#?}");
    let r = result(&op);
    assert_eq!(r.failed_step, "file-system restore failed");
    assert!(
        op.message.starts_with("file-system restore failed")
            && op.message.contains("the live tree was not changed"),
        "{}",
        op.message
    );
    assert_eq!(r.stopped_units, vec!["autofs.service"]);
    assert_eq!(r.started_units, vec!["autofs.service"]);
    assert_eq!(a.node.is_active("autofs.service"), "active");
    assert_eq!(tree_state(&a.onprem()), before, "the old tree is intact");
    assert!(
        r.post_steps.is_empty(),
        "no post-restore step after a failed restore"
    );
    a.assert_no_staging_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn agentd_killed_mid_restore_starts_the_units_again_when_it_comes_back() {
    // A post-restore step that holds the restore while autofs is stopped.
    let a = AgentNode::install(
        "nrd-killed",
        "[[node_restore.post_restore]]\nname = \"hold\"\nargv = [\"/bin/sleep\", \"600\"]\n\
         timeout = \"15m\"\n",
    );
    let mut c = a.client().await;
    let snap = a.snapshot(&mut c).await;
    let expected = tree_state(&a.onprem());
    damage(&a.onprem());
    let op = c
        .start_node_restore(node_restore(&snap, "/var/onprem"))
        .await
        .unwrap()
        .into_inner();
    support::wait_for(&mut c, &op.id, 120, |o| {
        support::step(o) == "post-restore: hold"
    })
    .await;
    assert_eq!(a.node.is_active("autofs.service"), "inactive");
    let main_pid = a
        .node
        .exec(&["systemctl", "show", "-P", "MainPID", "agentd"])
        .1;

    let (ok, out) = a.node.exec(&[
        "systemctl",
        "kill",
        "--kill-whom=main",
        "--signal=KILL",
        "agentd.service",
    ]);
    assert!(ok, "{out}");
    drop(c);

    // Restart=on-failure brings agentd back; it starts autofs before it serves.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pid = a
            .node
            .exec(&["systemctl", "show", "-P", "MainPID", "agentd"])
            .1;
        if pid != main_pid && pid != "0" && a.node.is_active("agentd.service") == "active" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agentd did not come back:\n{}",
            a.journal()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    a.wait_ready();
    assert_eq!(
        a.node.is_active("autofs.service"),
        "active",
        "agentd started autofs again at its start"
    );
    let mut c = a.client().await;
    let op = c
        .get_operation(api::GetOperationRequest {
            operation_id: op.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(phase(&op), api::Phase::Failed, "{op:#?}");
    assert_eq!(reason(&op), api::FailureReason::AgentRestarted);
    assert!(
        op.message.starts_with("agent restarted")
            && op.message.contains("started again: autofs.service"),
        "{}",
        op.message
    );
    assert_eq!(result(&op).started_units, vec!["autofs.service"]);
    assert_eq!(
        tree_state(&a.onprem()),
        expected,
        "the tree had been swapped in before the kill"
    );
    a.assert_no_staging_left();
    a.assert_no_stopped_units_on_record();
}

#[tokio::test(flavor = "multi_thread")]
async fn canceling_mid_file_restore_keeps_the_old_tree_and_starts_the_units() {
    let a = AgentNode::install("nrd-cancel", EXPORTS);
    let mut c = a.client().await;
    let snap = a.snapshot(&mut c).await;
    damage(&a.onprem());
    let damaged = tree_state(&a.onprem());
    let held = HeldReads::set(&a);
    let op = c
        .start_node_restore(node_restore(&snap, "/var/onprem"))
        .await
        .unwrap()
        .into_inner();

    let pack = held.wait_opened().await;
    let now = c
        .get_operation(api::GetOperationRequest {
            operation_id: op.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(support::step(&now), "restore", "{now:#?}");
    assert_eq!(a.node.is_active("autofs.service"), "inactive");
    eprintln!("restore held at {}; canceling", pack.display());
    c.cancel_operation(api::CancelOperationRequest {
        operation_id: op.id.clone(),
    })
    .await
    .unwrap();
    held.release();
    let op = support::wait_for(&mut c, &op.id, 120, support::is_terminal).await;

    assert_eq!(phase(&op), api::Phase::Canceled, "{op:#?}");
    assert_eq!(reason(&op), api::FailureReason::CanceledByUser);
    let r = result(&op);
    assert_eq!(r.stopped_units, vec!["autofs.service"]);
    assert_eq!(r.started_units, vec!["autofs.service"], "started again");
    assert!(
        r.post_steps.is_empty(),
        "no post-restore step after a cancel"
    );
    assert_eq!(a.node.is_active("autofs.service"), "active");
    assert_eq!(tree_state(&a.onprem()), damaged, "the old tree is intact");
    a.assert_no_staging_left();
    a.assert_no_stopped_units_on_record();
}

#[tokio::test(flavor = "multi_thread")]
async fn agentd_killed_mid_file_restore_comes_back_with_the_old_tree_and_the_units() {
    let a = AgentNode::install("nrd-killfile", EXPORTS);
    let mut c = a.client().await;
    let snap = a.snapshot(&mut c).await;
    damage(&a.onprem());
    let damaged = tree_state(&a.onprem());
    let held = HeldReads::set(&a);
    let op = c
        .start_node_restore(node_restore(&snap, "/var/onprem"))
        .await
        .unwrap()
        .into_inner();
    held.wait_opened().await;
    let now = c
        .get_operation(api::GetOperationRequest {
            operation_id: op.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(support::step(&now), "restore", "{now:#?}");
    assert_eq!(a.node.is_active("autofs.service"), "inactive");
    let main_pid = a
        .node
        .exec(&["systemctl", "show", "-P", "MainPID", "agentd"])
        .1;

    let (ok, out) = a.node.exec(&[
        "systemctl",
        "kill",
        "--kill-whom=main",
        "--signal=KILL",
        "agentd.service",
    ]);
    assert!(ok, "{out}");
    held.release();
    drop(c);

    // Restart=on-failure brings agentd back; it starts autofs and removes the staging
    // directory before it serves.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pid = a
            .node
            .exec(&["systemctl", "show", "-P", "MainPID", "agentd"])
            .1;
        if pid != main_pid && pid != "0" && a.node.is_active("agentd.service") == "active" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agentd did not come back:\n{}",
            a.journal()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    a.wait_ready();
    assert_eq!(a.node.is_active("autofs.service"), "active");
    let mut c = a.client().await;
    let op = c
        .get_operation(api::GetOperationRequest {
            operation_id: op.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(phase(&op), api::Phase::Failed, "{op:#?}");
    assert_eq!(reason(&op), api::FailureReason::AgentRestarted);
    assert!(
        op.message.starts_with("agent restarted")
            && op.message.contains("started again: autofs.service"),
        "{}",
        op.message
    );
    assert_eq!(
        tree_state(&a.onprem()),
        damaged,
        "killed before the swap: the old tree is intact"
    );
    a.assert_no_staging_left();
    a.assert_no_stopped_units_on_record();
}
