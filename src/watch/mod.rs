//! `tessera watch`: analyse every slide that lands in an inbox once it is completely written,
//! exactly once, through crashes and restarts.
//!
//! In: an inbox folder (never modified: nothing there is moved, renamed or deleted) and an
//! [`AnalyzeConfig`] whose `out` is the results folder. Out: one `OUT/<slide>-<fingerprint>/`
//! per slide version (the normal analyze outputs, written atomically) and, in `OUT/.watch/`,
//! the durable queue (`queue.sqlite`, see [`queue`]), an append-only `events.jsonl` and the
//! service lock; optionally `/healthz` and `/metrics` over HTTP ([`http`]).
//!
//! Discovery: filesystem events (inotify through the notify crate) wake the scanner early, and
//! a periodic rescan finds what events miss (SMB/NFS shares deliver none). Each scan lists the
//! inbox (folders recursively, known extensions; a DICOM series folder and a MIRAX file count
//! as one slide) and records every slide's size and modification time. A slide is queued once
//! both have been unchanged for the settle period, the scanner's done-marker exists (if one is
//! configured) and it opens (a settled slide that does not open is given one more settle period,
//! then queued so that its failure is recorded). Its fingerprint names the version, so a file
//! replaced later is analysed again and both results are kept.
//!
//! An archive as inbox (`dicomweb+http(s)://…` DICOMweb root): each scan lists its slide
//! microscopy series with QIDO-RS; a series' number of instances stands for size and time, and
//! its fingerprint is the DICOMweb reader's. No events; an unreachable archive is noted and
//! asked again at the next scan.
//!
//! Work: `workers` threads claim queued slides; each hands its slide to a [`worker::Worker`],
//! normally a child process holding the loaded model, so that a native crash costs one attempt
//! of one slide. A failure is retried with exponential backoff and quarantined after the last
//! attempt. After a crash or kill of the service, rows left `running` are settled first: `done`
//! if their output folder is complete (the process died after writing it), back to the queue
//! otherwise, without counting the interrupted attempt.
//!
//! Slide QC: a done slide's verdict (result.json's `qc` block) is recorded in the queue. On
//! `rescan`, the configured action — a marker file in `rescan_marker` and/or the `on_rescan`
//! command — runs once per slide version: the queue marks the action `pending` with the
//! verdict, a worker claims it (`started`) before acting and marks it `done` after. After a
//! kill, verdicts not yet recorded are recorded from the results at the next start and
//! pending actions run then; an action left `started` has its marker file made if missing
//! (writing it is idempotent) but its command is not run again.

pub mod http;
pub mod queue;
pub mod worker;

use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::slide::native::dicomweb::is_url;
use notify::Watcher as _;
use serde_json::json;

use crate::error::{Error, Result};
use crate::lockfile::{self, Lock};
use crate::pipeline::{fingerprint, slide_name, AnalyzeConfig};
use crate::results::SlideResult;
use crate::slide::Slide;
use queue::{Entry, Queue};
use worker::{Outcome, Worker};

/// Everything the service needs.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The scanner's inbox, or an archive's DICOMweb root (`dicomweb+http(s)://…`).
    pub inbox: PathBuf,
    /// The analysis; `analyze.out` is the results folder.
    pub analyze: AnalyzeConfig,
    /// How long size and modification time must stay unchanged (default 60 s).
    pub settle: Duration,
    /// Time between inbox scans (default 30 s).
    pub rescan: Duration,
    /// Watch filesystem events as well as rescanning (default true).
    pub events: bool,
    /// A glob naming the scanner's done-marker file beside each slide, with `{name}` (the
    /// slide's file name) and `{stem}` (without its extension) filled in, e.g. `{stem}.done`.
    pub done_marker: Option<String>,
    /// Process what is there (waiting for unsettled files and due retries), then return.
    pub once: bool,
    /// Attempts before quarantine (default 3).
    pub max_attempts: u32,
    /// First retry delay, doubled for each further attempt (default 30 s).
    pub backoff: Duration,
    /// Slides analysed at the same time (default 1; each analysis is parallel inside).
    pub workers: usize,
    /// How to start an isolated worker process (`None`: analyse in this process).
    pub worker_command: Option<worker::WorkerCommand>,
    /// Where to serve `/healthz` and `/metrics` (`None`: nowhere).
    pub http: Option<SocketAddr>,
    /// On a `rescan` verdict, write `<output folder name>.rescan.json` here (the slide, its
    /// fingerprint, the verdict's reasons): a scanner's rescan list.
    pub rescan_marker: Option<PathBuf>,
    /// On a `rescan` verdict, run this shell command (`sh -c`) with `TESSERA_SLIDE`,
    /// `TESSERA_RESULT` (the output folder), `TESSERA_VERDICT`, `TESSERA_REASONS` and
    /// `TESSERA_ACTION_ID` (the slide version's id) in its environment.
    pub on_rescan: Option<String>,
}

impl WatchConfig {
    /// Defaults for `inbox` → `analyze.out`.
    pub fn new(inbox: PathBuf, analyze: AnalyzeConfig) -> Self {
        WatchConfig {
            inbox,
            analyze,
            settle: Duration::from_secs(60),
            rescan: Duration::from_secs(30),
            events: true,
            done_marker: None,
            once: false,
            max_attempts: 3,
            backoff: Duration::from_secs(30),
            workers: 1,
            worker_command: None,
            http: None,
            rescan_marker: None,
            on_rescan: None,
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

/// Total size and newest modification time of a slide's files (a DICOM folder: all its files;
/// a MIRAX file: with its data folder, which may still be arriving after the `.mrxs`).
fn stat_slide(p: &Path) -> Result<(u64, i64)> {
    let mtime = |m: &std::fs::Metadata| {
        m.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i64)
    };
    let meta = std::fs::metadata(p).map_err(|e| Error::from_io(p, e))?;
    let (mut size, mut newest) = (0u64, mtime(&meta));
    for f in crate::pipeline::slide_files(p)? {
        if let Ok(m) = std::fs::metadata(&f) {
            size += m.len();
            newest = newest.max(mtime(&m));
        }
    }
    // A MIRAX data folder's own time changes when files are added or removed.
    let data = p.with_extension("");
    if p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("mrxs"))
    {
        if let Ok(m) = std::fs::metadata(&data) {
            newest = newest.max(mtime(&m));
        }
    }
    Ok((size, newest))
}

/// `e`'s result.json, if its output folder is complete for this version.
fn complete_result(out: &Path, e: &Entry) -> Option<SlideResult> {
    SlideResult::read(&out.join(&e.output).join("result.json"))
        .ok()
        .filter(|r| r.slide.fingerprint.sha256 == e.fingerprint)
}

/// Is `e`'s output folder complete, for this version?
fn output_complete(out: &Path, e: &Entry) -> bool {
    complete_result(out, e).is_some()
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

/// The event log: every event goes to `events.jsonl` and to the caller's sink.
struct Journal<F> {
    path: PathBuf,
    sink: Mutex<F>,
}

impl<F: FnMut(&Event)> Journal<F> {
    fn write(&self, event: Event) {
        if let Ok(mut sink) = self.sink.lock() {
            sink(&event);
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                // One write per line: appends of a line are not interleaved or torn by a crash
                // of this process.
                let _ = f.write_all(format!("{event}\n").as_bytes());
            }
        }
    }
}

/// Writes the rescan marker for `e` at `path` unless it exists (atomically: complete or
/// absent). Returns whether it was written now.
fn write_marker(path: &Path, e: &Entry, reasons: &[String]) -> Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|err| Error::from_io(dir, err))?;
    }
    let doc = json!({"slide": e.path, "fingerprint": e.fingerprint, "output": e.output,
        "verdict": "rescan", "reasons": reasons, "time": queue::now()});
    crate::output::write_json(path, &doc)?;
    Ok(true)
}

/// An exit status in words.
fn describe_status(s: std::process::ExitStatus) -> String {
    match s.code() {
        Some(0) => "ran (exit 0)".into(),
        Some(c) => format!("failed (exit {c})"),
        None => "killed by a signal".into(),
    }
}

/// Does the scanner's done-marker for `slide` exist beside it?
fn marker_present(slide: &Path, pattern: &str) -> bool {
    let (Some(dir), Some(name)) = (slide.parent(), slide.file_name()) else {
        return false;
    };
    let name = name.to_string_lossy();
    let stem = slide
        .file_stem()
        .map_or(name.to_string(), |s| s.to_string_lossy().into_owned());
    let filled = pattern
        .replace("{name}", &glob::Pattern::escape(&name))
        .replace("{stem}", &glob::Pattern::escape(&stem));
    let Ok(pat) = glob::Pattern::new(&filled) else {
        return false;
    };
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok())
            .any(|e| e.path() != slide && pat.matches(&e.file_name().to_string_lossy()))
    })
}

/// Checks what can be checked before the service starts.
fn validate(cfg: &WatchConfig) -> Result<()> {
    let bad = |message: String| Error::Queue {
        path: cfg.inbox.clone(),
        message,
    };
    if is_url(&cfg.inbox) {
        if cfg.done_marker.is_some() {
            return Err(bad("a done-marker names a file; an archive has none".into()));
        }
    } else if !cfg.inbox.is_dir() {
        return Err(tessera_engine::Error::NotFound {
            path: cfg.inbox.clone(),
        }
        .into());
    }
    if let Some(p) = &cfg.done_marker {
        let filled = p.replace("{name}", "x").replace("{stem}", "x");
        if let Err(e) = glob::Pattern::new(&filled) {
            return Err(bad(format!("invalid done-marker glob {p:?}: {e}")));
        }
        if p.contains('/') {
            return Err(bad(format!(
                "the done-marker glob {p:?} names a file beside the slide; it cannot contain '/'"
            )));
        }
    }
    if cfg.workers == 0 {
        return Err(bad("at least one worker is needed".into()));
    }
    Ok(())
}

/// Shared between the scanner, the workers and the HTTP thread.
struct Shared<'a, F> {
    cfg: &'a WatchConfig,
    journal: Journal<F>,
    metrics: Arc<http::Metrics>,
    /// Set when the service must stop: the caller's stop, `--once` finished, or a fatal error.
    halt: AtomicBool,
    stop: &'a AtomicBool,
    fatal: Mutex<Option<Error>>,
}

impl<F: FnMut(&Event) + Send> Shared<'_, F> {
    fn stopping(&self) -> bool {
        self.halt.load(Ordering::SeqCst) || self.stop.load(Ordering::SeqCst)
    }

    fn fail(&self, e: Error) {
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert(e);
        }
        self.halt.store(true, Ordering::SeqCst);
    }

    /// One worker thread: claims and analyses slides until the service stops.
    /// Records done slide `e`'s QC verdict from its result.json (once), with its rescan action
    /// pending when the verdict is `rescan` and an action is configured.
    fn record_verdict(&self, q: &Queue, e: &Entry) -> Result<()> {
        let Some(r) = complete_result(&self.cfg.analyze.out, e) else {
            return Ok(());
        };
        let Some(qc) = r.qc else { return Ok(()) };
        let act = qc.verdict == crate::qc::Verdict::Rescan
            && (self.cfg.rescan_marker.is_some() || self.cfg.on_rescan.is_some());
        if q.record_verdict(e.id, qc.verdict.as_str(), act)? {
            self.journal
                .write(json!({"event": "qc", "id": e.id, "path": e.path,
                "verdict": qc.verdict, "reasons": qc.reasons, "time": queue::now()}));
        }
        Ok(())
    }

    /// Runs the pending rescan actions. At `startup`, actions a dead process left `started`
    /// are finished too: the marker made if missing, the command not run again.
    fn run_actions(&self, q: &Queue, startup: bool) -> Result<()> {
        let out = &self.cfg.analyze.out;
        for e in q.actions()? {
            let interrupted = e.rescan_action == "started";
            if interrupted && !startup {
                continue; // another worker of this process is running it
            }
            if !interrupted && !q.claim_action(e.id)? {
                continue; // another worker took it
            }
            let reasons = complete_result(out, &e)
                .and_then(|r| r.qc)
                .map(|q| q.reasons)
                .unwrap_or_default();
            let mut done = json!({"event": "rescan_action", "id": e.id, "path": e.path,
                "time": queue::now()});
            if let Some(dir) = &self.cfg.rescan_marker {
                let path = dir.join(format!("{}.rescan.json", e.output));
                let made = write_marker(&path, &e, &reasons)?;
                done["marker"] = json!(path);
                done["marker_made"] = json!(made);
            }
            if let Some(cmd) = &self.cfg.on_rescan {
                if interrupted {
                    done["command"] = json!("not run again: the service stopped while it ran");
                } else {
                    let status = std::process::Command::new("sh")
                        .arg("-c")
                        .arg(cmd)
                        .env("TESSERA_SLIDE", &e.path)
                        .env("TESSERA_RESULT", out.join(&e.output))
                        .env("TESSERA_VERDICT", &e.qc_verdict)
                        .env("TESSERA_REASONS", reasons.join("; "))
                        .env("TESSERA_ACTION_ID", format!("{}-{}", e.id, e.fingerprint))
                        .status();
                    done["command"] = json!(match status {
                        Ok(s) => describe_status(s),
                        Err(err) => format!("could not start: {err}"),
                    });
                }
            }
            q.action_done(e.id)?;
            self.journal.write(done);
        }
        Ok(())
    }

    fn work(&self, index: usize) -> Result<()> {
        let out = &self.cfg.analyze.out;
        let mut q = Queue::open(&state_dir(out))?;
        let mut worker = Worker::new(&self.cfg.analyze, self.cfg.worker_command.as_ref());
        while !self.stopping() {
            let Some(e) = q.claim()? else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            self.metrics.busy.fetch_add(1, Ordering::SeqCst);
            let started = Instant::now();
            self.journal
                .write(json!({"event": "running", "id": e.id, "path": e.path,
                "attempt": e.attempts, "worker": index, "time": queue::now()}));
            let outcome = worker.analyze(&e.path, &e.output);
            self.metrics.busy.fetch_sub(1, Ordering::SeqCst);
            // No worker could be started: the service stops (exit 3); the slide stays
            // `running` and is queued again, uncounted, at the next start.
            let outcome = match outcome? {
                // The worker died after its output was complete (before it could answer):
                // the slide is done; analysing it again would duplicate it.
                failed @ Outcome::Failed { .. } => match complete_result(out, &e) {
                    Some(r) => Outcome::Done {
                        folder: out.join(&e.output),
                        patches: r.patches_analysed,
                        qc_verdict: r.qc.map(|q| q.verdict),
                    },
                    None => failed,
                },
                o => o,
            };
            match outcome {
                Outcome::Done {
                    folder, patches, ..
                } => {
                    // Fault-injection hook for the tests: widen the window between the output
                    // folder appearing and the queue recording it, so that kills land there.
                    if let Some(ms) = std::env::var("TESSERA_WATCH_TEST_PAUSE_MS")
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        std::thread::sleep(Duration::from_millis(ms));
                    }
                    let seconds = started.elapsed().as_secs_f64();
                    self.journal
                        .write(json!({"event": "analysed", "id": e.id, "path": e.path,
                        "fingerprint": e.fingerprint, "output": folder, "patches": patches,
                        "seconds": seconds, "time": queue::now()}));
                    q.done(e.id)?;
                    self.record_verdict(&q, &e)?;
                    self.run_actions(&q, false)?;
                    let m = &self.metrics;
                    m.done.fetch_add(1, Ordering::SeqCst);
                    m.patches.fetch_add(patches as u64, Ordering::SeqCst);
                    http::add_f64(&m.analysis_seconds, seconds);
                    m.last_success
                        .store(queue::now().to_bits(), Ordering::SeqCst);
                }
                Outcome::Failed { kind, message: err } => {
                    let c = self.cfg;
                    q.failed(e.id, &kind, &err, c.max_attempts, c.backoff.as_secs_f64())?;
                    let state = q.get(e.id)?.map(|r| r.state).unwrap_or_default();
                    self.metrics.failed.fetch_add(1, Ordering::SeqCst);
                    if state == "quarantined" {
                        self.metrics.quarantined.fetch_add(1, Ordering::SeqCst);
                    }
                    self.journal
                        .write(json!({"event": state, "id": e.id, "path": e.path,
                        "attempt": e.attempts, "error": err, "kind": kind, "time": queue::now()}));
                }
            }
        }
        Ok(())
    }
}

/// What one scan found.
struct Scan {
    /// Slides not yet taken that `--once` must wait for.
    pending: usize,
    /// When the soonest of them can be taken.
    soonest: Option<Duration>,
}

/// Runs the service until `stop` is set (or, with `once`, until the inbox is processed).
/// `sink` receives every event (also written to `events.jsonl`).
pub fn run(cfg: &WatchConfig, stop: &AtomicBool, sink: impl FnMut(&Event) + Send) -> Result<()> {
    validate(cfg)?;
    // Absolute, canonical paths: the queue is keyed by slide path, so `watch ./inbox` and
    // `watch /data/inbox` must name the same rows.
    let mut canonical = cfg.clone();
    std::fs::create_dir_all(&cfg.analyze.out).map_err(|e| Error::from_io(&cfg.analyze.out, e))?;
    if !is_url(&cfg.inbox) {
        canonical.inbox = cfg
            .inbox
            .canonicalize()
            .map_err(|e| Error::from_io(&cfg.inbox, e))?;
    }
    canonical.analyze.out = cfg
        .analyze
        .out
        .canonicalize()
        .map_err(|e| Error::from_io(&cfg.analyze.out, e))?;
    let cfg = &canonical;
    let out = &cfg.analyze.out;
    let _lock = lock(out)?;
    let listener = match cfg.http {
        Some(addr) => Some(TcpListener::bind(addr).map_err(|e| Error::Queue {
            path: state_dir(out),
            message: format!("cannot serve /metrics on {addr}: {e}"),
        })?),
        None => None,
    };
    let shared = Shared {
        cfg,
        journal: Journal {
            path: state_dir(out).join("events.jsonl"),
            sink: Mutex::new(sink),
        },
        metrics: Arc::new(http::Metrics::default()),
        halt: AtomicBool::new(false),
        stop,
        fatal: Mutex::new(None),
    };
    let m = &shared.metrics;
    m.workers.store(cfg.workers as u64, Ordering::SeqCst);
    m.rescan_s
        .store(cfg.rescan.as_secs_f64().to_bits(), Ordering::SeqCst);
    m.last_scan.store(queue::now().to_bits(), Ordering::SeqCst);

    let q = Queue::open(&state_dir(out))?;
    clean_stale_temporaries(out);
    for (e, to) in q.recover(|e| output_complete(out, e))? {
        shared
            .journal
            .write(json!({"event": "recovered", "id": e.id, "path": e.path,
            "fingerprint": e.fingerprint, "state": to, "time": queue::now()}));
    }
    // Verdicts and rescan actions a stopped service did not get to.
    for e in q.without_verdict()? {
        shared.record_verdict(&q, &e)?;
    }
    shared.run_actions(&q, true)?;

    // Filesystem events only wake the scanner; what they mean is found by scanning.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = None;
    let mut events_note = "off".to_string();
    if cfg.events && !is_url(&cfg.inbox) {
        let out_abs = out.canonicalize().unwrap_or_else(|_| out.clone());
        let handler = move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                // Our own outputs (a results folder inside the inbox) are not news.
                if ev.paths.iter().any(|p| !p.starts_with(&out_abs)) {
                    let _ = tx.send(());
                }
            }
        };
        match notify::recommended_watcher(handler).and_then(|mut w| {
            w.watch(&cfg.inbox, notify::RecursiveMode::Recursive)
                .map(|_| w)
        }) {
            Ok(w) => {
                watcher = Some(w);
                events_note = "on".into();
            }
            Err(e) => events_note = format!("unavailable ({e}); rescanning only"),
        }
    }
    shared
        .journal
        .write(json!({"event": "started", "pid": std::process::id(),
        "inbox": cfg.inbox, "workers": cfg.workers, "events": events_note,
        "isolated": cfg.worker_command.is_some(),
        "http": listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
        "time": queue::now()}));

    std::thread::scope(|scope| {
        if let Some(l) = listener {
            let sh = &shared;
            scope.spawn(move || {
                if let Err(e) = http::serve(l, &sh.halt, sh.metrics.clone(), &state_dir(out)) {
                    eprintln!("tessera watch: the /healthz and /metrics endpoint stopped: {e}");
                }
            });
        }
        for index in 1..=cfg.workers {
            let sh = &shared;
            scope.spawn(move || {
                if let Err(e) = sh.work(index) {
                    sh.fail(e);
                }
            });
        }
        if let Err(e) = scan_loop(&shared, q, &rx) {
            shared.fail(e);
        }
        // Workers finish the slide they hold, then return; the HTTP thread stops with them.
        shared.halt.store(true, Ordering::SeqCst);
    });
    drop(watcher);
    shared
        .journal
        .write(json!({"event": "stopped", "pid": std::process::id(),
        "time": queue::now()}));
    match shared.fatal.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Scans the inbox whenever it is due (periodically, after filesystem events, and when an
/// unsettled slide's settle period ends) until the service stops.
fn scan_loop<F: FnMut(&Event) + Send>(
    sh: &Shared<'_, F>,
    q: Queue,
    events: &std::sync::mpsc::Receiver<()>,
) -> Result<()> {
    let cfg = sh.cfg;
    let mut waiting_noted: HashSet<(PathBuf, String)> = HashSet::new();
    let mut next = Instant::now();
    loop {
        // Wait for the next scan; an event brings it forward (after a short quiet time, so
        // that a copy in progress is not rescanned for every write).
        while Instant::now() < next && !sh.stopping() {
            let left = next.saturating_duration_since(Instant::now());
            if events
                .recv_timeout(left.min(Duration::from_millis(100)))
                .is_ok()
            {
                while events.try_recv().is_ok() {}
                next = next.min(Instant::now() + Duration::from_millis(500));
            }
        }
        if sh.stopping() {
            return Ok(());
        }
        let scan = scan(sh, &q, &mut waiting_noted)?;
        sh.metrics
            .last_scan
            .store(queue::now().to_bits(), Ordering::SeqCst);
        if cfg.once && scan.pending == 0 {
            let busy = q
                .counts()?
                .iter()
                .any(|(st, n)| *n > 0 && matches!(st.as_str(), "stable" | "running" | "failed"));
            if !busy {
                return Ok(());
            }
        }
        next = Instant::now() + cfg.rescan;
        if let Some(s) = scan.soonest {
            next = next.min(Instant::now() + s + Duration::from_millis(50));
        }
        if cfg.once {
            // Also poll for the workers' progress and due retries.
            next = next.min(Instant::now() + Duration::from_millis(500));
        }
    }
}

/// One pass over the inbox: observe every slide; queue the complete versions not seen before.
fn scan<F: FnMut(&Event) + Send>(
    sh: &Shared<'_, F>,
    q: &Queue,
    waiting_noted: &mut HashSet<(PathBuf, String)>,
) -> Result<Scan> {
    let cfg = sh.cfg;
    let settle = cfg.settle.as_secs_f64();
    let mut result = Scan {
        pending: 0,
        soonest: None,
    };
    let wait = |result: &mut Scan, seconds: f64| {
        result.pending += 1;
        let d = Duration::from_secs_f64(seconds.max(0.0));
        result.soonest = Some(result.soonest.map_or(d, |s| s.min(d)));
    };
    // Each slide with what tells a growing one: its files' size and time, or for a series in
    // an archive its number of instances.
    let slides: Vec<(PathBuf, u64, i64)> = if is_url(&cfg.inbox) {
        let listed = tessera_slide::slide::native::dicomweb::list_slide_series(
            &cfg.inbox.to_string_lossy(),
            &cfg.analyze.slide.dicomweb,
        );
        match listed {
            Ok(l) => l
                .into_iter()
                .map(|s| (PathBuf::from(s.url), s.instances, 0))
                .collect(),
            Err(e) => {
                // The archive is down or refuses: noted once, and tried again next scan.
                let why = e.to_string();
                if waiting_noted.insert((cfg.inbox.clone(), why.clone())) {
                    sh.journal
                        .write(json!({"event": "unreadable", "path": cfg.inbox,
                        "reason": why, "time": queue::now()}));
                }
                return Ok(result);
            }
        }
    } else {
        let (slides, unreadable) = crate::cohort::collect_skipping(&cfg.inbox)?;
        for (dir, why) in unreadable {
            if waiting_noted.insert((dir.clone(), why.clone())) {
                sh.journal
                    .write(json!({"event": "unreadable", "path": dir, "reason": why,
                    "time": queue::now()}));
            }
        }
        slides
            .into_iter()
            .filter_map(|p| {
                // A slide that vanished between listing and stat is left out.
                let (size, mtime) = stat_slide(&p).ok()?;
                Some((p, size, mtime))
            })
            .collect()
    };
    for (p, size, mtime) in slides {
        let age = q.observe(&p, size, mtime)?;
        if age < settle {
            wait(&mut result, settle - age);
            continue;
        }
        let fp = match q.cached_fingerprint(&p)? {
            Some(fp) => fp,
            None => {
                let fp = if is_url(&p) {
                    // A series: the reader's fingerprint (its UIDs, attributes and frames).
                    Slide::open_with(&p, &cfg.analyze.slide)
                        .ok()
                        .and_then(|s| s.remote().map(|r| r.fingerprint.clone()))
                } else {
                    fingerprint(&p, cfg.analyze.hash_full).ok()
                };
                let Some(fp) = fp else {
                    continue;
                };
                q.set_fingerprint(&p, &fp)?;
                fp
            }
        };
        if q.known(&p, &fp)? {
            continue;
        }
        let mut note = |why: String| {
            if waiting_noted.insert((p.clone(), why.clone())) {
                sh.journal
                    .write(json!({"event": "waiting", "path": p, "fingerprint": fp,
                    "reason": why, "time": queue::now()}));
            }
        };
        if let Some(pattern) = &cfg.done_marker {
            if !marker_present(&p, pattern) {
                // Not pending for --once: the marker may never come; the next run looks again.
                note(format!("no done-marker matching {pattern:?} beside it"));
                continue;
            }
        }
        if let Err(e) = Slide::open_with(&p, &cfg.analyze.slide) {
            // Perhaps still being written in place; after one more settle period it is queued
            // anyway, so that the failure is recorded, retried and quarantined.
            if age < 2.0 * settle {
                note(format!("does not open yet: {e}"));
                wait(&mut result, 2.0 * settle - age);
                continue;
            }
        }
        let output = format!("{}-{}", slide_name(&p), &fp[..12]);
        if q.add(&p, &fp, &output)? {
            sh.journal
                .write(json!({"event": "queued", "path": p, "fingerprint": fp,
                "output": output, "time": queue::now()}));
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirax_slide_changes_while_its_data_folder_grows() {
        let dir = tempfile::tempdir().unwrap();
        let mrxs = dir.path().join("s.mrxs");
        std::fs::write(&mrxs, b"[GENERAL]").unwrap();
        std::fs::create_dir(dir.path().join("s")).unwrap();
        std::fs::write(dir.path().join("s/Slidedat.ini"), b"x").unwrap();
        let before = stat_slide(&mrxs).unwrap();
        std::fs::write(dir.path().join("s/Data0000.dat"), vec![0u8; 1000]).unwrap();
        let after = stat_slide(&mrxs).unwrap();
        assert_eq!(after.0, before.0 + 1000);
        // The fingerprint covers the data too.
        let f1 = fingerprint(&mrxs, false).unwrap();
        std::fs::write(dir.path().join("s/Data0001.dat"), b"more").unwrap();
        assert_ne!(f1, fingerprint(&mrxs, false).unwrap());
    }

    #[test]
    fn done_markers_match_beside_the_slide_only() {
        let dir = tempfile::tempdir().unwrap();
        let slide = dir.path().join("case [1].svs");
        std::fs::write(&slide, b"x").unwrap();
        assert!(!marker_present(&slide, "{stem}.done"));
        std::fs::write(dir.path().join("case [1].done"), b"").unwrap();
        // Glob characters in the slide's name are taken literally.
        assert!(marker_present(&slide, "{stem}.done"));
        assert!(!marker_present(&slide, "{name}.done"));
        assert!(marker_present(&slide, "*.done"));
        // The slide itself is never its own marker.
        assert!(!marker_present(&slide, "*.svs"));
    }
}
