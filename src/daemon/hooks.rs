//! Pre- and post-snapshot hooks: programs run around a snapshot (to freeze and thaw a
//! database, say), each with a timeout and an `on_error` policy.
//!
//! A hook runs without a shell, in its own process group so that a timeout or a
//! cancellation kills everything it started, and with `PR_SET_PDEATHSIG` so that it dies
//! with the agent instead of outliving it. Its output goes to the log line by line (with the
//! operation ID) and its tail into the operation record.

use super::config::{Hook, OnError};
use super::record::HookRecord;
use crate::progress::Progress;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Output kept in the record, from the end.
const OUTPUT_TAIL: usize = 4096;

/// How a hook ended, for the caller's decision.
pub struct HookRun {
    pub record: HookRecord,
    pub ok: bool,
    /// The operation was canceled while the hook ran (the hook was killed).
    pub cancelled: bool,
}

/// Runs one hook to its end, its timeout, or the operation's cancellation.
pub fn run(
    stage: &str,
    hook: &Hook,
    operation_id: &str,
    extra_env: &[(&str, String)],
    progress: &Progress,
) -> HookRun {
    let started = Instant::now();
    let mut record = HookRecord {
        stage: stage.to_string(),
        argv: hook.argv.clone(),
        exit_code: -1,
        timed_out: false,
        output: String::new(),
        duration_ms: 0,
        continued: false,
    };
    tracing::info!(operation_id, stage, argv = ?hook.argv, "running hook");
    let mut cmd = Command::new(&hook.argv[0]);
    cmd.args(&hook.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("HOSTAGENT_OPERATION_ID", operation_id)
        .env("HOSTAGENT_HOOK_STAGE", stage)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .process_group(0);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // agentd runs with a private umask; hooks get the usual one.
            libc::umask(0o022);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            record.output = format!("cannot start {}: {e}", hook.argv[0]);
            tracing::warn!(operation_id, stage, error = %e, "hook did not start");
            return finish(record, hook, started, false);
        }
    };
    let tail = Arc::new(Mutex::new(Vec::<u8>::new()));
    let readers = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .zip(["stdout", "stderr"])
    .map(|(stream, name)| {
        let tail = tail.clone();
        let id = operation_id.to_string();
        let program = hook.argv[0].clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line);
                tracing::info!(operation_id = %id, hook = %program, stream = name, "{text}");
                let mut t = tail.lock().unwrap();
                t.extend_from_slice(&line);
                t.push(b'\n');
                if t.len() > 2 * OUTPUT_TAIL {
                    let cut = t.len() - OUTPUT_TAIL;
                    t.drain(..cut);
                }
            }
        })
    })
    .collect::<Vec<_>>();

    let pid = child.id() as i32;
    let mut cancelled = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(operation_id, stage, error = %e, "cannot wait for hook");
                break None;
            }
        }
        let timed_out = started.elapsed() >= hook.timeout.0;
        if timed_out || progress.is_cancelled() {
            record.timed_out = timed_out;
            cancelled = !timed_out;
            // SAFETY: signalling the hook's own process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The pipes close when the group is gone; a grandchild that escaped the group and keeps
    // them open must not hold the operation, so wait only briefly.
    let deadline = Instant::now() + Duration::from_secs(2);
    for r in readers {
        while !r.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if r.is_finished() {
            let _ = r.join();
        }
    }
    let out = tail.lock().unwrap();
    let start = out.len().saturating_sub(OUTPUT_TAIL);
    record.output = String::from_utf8_lossy(&out[start..]).into_owned();
    drop(out);
    if record.timed_out {
        record.output.push_str(&format!(
            "[killed after the timeout of {:?}]\n",
            hook.timeout.0
        ));
    }
    let ok = match status {
        Some(s) => {
            record.exit_code = s.code().unwrap_or(-1);
            s.success() && !record.timed_out && !cancelled
        }
        None => false,
    };
    let mut run = finish(record, hook, started, ok);
    run.cancelled = cancelled;
    run
}

fn finish(mut record: HookRecord, hook: &Hook, started: Instant, ok: bool) -> HookRun {
    record.duration_ms = started.elapsed().as_millis() as u64;
    record.continued = !ok && hook.on_error == OnError::Continue;
    if ok {
        tracing::info!(stage = %record.stage, argv = ?record.argv, duration_ms = record.duration_ms, "hook succeeded");
    } else {
        tracing::warn!(
            stage = %record.stage, argv = ?record.argv, exit_code = record.exit_code,
            timed_out = record.timed_out, continued = record.continued, "hook failed"
        );
    }
    HookRun {
        record,
        ok,
        cancelled: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::Dur;

    fn hook(argv: &[&str], timeout_ms: u64, on_error: OnError) -> Hook {
        Hook {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout: Dur(Duration::from_millis(timeout_ms)),
            on_error,
        }
    }

    #[test]
    fn output_exit_code_and_environment_are_recorded() {
        let h = hook(
            &[
                "/bin/sh",
                "-c",
                "echo out $HOSTAGENT_OPERATION_ID; echo err >&2; exit 3",
            ],
            10_000,
            OnError::Continue,
        );
        let run = run("pre-snapshot", &h, "snapshot-1", &[], &Progress::new());
        assert!(!run.ok);
        assert_eq!(run.record.exit_code, 3);
        assert!(run.record.continued);
        assert!(
            run.record.output.contains("out snapshot-1"),
            "{}",
            run.record.output
        );
        assert!(run.record.output.contains("err"), "{}", run.record.output);
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let h = hook(
            &["/bin/sh", "-c", "sleep 30 & sleep 30"],
            300,
            OnError::Fail,
        );
        let t = Instant::now();
        let run = run("pre-snapshot", &h, "snapshot-1", &[], &Progress::new());
        assert!(t.elapsed() < Duration::from_secs(10));
        assert!(!run.ok && run.record.timed_out && !run.record.continued);
    }

    #[test]
    fn a_missing_program_is_a_failure_with_a_reason() {
        let h = hook(&["/nonexistent/hook"], 1000, OnError::Fail);
        let run = run("post-snapshot", &h, "snapshot-1", &[], &Progress::new());
        assert!(!run.ok);
        assert!(
            run.record.output.contains("cannot start"),
            "{}",
            run.record.output
        );
    }
}
