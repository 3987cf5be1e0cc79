//! Printing a report to PDF with headless Chromium.
//!
//! In: a report.html on disk. Out: a PDF beside it, written under a temporary name and renamed
//! when Chromium has finished. Chromium is found through `$TESSERA_CHROMIUM`, then `chromium`,
//! `chromium-browser`, `google-chrome` and `google-chrome-stable` on the `PATH`; it runs with a
//! fresh profile, no network services and a time limit. The report itself loads nothing
//! (images are embedded; its Content-Security-Policy forbids fetching), so printing it needs no
//! network either.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long Chromium may take to print one report.
const PRINT_TIMEOUT: Duration = Duration::from_secs(120);

/// How Tessera runs Chromium (printing here, the report tests too): headless, with no
/// sandbox (CI runs as root; the pages run no script), no GPU, no first-run, background
/// networking, extensions or sync.
pub const HEADLESS_FLAGS: [&str; 7] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-extensions",
    "--disable-sync",
];

/// The Chromium executable, if one is installed.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TESSERA_CHROMIUM") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The error for `--pdf` without Chromium.
pub fn missing(path: &Path) -> Error {
    Error::External {
        path: path.into(),
        tool: "chromium".into(),
        message: "--pdf needs headless Chromium, which was not found: install Debian's \
                  `chromium` package, or set TESSERA_CHROMIUM to the browser's executable"
            .into(),
    }
}

/// A `file://` URL for an existing path (absolute, percent-encoded).
pub fn file_url(path: &Path) -> Result<String> {
    let abs = std::fs::canonicalize(path).map_err(|e| Error::from_io(path, e))?;
    let mut url = String::from("file://");
    for b in abs.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(url)
}

/// Prints `html` to `pdf` (A4, as the report's print stylesheet lays it out).
pub fn print_to_pdf(html: &Path, pdf: &Path) -> Result<()> {
    let exe = find_chromium().ok_or_else(|| missing(html))?;
    let url = file_url(html)?;
    let profile = std::env::temp_dir().join(format!(
        "tessera-chromium-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let tmp = pdf.with_extension("pdf.tmp-tessera");
    let _ = std::fs::remove_file(&tmp);
    let fail = |message: String| Error::External {
        path: html.into(),
        tool: exe.display().to_string(),
        message,
    };
    let mut child = Command::new(&exe)
        .args(HEADLESS_FLAGS)
        .arg("--no-pdf-header-footer")
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--print-to-pdf={}", tmp.display()))
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    // Drain stderr in the background so a chatty browser never blocks on a full pipe.
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut s) = stderr {
            use std::io::Read;
            let _ = s.read_to_string(&mut text);
        }
        text
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() > PRINT_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(fail(format!(
                    "did not finish printing within {} s",
                    PRINT_TIMEOUT.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => break Err(fail(format!("cannot wait for it: {e}"))),
        }
    };
    let log = reader.join().unwrap_or_default();
    let _ = std::fs::remove_dir_all(&profile);
    let status = status?;
    let head = std::fs::read(&tmp)
        .map(|b| b.get(..5).map(<[u8]>::to_vec))
        .unwrap_or_default();
    if !status.success() || head.as_deref() != Some(b"%PDF-".as_slice()) {
        let _ = std::fs::remove_file(&tmp);
        let last: Vec<&str> = log.lines().rev().take(3).collect();
        return Err(fail(format!(
            "printing failed ({status}); it said: {}",
            last.into_iter().rev().collect::<Vec<_>>().join(" / ")
        )));
    }
    std::fs::rename(&tmp, pdf).map_err(|e| Error::from_io(pdf, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_are_percent_encoded() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a b#ü.html");
        std::fs::write(&p, "x").unwrap();
        let url = file_url(&p).unwrap();
        assert!(url.starts_with("file:///"), "{url}");
        assert!(url.ends_with("/a%20b%23%C3%BC.html"), "{url}");
    }
}
