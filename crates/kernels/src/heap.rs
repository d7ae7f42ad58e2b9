//! The C heap's policy for training, where every step allocates and frees the same large
//! tensors again (logits, their gradient, the embedding's gradient: 100–200 MB each).
//!
//! glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh `mmap`s and
//! unmaps them on `free`, so each such tensor is page-faulted and zero-filled by the kernel
//! again at every step, and each unmap flushes the other core's TLB: a fifth of a training
//! step's profile. Keeping freed memory in the heap lets the next step reuse it as is
//! (`bench/NOTES.md`, "The training step").

/// Serves every allocation from the heap and keeps freed memory there (up to 2 GiB of free
/// space at the heap's top is kept; more is returned to the system). Lasts for the process.
/// Returns whether the allocator took the settings (false on other C libraries).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes glibc's tuning parameters (it takes the allocator's
        // own locks); these two are documented settings with no memory-safety preconditions.
        unsafe { libc::mallopt(libc::M_MMAP_MAX, 0) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}
