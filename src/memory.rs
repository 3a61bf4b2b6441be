//! Process-wide allocator settings that keep a node's memory near its sled cache capacity.
//!
//! glibc's malloc serves blocks of 128 KiB and more with `mmap` (returned to the system on
//! `free`), but it raises that threshold to the size of any such block that is freed, up to
//! 32 MiB. sled 0.34 writes its log through 512 KiB buffers: after the first one is freed, all
//! of them came from the heap arenas (one per thread: tokio's workers, sled's I/O pool), where
//! freed space stays resident and fragmented: a receiver's peak memory grew about twice as
//! much with glibc's moving threshold as with it fixed at 512 KiB. Fixed lower, sled's page
//! images were mapped and unmapped one by one and handoffs ran slower (BENCHMARKS.md, "Memory
//! during a handoff").
//!
//! Mapping every log buffer costs 128 page faults each, so the binary's allocator ([`NodeAllocator`]) keeps freed log buffers in a
//! small pool. A restore, which has no memory budget but a speed goal, also keeps blocks under
//! 1 MiB on the heap ([`MMAP_THRESHOLD_RESTORE`]).

/// A node's threshold: blocks of at least this size are mapped and unmapped on their own
/// (sled's log buffer size; glibc stops adjusting the threshold once it is set explicitly).
pub const MMAP_THRESHOLD: usize = 512 << 10;
/// A restore's threshold: faster, with fewer page faults, than 512 KiB (BENCHMARKS.md, "Figures
/// behind the code").
pub const MMAP_THRESHOLD_RESTORE: usize = 1 << 20;

/// Fixes the allocator's mmap threshold at `threshold` bytes. Call once at start, before
/// other threads exist. Has no effect on other C libraries.
pub fn tune_allocator(threshold: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's parameters; it is called before the process
        // starts other threads.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, threshold as libc::c_int) };
        if ok != 1 {
            tracing::warn!("could not set the allocator's mmap threshold");
        }
    }
}

/// sled 0.34's log buffers: its segment size (512 KiB by default, which dht-store keeps)
/// allocated at this alignment. Nothing else asks for this alignment.
const LOG_BUFFER_SIZE: usize = 512 << 10;
const LOG_BUFFER_ALIGN: usize = 8192;
/// Freed log buffers kept for reuse (at most 16 MiB).
const POOLED_BUFFERS: usize = 32;

/// The global allocator of the `dht-store` binary: the system allocator, except that sled's
/// 512 KiB log buffers are kept in a small pool and reused.
///
/// sled allocates a fresh log buffer for every 512 KiB it writes and frees it once written.
/// From the heap, those blocks fragmented the arenas; mapped one by one (`mmap`/`munmap`),
/// every buffer cost 128 page faults and the zeroing of its pages (BENCHMARKS.md, "Figures
/// behind the code"). Pooled, a handful of buffers are reused for the whole run.
pub struct NodeAllocator;

/// The pool: a fixed array under a lock that never allocates.
struct Pool {
    blocks: [usize; POOLED_BUFFERS],
    len: usize,
}

static POOL: std::sync::Mutex<Pool> = std::sync::Mutex::new(Pool {
    blocks: [0; POOLED_BUFFERS],
    len: 0,
});

fn is_log_buffer(layout: std::alloc::Layout) -> bool {
    layout.size() == LOG_BUFFER_SIZE && layout.align() == LOG_BUFFER_ALIGN
}

// SAFETY: every block handed out comes from `System` with the caller's layout (pooled blocks
// all have the one log-buffer layout), and is returned to `System` with that same layout.
unsafe impl std::alloc::GlobalAlloc for NodeAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if is_log_buffer(layout) {
            if let Ok(mut pool) = POOL.lock() {
                if pool.len > 0 {
                    pool.len -= 1;
                    let i = pool.len;
                    return pool.blocks[i] as *mut u8;
                }
            }
        }
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if is_log_buffer(layout) {
            if let Ok(mut pool) = POOL.lock() {
                if pool.len < POOLED_BUFFERS {
                    let i = pool.len;
                    pool.blocks[i] = ptr as usize;
                    pool.len += 1;
                    return;
                }
            }
        }
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if is_log_buffer(layout) {
            // SAFETY: forwarded contract; a pooled block is zeroed here.
            let p = unsafe { self.alloc(layout) };
            if !p.is_null() {
                // SAFETY: `p` is valid for `layout.size()` bytes.
                unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
            }
            return p;
        }
        // SAFETY: the caller's layout.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let to_log_buffer = new_size == LOG_BUFFER_SIZE && layout.align() == LOG_BUFFER_ALIGN;
        if !is_log_buffer(layout) && !to_log_buffer {
            // SAFETY: neither block is a log buffer: `System` allocated `ptr` with `layout`.
            return unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `GlobalAlloc::realloc` guarantees this layout is valid; a fresh block of
        // it, the old one's bytes copied over, then the old block released through the same
        // pool-aware path.
        unsafe {
            let new_layout =
                std::alloc::Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout};

    #[test]
    fn log_buffers_are_reused_zeroed_on_request_and_other_blocks_pass_through() {
        let a = NodeAllocator;
        let log = Layout::from_size_align(LOG_BUFFER_SIZE, LOG_BUFFER_ALIGN).unwrap();
        // SAFETY: each block is used within its layout and released with it.
        unsafe {
            let p = a.alloc(log);
            assert!(!p.is_null());
            assert_eq!(p as usize % LOG_BUFFER_ALIGN, 0);
            std::ptr::write_bytes(p, 0xAB, LOG_BUFFER_SIZE);
            a.dealloc(p, log);
            // The freed buffer comes back, and zeroed when asked for zeroed memory.
            let q = a.alloc_zeroed(log);
            assert_eq!(q, p);
            assert!(std::slice::from_raw_parts(q, LOG_BUFFER_SIZE)
                .iter()
                .all(|&b| b == 0));
            // Growing a small block into a log buffer and back keeps its bytes.
            let small = Layout::from_size_align(64, LOG_BUFFER_ALIGN).unwrap();
            let s = a.alloc(small);
            std::ptr::write_bytes(s, 7, 64);
            let big = a.realloc(s, small, LOG_BUFFER_SIZE);
            assert!(std::slice::from_raw_parts(big, 64).iter().all(|&b| b == 7));
            let back = a.realloc(big, log, 64);
            assert!(std::slice::from_raw_parts(back, 64).iter().all(|&b| b == 7));
            a.dealloc(back, small);
            a.dealloc(q, log);
            // Any other layout goes straight to the system allocator.
            let other = Layout::from_size_align(LOG_BUFFER_SIZE, 8).unwrap();
            let o = a.alloc(other);
            assert!(!o.is_null());
            a.dealloc(o, other);
        }
    }
}
