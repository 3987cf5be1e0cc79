//! The calls into the C library outside OpenSlide's FFI.
//!
//! - [`release_free_memory`]: in nothing, out nothing (resident memory shrinks). glibc keeps
//!   freed memory in its arenas; after the tissue stage of a large slide that is tens of MiB
//!   that inference never reuses, so the peak of the whole run would grow with the slide.
//! - [`die_with_parent`]: a watch worker process is killed by the kernel when the service that
//!   started it dies, even by SIGKILL, so no orphan keeps analysing a slide the restarted
//!   service has queued again.
//! - [`private_stdout`]: the watch worker answers on a private copy of stdout, and fd 1 goes
//!   to stderr.
//!
//! - [`load_library_globally`]: a shared library file in, nothing out: its symbols become
//!   visible to libraries loaded later (ONNX Runtime's CUDA and TensorRT providers find the
//!   CUDA, cuDNN and TensorRT libraries of the Python packages this way).
//!
//! - [`cpus`]: the environment in, the number of CPUs this process may use out (every thread
//!   pool's default size).
//!
//! Elsewhere than Linux (Unix for `private_stdout` and `load_library_globally`) they do
//! nothing.

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

/// Asks the kernel to SIGKILL this process when the thread that spawned it exits (Linux's
/// `PR_SET_PDEATHSIG`). Returns false where that is not available, or when the parent has
/// already gone (`expected_parent` is not the parent any more).
pub fn die_with_parent(expected_parent: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn prctl(option: i32, ...) -> i32;
            fn getppid() -> i32;
        }
        const PR_SET_PDEATHSIG: i32 = 1;
        const SIGKILL: u64 = 9;
        // SAFETY: PR_SET_PDEATHSIG takes one integer argument (the signal) and touches no
        // memory of ours; getppid has no arguments and cannot fail.
        unsafe {
            if prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 {
                return false;
            }
            // The parent may have died before the call: then the signal never comes.
            getppid() as u32 == expected_parent
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = expected_parent;
        false
    }
}

/// Moves this process's standard output aside for a private channel: returns a file on the
/// original stdout and points fd 1 at stderr, so that anything a native library prints goes
/// to the log instead of corrupting the channel (the watch worker's answers). `None` where
/// that is not possible.
pub fn private_stdout() -> Option<std::fs::File> {
    #[cfg(unix)]
    {
        use std::os::fd::FromRawFd;
        extern "C" {
            fn dup(fd: i32) -> i32;
            fn dup2(old: i32, new: i32) -> i32;
        }
        // SAFETY: dup and dup2 take plain descriptors; the duplicate is owned by the File
        // returned, and fd 1 stays open (now on stderr's file).
        unsafe {
            let fd = dup(1);
            if fd < 0 {
                return None;
            }
            // If fd 1 cannot be redirected the channel still works; stray prints would then
            // be caught as unreadable answers.
            let _ = dup2(2, 1);
            Some(std::fs::File::from_raw_fd(fd))
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Loads the shared library at `path` with `RTLD_NOW | RTLD_GLOBAL` and keeps it loaded for the
/// life of the process, so that libraries loaded later resolve their symbols against it.
/// `Err` says why it did not load.
pub fn load_library_globally(path: &std::path::Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        // SAFETY: loading a shared library runs its initialisers. Callers name only vendors'
        // libraries (CUDA, cuDNN, TensorRT) that the inference runtime would load and
        // initialise itself; the handle is leaked, so no symbol outlives the library.
        let lib = unsafe {
            libloading::os::unix::Library::open(
                Some(path),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
            )
        };
        lib.map(std::mem::forget).map_err(|e| e.to_string())
    }
    #[cfg(not(unix))]
    {
        Err(format!("{}: not loaded (Unix only)", path.display()))
    }
}

/// The CPUs this process may use: the standard library's count (the affinity mask and the
/// cgroup's CPU quota), lowered to `SLURM_CPUS_PER_TASK` when a Slurm task sets it (a cluster
/// without Slurm's affinity or cgroup plugins confines nothing itself). At least 1.
pub fn cpus() -> usize {
    cpus_from(
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::env::var("SLURM_CPUS_PER_TASK").ok().as_deref(),
    )
}

/// [`cpus`] from the system's count and `SLURM_CPUS_PER_TASK`'s value (ignored unless a
/// positive integer).
pub fn cpus_from(system: usize, slurm: Option<&str>) -> usize {
    let task = slurm
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0);
    task.map_or(system, |n| n.min(system)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slurm_task_gets_its_share_and_never_more_than_the_system_allows() {
        assert_eq!(cpus_from(16, None), 16);
        assert_eq!(cpus_from(16, Some("4")), 4);
        assert_eq!(
            cpus_from(4, Some("16")),
            4,
            "the affinity mask or quota is lower"
        );
        assert_eq!(cpus_from(16, Some(" 2\n")), 2);
        for bad in ["0", "-3", "two", ""] {
            assert_eq!(cpus_from(8, Some(bad)), 8, "{bad:?}");
        }
        assert_eq!(cpus_from(0, None), 1);
        assert!(cpus() >= 1);
    }
}
