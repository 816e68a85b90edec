//! Every configuration shipped in config/ is accepted by `agentd --check-config`, as an
//! administrator checks a file before installing it; a misspelt key in a copy is refused.

use std::path::Path;
use std::process::Command;

const AGENTD: &str = env!("CARGO_BIN_EXE_agentd");

fn check(path: &Path) -> std::process::Output {
    Command::new(AGENTD)
        .args(["--check-config", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

/// The file's text, with `group = "hostagent"` replaced by a group every Debian host has
/// (`users`) when this machine has no hostagent group: agentd checks that the group exists.
fn for_this_host(text: &str) -> String {
    let has_group = std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("hostagent:"));
    if has_group {
        text.to_string()
    } else {
        text.replace("group = \"hostagent\"", "group = \"users\"")
    }
}

#[test]
fn every_shipped_configuration_passes_check_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let name = path.file_name().unwrap().to_owned();
        let text = for_this_host(&std::fs::read_to_string(&path).unwrap());
        let copy = tmp.path().join(&name);
        std::fs::write(&copy, &text).unwrap();
        let out = check(&copy);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("the configuration is valid"),
            "{}: {out:?}",
            path.display()
        );

        // The same file with a misspelt key is refused, naming the key (exit 78).
        let bad = tmp.path().join("misspelt.toml");
        std::fs::write(
            &bad,
            text.replacen("[backup]\n", "[backup]\npahts = []\n", 1),
        )
        .unwrap();
        let out = check(&bad);
        assert_eq!(out.status.code(), Some(78), "{}: {out:?}", path.display());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("pahts"),
            "{}: {out:?}",
            path.display()
        );
        checked.push(name.to_string_lossy().into_owned());
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "agentd.example.toml",
            "production-minio.toml",
            "single-node.toml"
        ]
    );
}
