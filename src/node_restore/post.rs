//! Post-restore steps: commands run with a timeout, their output kept for the record.

use serde::{Deserialize, Serialize};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A command to run after the files are back; by default `exportfs -ra`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostStep {
    /// Names the step in failure reasons: "{name} failed".
    pub name: String,
    pub argv: Vec<String>,
    pub timeout: Duration,
}

impl PostStep {
    pub fn exportfs() -> PostStep {
        PostStep {
            name: "nfs exports recreation".into(),
            argv: vec!["exportfs".into(), "-ra".into()],
            timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutput {
    pub name: String,
    pub argv: Vec<String>,
    pub success: bool,
    /// Exit status, or what stopped it ("timed out after 60s", "cannot run: ...").
    pub status: String,
    /// Combined stdout and stderr, cut to 64 KiB.
    pub output: String,
}

const MAX_OUTPUT: usize = 64 << 10;

/// Runs one command to completion or timeout (then kills it).
pub fn run(step: &PostStep) -> StepOutput {
    let mut out = StepOutput {
        name: step.name.clone(),
        argv: step.argv.clone(),
        success: false,
        status: String::new(),
        output: String::new(),
    };
    let Some((program, args)) = step.argv.split_first() else {
        out.status = "empty command".into();
        return out;
    };
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            out.status = format!("cannot run {program}: {e}");
            return out;
        }
    };
    // Drain both pipes on threads so a chatty command cannot block on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.by_ref().take(MAX_OUTPUT as u64).read_to_end(&mut buf);
                let _ = std::io::copy(&mut r, &mut std::io::sink());
            }
            buf
        })
    };
    let so = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let se = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + step.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                out.status = format!("cannot wait for {program}: {e}");
                return out;
            }
        }
    };
    let mut text = so.join().unwrap_or_default();
    text.extend(se.join().unwrap_or_default());
    text.truncate(MAX_OUTPUT);
    out.output = String::from_utf8_lossy(&text).into_owned();
    match status {
        Some(s) => {
            out.success = s.success();
            out.status = s.to_string();
        }
        None => out.status = format!("timed out after {}s", step.timeout.as_secs()),
    }
    out
}
