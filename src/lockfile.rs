//! Lock files shared by cohort runs (one per slide) and the watch service (one per results
//! folder).
//!
//! In: a lock path. Out: a held [`Lock`] (the file, holding "PID HOST", removed on drop), or
//! `None` while a live holder has it. The file is created with `create_new`, so of two
//! processes racing for it exactly one wins; a lock whose holder is stale (the caller decides:
//! its process gone on this host, or too old) is removed and raced for again.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A held lock file, removed on drop.
#[derive(Debug)]
pub struct Lock(PathBuf);

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// This machine's host name.
pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Is process `pid` gone (checked on this host's /proc)?
pub fn process_gone(pid: &str) -> bool {
    !pid.is_empty() && !Path::new("/proc").join(pid).exists()
}

/// The holder recorded in a lock file: (pid, host), empty when unreadable.
pub fn holder(path: &Path) -> (String, String) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut fields = text.split_whitespace();
    (
        fields.next().unwrap_or("").to_string(),
        fields.next().unwrap_or("").to_string(),
    )
}

/// Did the holder of the lock at `path` run on this host and exit?
pub fn holder_gone(path: &Path) -> bool {
    let (pid, h) = holder(path);
    h == host() && process_gone(&pid)
}

/// Takes the lock at `path`, or returns `None` while it is held and `stale(path)` is false.
pub fn try_take(path: &Path, stale: impl Fn(&Path) -> bool) -> Result<Option<Lock>> {
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(mut f) => {
                let _ = writeln!(f, "{} {}", std::process::id(), host());
                return Ok(Some(Lock(path.into())));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !stale(path) {
                    return Ok(None);
                }
                // Take over a stale lock: remove it and race for a fresh one.
                let _ = std::fs::remove_file(path);
            }
            Err(e) => return Err(Error::from_io(path, e)),
        }
    }
    Ok(None)
}
