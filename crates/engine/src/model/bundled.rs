//! The default model, `models/he-cellularity`, built into the binary, so that a `tessera` copied
//! or `cargo install`ed anywhere analyses a slide without a models folder beside it.
//!
//! In: nothing (the files are compiled in). Out: a folder holding them, since the backends load
//! models from disk: `$XDG_CACHE_HOME/tessera` (else `~/.cache/tessera`), or, where that cannot
//! be written, `tessera-<uid>` in the temporary folder (created 0700, refused when another user
//! owns it or others may write to it). The folder is named by the files' hash and its files are
//! compared byte for byte on every use and rewritten (atomically) when they differ, so what runs
//! is always what was compiled in.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The model's folder name (also its name in result.json).
pub const NAME: &str = "he-cellularity";

/// Its files, as in the source tree when this binary was built.
const FILES: [(&str, &[u8]); 3] = [
    (
        "config.json",
        include_bytes!("../../../../models/he-cellularity/config.json"),
    ),
    (
        "model.onnx",
        include_bytes!("../../../../models/he-cellularity/model.onnx"),
    ),
    (
        "README.md",
        include_bytes!("../../../../models/he-cellularity/README.md"),
    ),
];

/// A short hash of every file's name and bytes.
fn content_hash() -> String {
    let mut h = Sha256::new();
    for (name, bytes) in FILES {
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    format!("{:x}", h.finalize())[..16].to_string()
}

/// The per-user cache folder (not created here).
fn user_cache() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    Some(base.join("tessera"))
}

/// `tessera-<uid>` in the temporary folder: this user's own, private.
fn private_temp() -> Result<PathBuf> {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| Error::from_io(Path::new("/proc/self"), e))?;
    let dir = std::env::temp_dir().join(format!("tessera-{uid}"));
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(Error::from_io(&dir, e));
        }
    }
    let m = std::fs::symlink_metadata(&dir).map_err(|e| Error::from_io(&dir, e))?;
    if !m.is_dir() || m.uid() != uid || m.mode() & 0o022 != 0 {
        return Err(Error::InvalidInput {
            path: dir,
            reason: "not a folder of this user's that only it may write to; the built-in \
                     model is not unpacked there (set XDG_CACHE_HOME, or TESSERA_MODELS)"
                .into(),
        });
    }
    Ok(dir)
}

/// Writes `bytes` to `path` through a temporary file of its own (created exclusively, named by
/// process, a counter and the time: threads and hosts sharing the folder never share one),
/// renamed into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(
        ".{name}.tmp-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::from_io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::from_io(path, e)
    })
}

/// The built-in model's folder, unpacked (or checked) now: in the user's cache, else (it
/// cannot be written there) in the private temporary folder.
pub fn unpack() -> Result<PathBuf> {
    match user_cache().map(|c| unpack_into(&c)) {
        Some(Ok(dir)) => Ok(dir),
        _ => unpack_into(&private_temp()?),
    }
}

/// [`unpack`] under `root`.
fn unpack_into(root: &Path) -> Result<PathBuf> {
    let dir = root.join(format!("models-{}", content_hash())).join(NAME);
    std::fs::create_dir_all(&dir).map_err(|e| Error::from_io(&dir, e))?;
    for (name, bytes) in FILES {
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() != Some(bytes) {
            write_atomic(&path, bytes)?;
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacks_the_compiled_in_files_and_repairs_a_changed_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = unpack_into(tmp.path()).unwrap();
        assert!(dir.starts_with(tmp.path()));
        assert_eq!(dir.file_name().unwrap(), NAME);
        let folder = crate::model::ModelFolder::load(&dir).unwrap();
        assert_eq!(folder.name, NAME);
        // Someone edits the unpacked model: the next use puts the built-in bytes back.
        std::fs::write(dir.join("model.onnx"), b"not a model").unwrap();
        assert_eq!(unpack_into(tmp.path()).unwrap(), dir);
        assert_eq!(std::fs::read(dir.join("model.onnx")).unwrap(), FILES[1].1);
    }

    #[test]
    fn threads_unpacking_together_all_get_whole_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| unpack_into(tmp.path())))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        assert!(dirs.iter().all(|d| *d == dirs[0]));
        for (name, bytes) in FILES {
            assert_eq!(std::fs::read(dirs[0].join(name)).unwrap(), bytes);
        }
        // No temporary file is left beside them.
        assert_eq!(std::fs::read_dir(&dirs[0]).unwrap().count(), FILES.len());
    }
}
