//! Node restores refused before anything changes, none of which needs systemd: a snapshot
//! that does not exist, one that is PartiallyFailed, one that does not open with the
//! repository's key; a target that is a mount point; a safety snapshot that could not read
//! the whole tree. Each fails at its step with a reason a program reads, leaves the tree as
//! it was, records no stopped units, and never asks for a unit (`NoUnitControl` fails the
//! test if it is asked). The lab tests (`node_restore_lab.rs`, `node_restore_daemon_lab.rs`)
//! cover what needs a real systemd.

mod util;

use hostagent::node_restore::{self, NodeRestoreOptions, Step};
use hostagent::repo::{Repository, SnapshotStatus};
use hostagent::service::UnitControl;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;
use util::lease::LeaseTrap;

/// The node restores here stop no unit: being asked for one is a failure of the test.
struct NoUnitControl;

impl UnitControl for NoUnitControl {
    fn is_active(&self, unit: &str) -> hostagent::error::Result<bool> {
        panic!("asked whether {unit} is active before the node restore could go ahead")
    }
    fn stop(&self, unit: &str, _: Duration) -> hostagent::error::Result<()> {
        panic!("asked to stop {unit}")
    }
    fn start(&self, unit: &str, _: Duration) -> hostagent::error::Result<()> {
        panic!("asked to start {unit}")
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    repo: Repository,
    target: PathBuf,
    state: PathBuf,
}

/// A tree at `target`, a snapshot of it, and the tree changed since.
fn setup() -> (Setup, String) {
    let tmp = util::tempdir();
    let target = tmp.path().join("onprem");
    fs::create_dir_all(target.join("etc")).unwrap();
    fs::write(target.join("etc/exports"), "/srv/share *(rw)\n").unwrap();
    fs::write(
        target.join("data.bin"),
        util::fixture::pseudo_random(5, 300_000),
    )
    .unwrap();
    let repo = util::init_repo(&tmp.path().join("repo"));
    let snap = util::snapshot(&repo, &[&target]).id.to_hex();
    fs::write(target.join("etc/exports"), "changed since the snapshot\n").unwrap();
    let state = tmp.path().join("state");
    (
        Setup {
            repo,
            target,
            state,
            _tmp: tmp,
        },
        snap,
    )
}

fn options(s: &Setup, snapshot: &str) -> NodeRestoreOptions {
    let mut o = NodeRestoreOptions::new(snapshot, &s.target, &s.state);
    o.hostname = util::HOST.into();
    o.post_steps.clear();
    o
}

/// Path → contents of every file below `dir`.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), fs::read(e.path()).unwrap_or_default());
            }
        }
    }
    out
}

/// Runs the node restore and insists that it failed at `step` with `reason`, touching
/// nothing; returns the failure's text.
fn refused(s: &mut Setup, opts: &NodeRestoreOptions, step: Step, reason: &str) -> String {
    let before = contents(&s.target);
    refused_leaving(s, opts, step, reason, before)
}

/// [`refused`], the tree expected as `before` afterwards.
fn refused_leaving(
    s: &mut Setup,
    opts: &NodeRestoreOptions,
    step: Step,
    reason: &str,
    before: BTreeMap<PathBuf, Vec<u8>>,
) -> String {
    let failure = node_restore::run(&mut s.repo, &NoUnitControl, opts).unwrap_err();
    assert_eq!(failure.step, step, "{failure}");
    assert_eq!(failure.reason, reason, "{failure}");
    assert!(failure.report.stopped_units.is_empty());
    assert_eq!(contents(&s.target), before, "the tree was left as it was");
    assert!(
        !node_restore::state::path(&s.state).exists(),
        "no stopped units on record"
    );
    let leftovers: Vec<_> = fs::read_dir(s.target.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    failure.to_string()
}

#[test]
fn a_snapshot_that_does_not_exist_is_refused() {
    let (mut s, _) = setup();
    let opts = options(&s, "deadbeef");
    let text = refused(&mut s, &opts, Step::Validate, "snapshot validation failed");
    assert!(
        text.contains("snapshot validation failed: no snapshot matches \"deadbeef\""),
        "{text}"
    );

    let mut opts = options(&s, "latest");
    opts.source_host = Some("node-z".into());
    let text = refused(&mut s, &opts, Step::Validate, "snapshot validation failed");
    assert!(
        text.contains("no Completed snapshot of host \"node-z\""),
        "{text}"
    );
}

#[test]
fn a_partially_failed_snapshot_is_refused_and_latest_passes_it_by() {
    let (mut s, good) = setup();
    // A later snapshot of the same tree that could not store everything, as a backup that
    // met an unreadable file writes it.
    let good_id = hostagent::repo::Id::from_hex(&good).unwrap();
    let mut partial = s.repo.read_snapshot(&good_id).unwrap();
    partial.status = SnapshotStatus::PartiallyFailed;
    partial.stats.errors = 1;
    partial.errors = vec![hostagent::repo::snapshot::FileError {
        path: s.target.join("data.bin").display().to_string(),
        error: "cannot open: Permission denied".into(),
    }];
    partial.time = chrono::Utc::now().to_rfc3339();
    let partial_id = s.repo.write_snapshot(&partial).unwrap();

    let opts = options(&s, &partial_id.to_hex());
    let text = refused(&mut s, &opts, Step::Validate, "snapshot validation failed");
    assert!(
        text.contains(&format!(
            "snapshot {} is PartiallyFailed: only a Completed snapshot may be restored",
            partial_id.short()
        )),
        "{text}"
    );

    // "latest" is the latest Completed snapshot: the earlier one.
    let entry = node_restore::validate(&s.repo, &options(&s, "latest")).unwrap();
    assert_eq!(entry.id.to_hex(), good);
}

#[test]
fn a_snapshot_that_does_not_open_with_the_key_is_refused() {
    let (mut s, _) = setup();
    // A manifest of another repository (another master key) put among this one's: named
    // by its content as every manifest, so only its encryption tells.
    let other_dir = tempfile::tempdir().unwrap();
    let other = util::init_repo(&other_dir.path().join("repo"));
    let foreign = util::snapshot(&other, &[&s.target]).id;
    let key = hostagent::repo::snapshot::snapshot_key(&foreign);
    let bytes = fs::read(other_dir.path().join("repo").join(&key)).unwrap();
    fs::write(s.repo_dir().join(&key), bytes).unwrap();

    let opts = options(&s, &foreign.to_hex());
    let text = refused(&mut s, &opts, Step::Validate, "snapshot validation failed");
    assert!(
        text.contains(&format!("snapshot {}", foreign.short()))
            && text.contains("authentication failed"),
        "{text}"
    );
}

impl Setup {
    fn repo_dir(&self) -> PathBuf {
        self.target.parent().unwrap().join("repo")
    }
}

#[test]
fn a_target_that_is_or_holds_a_mount_point_is_refused_saying_what_to_do() {
    if util::skip_unless_root(
        "a_target_that_is_or_holds_a_mount_point_is_refused_saying_what_to_do",
    ) {
        return;
    }
    let (mut s, snap) = setup();
    let mut opts = options(&s, &snap);
    opts.units.clear();
    // A file system mounted below the target would leave with the old tree.
    let below = util::Tmpfs::mount(&s.target.join("mnt"), "1m");
    fs::write(below.path.join("precious"), "on another file system").unwrap();
    let text = refused(&mut s, &opts, Step::Validate, "target validation failed");
    assert!(
        text.contains(&format!(
            "{} is mounted below {}",
            below.path.display(),
            s.target.display()
        )),
        "{text}"
    );
    assert_eq!(
        fs::read_to_string(below.path.join("precious")).unwrap(),
        "on another file system"
    );
    drop(below);
    fs::remove_dir(s.target.join("mnt")).unwrap();

    let live = contents(&s.target);
    let mount = util::Tmpfs::mount(&s.target, "16m");
    // The mount hides the tree: put one like it on the mount.
    for (path, body) in &live {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, body).unwrap();
    }
    let text = refused(&mut s, &opts, Step::Validate, "target validation failed");
    let t = s.target.display();
    assert!(
        text.contains(&format!("{t} is a mount point"))
            && text.contains(&format!("--include {t}/DIR")),
        "{text}"
    );
    let err = node_restore::dry_run_plan(&s.repo, &NoUnitControl, &opts).unwrap_err();
    assert!(err.to_string().contains("is a mount point"), "{err}");

    // What the message says works: a directory below the mount point is swapped inside it.
    opts.includes = vec![s.target.join("etc")];
    let report = node_restore::run(&mut s.repo, &NoUnitControl, &opts).unwrap();
    assert!(report.safety_snapshot.is_some());
    assert_eq!(
        fs::read_to_string(s.target.join("etc/exports")).unwrap(),
        "/srv/share *(rw)\n"
    );
    drop(mount);
}

#[test]
fn a_safety_snapshot_that_misses_a_file_stops_the_restore_unless_skipped() {
    let (mut s, snap) = setup();
    // The safety snapshot's read of data.bin (changed since the snapshot, so read again)
    // meets a file that grows meanwhile.
    let growing = s.target.join("data.bin");
    util::fixture::set_mtime(&growing, 1_000_000_000, 0);
    const APPENDED: &[u8] = b"appended while the safety snapshot reads";
    // Read before the trap is set: the next open of data.bin must be the safety snapshot's.
    let mut expected = contents(&s.target);
    expected
        .get_mut(&growing)
        .unwrap()
        .extend_from_slice(APPENDED);
    let trap = LeaseTrap::set(&growing, Duration::from_secs(60), |f| {
        use std::io::{Seek, SeekFrom, Write};
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all(APPENDED).unwrap();
    });
    let opts = options(&s, &snap);

    let text = refused_leaving(
        &mut s,
        &opts,
        Step::SafetySnapshot,
        "safety snapshot failed",
        expected,
    );

    assert!(trap.sprung());
    assert!(
        text.starts_with("safety snapshot failed: 1 entries of ")
            && text.contains(&format!("({}: changed while being read", growing.display()))
            && text.contains("nothing was changed")
            && text.contains("--no-safety-snapshot"),
        "{text}"
    );
    // The partial safety snapshot is kept (what could be read), tagged as such.
    let safety: Vec<_> = s
        .repo
        .list_snapshots()
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.snapshot
                .tags
                .iter()
                .any(|t| t == node_restore::SAFETY_TAG)
        })
        .collect();
    assert_eq!(safety.len(), 1);
    assert_eq!(safety[0].snapshot.status, SnapshotStatus::PartiallyFailed);
    assert!(text.contains(&safety[0].id.short()), "{text}");

    // Skipping the safety snapshot, the restore goes ahead (no unit configured here).
    let mut opts = options(&s, &snap);
    opts.safety_snapshot = false;
    opts.units.clear();
    let report = node_restore::run(&mut s.repo, &NoUnitControl, &opts).unwrap();
    assert_eq!(report.safety_snapshot, None);
    assert_eq!(
        fs::read_to_string(s.target.join("etc/exports")).unwrap(),
        "/srv/share *(rw)\n"
    );
    assert_eq!(
        fs::read(s.target.join("data.bin")).unwrap(),
        util::fixture::pseudo_random(5, 300_000)
    );
}
