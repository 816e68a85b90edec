//! systemd integration: logging to journald or stderr, readiness and status notifications,
//! and the watchdog.
//!
//! The watchdog is pinged from a thread of its own, and only while the async runtime shows
//! a recent heartbeat: a wedged runtime (the part that answers the API) stops the pings and
//! lets systemd restart the agent, while a long blocking operation — which runs on the
//! blocking pool — never delays them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// Logs to journald with structured fields when stderr is connected to the journal
/// (`JOURNAL_STREAM`), to stderr otherwise. `AGENTD_LOG` sets the filter (default `info`).
pub fn init_logging() {
    let filter = EnvFilter::try_from_env("AGENTD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        tracing_subscriber::registry()
            .with(filter)
            .with(
                journald
                    .with_syslog_identifier("agentd".into())
                    // Plain names, so `journalctl OPERATION_ID=...` finds an operation.
                    .with_field_prefix(None),
            )
            .init();
        return;
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .init();
}

/// Whether `JOURNAL_STREAM` names the device and inode of our stderr.
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr()) {
        Ok(st) => {
            dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
        }
        Err(_) => false,
    }
}

pub fn notify_ready(status: &str) {
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ],
    );
}

pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(status)]);
}

pub fn notify_stopping() {
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("stopping"),
        ],
    );
}

/// The runtime's heartbeat: milliseconds since start at the last beat.
#[derive(Clone)]
pub struct Heartbeat {
    start: Instant,
    last: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat {
            start: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Heartbeat {
    /// Beats every second from a task on the async runtime.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.last
                .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    fn age(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

/// The watchdog period systemd asked for (`WatchdogSec=`). Reading it clears the variables
/// (so hooks do not inherit them), so it runs before any other thread exists.
pub fn watchdog_period() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(true, &mut usec).then(|| Duration::from_micros(usec))
}

/// Starts the thread that pings the watchdog while the runtime's heartbeat is fresh.
pub fn start_watchdog(period: Duration, heartbeat: Heartbeat) {
    tracing::info!(
        watchdog_s = period.as_secs_f64(),
        "systemd watchdog enabled"
    );
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(period / 3);
                let age = heartbeat.age();
                if age < period / 2 {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                } else {
                    tracing::error!(
                        stalled_ms = age.as_millis() as u64,
                        "async runtime stalled; withholding the watchdog ping"
                    );
                }
            }
        })
        .expect("the watchdog thread starts");
}
