//! The one call into the C library outside OpenSlide's FFI: handing freed heap memory back to
//! the operating system between pipeline stages.
//!
//! In: nothing. Out: nothing (resident memory shrinks). glibc keeps freed memory in its
//! arenas; after the tissue stage of a large slide that is tens of MiB that inference never
//! reuses, so the peak of the whole run would grow with the slide. Elsewhere it does nothing.

/// Returns free heap memory to the operating system (glibc's `malloc_trim(0)`).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim takes no pointers and is safe to call at any time from any
        // thread; it only returns unused pages of the allocator's arenas.
        unsafe {
            malloc_trim(0);
        }
    }
}
