//! Process-wide allocator settings that keep a node's memory near its sled cache capacity.
//!
//! glibc's malloc serves blocks of 128 KiB and more with `mmap` (returned to the system on
//! `free`), but it raises that threshold to the size of any such block that is freed, up to
//! 32 MiB. sled 0.34 writes its log through 512 KiB buffers: after the first one is freed, all
//! of them come from the heap arenas (one per thread: tokio's workers, sled's I/O pool), where
//! freed space stays resident and fragmented. Measured on a 1 GiB DIS (BENCHMARKS.md, "Memory
//! during a handoff"), the receiver's peak RSS grew 103–148 MiB with glibc's moving threshold
//! and 42–52 MiB with it fixed. Fixed at 128 KiB, sled's page images (100–200 KiB for 10 KiB
//! values) were mapped and unmapped one by one and handoffs ran 20–50% slower; at 512 KiB only
//! the log buffers and larger blocks (8 MiB values) are.

/// Blocks of at least this size are mapped and unmapped on their own (sled's log buffer size;
/// glibc stops adjusting the threshold once it is set explicitly).
pub const MMAP_THRESHOLD: usize = 512 << 10;

/// Fixes the allocator's mmap threshold. Call once at start, before other threads exist.
/// Has no effect on other C libraries.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's parameters; it is called before the process
        // starts other threads.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) };
        if ok != 1 {
            tracing::warn!("could not set the allocator's mmap threshold");
        }
    }
}
