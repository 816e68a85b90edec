//! A file lease as a trap: run something at the exact moment a file is opened (by another
//! process, or another descriptor of this one).
//!
//! A write lease (`fcntl(F_SETLEASE, F_WRLCK)`) makes the kernel hold any other open()
//! of the file until the holder lets go. The holder sees the pending open
//! (`F_GETLEASE` stops reporting a write lease), acts — changes the file through its own
//! descriptor, removes a neighbour — and releases the lease; only then does the open return.
//! Tests use it to change a tree at a chosen point of a backup without sleeping or racing.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A lease held on one file by a thread of this process; dropping it stops waiting.
pub struct LeaseTrap {
    handle: Option<JoinHandle<bool>>,
    give_up: Arc<AtomicBool>,
}

impl LeaseTrap {
    /// Takes a write lease on `path` (opened read-write, so `on_open` may write to it through
    /// the [`std::fs::File`] it is given) and waits, at most `wait`, for another process to
    /// open the file; then runs `on_open` and releases the lease.
    pub fn set(
        path: &Path,
        wait: Duration,
        on_open: impl FnOnce(&mut std::fs::File) + Send + 'static,
    ) -> LeaseTrap {
        static IGNORE_SIGIO: Once = Once::new();
        // The kernel tells the lease holder with SIGIO, whose default action ends the process;
        // the holder here polls instead.
        IGNORE_SIGIO.call_once(|| unsafe {
            libc::signal(libc::SIGIO, libc::SIG_IGN);
        });
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let fd = file.as_raw_fd();
        // A write lease is refused (EAGAIN) while any other descriptor of the file is open.
        // Tests of this process run side by side, and a child another test forks holds a copy
        // of every descriptor until it execs (close-on-exec closes them only then): one made
        // while this file was being written keeps it open for a moment. Wait that out.
        let refused_until = Instant::now() + Duration::from_secs(10);
        loop {
            // SAFETY: fcntl on a descriptor we own.
            let rc = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK) };
            let err = std::io::Error::last_os_error();
            if rc == 0 {
                break;
            }
            assert!(
                err.raw_os_error() == Some(libc::EAGAIN) && Instant::now() < refused_until,
                "cannot take a write lease on {}: {err}",
                path.display(),
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let give_up = Arc::new(AtomicBool::new(false));
        let stop = give_up.clone();
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + wait;
            let sprung = loop {
                // SAFETY: as above.
                let lease = unsafe { libc::fcntl(fd, libc::F_GETLEASE) };
                if lease != libc::F_WRLCK {
                    break true;
                }
                if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            if sprung {
                on_open(&mut file);
            }
            // SAFETY: as above.
            unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
            sprung
        });
        LeaseTrap {
            handle: Some(handle),
            give_up,
        }
    }

    /// Whether another process opened the file (and `on_open` ran); waits for that, or for
    /// the time given to [`LeaseTrap::set`] to pass.
    pub fn sprung(mut self) -> bool {
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for LeaseTrap {
    fn drop(&mut self) {
        self.give_up.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
