//! Files that change under a running `agentctl snapshot`: one that vanishes after the walk
//! listed its directory, one that grows after the walk recorded its size. Each is named
//! with its path on stderr and in the snapshot's errors, the snapshot is PartiallyFailed,
//! and agentctl exits 3; everything else is stored.
//!
//! The changes happen at fixed points of the backup, not after a sleep: a file lease
//! ([`util::lease`]) holds the backup's open() of a chosen file while the test acts.

mod util;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use util::Agentctl;
use util::lease::LeaseTrap;

fn fast_repo(dir: &Path) -> Agentctl {
    let ctl = Agentctl::new(dir, std::str::from_utf8(util::PASSWORD).unwrap());
    util::init_repo(&ctl.repo);
    ctl
}

/// The last snapshot as `agentctl --json snapshots` shows it.
fn last_snapshot(ctl: &Agentctl) -> serde_json::Value {
    let list: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["--json", "snapshots"]).stdout).unwrap();
    list.as_array().unwrap().last().unwrap()["snapshot"].clone()
}

/// (path, error) of each error recorded in a snapshot.
fn recorded_errors(snap: &serde_json::Value) -> Vec<(String, String)> {
    snap["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["error"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_file_that_vanishes_during_the_walk_is_reported_with_its_path() {
    let tmp = util::tempdir();
    let ctl = fast_repo(tmp.path());
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("doomed"), b"removed once the walk has listed it").unwrap();
    fs::write(src.join("stays"), b"stored as usual").unwrap();
    // With --exclude-caches the walk opens CACHEDIR.TAG right after listing the directory
    // and before looking at its entries: the moment to remove one of them.
    fs::write(src.join("CACHEDIR.TAG"), b"not a cache: no signature\n").unwrap();
    let doomed = src.join("doomed");
    let trap = LeaseTrap::set(
        &src.join("CACHEDIR.TAG"),
        Duration::from_secs(60),
        move |_| fs::remove_file(&doomed).unwrap(),
    );

    let r = ctl.run(&["snapshot", src.to_str().unwrap(), "--exclude-caches"]);

    assert!(trap.sprung(), "the backup never opened CACHEDIR.TAG: {r:?}");
    assert_eq!(r.code, 3, "{r:?}");
    let doomed = src.join("doomed").display().to_string();
    assert!(
        r.stderr.contains(&format!(
            "error: {doomed}: vanished before it could be read"
        )),
        "{r:?}"
    );
    assert!(r.stderr.contains("is PartiallyFailed: 1 entries"), "{r:?}");
    let snap = last_snapshot(&ctl);
    assert_eq!(snap["status"], "PartiallyFailed");
    assert_eq!(snap["stats"]["errors"], 1);
    assert_eq!(
        recorded_errors(&snap),
        vec![(doomed, "vanished before it could be read".to_string())]
    );
    let ls = ctl.ok(&["ls", "latest", src.to_str().unwrap()]).stdout;
    assert!(
        ls.contains(&src.join("stays").display().to_string()),
        "{ls}"
    );
    assert!(!ls.contains("doomed"), "{ls}");
}

#[test]
fn a_file_that_grows_while_being_read_is_reported_and_not_stored() {
    let tmp = util::tempdir();
    let ctl = fast_repo(tmp.path());
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("stays"), b"stored as usual").unwrap();
    // A sparse log: 64 MiB with 1 MiB of data at the start, appended to once the walk has
    // recorded its size and the backup opens it to read.
    let growing = src.join("growing.log");
    let f = fs::File::create(&growing).unwrap();
    f.set_len(64 << 20).unwrap();
    (&f).write_all(&util::fixture::pseudo_random(7, 1 << 20))
        .unwrap();
    drop(f);
    let trap = LeaseTrap::set(&growing, Duration::from_secs(60), |f| {
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all(b"one more line, written while the backup reads\n")
            .unwrap();
    });

    let r = ctl.run(&["snapshot", src.to_str().unwrap()]);

    assert!(trap.sprung(), "the backup never opened the file: {r:?}");
    assert_eq!(r.code, 3, "{r:?}");
    let path = growing.display().to_string();
    let why = "changed while being read; the snapshot keeps no copy of it";
    assert!(r.stderr.contains(&format!("error: {path}: {why}")), "{r:?}");
    let snap = last_snapshot(&ctl);
    assert_eq!(snap["status"], "PartiallyFailed");
    assert_eq!(snap["stats"]["errors"], 1);
    assert_eq!(recorded_errors(&snap), vec![(path, why.to_string())]);
    let ls = ctl.ok(&["ls", "latest", src.to_str().unwrap()]).stdout;
    assert!(
        ls.contains(&src.join("stays").display().to_string()),
        "{ls}"
    );
    assert!(
        !ls.contains("growing.log"),
        "no half-read copy is kept: {ls}"
    );

    // Unchanged from now on, the next snapshot stores it whole.
    let r = ctl.run(&["snapshot", src.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    let out = tmp.path().join("out");
    ctl.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(
        fs::read(util::restored(&out, &growing)).unwrap(),
        fs::read(&growing).unwrap()
    );
}
