//! The agentctl maintenance commands, run as a user runs them.

use std::path::Path;
use std::process::{Command, Output};

fn agentctl(repo: &Path, pwfile: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .arg("--repo")
        .arg(repo)
        .arg("--password-file")
        .arg(pwfile)
        .arg("--quiet")
        .args(args)
        .env_remove("HOSTAGENT_PASSWORD")
        .env("HOSTAGENT_STATE_DIR", repo.parent().unwrap().join("state"))
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn forget_prune_check_delete_and_keys_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pass\n").unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    assert!(agentctl(&repo, &pw, &["repo", "init"]).status.success());
    for i in 0..3 {
        std::fs::write(src.join(format!("f{i}")), crate::util::bytes(i, 200_000)).unwrap();
        let o = agentctl(
            &repo,
            &pw,
            &["snapshot", src.to_str().unwrap(), "--tag", "daily"],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    assert!(
        std::fs::read_dir(repo.join("writers"))
            .unwrap()
            .next()
            .is_none(),
        "writer markers are removed"
    );

    let o = agentctl(&repo, &pw, &["forget", "--keep-last", "2", "--dry-run"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("Applying policy: keep 2 latest snapshots"),
        "{out}"
    );
    assert!(
        out.contains("keep 2 snapshots:") && out.contains("remove 1 snapshot:"),
        "{out}"
    );
    assert!(
        out.contains("last snapshot") && out.contains("no rule keeps it"),
        "{out}"
    );
    assert!(
        out.contains("dry run: 1 snapshots would be removed"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_dir(repo.join("snapshots")).unwrap().count(),
        3
    );

    let o = agentctl(&repo, &pw, &["forget", "--keep-last", "2", "--prune"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("removed 1 snapshots") && out.contains("prune pass 2"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_dir(repo.join("snapshots")).unwrap().count(),
        2
    );

    let o = agentctl(&repo, &pw, &["check", "--read-data"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("no errors found"));

    let o = agentctl(&repo, &pw, &["delete", "latest"]);
    assert!(
        o.status.success() && text(&o).contains("deleted snapshot"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_dir(repo.join("snapshots")).unwrap().count(),
        1
    );

    // Damage: a check exits 1 and names the file.
    let snap = agentctl(&repo, &pw, &["--json", "snapshots"]);
    let list: serde_json::Value = serde_json::from_slice(&snap.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    for e in std::fs::read_dir(repo.join("packs")).unwrap() {
        std::fs::remove_dir_all(e.unwrap().path()).unwrap();
    }
    let o = agentctl(&repo, &pw, &["check"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("cannot be fully restored"),
        "{}",
        text(&o)
    );

    // Keys: the only slot is refused; a second password works after `key add`.
    let o = agentctl(&repo, &pw, &["key", "list"]);
    let out = text(&o);
    let id = out
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let o = agentctl(&repo, &pw, &["key", "remove", &id, "--force"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("it is the only one"), "{}", text(&o));
    let pw2 = dir.path().join("pw2");
    std::fs::write(&pw2, "other\n").unwrap();
    let o = agentctl(
        &repo,
        &pw,
        &["key", "add", "--new-password-file", pw2.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = agentctl(&repo, &pw2, &["key", "list"]);
    assert!(text(&o).contains("2 key slots"), "{}", text(&o));
}
