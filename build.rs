//! Records the git commit the binary is built from, for `tessera --version`
//! (`TESSERA_GIT_COMMIT`: the short hash of HEAD, `unknown` outside a git checkout or without
//! git). Uncommitted changes are not flagged: this script reruns on a new commit, not on every
//! edit, so such a flag could be stale.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(hash) if !hash.is_empty() => hash,
        _ => "unknown".into(),
    };
    println!("cargo:rustc-env=TESSERA_GIT_COMMIT={commit}");
    // A new commit changes the answer.
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
