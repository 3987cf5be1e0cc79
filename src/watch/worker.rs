//! The watch service's analysis workers: one slide at a time each, in a child process, so that
//! a crash in native code (OpenSlide, a decoder, the inference runtime) costs one attempt of one
//! slide instead of the service.
//!
//! In: `(slide path, output folder name)` requests. Out: an [`Outcome`] per request; the
//! outputs themselves are written by [`crate::pipeline`] into the results folder.
//!
//! A [`Worker`] is either in this process (library use, no isolation) or a child process (the
//! `tessera` binary's hidden `watch-worker` command, running [`serve`]) that loads the model
//! once and then answers one JSON line per request on its standard output. A child that dies
//! while analysing (a signal, an abort, an exit) is reported as a failure of that slide and is
//! started again for the next one. The child is killed by the kernel when the service dies
//! (`PR_SET_PDEATHSIG`), so no orphan finishes a slide the restarted service queued again.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::pipeline::{analyze, AnalyzeConfig, AnalyzeOptions, LoadedModel};

/// The environment variable that carries the service's pid to its workers.
const PARENT_ENV: &str = "TESSERA_WATCH_PARENT";

/// How to start a worker process: the program and its arguments (the analysis settings).
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The executable (normally the running `tessera`).
    pub program: PathBuf,
    /// Its arguments, e.g. `watch-worker` followed by the analysis flags.
    pub args: Vec<OsString>,
    /// Longest one slide may take; the worker is then killed and the attempt fails.
    pub timeout: std::time::Duration,
}

/// One request to a worker.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    id: u64,
    path: PathBuf,
    output: String,
}

/// A worker's answer to request `id`.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    id: u64,
    outcome: Outcome,
}

/// A worker's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// The outputs are complete in this folder.
    Done {
        /// The slide's output folder.
        folder: PathBuf,
        /// Patches analysed.
        patches: usize,
        /// Slide QC's verdict (absent with `--qc off`).
        #[serde(default)]
        qc_verdict: Option<crate::qc::Verdict>,
    },
    /// The analysis failed.
    Failed {
        /// The error's stable kind: the engine's ([`crate::Error::kind`], e.g. `corrupt`,
        /// `missing_mpp`), or `worker_died`, `worker_answer` or `panicked` for a worker process
        /// that crashed, hung, answered nonsense or panicked.
        kind: String,
        /// What happened; names the file.
        message: String,
    },
}

impl Outcome {
    /// A failure of `kind` with `message`.
    pub fn failed(kind: &str, message: String) -> Outcome {
        Outcome::Failed {
            kind: kind.into(),
            message,
        }
    }
}

struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Lines the child answered, read by a thread (so that waiting can time out); `None` at
    /// the end of its output.
    lines: std::sync::mpsc::Receiver<Option<String>>,
    next_id: u64,
}

/// One analysis worker (one per worker thread, so the size difference of the variants does not
/// matter).
#[allow(clippy::large_enum_variant)]
pub enum Worker<'a> {
    /// In this process: no isolation from native crashes.
    InProcess {
        /// The analysis settings.
        cfg: &'a AnalyzeConfig,
        /// The model, loaded on first use.
        model: Option<LoadedModel>,
    },
    /// In a child process, started on first use and again after it dies.
    Process {
        /// How to start it.
        command: &'a WorkerCommand,
        /// The running child, if any.
        running: Option<ProcessHandle>,
    },
}

/// A running worker process (opaque).
pub struct ProcessHandle(Process);

impl<'a> Worker<'a> {
    /// A worker for `cfg`: a child process when `command` is given, in-process otherwise.
    pub fn new(cfg: &'a AnalyzeConfig, command: Option<&'a WorkerCommand>) -> Worker<'a> {
        match command {
            Some(command) => Worker::Process {
                command,
                running: None,
            },
            None => Worker::InProcess { cfg, model: None },
        }
    }

    /// Analyses `path` into the results folder's `output`. An error means no worker could be
    /// started (a problem of the installation, not of the slide).
    pub fn analyze(&mut self, path: &Path, output: &str) -> Result<Outcome> {
        match self {
            Worker::InProcess { cfg, model } => Ok(analyze_one(cfg, model, path, output)),
            Worker::Process { command, running } => {
                // A child that died while idle is replaced before it is given a slide, so its
                // death is not blamed on that slide.
                if let Some(ProcessHandle(p)) = running {
                    if !matches!(p.child.try_wait(), Ok(None)) {
                        *running = None;
                    }
                }
                let p = match running {
                    Some(ProcessHandle(p)) => p,
                    None => {
                        let p = spawn(command).map_err(|e| crate::error::Error::Queue {
                            path: command.program.clone(),
                            message: format!("cannot start a worker process: {e}"),
                        })?;
                        &mut running.insert(ProcessHandle(p)).0
                    }
                };
                let outcome = match ask(p, path, output, command.timeout) {
                    Ok(outcome) => return Ok(outcome),
                    Err(why) => why,
                };
                // The child died or hung mid-analysis: stop it, reap it, blame this slide.
                let _ = p.child.kill();
                let status = p
                    .child
                    .wait()
                    .map(describe_exit)
                    .unwrap_or_else(|e| e.to_string());
                *running = None;
                Ok(Outcome::failed(
                    "worker_died",
                    format!("{}: {outcome} ({status})", path.display()),
                ))
            }
        }
    }
}

impl Drop for ProcessHandle {
    fn drop(&mut self) {
        // End of its input: an idle worker exits at once; one that does not within a few
        // seconds is killed.
        let p = &mut self.0;
        drop(p.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = p.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = s.signal() {
            return format!("killed by signal {sig}");
        }
    }
    match s.code() {
        Some(c) => format!("exit code {c}"),
        None => s.to_string(),
    }
}

fn spawn(command: &WorkerCommand) -> std::io::Result<Process> {
    let mut child = Command::new(&command.program)
        .args(&command.args)
        .env(PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdin = child.stdin.take().ok_or(std::io::ErrorKind::BrokenPipe)?;
    let stdout: ChildStdout = child.stdout.take().ok_or(std::io::ErrorKind::BrokenPipe)?;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    Ok(Process {
        child,
        stdin: Some(stdin),
        lines,
        next_id: 0,
    })
}

/// Sends one request and waits for its answer; `Err(why)` when the child died or did not
/// answer within `timeout`.
fn ask(
    p: &mut Process,
    path: &Path,
    output: &str,
    timeout: std::time::Duration,
) -> std::result::Result<Outcome, String> {
    p.next_id += 1;
    let id = p.next_id;
    let req = Request {
        id,
        path: path.to_path_buf(),
        output: output.to_string(),
    };
    let died = || "the worker process died while analysing this slide".to_string();
    let line = serde_json::to_string(&req).map_err(|e| e.to_string())? + "\n";
    let stdin = p.stdin.as_mut().ok_or_else(died)?;
    stdin.write_all(line.as_bytes()).map_err(|_| died())?;
    stdin.flush().map_err(|_| died())?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match p.lines.recv_timeout(left) {
            Ok(Some(answer)) => match serde_json::from_str::<Answer>(&answer) {
                Ok(a) if a.id == id => return Ok(a.outcome),
                // An answer to an earlier request (cannot happen unless the channel was
                // corrupted): skip it.
                Ok(_) => continue,
                Err(e) => {
                    return Ok(Outcome::failed(
                        "worker_answer",
                        format!(
                            "{}: unreadable answer from the worker process ({e})",
                            path.display()
                        ),
                    ))
                }
            },
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(died()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "the analysis took longer than {} s; the worker process was stopped",
                    timeout.as_secs()
                ))
            }
        }
    }
}

fn analyze_one(
    cfg: &AnalyzeConfig,
    model: &mut Option<LoadedModel>,
    path: &Path,
    output: &str,
) -> Outcome {
    // A panic inside the analysis is a failure of this slide, not of the worker.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let opts = AnalyzeOptions {
            name: Some(output),
            model: Some(model),
        };
        analyze(path, cfg, opts)
    }));
    match result {
        Ok(Ok(s)) => Outcome::Done {
            folder: s.folder,
            patches: s.patches,
            qc_verdict: s.qc.map(|q| q.verdict),
        },
        Ok(Err(e)) => Outcome::failed(e.kind(), e.to_string()),
        Err(_) => Outcome::failed(
            "panicked",
            format!("{}: the analysis panicked", path.display()),
        ),
    }
}

/// [`serve`] on this process's stdin, answering on a private copy of stdout (fd 1 itself is
/// pointed at stderr, so that nothing a native library prints can corrupt the answers).
pub fn serve_stdio(cfg: &AnalyzeConfig) -> Result<()> {
    let input = std::io::stdin().lock();
    match crate::sys::private_stdout() {
        Some(f) => serve(cfg, input, std::io::BufWriter::new(f)),
        None => serve(cfg, input, std::io::stdout().lock()),
    }
}

/// The worker process's loop: one request per line on `input`, one answer per line on
/// `output`, until an empty line or the end of input. The model is loaded once, on the
/// first request.
pub fn serve(cfg: &AnalyzeConfig, input: impl BufRead, mut output: impl Write) -> Result<()> {
    if let Some(parent) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        if !crate::sys::die_with_parent(parent) && cfg!(target_os = "linux") {
            // The service is already gone: nobody will read our answers.
            return Ok(());
        }
    }
    let mut model = None;
    for line in input.lines() {
        let line = line.map_err(|e| crate::error::Error::from_io(Path::new("<stdin>"), e))?;
        if line.trim().is_empty() {
            break;
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                // Fault-injection hooks for the tests: a native crash, or a hang, while
                // analysing a slide whose path contains this text.
                let hook = |var: &str| {
                    std::env::var(var)
                        .is_ok_and(|t| !t.is_empty() && req.path.to_string_lossy().contains(&t))
                };
                if hook("TESSERA_WATCH_TEST_CRASH") {
                    std::process::abort();
                }
                if hook("TESSERA_WATCH_TEST_HANG") {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
                Answer {
                    id: req.id,
                    outcome: analyze_one(cfg, &mut model, &req.path, &req.output),
                }
            }
            Err(e) => Answer {
                id: 0,
                outcome: Outcome::failed("worker_answer", format!("unreadable request: {e}")),
            },
        };
        let answer = serde_json::to_string(&answer).unwrap_or_default();
        writeln!(output, "{answer}")
            .and_then(|_| output.flush())
            .map_err(|e| crate::error::Error::from_io(Path::new("<stdout>"), e))?;
    }
    Ok(())
}
