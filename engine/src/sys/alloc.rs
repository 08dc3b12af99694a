//! The allocator's side door: asking mimalloc (the binary's global allocator) to hand
//! memory freed on this thread back to the operating system now rather than keep it for
//! later allocations. A loop calls it after a large backlog drained (see
//! `Shard::release_memory`), so that a flood's peak does not stay resident.

// Linked wherever this module is, the library's own test binaries included, which do not
// install mimalloc as their allocator.
use mimalloc as _;

extern "C" {
    // mimalloc's C API (mimalloc.h), linked by the `mimalloc` crate's libmimalloc-sys.
    fn mi_collect(force: bool);
}

/// Frees and returns to the OS what this thread's heap no longer uses, at once (forced: a
/// purge not forced waits for a later allocation that a quiet loop may never make); it
pub fn release_free_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any
    // time; with another global allocator it only tidies mimalloc's unused heap.
    unsafe { mi_collect(true) }
}
