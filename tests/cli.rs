//! The real `agentctl` binary, as an administrator runs it: output, exit codes (0 success,
//! 1 failure, 2 a command line that cannot be parsed, 3 finished with per-file errors, 10
//! no repository, 12 wrong password) and the words of its error messages.

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use util::{Agentctl, fixture};

/// An Agentctl over a repository created with the library (fast KDF) and its password.
fn fast_repo(dir: &Path) -> Agentctl {
    let ctl = Agentctl::new(dir, std::str::from_utf8(util::PASSWORD).unwrap());
    util::init_repo(&ctl.repo);
    ctl
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn snapshot_list_ls_diff_and_restore() {
    if util::skip_unless_root("snapshot_list_ls_diff_and_restore") {
        return;
    }
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    fixture::build(&src, false);
    let ctl = Agentctl::new(tmp.path(), "a password from a file");
    let init = ctl.ok(&["repo", "init"]);
    assert!(init.stdout.starts_with("created repository "), "{init:?}");
    let again = ctl.run(&["repo", "init"]);
    assert_eq!(again.code, 1);
    assert!(
        again.stderr.contains("a repository already exists here"),
        "{again:?}"
    );

    let first = ctl.ok(&["snapshot", src.to_str().unwrap(), "--tag", "daily"]);
    assert!(first.stdout.contains(" saved: "), "{first:?}");
    assert!(first.stdout.contains("1 sockets skipped"), "{first:?}");

    let list = json(&ctl.ok(&["--json", "snapshots"]).stdout);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let snap = &list[0]["snapshot"];
    assert_eq!(snap["status"], "Completed");
    assert_eq!(snap["tags"], serde_json::json!(["daily"]));
    assert_eq!(snap["paths"], serde_json::json!([src.to_str().unwrap()]));
    assert_eq!(snap["stats"]["sockets_skipped"], 1);
    let id = list[0]["id"].as_str().unwrap().to_string();

    let ls = ctl.ok(&["ls", "-l", &id[..8], src.join("sub").to_str().unwrap()]);
    let notes = format!("{}", src.join("sub/notes.txt").display());
    let line = ls
        .stdout
        .lines()
        .find(|l| l.ends_with(&notes))
        .unwrap_or_else(|| panic!("{notes} not listed: {}", ls.stdout));
    assert!(line.starts_with("-0644 "), "{line}");
    assert!(line.contains(" 40000 "), "{line}");
    let ls = ctl.ok(&[
        "ls",
        "latest",
        src.join("setuid").to_str().unwrap(),
        "--long",
    ]);
    assert!(ls.stdout.starts_with("-4755 "), "{ls:?}");

    fs::write(src.join("small.txt"), b"changed\n").unwrap();
    fs::write(src.join("added"), b"new\n").unwrap();
    fs::remove_file(src.join("empty")).unwrap();
    let second = ctl.ok(&["snapshot", src.to_str().unwrap()]);
    assert!(second.stdout.contains("1 new, 1 changed"), "{second:?}");
    let diff = ctl.ok(&["diff", &id[..8], "latest"]);
    for want in [
        format!("+ {}", src.join("added").display()),
        format!("- {}", src.join("empty").display()),
        format!("M {}", src.join("small.txt").display()),
        "1 added, 1 removed".to_string(),
    ] {
        assert!(
            diff.stdout.contains(&want),
            "{want:?} not in {}",
            diff.stdout
        );
    }

    let out = tmp.path().join("out");
    let restored = ctl.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert!(
        restored.stdout.starts_with("restored snapshot "),
        "{restored:?}"
    );
    util::compare::assert_same_tree(&src, &util::restored(&out, &src));
}

#[test]
fn wrong_password_exits_12_names_its_source_and_changes_nothing() {
    let tmp = util::tempdir();
    let ctl = fast_repo(tmp.path());
    let before = util::repo_files(&ctl.repo);
    let wrong = Agentctl {
        repo: ctl.repo.clone(),
        password_file: tmp.path().join("wrong-password"),
    };
    fs::write(&wrong.password_file, "the wrong one\n").unwrap();
    for args in [
        &["snapshots"][..],
        &["snapshot", "/etc/hostname"],
        &["--json", "snapshots"],
    ] {
        let r = wrong.run(args);
        assert_eq!(r.code, 12, "{r:?}");
        assert!(r.stderr.contains("wrong repository password"), "{r:?}");
        assert!(
            r.stderr.contains(wrong.password_file.to_str().unwrap()),
            "does not say where the password came from: {r:?}"
        );
        for secret in [
            "the wrong one",
            std::str::from_utf8(util::PASSWORD).unwrap(),
        ] {
            assert!(
                !r.stderr.contains(secret) && !r.stdout.contains(secret),
                "{r:?}"
            );
        }
        if args[0] == "--json" {
            assert_eq!(json(&r.stdout)["kind"], "WrongPassword");
        }
    }
    assert_eq!(util::repo_files(&ctl.repo), before);
}

#[test]
fn no_repository_exits_10() {
    let tmp = util::tempdir();
    let ctl = Agentctl::new(tmp.path(), "x");
    let r = ctl.run(&["snapshots"]);
    assert_eq!(r.code, 10, "{r:?}");
    assert!(r.stderr.contains("there is no repository here"), "{r:?}");
    assert!(r.stderr.contains("agentctl repo init"), "{r:?}");
    assert!(!ctl.repo.exists());
}

#[test]
fn snapshot_of_a_missing_path_exits_1() {
    let tmp = util::tempdir();
    let ctl = fast_repo(tmp.path());
    let missing = tmp.path().join("not-there");
    let r = ctl.run(&["snapshot", missing.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("cannot back up {}", missing.display())),
        "{r:?}"
    );
    assert!(r.stderr.contains("No such file or directory"), "{r:?}");
    assert!(util::objects_under(&ctl.repo, "snapshots").is_empty());
}

#[test]
fn unusable_include_paths_exit_1() {
    let tmp = util::tempdir();
    let ctl = fast_repo(tmp.path());
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    ctl.ok(&["snapshot", src.to_str().unwrap()]);
    let out = tmp.path().join("out");
    let escape = format!("{}/../../etc", src.display());
    let r = ctl.run(&[
        "restore",
        "latest",
        "--target",
        out.to_str().unwrap(),
        "--include",
        &escape,
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("must not contain '..'"), "{r:?}");
    let typo = src.join("g");
    let r = ctl.run(&[
        "restore",
        "latest",
        "--target",
        out.to_str().unwrap(),
        "--include",
        typo.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("is not in the snapshot"), "{r:?}");
    assert!(!out.exists());
}

#[test]
fn newer_repository_format_exits_1_naming_both_versions() {
    let tmp = util::tempdir();
    let ctl = fast_repo(tmp.path());
    let config = ctl.repo.join("config");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(&config, text.replace("\"version\": 1,", "\"version\": 2,")).unwrap();
    let r = ctl.run(&["snapshots"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("version 2 is newer than this build supports (version 1)"),
        "{r:?}"
    );
}

/// Entries the backup cannot read (as an unprivileged user) are listed by path; the
/// snapshot is kept as PartiallyFailed and the exit code is 3.
#[test]
fn unreadable_entries_give_a_partial_snapshot_and_exit_3() {
    if util::skip_unless_root("unreadable_entries_give_a_partial_snapshot_and_exit_3") {
        return;
    }
    let tmp = util::tempdir();
    let ctl = fast_repo(tmp.path());
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("locked")).unwrap();
    fs::write(src.join("readable"), b"anyone may read this").unwrap();
    fs::write(src.join("locked/inside"), b"hidden").unwrap();
    fs::write(src.join("secret"), b"root only").unwrap();
    fixture::chmod(&src.join("locked"), 0o700);
    fixture::chmod(&src.join("secret"), 0o600);
    util::run("chown", &["-R", "65534:65534", ctl.repo.to_str().unwrap()]);
    fixture::chmod(&ctl.password_file, 0o644);
    // A copy nobody can run whatever the permissions on the build directory.
    let bin = tmp.path().join("agentctl");
    fs::copy(env!("CARGO_BIN_EXE_agentctl"), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();

    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin);
    ctl.configure(&mut cmd, &["snapshot", src.to_str().unwrap()]);
    let r = util::finish(cmd);
    assert_eq!(r.code, 3, "{r:?}");
    let locked = format!(
        "error: {}: cannot list the directory",
        src.join("locked").display()
    );
    let secret = format!("error: {}: cannot open", src.join("secret").display());
    for want in [&locked, &secret, &"Permission denied".to_string()] {
        assert!(
            r.stderr.contains(want.as_str()),
            "{want:?} not in {}",
            r.stderr
        );
    }
    assert!(r.stderr.contains("is PartiallyFailed: 2 entries"), "{r:?}");

    let list = json(&ctl.ok(&["--json", "snapshots"]).stdout);
    let snap = &list[0]["snapshot"];
    assert_eq!(snap["status"], "PartiallyFailed");
    assert_eq!(snap["stats"]["errors"], 2);
    let paths: Vec<&str> = snap["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&src.join("secret").to_str().unwrap()),
        "{paths:?}"
    );

    // What could be read is in the snapshot.
    let out = tmp.path().join("out");
    ctl.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    let rsrc = util::restored(&out, &src);
    assert_eq!(
        fs::read(rsrc.join("readable")).unwrap(),
        b"anyone may read this"
    );
    assert!(rsrc.join("locked").is_dir());
    assert!(!rsrc.join("secret").exists() && !rsrc.join("locked/inside").exists());
}

#[test]
fn restore_with_a_missing_pack_exits_3_naming_the_paths() {
    let tmp = util::tempdir();
    let ctl = fast_repo(tmp.path());
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), fixture::pseudo_random(1, 100_000)).unwrap();
    fs::write(src.join("b"), fixture::pseudo_random(2, 100_000)).unwrap();
    ctl.ok(&["snapshot", src.to_str().unwrap()]);
    // Remove every data pack (trees have packs of their own).
    let repo = util::open_repo(&ctl.repo);
    for pack in repo.index().packs() {
        if pack.kind == hostagent::repo::BlobKind::Data {
            let key = hostagent::repo::pack::pack_key(&pack.id);
            fs::remove_file(ctl.repo.join(key)).unwrap();
        }
    }

    let out = tmp.path().join("out");
    let r = ctl.run(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(r.code, 3, "{r:?}");
    for f in ["a", "b"] {
        let want = format!("error: {}: pack ", src.join(f).display());
        assert!(r.stderr.contains(&want), "{want:?} not in {}", r.stderr);
        assert!(!util::restored(&out, &src.join(f)).exists());
    }
    assert!(r.stderr.contains("is missing"), "{r:?}");
    assert!(r.stderr.contains("restore finished with 2 errors"), "{r:?}");
    assert!(util::names_starting_with(&out, ".hostagent-restore-").is_empty());
}

#[test]
fn restore_into_a_full_file_system_exits_3() {
    if util::skip_unless_root("restore_into_a_full_file_system_exits_3") {
        return;
    }
    let tmp = util::tempdir();
    let ctl = fast_repo(tmp.path());
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("big"), fixture::pseudo_random(3, 3 << 20)).unwrap();
    ctl.ok(&["snapshot", src.to_str().unwrap()]);
    let full = util::Tmpfs::mount(&tmp.path().join("full"), "1m");
    let r = ctl.run(&["restore", "latest", "--target", full.path.to_str().unwrap()]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("error: {}: ", src.join("big").display())),
        "{r:?}"
    );
    assert!(r.stderr.contains("the file system is full"), "{r:?}");
    assert!(!util::restored(&full.path, &src.join("big")).exists());
    assert!(util::names_starting_with(&full.path, ".hostagent-restore-").is_empty());
}

/// `restore latest` takes the latest snapshot of this host, never another host's nor a node
/// restore's safety snapshot (tag pre-restore); `--host` picks another host's.
#[test]
fn restore_latest_is_this_hosts_latest_snapshot() {
    let tmp = util::tempdir();
    let ctl = fast_repo(tmp.path());
    let mine = tmp.path().join("mine");
    let theirs = tmp.path().join("theirs");
    for (dir, body) in [(&mine, "this host's"), (&theirs, "node-b's")] {
        fs::create_dir(dir).unwrap();
        fs::write(dir.join("file"), body).unwrap();
    }
    let id_of = |r: util::Run| json(&r.stdout)["id"].as_str().unwrap().to_string();
    let own = id_of(ctl.ok(&["--json", "snapshot", mine.to_str().unwrap()]));
    let other = id_of(ctl.ok(&[
        "--json",
        "snapshot",
        theirs.to_str().unwrap(),
        "--host",
        "node-b",
    ]));
    // What a node restore leaves: a newer snapshot of this host, tagged pre-restore.
    fs::write(mine.join("file"), "the tree a node restore replaced").unwrap();
    ctl.ok(&["snapshot", mine.to_str().unwrap(), "--tag", "pre-restore"]);
    let restored = |args: &[&str]| {
        let out = tmp.path().join(format!("out-{}", args.len()));
        let mut all = vec!["--json", "restore"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--target", out.to_str().unwrap()]);
        let r = ctl.ok(&all);
        (
            json(&r.stdout)["snapshot"].as_str().unwrap().to_string(),
            out,
        )
    };

    let (id, out) = restored(&["latest"]);
    assert_eq!(id, own);
    assert_eq!(
        fs::read_to_string(util::restored(&out, &mine.join("file"))).unwrap(),
        "this host's"
    );
    assert!(!util::restored(&out, &theirs).exists());

    let (id, out) = restored(&["latest", "--host", "node-b"]);
    assert_eq!(id, other);
    assert_eq!(
        fs::read_to_string(util::restored(&out, &theirs.join("file"))).unwrap(),
        "node-b's"
    );

    let r = ctl.run(&[
        "restore", "latest", "--host", "node-c", "--target", "/tmp/x",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no snapshot of host \"node-c\""), "{r:?}");
    let r = ctl.run(&[
        "restore",
        &own[..8],
        "--host",
        "node-b",
        "--target",
        "/tmp/x",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("needs snapshot \"latest\""), "{r:?}");

    // ls and diff read "latest" the same way.
    let listed = |args: &[&str]| {
        let mut all = vec!["ls"];
        all.extend_from_slice(args);
        ctl.ok(&all).stdout
    };
    let ls = listed(&["latest"]);
    assert!(ls.contains(&*mine.to_string_lossy()), "{ls}");
    assert!(!ls.contains(&*theirs.to_string_lossy()), "{ls}");
    let ls = listed(&["latest", "--host", "node-b"]);
    assert!(ls.contains(&*theirs.to_string_lossy()), "{ls}");
    assert!(!ls.contains(&*mine.to_string_lossy()), "{ls}");
    let diff = ctl
        .ok(&["diff", &own[..8], "latest", "--host", "node-b"])
        .stdout;
    assert!(
        diff.contains(&format!("+ {}", theirs.join("file").display())),
        "{diff}"
    );
    assert!(
        diff.contains(&format!("- {}", mine.join("file").display())),
        "{diff}"
    );
    let r = ctl.run(&["ls", &own[..8], "--host", "node-b"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("needs snapshot \"latest\""), "{r:?}");
}

/// Exit status 2 is for a command line that cannot be parsed; a parsed command with an
/// unusable value exits 1, as every other failure.
#[test]
fn usage_errors_exit_2_and_invalid_values_exit_1() {
    let tmp = util::tempdir();
    let ctl = fast_repo(tmp.path());
    for args in [
        &["snapshot", "--no-such-option"][..],
        &["restore", "latest"][..],
        &["no-such-command"][..],
    ] {
        let r = ctl.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains("Usage:"), "{args:?}: {r:?}");
    }
    let r = ctl.run(&["snapshot"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no paths to back up"), "{r:?}");
    let r = ctl.run(&["snapshot", "/", "--ttl", "soon"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("give a number and a unit"), "{r:?}");
    assert!(util::objects_under(&ctl.repo, "snapshots").is_empty());
}
