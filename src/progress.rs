//! Progress counters and the cancel flag shared between an operation and whoever watches it
//! (the CLI's progress bar, the daemon's WatchOperation).
//!
//! Counters only grow. `*_seen` grow while a walk discovers work, `*_done` while work
//! completes; at the end of a successful operation done equals seen.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Progress {
    pub files_seen: AtomicU64,
    pub bytes_seen: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
    pub errors: AtomicU64,
    cancelled: AtomicBool,
    /// The step an operation of several steps is in ("stop units", "restore", ...).
    step: std::sync::Mutex<String>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    pub files_seen: u64,
    pub bytes_seen: u64,
    pub files_done: u64,
    pub bytes_done: u64,
    pub errors: u64,
}

impl Progress {
    pub fn new() -> Progress {
        Progress::default()
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            files_seen: self.files_seen.load(Ordering::Relaxed),
            bytes_seen: self.bytes_seen.load(Ordering::Relaxed),
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_step(&self, step: &str) {
        *self.step.lock().unwrap() = step.to_string();
    }

    pub fn step(&self) -> String {
        self.step.lock().unwrap().clone()
    }

    /// Asks the operation to stop at its next check.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub fn check_cancelled(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::cancelled())
        } else {
            Ok(())
        }
    }
}
