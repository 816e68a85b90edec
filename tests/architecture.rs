//! The layering the code map promises: the engine (store, repo, backup, restore and their
//! helpers) uses neither the daemon, the API, the command line, nor the async stack. The
//! daemon and the CLI depend on the engine, never the other way round. One exception, by
//! design: the S3 store drives the async AWS SDK on a runtime of its own, behind the blocking
//! `ObjectStore` trait, so it may name tokio (and only tokio).

use std::path::Path;

const ENGINE: &[&str] = &[
    "src/backup",
    "src/restore",
    "src/repo",
    "src/store",
    "src/progress.rs",
    "src/fsmeta.rs",
    "src/error.rs",
    "src/node_restore",
    "src/service",
    "src/maintenance",
];

const FORBIDDEN: &[&str] = &[
    "crate::daemon",
    "crate::api",
    "crate::cli",
    "hostagent::daemon",
    "tonic",
    "tokio",
    "prost",
];

fn rust_files(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            rust_files(&e.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

#[test]
fn the_engine_imports_neither_the_daemon_nor_the_async_stack() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for p in ENGINE {
        rust_files(&root.join(p), &mut files);
    }
    assert!(files.len() > 20, "engine sources found: {}", files.len());
    let mut offences = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                let s3_runtime = *word == "tokio" && f.starts_with(root.join("src/store/s3"));
                if code.contains(word) && !s3_runtime {
                    offences.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(offences.is_empty(), "{}", offences.join("\n"));
}
