//! Change hints: an inotify watch of the backed-up trees, so that a snapshot can skip
//! listing the directories in which nothing happened since the previous one.
//!
//! The hints are only given when they are complete. A collection starts when a snapshot
//! starts (so changes made during its walk count for the next one) and becomes usable once
//! that snapshot is saved. Anything that may have lost an event — the kernel's queue
//! overflowing, a watch error, the watch not yet set up, a failed or canceled snapshot, a
//! restart of the agent (the collection lives in memory) — makes the next snapshot compare
//! every entry instead, and says why in the log. Every `full_every`-th snapshot compares
//! everything anyway: writes through a shared memory mapping raise no inotify event.
//!
//! Events reach us some time after the change. So that a change made just before a
//! snapshot starts is not handed to the snapshot after it, `begin` first touches a file in
//! a private directory watched through the same inotify queue, and waits until that event
//! arrives: the queue is ordered, so every earlier change has been collected by then.

use crate::backup::ChangeHints;
use crate::repo::Id;
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// More changed paths than this and the set is dropped (a full comparison is as fast).
const MAX_TRACKED: usize = 200_000;

struct State {
    changed: BTreeSet<PathBuf>,
    /// The watch is set up and running.
    live: bool,
    /// No event was lost since the collection began; when false, why.
    lost: Option<String>,
    /// The snapshot the collection is relative to, once it was saved.
    base: Option<Id>,
    /// Hinted snapshots since the last full comparison.
    hinted_in_a_row: u32,
    /// The last barrier file seen.
    barrier_seen: u64,
}

pub struct ChangeWatcher {
    state: Arc<Mutex<State>>,
    full_every: u32,
    barrier_dir: PathBuf,
    barrier_next: std::sync::atomic::AtomicU64,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl ChangeWatcher {
    /// Creates the watcher; [`ChangeWatcher::watch`] sets up the watches (slow on big trees).
    /// `barrier_dir` is a private directory (under the state directory) for the barrier.
    pub fn new(full_every: u32, barrier_dir: PathBuf) -> ChangeWatcher {
        ChangeWatcher {
            state: Arc::new(Mutex::new(State {
                changed: BTreeSet::new(),
                live: false,
                lost: Some("the watch is not set up yet".into()),
                base: None,
                hinted_in_a_row: 0,
                barrier_seen: 0,
            })),
            full_every,
            barrier_dir,
            barrier_next: std::sync::atomic::AtomicU64::new(1),
            watcher: Mutex::new(None),
        }
    }

    /// Watches `paths` recursively (blocking). On failure snapshots keep comparing
    /// everything, and the reason is logged.
    pub fn watch(&self, paths: &[PathBuf]) {
        let state = self.state.clone();
        let barrier_dir = self.barrier_dir.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            let mut s = state.lock().unwrap();
            match res {
                Ok(ev) => {
                    if ev.need_rescan() {
                        s.lost = Some("the kernel's inotify queue overflowed".into());
                    }
                    if matches!(ev.kind, EventKind::Access(_)) {
                        return;
                    }
                    for p in ev.paths {
                        if p.parent() == Some(barrier_dir.as_path()) {
                            let n = p
                                .file_name()
                                .and_then(|n| n.to_str())
                                .and_then(|n| n.strip_prefix("barrier-"))
                                .and_then(|n| n.parse().ok())
                                .unwrap_or(0);
                            s.barrier_seen = s.barrier_seen.max(n);
                            continue;
                        }
                        if let Some(parent) = p.parent() {
                            s.changed.insert(parent.to_path_buf());
                        }
                        s.changed.insert(p);
                    }
                    if s.changed.len() > MAX_TRACKED {
                        s.changed.clear();
                        s.lost = Some(format!("more than {MAX_TRACKED} paths changed"));
                    }
                }
                Err(e) => s.lost = Some(format!("the watch reported an error: {e}")),
            }
        };
        let result = (|| -> notify::Result<notify::RecommendedWatcher> {
            let mut w = notify::recommended_watcher(handler)?;
            std::fs::create_dir_all(&self.barrier_dir)?;
            w.watch(&self.barrier_dir, RecursiveMode::NonRecursive)?;
            for p in paths {
                w.watch(p, RecursiveMode::Recursive)?;
            }
            Ok(w)
        })();
        match result {
            Ok(w) => {
                *self.watcher.lock().unwrap() = Some(w);
                let mut s = self.state.lock().unwrap();
                s.live = true;
                s.lost = None;
                tracing::info!(paths = ?paths, "watching the backed-up trees for change hints");
            }
            Err(e) => {
                let why = format!("cannot watch the backed-up trees: {e}");
                tracing::warn!("{why}; snapshots compare every entry");
                self.state.lock().unwrap().lost = Some(why);
            }
        }
    }

    /// Called as a snapshot starts: the hints for it, or why there are none. Starts a new
    /// collection either way.
    pub fn begin(&self, full_requested: bool) -> Result<ChangeHints, String> {
        let caught_up = self.barrier();
        let mut s = self.state.lock().unwrap();
        if let Err(why) = caught_up {
            s.lost.get_or_insert(why);
        }
        let changed = std::mem::take(&mut s.changed);
        let result = if full_requested {
            Err("a full comparison was asked for".to_string())
        } else if let Some(why) = &s.lost {
            Err(why.clone())
        } else if let Some(parent) = s.base {
            if self.full_every > 0 && s.hinted_in_a_row + 1 >= self.full_every {
                Err(format!(
                    "every {}th snapshot compares every entry",
                    self.full_every
                ))
            } else {
                Ok(ChangeHints { parent, changed })
            }
        } else {
            Err("no snapshot was saved since the watch began".to_string())
        };
        match &result {
            Ok(_) => s.hinted_in_a_row += 1,
            Err(_) => s.hinted_in_a_row = 0,
        }
        s.lost = if s.live {
            None
        } else {
            Some("the watch is not running".to_string())
        };
        s.base = None;
        result
    }

    /// Waits until the watch has delivered every event queued before now.
    fn barrier(&self) -> Result<(), String> {
        if !self.state.lock().unwrap().live {
            return Ok(());
        }
        let n = self
            .barrier_next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.barrier_dir.join(format!("barrier-{n}"));
        std::fs::write(&path, b"")
            .map_err(|e| format!("cannot write the barrier file {}: {e}", path.display()))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let result = loop {
            if self.state.lock().unwrap().barrier_seen >= n {
                break Ok(());
            }
            if std::time::Instant::now() > deadline {
                break Err("the watch did not catch up within 5s".to_string());
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        let _ = std::fs::remove_file(&path);
        result
    }

    /// Called when the snapshot that called [`begin`] ends: its ID when it was saved.
    pub fn complete(&self, saved: Option<Id>) {
        self.state.lock().unwrap().base = saved;
    }
}
