//! Process-wide allocator settings, applied by both binaries at start.
//!
//! glibc's malloc raises its mmap threshold to the size of every large block freed (up to
//! 32 MiB). After Argon2id frees its 32 MiB, every chunk buffer of a backup (up to 4 MiB)
//! would then come from the heap arenas, one per thread, and stay resident after it is freed:
//! a first backup peaked 20 MiB higher for memory it no longer used. A fixed threshold keeps
//! large buffers in their own mappings, returned to the kernel when freed.

/// Blocks of this size and above get their own mapping.
const MMAP_THRESHOLD: libc::c_int = 256 << 10;

pub fn configure() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any thread
    // starts. A refusal (0) leaves glibc's defaults, which are correct, only larger.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
