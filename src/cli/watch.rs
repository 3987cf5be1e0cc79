//! `tessera watch INBOX --out RESULTS` and `tessera queue list|retry|forget`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use tessera::imaging::stain::Reinhard;
use tessera::pipeline::AnalyzeConfig;
use tessera::watch::{self, queue::Queue, worker::WorkerCommand, WatchConfig};

use super::analysis::AnalysisArgs;
use super::{EXIT_ALL_FAILED, EXIT_OK, EXIT_USAGE};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The scanner's inbox (searched recursively; never modified), or an archive's DICOMweb
    /// root, `dicomweb+http(s)://HOST/PATH` (its slide microscopy series are watched).
    #[arg(value_name = "INBOX")]
    inbox: PathBuf,
    /// Results folder: one OUT/<slide>-<fingerprint>/ per slide version, and OUT/.watch/ with
    /// the queue.
    #[arg(long, short)]
    out: PathBuf,
    /// Seconds a slide's size and modification time (a series in an archive: its number of
    /// instances) must stay unchanged before it is taken.
    #[arg(long, default_value_t = 60.0)]
    settle: f64,
    /// Seconds between inbox scans.
    #[arg(long, default_value_t = 30.0)]
    rescan: f64,
    /// Process what is in the inbox, then exit (for cron).
    #[arg(long)]
    once: bool,
    /// Longest one slide's analysis may take, in seconds; the worker is then stopped and the
    /// attempt counts as failed (a hung read on a network share, a deadlock in native code).
    #[arg(long, default_value_t = 14400.0)]
    slide_timeout: f64,
    /// Attempts before a failing slide is quarantined.
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Seconds before the first retry (doubled for each further one).
    #[arg(long, default_value_t = 30.0)]
    backoff: f64,
    /// Slides analysed at the same time (each in its own worker process; each analysis is
    /// parallel inside, so more than 1 helps mainly when slides are small or I/O-bound).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Filesystem events (inotify) to notice new slides at once; `off` leaves only the rescan.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    events: Switch,
    /// Take a slide only once a file matching this glob exists beside it; `{name}` is the
    /// slide's file name and `{stem}` the name without its extension, e.g. '{stem}.done'.
    #[arg(long, value_name = "GLOB")]
    done_marker: Option<String>,
    /// When slide QC says `rescan`, write DIR/<slide>-<fingerprint>.rescan.json (the slide,
    /// its fingerprint and the reasons): a rescan list for the scanner's operator. Once per
    /// slide version, through crashes and restarts.
    #[arg(long, value_name = "DIR")]
    rescan_marker: Option<PathBuf>,
    /// When slide QC says `rescan`, run this shell command once per slide version, with
    /// TESSERA_SLIDE, TESSERA_RESULT, TESSERA_VERDICT, TESSERA_REASONS and TESSERA_ACTION_ID
    /// set. After a crash while it ran it is not run again.
    #[arg(long, value_name = "COMMAND")]
    on_rescan: Option<String>,
    /// Serve /healthz and /metrics (Prometheus) on this address, or `off`. No authentication:
    /// keep it on 127.0.0.1 or a management network.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:9187")]
    http: String,
    /// Log lines: `text` (time, event, key=value) or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Analyse in this process instead of worker processes (a native crash then stops the
    /// service).
    #[arg(long, hide = true)]
    in_process: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    analysis: AnalysisArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// The watch service's results folder.
    #[arg(long, short)]
    out: PathBuf,
    #[command(subcommand)]
    what: QueueWhat,
}

#[derive(Debug, Subcommand)]
enum QueueWhat {
    /// Every slide version with its state, attempts and last error.
    List,
    /// Put a failed or quarantined slide back in the queue with fresh attempts.
    Retry {
        /// Its id (from `list`).
        id: i64,
    },
    /// Remove a slide from the queue (it is queued again if still in the inbox).
    Forget {
        /// Its id (from `list`).
        id: i64,
    },
}

fn analyze_config(a: &WatchArgs) -> Result<AnalyzeConfig, tessera::Error> {
    a.analysis.config(a.out.clone(), 1)
}

/// The worker command: this executable, `watch-worker`, and the arguments this process was
/// given after `watch` (so the worker parses exactly the same analysis settings). A
/// `--reinhard` reference image is replaced by the target read from it at start, so that every
/// worker, restarted or not, uses that target even if the image changes.
fn worker_command(timeout: Duration, stain: Option<Reinhard>) -> Option<WorkerCommand> {
    let program = std::env::current_exe().ok()?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    Some(WorkerCommand {
        program,
        args: worker_args(&args, stain)?,
        timeout,
    })
}

/// `watch-worker` and the arguments given after `watch` in `args`, with `--reinhard`'s value
/// replaced by the target's six numbers; `None` without `watch`.
fn worker_args(args: &[OsString], stain: Option<Reinhard>) -> Option<Vec<OsString>> {
    let at = args.iter().position(|a| a == "watch")?;
    let mut rest = vec![OsString::from("watch-worker")];
    let mut given = args[at + 1..].iter();
    while let Some(a) = given.next() {
        if a == "--reinhard" {
            given.next();
        } else if !a.to_string_lossy().starts_with("--reinhard=") {
            rest.push(a.clone());
        }
    }
    if let Some(t) = stain {
        // Shortest round-trip decimals: the worker parses back the same f32s.
        let v: Vec<String> = t.mean.iter().chain(&t.std).map(f32::to_string).collect();
        rest.push("--reinhard".into());
        rest.push(v.join(",").into());
    }
    Some(rest)
}

/// One event as a log line.
fn log_line(e: &watch::Event, format: LogFormat) -> String {
    if format == LogFormat::Json {
        return e.to_string();
    }
    let time = e["time"]
        .as_f64()
        .and_then(|t| std::time::UNIX_EPOCH.checked_add(Duration::from_secs_f64(t.max(0.0))))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default();
    let mut line = format!("{time} {}", e["event"].as_str().unwrap_or("event"));
    if let Some(map) = e.as_object() {
        for (k, v) in map {
            if k == "time" || k == "event" || v.is_null() {
                continue;
            }
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if text.is_empty() || text.contains([' ', '"', '=']) {
                line.push_str(&format!(" {k}={text:?}"));
            } else {
                line.push_str(&format!(" {k}={text}"));
            }
        }
    }
    line
}

/// Seconds from the command line, capped at about 30 years (a larger value would overflow).
fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.clamp(0.0, 1e9))
}

pub fn run(a: &WatchArgs) -> u8 {
    if !(a.settle >= 0.0 && a.rescan > 0.0 && a.backoff >= 0.0 && a.slide_timeout > 0.0)
        || a.attempts == 0
    {
        eprintln!(
            "error: --settle and --backoff must be ≥ 0, --rescan and --slide-timeout > 0, \
             --attempts ≥ 1"
        );
        return EXIT_USAGE;
    }
    if a.analysis.pdf && !super::chromium_found(&a.out.join("report.html")) {
        return EXIT_USAGE;
    }
    let http = match a.http.as_str() {
        "off" => None,
        addr => match addr.parse::<SocketAddr>() {
            Ok(addr) => {
                if !addr.ip().is_loopback() {
                    eprintln!(
                        "warning: /metrics and /healthz on {addr} are reachable from other                          machines and have no authentication"
                    );
                }
                Some(addr)
            }
            Err(e) => {
                eprintln!("error: --http {addr}: {e} (expected e.g. 127.0.0.1:9187, or off)");
                return EXIT_USAGE;
            }
        },
    };
    let analysis = match analyze_config(a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let mut cfg = WatchConfig::new(a.inbox.clone(), analysis);
    cfg.settle = secs(a.settle);
    cfg.rescan = secs(a.rescan);
    cfg.once = a.once;
    cfg.max_attempts = a.attempts;
    cfg.backoff = secs(a.backoff);
    cfg.workers = usize::from(a.workers);
    cfg.events = a.events == Switch::On;
    cfg.done_marker = a.done_marker.clone();
    cfg.rescan_marker = a.rescan_marker.clone();
    cfg.on_rescan = a.on_rescan.clone();
    cfg.http = http;
    cfg.worker_command = if a.in_process {
        None
    } else {
        match worker_command(secs(a.slide_timeout), a.analysis.reinhard) {
            Some(c) => Some(c),
            None => {
                eprintln!("error: cannot find this executable to start worker processes");
                return EXIT_ALL_FAILED;
            }
        }
    };
    // SIGINT / SIGTERM: finish the current slides, then stop.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        eprintln!("error: cannot install the signal handler: {e}");
        return EXIT_ALL_FAILED;
    }
    let (quiet, format) = (a.quiet, a.log_format);
    let result = watch::run(&cfg, &stop, |e| {
        let failed = matches!(e["event"].as_str(), Some("failed" | "quarantined"));
        if failed {
            eprintln!("{}", log_line(e, format));
        } else if !quiet {
            println!("{}", log_line(e, format));
        }
    });
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ALL_FAILED
        }
    }
}

/// The hidden `watch-worker` command: analyses the slides the service sends on stdin.
pub fn run_worker(a: &WatchArgs) -> u8 {
    // SIGINT and SIGTERM reach the whole process group: the service decides when its workers
    // stop (by closing their input), so they ignore both and finish the slide they hold.
    let _ = ctrlc::set_handler(|| {});
    let cfg = match analyze_config(a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    match watch::worker::serve_stdio(&cfg) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ALL_FAILED
        }
    }
}

pub fn run_queue(a: &QueueArgs) -> u8 {
    let dir = watch::state_dir(&a.out);
    if !dir.join("queue.sqlite").exists() {
        eprintln!("error: {}: no watch queue here", a.out.display());
        return EXIT_ALL_FAILED;
    }
    let q = match Queue::open(&dir) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ALL_FAILED;
        }
    };
    let done = match &a.what {
        QueueWhat::List => q.list().map(|rows| {
            println!(
                "{:>5}  {:<12} {:>8}  {:<7}  {:<40}  {:<16}  error",
                "id", "state", "attempts", "qc", "slide", "kind"
            );
            for r in rows {
                let qc = match (r.qc_verdict.as_str(), r.rescan_action.as_str()) {
                    ("", _) => "-".to_string(),
                    (v, "") => v.to_string(),
                    (v, a) => format!("{v}/{a}"),
                };
                println!(
                    "{:>5}  {:<12} {:>8}  {:<7}  {:<40}  {:<16}  {}",
                    r.id,
                    r.state,
                    r.attempts,
                    qc,
                    r.path.display(),
                    r.last_error_kind,
                    r.last_error
                );
            }
            true
        }),
        QueueWhat::Retry { id } => q.retry(*id),
        QueueWhat::Forget { id } => q.forget(*id),
    };
    match done {
        Ok(true) => EXIT_OK,
        Ok(false) => {
            eprintln!("error: no such queue entry, or it is being analysed now (running)");
            EXIT_ALL_FAILED
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ALL_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_get_the_target_not_the_reference_image() {
        let t = Reinhard::new([61.23456, 20.1, -9.9], [12.5, 6.0, 4.75]).unwrap();
        let given: Vec<OsString> = [
            "-v",
            "watch",
            "in",
            "--reinhard",
            "ref.png",
            "--out",
            "o",
            "--reinhard=x.png",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let args = worker_args(&given, Some(t)).unwrap();
        let text: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(text[..4], ["watch-worker", "in", "--out", "o"]);
        assert_eq!(text[4], "--reinhard");
        assert_eq!(Reinhard::parse(&text[5]).unwrap(), t);
        assert_eq!(text.len(), 6);
        // Without normalisation nothing is added.
        let plain: Vec<OsString> = ["watch", "in"].iter().map(OsString::from).collect();
        assert_eq!(worker_args(&plain, None).unwrap().len(), 2);
    }
}
