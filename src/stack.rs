//! Room for deep trees: backup's walker and restore's planner recurse once per directory
//! level, so the depth they can handle must not depend on the stack of whatever thread
//! calls the engine (2 MiB for Rust's spawned threads and tokio's blocking pool, which a
//! few hundred levels of a real tree overflow in a debug build, and the process aborts).

/// Enough for the deepest trees accepted (the planner's limit of 4096 levels; the walker is
/// bounded near 2048 by PATH_MAX) in a debug build, with a wide margin. Only the pages
/// touched are ever committed.
const DEEP_STACK: usize = 64 << 20;

/// Runs `f` on a scoped thread with a [`DEEP_STACK`]-sized stack and returns its result;
/// a panic in `f` continues in the caller.
pub(crate) fn with_deep_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("hostagent-walk".into())
            .stack_size(DEEP_STACK)
            .spawn_scoped(scope, f)
            .expect("cannot start a thread");
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
