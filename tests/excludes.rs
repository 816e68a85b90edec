//! Excludes through `agentctl snapshot`: `--exclude` globs (with a `/`, matched against the
//! whole path, `*` stopping at `/`; without, against each entry's name anywhere) and
//! `--exclude-caches` (a directory holding a CACHEDIR.TAG with the standard signature keeps
//! only that file). What the snapshot holds is read back with `agentctl ls`; the excluded
//! entries are counted in the snapshot's stats and said by agentctl.

mod util;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use util::Agentctl;

const CACHEDIR_TAG: &str =
    "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag.\n";

/// A tree with something for every rule; paths relative to `src`.
fn build(src: &Path) {
    for (path, body) in [
        ("keep.txt", "top-level text"),
        ("notes.swp", "editor swap file"),
        ("sub/data.txt", "text one level down"),
        ("sub/file.swp", "swap file one level down"),
        ("logs/app.log", "a log under logs/"),
        ("logs/app.txt", "not a log"),
        ("other/logs/app.log", "a log under another logs/"),
        ("cache/CACHEDIR.TAG", CACHEDIR_TAG),
        ("cache/blob", "cached data"),
        ("cache/deeper/more", "more cached data"),
        ("fake-cache/CACHEDIR.TAG", "no signature here\n"),
        ("fake-cache/kept", "kept: the tag is not a real one"),
    ] {
        let p = src.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }
}

/// The paths below `src` that `agentctl ls latest` lists, relative to `src`.
fn listed(ctl: &Agentctl, src: &Path) -> BTreeSet<String> {
    let ls = ctl.ok(&["ls", "latest", src.to_str().unwrap()]);
    ls.stdout
        .lines()
        .filter_map(|l| Path::new(l).strip_prefix(src).ok())
        .map(|p| p.display().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// An Agentctl over a repository created with the library (fast KDF) and its password.
fn fast_repo(dir: &Path) -> Agentctl {
    let ctl = Agentctl::new(dir, std::str::from_utf8(util::PASSWORD).unwrap());
    util::init_repo(&ctl.repo);
    ctl
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn excluded_count(ctl: &Agentctl) -> u64 {
    let list: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["--json", "snapshots"]).stdout).unwrap();
    let last = list.as_array().unwrap().last().unwrap();
    last["snapshot"]["stats"]["excluded"].as_u64().unwrap()
}

#[test]
fn globs_with_a_slash_match_the_path_and_without_one_the_name() {
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    build(&src);
    let ctl = fast_repo(tmp.path());
    let s = src.display();
    let by_path_logs = format!("{s}/logs/*.log");
    let by_path_top = format!("{s}/*.txt");

    let r = ctl.ok(&[
        "snapshot",
        src.to_str().unwrap(),
        // A bare name: any entry so named, at any depth.
        "--exclude",
        "*.swp",
        // With '/': the whole path. `*` does not cross '/', so neither pattern reaches
        // other/logs/app.log nor sub/data.txt.
        "--exclude",
        &by_path_logs,
        "--exclude",
        &by_path_top,
    ]);

    assert_eq!(
        listed(&ctl, &src),
        set(&[
            "cache",
            "cache/CACHEDIR.TAG",
            "cache/blob",
            "cache/deeper",
            "cache/deeper/more",
            "fake-cache",
            "fake-cache/CACHEDIR.TAG",
            "fake-cache/kept",
            "logs",
            "logs/app.txt",
            "other",
            "other/logs",
            "other/logs/app.log",
            "sub",
            "sub/data.txt",
        ])
    );
    // notes.swp, sub/file.swp, logs/app.log, keep.txt.
    assert_eq!(excluded_count(&ctl), 4);
    assert!(r.stdout.contains("\n4 entries excluded\n"), "{r:?}");

    // A bare name that matches a directory leaves out the directory and all below it.
    ctl.ok(&["snapshot", src.to_str().unwrap(), "--exclude", "logs"]);
    let names = listed(&ctl, &src);
    assert!(
        !names
            .iter()
            .any(|p| p.starts_with("logs") || p.contains("/logs")),
        "{names:?}"
    );
    assert!(names.contains("other"), "{names:?}");
    assert_eq!(excluded_count(&ctl), 2, "logs and other/logs");
}

#[test]
fn a_tagged_cache_directory_keeps_only_its_tag() {
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    build(&src);
    let ctl = fast_repo(tmp.path());

    let r = ctl.ok(&["snapshot", src.to_str().unwrap(), "--exclude-caches"]);

    let names = listed(&ctl, &src);
    let cache: BTreeSet<_> = names
        .iter()
        .filter(|p| p.starts_with("cache"))
        .cloned()
        .collect();
    assert_eq!(cache, set(&["cache", "cache/CACHEDIR.TAG"]));
    // A CACHEDIR.TAG without the signature is an ordinary file.
    assert!(names.contains("fake-cache/kept"), "{names:?}");
    assert!(names.contains("keep.txt") && names.contains("notes.swp"));
    // blob and deeper (a directory counts once; nothing below it is walked).
    assert_eq!(excluded_count(&ctl), 2);
    assert!(r.stdout.contains("\n2 entries excluded\n"), "{r:?}");

    // Without the option, the cache's contents are kept.
    ctl.ok(&["snapshot", src.to_str().unwrap()]);
    assert!(listed(&ctl, &src).contains("cache/deeper/more"));
    assert_eq!(excluded_count(&ctl), 0);
}

#[test]
fn an_invalid_glob_is_refused_before_anything_is_written() {
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    build(&src);
    let ctl = fast_repo(tmp.path());

    let r = ctl.run(&["snapshot", src.to_str().unwrap(), "--exclude", "[unclosed"]);

    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("exclude pattern \"[unclosed\" is not a valid glob"),
        "{r:?}"
    );
    assert!(util::objects_under(&ctl.repo, "snapshots").is_empty());
}
