//! Lock files shared by cohort runs (one per slide) and the watch service (one per results
//! folder).
//!
//! In: a lock path. Out: a held [`Lock`] (the file, holding "PID HOST BOOT-ID", removed on
//! drop), or
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

/// Is process `pid` gone (checked on this host's /proc)? A zombie — dead, not yet reaped by
/// its parent (in a container whose init does not reap, it stays so) — counts as gone.
pub fn process_gone(pid: &str) -> bool {
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    match std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")) {
        // "PID (COMM) STATE ...": COMM may hold spaces and parentheses; STATE follows the
        // last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| matches!(state, "Z" | "X")),
        Err(_) => !Path::new("/proc").join(pid).exists(),
    }
}

/// This boot of this machine (Linux's random boot id), empty where unknown.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
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

/// Did the holder of the lock at `path` run on this host and exit? A pid can be reused — after
/// a reboot, or in a container where the service is pid 1 after every restart — so the holder
/// also counts as gone when the lock was written before this boot, when the pid is our own,
/// or when that pid now runs something other than tessera.
pub fn holder_gone(path: &Path) -> bool {
    let (pid, h) = holder(path);
    if h != host() {
        return false;
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let recorded_boot = text.split_whitespace().nth(2).unwrap_or("");
    let other_boot = !recorded_boot.is_empty() && recorded_boot != boot_id();
    let ours = pid == std::process::id().to_string();
    let not_tessera = std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| !String::from_utf8_lossy(&c).contains("tessera"));
    process_gone(&pid) || other_boot || ours || not_tessera
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
                let _ = writeln!(f, "{} {} {}", std::process::id(), host(), boot_id());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_recorded_by_ourselves_or_before_this_boot_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = try_take(&path, holder_gone).unwrap().expect("free");
        // The file names this process, this host and this boot.
        let (pid, h) = holder(&path);
        assert_eq!((pid, h), (std::process::id().to_string(), host()));
        // Our own pid (a container's pid 1 after a restart) is not another holder.
        assert!(holder_gone(&path));
        std::mem::forget(held);
        // The recorded pid now belongs to another program (pid reuse).
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(&path, format!("{} {} {}\n", other.id(), host(), boot_id())).unwrap();
        assert!(holder_gone(&path), "sleep is not tessera");
        let _ = other.kill();
        let _ = other.wait();
        // Written before this boot.
        std::fs::write(
            &path,
            format!("{} {} earlier-boot\n", std::process::id(), host()),
        )
        .unwrap();
        assert!(holder_gone(&path));
        // Another host: never taken over from here.
        std::fs::write(&path, "1 some-other-host x\n").unwrap();
        assert!(!holder_gone(&path));
        assert!(try_take(&path, holder_gone).unwrap().is_none());
    }

    #[test]
    fn dead_and_zombie_processes_are_gone_live_ones_are_not() {
        assert!(!process_gone(&std::process::id().to_string()));
        assert!(!process_gone(""));
        assert!(!process_gone("../1"));
        // A child that exited and is not reaped yet: a zombie.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id().to_string();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(process_gone(&pid), "a zombie counts as gone");
        child.wait().unwrap();
        assert!(process_gone(&pid));
    }
}
