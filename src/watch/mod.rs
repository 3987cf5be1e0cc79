//! `tessera watch`: analyse every slide that lands in an inbox once it is completely written,
//! exactly once, through crashes and restarts.
//!
//! In: an inbox folder (never modified: nothing there is moved, renamed or deleted) and an
//! [`AnalyzeConfig`] whose `out` is the results folder. Out: one `OUT/<slide>-<fingerprint>/`
//! per slide version (the normal analyze outputs, written atomically) and, in `OUT/.watch/`,
//! the durable queue (`queue.sqlite`, see [`queue`]), an append-only `events.jsonl` and the
//! service lock.
//!
//! Each pass rescans the inbox (folders recursively, known extensions; a DICOM series folder
//! and a MIRAX file count as one slide), records every slide's size and modification time, and
//! queues a slide once both have been unchanged for the settle period; its fingerprint names the
//! version, so a file replaced later is analysed again and both results are kept. Queued slides
//! are claimed one at a time (analysis is parallel inside); a failure is retried with
//! exponential backoff and quarantined after the last attempt; a panic inside the analysis is
//! such a failure. After a crash or kill, rows left `running` are settled first: `done` if
//! their output folder is complete (the process died after writing it), back to the queue
//! otherwise, without counting the interrupted attempt. (A native crash inside OpenSlide takes
//! the process down with it; analyses are not isolated in worker processes yet.)

pub mod queue;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::error::{Error, Result};
use crate::lockfile::{self, Lock};
use crate::pipeline::{analyze_as, fingerprint, slide_name, AnalyzeConfig};
use queue::{Entry, Queue};

/// Everything the service needs.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The scanner's inbox.
    pub inbox: PathBuf,
    /// The analysis; `analyze.out` is the results folder.
    pub analyze: AnalyzeConfig,
    /// How long size and modification time must stay unchanged (default 60 s).
    pub settle: Duration,
    /// Time between inbox scans (default 30 s).
    pub rescan: Duration,
    /// Process what is there (waiting for unsettled files and due retries), then return.
    pub once: bool,
    /// Attempts before quarantine (default 3).
    pub max_attempts: u32,
    /// First retry delay, doubled for each further attempt (default 30 s).
    pub backoff: Duration,
}

impl WatchConfig {
    /// Defaults for `inbox` → `analyze.out`.
    pub fn new(inbox: PathBuf, analyze: AnalyzeConfig) -> Self {
        WatchConfig {
            inbox,
            analyze,
            settle: Duration::from_secs(60),
            rescan: Duration::from_secs(30),
            once: false,
            max_attempts: 3,
            backoff: Duration::from_secs(30),
        }
    }
}

/// The service's state folder inside the results folder.
pub fn state_dir(out: &Path) -> PathBuf {
    out.join(".watch")
}

/// Takes the service lock of `out` (`OUT/.watch/service.lock`), or explains who holds it. A
/// lock left by a process that no longer runs on this host is taken over.
pub fn lock(out: &Path) -> Result<Lock> {
    let dir = state_dir(out);
    std::fs::create_dir_all(&dir).map_err(|e| Error::from_io(&dir, e))?;
    let path = dir.join("service.lock");
    match lockfile::try_take(&path, lockfile::holder_gone)? {
        Some(lock) => Ok(lock),
        None => {
            let (pid, h) = lockfile::holder(&path);
            Err(Error::Queue {
                path,
                message: format!(
                    "another tessera watch (pid {pid} on {h}) is using this results folder; \
                     stop it first, or remove the lock if that process is gone"
                ),
            })
        }
    }
}

/// What the service reports, one per line in `events.jsonl` and to the caller.
pub type Event = serde_json::Value;

/// Size and newest modification time of a slide (a folder: all its files).
fn stat_slide(p: &Path) -> Result<(u64, i64)> {
    let meta = std::fs::metadata(p).map_err(|e| Error::from_io(p, e))?;
    let mtime = |m: &std::fs::Metadata| {
        m.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i64)
    };
    if !meta.is_dir() {
        return Ok((meta.len(), mtime(&meta)));
    }
    let (mut size, mut newest) = (0u64, mtime(&meta));
    for e in std::fs::read_dir(p).map_err(|e| Error::from_io(p, e))? {
        let e = e.map_err(|e| Error::from_io(p, e))?;
        if let Ok(m) = e.metadata() {
            size += m.len();
            newest = newest.max(mtime(&m));
        }
    }
    Ok((size, newest))
}

/// Is `e`'s output folder complete, for this version?
fn output_complete(out: &Path, e: &Entry) -> bool {
    std::fs::read(out.join(&e.output).join("result.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|r| r["slide"]["fingerprint"]["sha256"] == e.fingerprint.as_str())
}

/// Removes temporary output folders of processes that no longer run (a crash mid-write).
fn clean_stale_temporaries(out: &Path) {
    let Ok(dir) = std::fs::read_dir(out) else {
        return;
    };
    for e in dir.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .rsplit_once(".tmp-tessera-")
            .or_else(|| name.rsplit_once(".old-tessera-"))
            .map(|(_, pid)| pid.to_string());
        if let Some(pid) = pid {
            if name.starts_with('.') && lockfile::process_gone(&pid) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

struct Journal(PathBuf);

impl Journal {
    fn write(&self, event: &Event, sink: &mut dyn FnMut(&Event)) {
        sink(event);
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
        {
            // One write per line: appends of a line are not interleaved or torn by a crash
            // of this process.
            let _ = f.write_all(format!("{event}\n").as_bytes());
        }
    }
}

/// Runs the service until `stop` is set (or, with `once`, until the inbox is processed).
/// `sink` receives every event (also written to `events.jsonl`).
pub fn run(cfg: &WatchConfig, stop: &AtomicBool, mut sink: impl FnMut(&Event)) -> Result<()> {
    let out = &cfg.analyze.out;
    if !cfg.inbox.is_dir() {
        return Err(Error::NotFound {
            path: cfg.inbox.clone(),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| Error::from_io(out, e))?;
    let _lock = lock(out)?;
    let journal = Journal(state_dir(out).join("events.jsonl"));
    let mut q = Queue::open(&state_dir(out))?;
    clean_stale_temporaries(out);
    for (e, to) in q.recover(|e| output_complete(out, e))? {
        journal.write(
            &json!({"event": "recovered", "id": e.id, "path": e.path, "fingerprint": e.fingerprint,
                    "state": to, "time": queue::now()}),
            &mut sink,
        );
    }
    journal.write(
        &json!({"event": "started", "pid": std::process::id(), "inbox": cfg.inbox, "time": queue::now()}),
        &mut sink,
    );
    loop {
        // Scan: observe every slide; queue the settled versions not seen before.
        let mut unsettled = 0;
        for p in crate::cohort::collect(std::slice::from_ref(&cfg.inbox))? {
            let Ok((size, mtime)) = stat_slide(&p) else {
                continue; // vanished between listing and stat
            };
            if q.observe(&p, size, mtime)? < cfg.settle.as_secs_f64() {
                unsettled += 1;
                continue;
            }
            let fp = match q.cached_fingerprint(&p)? {
                Some(fp) => fp,
                None => {
                    let Ok(fp) = fingerprint(&p, cfg.analyze.hash_full) else {
                        continue;
                    };
                    q.set_fingerprint(&p, &fp)?;
                    fp
                }
            };
            if q.known(&p, &fp)? {
                continue;
            }
            let output = format!("{}-{}", slide_name(&p), &fp[..12]);
            if q.add(&p, &fp, &output)? {
                journal.write(
                    &json!({"event": "queued", "path": p, "fingerprint": fp, "output": output,
                            "time": queue::now()}),
                    &mut sink,
                );
            }
        }
        // Work: every ready slide, one at a time.
        while !stop.load(Ordering::SeqCst) {
            let Some(e) = q.claim()? else { break };
            let started = Instant::now();
            journal.write(
                &json!({"event": "running", "id": e.id, "path": e.path, "attempt": e.attempts,
                        "time": queue::now()}),
                &mut sink,
            );
            // A panic inside the analysis is a failure of this slide, not of the service.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                analyze_as(&e.path, &e.output, &cfg.analyze)
            }))
            .unwrap_or_else(|_| {
                Err(Error::Inference {
                    path: e.path.clone(),
                    backend: "watch".into(),
                    message: "the analysis panicked".into(),
                })
            });
            match result {
                Ok(s) => {
                    // Fault-injection hook for the tests: widen the window between the output
                    // folder appearing and the queue recording it, so that kills land there.
                    if let Some(ms) = std::env::var("TESSERA_WATCH_TEST_PAUSE_MS")
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        std::thread::sleep(Duration::from_millis(ms));
                    }
                    journal.write(
                        &json!({"event": "analysed", "id": e.id, "path": e.path,
                                "fingerprint": e.fingerprint, "output": s.folder,
                                "patches": s.patches, "seconds": started.elapsed().as_secs_f64(),
                                "time": queue::now()}),
                        &mut sink,
                    );
                    q.done(e.id)?;
                }
                Err(err) => {
                    q.failed(
                        e.id,
                        &err.to_string(),
                        cfg.max_attempts,
                        cfg.backoff.as_secs_f64(),
                    )?;
                    let state = q.get(e.id)?.map(|r| r.state).unwrap_or_default();
                    journal.write(
                        &json!({"event": state, "id": e.id, "path": e.path,
                                "attempt": e.attempts, "error": err.to_string(),
                                "time": queue::now()}),
                        &mut sink,
                    );
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if cfg.once {
            let waiting = q.list()?.iter().any(|e| e.state == "failed");
            if unsettled == 0 && !waiting {
                break;
            }
        }
        // Sleep until the next scan, waking early to stop.
        let until = Instant::now() + cfg.rescan;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50).min(cfg.rescan));
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    journal.write(
        &json!({"event": "stopped", "pid": std::process::id(), "time": queue::now()}),
        &mut sink,
    );
    Ok(())
}
